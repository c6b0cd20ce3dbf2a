"""Upweighting: cross-entropy weighted inversely to class or group frequency, as GALS's baseline."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nn.backbones import Backbone
from .base import Batch, Method, register_method


def inverse_frequency(labels: Tensor, k: int) -> Tensor:
    """GALS's loss weights (datasets/waterbirds.py, get_loss_upweights): per id 0..k-1 of
    ``labels`` (N,), (1 / count) / max(1 / count), so the rarest weighs 1 (k,); an id with
    no rows weighs 0."""
    counts = torch.bincount(labels, minlength=k).double()  # (k,)
    inv = torch.where(counts > 0, 1.0 / counts.clamp_min(1), torch.zeros_like(counts))
    return (inv / inv.max()).float()


def weighted_ce(logits: Tensor, y: Tensor, w: Tensor, normalised: bool) -> Tensor:
    """Cross-entropy with per-row weights ``w`` (B,): divided by the weights' sum where
    ``normalised`` (torch's class-weighted mean), else by the batch size (GALS's group
    weighting, utils/loss_utils.py group_weighted_cross_entropy)."""
    ce = F.cross_entropy(logits, y, reduction="none")  # (B,)
    return (w * ce).sum() / (w.sum() if normalised else len(y))


@register_method
class Upweight(Method):
    """Cross-entropy with each image weighted by its class's or its group's inverse
    training frequency (GALS's UpWeight baseline): by class, torch's class-weighted mean
    (GALS's USE_CLASS_WEIGHTS, its Waterbirds setting); by group, the plain mean of the
    weighted losses (GALS's USE_GROUP_WEIGHTS). GALS hard-codes Waterbirds' training counts;
    here they are counted on the run's training split."""

    name = "upweight"
    paper = "as in Petryk, Dunlap, Nasseri, Gonzalez, Darrell, Rohrbach, CVPR 2022 (GALS)"
    summary = "CE with images weighted by 1 / training count of their class (or group), the rarest at 1"
    options: ClassVar[dict[str, Any]] = {"upweight_by": "class"}  # GALS's Waterbirds upweight config weighs classes

    def __init__(self, cfg):
        super().__init__(cfg)
        self.weights: Tensor | None = None  # (K,) per class or group

    def check_dataset(self, spec: Any) -> None:
        if self.cfg.upweight_by == "group":
            self.needs_groups = True
        super().check_dataset(spec)

    def prepare(self, train: Batch) -> None:
        ids = train.y if self.cfg.upweight_by == "class" else train.groups
        self.weights = inverse_frequency(ids.long().cpu(), int(ids.max()) + 1)

    def loss(self, model: Backbone, batch: Batch, epoch: int) -> tuple[Tensor, dict[str, Tensor]]:
        logits, _ = model(batch.x)  # (B,K)
        by_class = self.cfg.upweight_by == "class"
        ids = batch.y if by_class else batch.groups
        loss = weighted_ce(logits, batch.y, self.weights.to(logits.device)[ids.long()], normalised=by_class)
        return loss, {"ce": F.cross_entropy(logits, batch.y).detach(), "correct": (logits.argmax(1) == batch.y).sum()}
