"""CDEP: contextual decomposition explanation penalisation (Rieger et al. 2020)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import L2LError
from ..nn.backbones import Backbone
from ..nn.cd import cdep_score
from .base import Batch, register_method
from .region import RegionPrior


@register_method
class CDEP(RegionPrior):
    """Contextual decomposition explanation penalisation (Rieger et al. 2020): CE plus
    lambda times the CDEP score (:func:`~learning_to_look.cd.cdep_score`) of the input
    component the data set declares irrelevant (``DatasetSpec.shortcut``, or ``--irrelevant``):
    - "region" (or "texture"): the component is 1 - map at input resolution, as for RRR
      and EG, so the same maps (e.g. ``not-decoy``) serve all three;
    - "colour" (ColorMNIST): single pixels, all channels, as in CDEP's own ColorMNIST
      code: a pixel alone carries its colour but not the digit's shape. Each step draws
      ``PIXELS`` of them, each position with probability the share of the batch's images
      that are not background there (theirs: of the whole training set), and sums their
      scores.
    Lambda defaults are values from CDEP's own sweeps, one per component (the values its
    paper chose were not in the sources read)."""

    name = "cdep"
    paper = "Rieger, Singh, Murdoch, Yu, ICML 2020"
    summary = ("CE + λ · softmax share of the logits that contextual decomposition gives the irrelevant component "
               "(a region, or single pixels' colour)")
    default_lambda = 100.0  # region shortcuts: from CDEP's DecoyMNIST sweep {1, 10, 100, 1000, 10000}
    COLOUR_LAMBDA = 1000.0  # colour: from CDEP's ColorMNIST sweep {0.1, 1, 500, 1000, 5000}
    PIXELS = 8  # single-pixel components per step, CDEP's ColorMNIST num_blobs
    epoch_cost = 3.9  # a region, measured (scripts/epoch_cost.py): decomposition costs forward passes
    COLOUR_COST = 22.0  # colour, measured likewise on ColorMNIST: one decomposition per pixel drawn

    def relative_cost(self) -> float:
        return self.COLOUR_COST if self._shortcut() == "colour" else self.epoch_cost

    def _shortcut(self) -> str:
        """"region" for any spatial component (a texture is a region too), else "colour"."""
        return "colour" if self.component == "colour" else "region"

    @property
    def uses_maps(self) -> bool:  # type: ignore[override]
        return self._shortcut() == "region"

    def lambda_default(self) -> float:
        return self.COLOUR_LAMBDA if self._shortcut() == "colour" else self.default_lambda

    def check_dataset(self, spec: Any) -> None:
        if self.component == "none":
            raise L2LError(f"method cdep penalises the input component a data set declares irrelevant, and "
                           f"{spec.name} declares none; use a data set with a shortcut (e.g. colormnist, decoymnist)")

    def check_backbone(self, model: Backbone | type[Backbone]) -> None:
        cls = model if isinstance(model, type) else type(model)
        if cls.decompose is Backbone.decompose:
            raise L2LError(f"method cdep needs contextual decomposition, which backbone {cls.name!r} does not "
                           "support (batch norm, residual connections); use --backbone lenet-gap or cdep-cnn")

    def penalty(self, model: Backbone, batch: Batch, x: Tensor, logits: Tensor) -> Tensor:
        x = batch.x  # (B,3,S,S)
        if self._shortcut() == "region":
            part = batch.aux["irrelevant"] * x  # (B,3,S,S)
            return cdep_score(*model.decompose(part, x - part))
        b, _, h, w = x.shape
        seen = (x.amax(dim=1) > x.amin()).float().mean(0).flatten()  # (S*S,) share not background
        where = torch.multinomial(seen + (seen.sum() == 0).float(), self.PIXELS, replacement=True)  # (P,)
        masks = F.one_hot(where, h * w).view(self.PIXELS, 1, 1, h, w).to(x.dtype)  # (P,1,1,S,S)
        part = (masks * x).flatten(0, 1)  # (P*B,3,S,S): each pixel alone, for every image
        return self.PIXELS * cdep_score(*model.decompose(part, x.repeat(self.PIXELS, 1, 1, 1) - part))
