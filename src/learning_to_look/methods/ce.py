"""Counterexamples (Teso & Kersting 2019), the augmentation method of the XIL typology."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import L2LError
from ..nn.backbones import Backbone
from ..nn.counterexamples import counterexample
from .base import Batch, Method, register_method


@register_method
class Counterexamples(Method):
    """Cross-entropy on each batch and on ``--counterexamples`` k copies of it with the same
    labels, whose irrelevant component is randomised where the map says
    (:func:`~learning_to_look.nn.counterexamples.counterexample`): a region outside the map
    filled by ``--ce-fill``, a texture outside it replaced by another image's, or the
    colour inside it redrawn. Copies are drawn afresh for every batch from the run's random
    stream (the XIL typology's code draws them once, before training); an image with an
    empty map gets none."""

    name = "ce"
    paper = "Teso, Kersting, AIES 2019 (as in the XIL typology, Friedrich et al. 2023)"
    summary = ("CE on each batch and on k copies with the same labels whose irrelevant component (a region, "
               "texture or colour, located by the map) is randomised")
    uses_maps = True
    reads_pixels = True  # its loss reaches the input pixels: no cached features
    stackable = False
    options = {"counterexamples": 1,  # copies per image, the XIL typology's MNIST setting
               "ce_fill": "noise"}  # the XIL typology's only strategy, "random"
    epoch_cost = 1.8  # with one copy, measured (scripts/epoch_cost.py): twice the images per step

    def __init__(self, cfg: Any):
        super().__init__(cfg)
        self.channels = 3  # the data set's, set by check_dataset: grey noise for a grey set

    def option_defaults(self) -> dict[str, Any]:
        """``ce_fill`` only where a region is filled."""
        return {k: v for k, v in self.options.items() if k != "ce_fill" or self.component == "region"}

    def relative_cost(self) -> float:
        """The measured cost with one copy, scaled to k copies (one forward-backward per image)."""
        return self.epoch_cost * (1 + int(self.cfg.counterexamples or 1)) / 2

    def check_dataset(self, spec: Any) -> None:
        if self.component == "none":
            raise L2LError(f"method ce randomises the component a data set declares irrelevant, and {spec.name} "
                           "declares none; use a data set with a shortcut, or --irrelevant on an imported one")
        self.channels = spec.channels

    def aux(self, maps: Tensor, backbone: type[Backbone]) -> dict[str, Tensor]:
        """The map at input resolution (N,1,S,S), which images have one (N,), and the target
        for the validation alignment diagnostic only."""
        side = (backbone.input_size,) * 2
        keep = F.interpolate(maps[:, None].float(), size=side, mode="bilinear", align_corners=False)
        return {"target": self.target(maps, backbone), "keep": keep.clamp(0, 1), "valid": maps.flatten(1).amax(1) > 0}

    def loss(self, model: Backbone, batch: Batch, epoch: int) -> tuple[Tensor, dict[str, Tensor]]:
        valid = batch.aux["valid"]
        x, keep = batch.x[valid], batch.aux["keep"][valid]  # (V,3,S,S), (V,1,S,S)
        copies = [counterexample(x, keep, self.component, self.cfg.ce_fill, self.channels)
                  for _ in range(int(self.cfg.counterexamples or 1))]
        logits, _ = model(torch.cat([batch.x, *copies]))  # (B + k*V, K)
        y = torch.cat([batch.y, batch.y[valid].repeat(len(copies))])
        ce = F.cross_entropy(logits, y)
        n = len(batch.y)
        return ce, {"ce": ce.detach(), "correct": (logits[:n].argmax(1) == batch.y).sum()}
