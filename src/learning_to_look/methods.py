"""Training methods behind a registry, one class each (in the spirit of DomainBed).

A method says, per epoch, which loss to optimise and which epochs may be
selected; the trainer does everything else. Adding a method is one class here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .attribution import cam, grad_cam, input_gradients, minmax_normalize
from .config import TrainConfig
from .errors import L2LError
from .losses import forward_kl, lambda_schedule, rrr_penalty
from .models import Backbone


@dataclass
class Batch:
    """One mini-batch: normalised inputs, labels, the attention target ``q`` at the
    feature resolution and, for RRR, the irrelevant region at input resolution."""

    x: torch.Tensor
    y: torch.Tensor
    target: torch.Tensor | None = None
    irrelevant: torch.Tensor | None = None


class Method:
    name: ClassVar[str]
    uses_maps: ClassVar[bool] = False
    needs_gap: ClassVar[bool] = False
    two_phase: ClassVar[bool] = False
    default_lambda: ClassVar[float] = 0.0
    default_selection: ClassVar[str] = "val_acc"

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    def phase(self, epoch: int) -> str:
        """'ce', 'attention' (alignment only) or 'joint' (CE + lambda * alignment)."""
        return "ce"

    def eligible(self, epoch: int) -> bool:
        """Whether this epoch's weights may be selected."""
        return True

    def resets_optimizer(self, epoch: int) -> bool:
        return False

    def lam(self, epoch: int) -> float:
        return float(self.cfg.lambda0 or 0.0)

    def attention(self, model: Backbone, x: torch.Tensor, y: torch.Tensor,
                  create_graph: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, normalised attention map in [0, 1]) for the true class: CAM where the
        network ends in GAP + linear, Grad-CAM otherwise."""
        if model.has_gap_classifier:
            logits, feats = model(x)
            return logits, minmax_normalize(cam(feats, model.classifier_weight, y))
        with torch.enable_grad():
            logits, feats = model(x)
            return logits, minmax_normalize(grad_cam(feats, logits, y, create_graph=create_graph))

    def loss(self, model: Backbone, batch: Batch, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, _ = model(batch.x)
        ce = F.cross_entropy(logits, batch.y)
        return ce, {"ce": ce.detach(), "correct": (logits.argmax(1) == batch.y).sum()}


METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise L2LError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[name]


@register_method
class Vanilla(Method):
    """Cross-entropy only: the shortcut-prone baseline."""

    name = "vanilla"


@register_method
class L2L(Method):
    """Learning to Look (PROTOCOL 3.5): align the CAM with the map's target, first
    alone (or after CE-only epochs with ``phase1='ce'``), then jointly with CE
    under a growing lambda; optimiser and scheduler restart at E_att."""

    name = "l2l"
    uses_maps = True
    needs_gap = True
    two_phase = True
    default_lambda = 160.0
    default_selection = "acc_x_1mkl"

    def phase(self, epoch: int) -> str:
        if epoch >= self.cfg.e_att:
            return "joint"
        return "attention" if self.cfg.phase1 == "attention" else "ce"

    def eligible(self, epoch: int) -> bool:
        return epoch >= self.cfg.e_att

    def resets_optimizer(self, epoch: int) -> bool:
        return epoch == self.cfg.e_att and epoch > 0

    def lam(self, epoch: int) -> float:
        return lambda_schedule(epoch, self.cfg.e_att, float(self.cfg.lambda0), self.cfg.lambda_ramp)

    def loss(self, model: Backbone, batch: Batch, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        phase = self.phase(epoch)
        if phase == "ce":
            return super().loss(model, batch, epoch)
        logits, s = self.attention(model, batch.x, batch.y)
        kl = forward_kl(s, batch.target)
        stats = {"attn": kl.detach(), "correct": (logits.argmax(1) == batch.y).sum()}
        if phase == "attention":
            return kl, stats
        ce = F.cross_entropy(logits, batch.y)
        return ce + self.lam(epoch) * kl, stats | {"ce": ce.detach()}


@register_method
class GradCAMKL(L2L):
    """The same alignment and schedule with Grad-CAM in place of CAM, so it also runs
    on networks without global average pooling."""

    name = "gradcam-kl"
    needs_gap = False

    def attention(self, model, x, y, create_graph=True):
        with torch.enable_grad():
            logits, feats = model(x)
            return logits, minmax_normalize(grad_cam(feats, logits, y, create_graph=create_graph))


@register_method
class RRR(Method):
    """Right for the Right Reasons (Ross et al. 2017): penalise input gradients of the
    summed log-probabilities outside the map. Lambda 100 follows Ross et al.'s rule
    of thumb: it puts the penalty on the order of the cross-entropy (measured on
    DecoyMNIST training batches, where it was 0.01 per image)."""

    name = "rrr"
    uses_maps = True
    default_lambda = 100.0

    def loss(self, model: Backbone, batch: Batch, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = batch.x.detach().requires_grad_(True)
        logits, _ = model(x)
        ce = F.cross_entropy(logits, batch.y)
        penalty = rrr_penalty(input_gradients(logits, x, create_graph=True), batch.irrelevant)
        return ce + self.lam(epoch) * penalty, {"ce": ce.detach(), "rrr": penalty.detach(),
                                                 "correct": (logits.argmax(1) == batch.y).sum()}


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Fill the method's defaults into ``None`` fields and validate the whole config."""
    method = get_method(cfg.method)
    cfg = dataclasses.replace(cfg).validate()
    if method.two_phase and cfg.e_att >= cfg.epochs:
        raise L2LError(f"E_att must lie below the number of epochs, got {cfg.e_att} with {cfg.epochs} epochs; "
                       "pass --e-att below --epochs")
    if cfg.lambda0 is None:
        cfg.lambda0 = method.default_lambda
    if cfg.selection is None:
        cfg.selection = method.default_selection
    if not method.uses_maps:
        cfg.maps = "none"
        cfg.map_options = {}
    return cfg
