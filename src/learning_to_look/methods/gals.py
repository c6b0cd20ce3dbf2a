"""GALS: Guiding visual attention with Language Specification (Petryk et al. 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nn.backbones import Backbone
from ..nn.guidance import gals_keep, gals_penalty
from .base import Batch, Method, register_method


@register_method
class GALS(Method):
    """GALS's loss as its code computes it (``utils/loss_utils.py``, GRADIENT_OUTSIDE with
    the L1 criterion): the input gradient of the batch's mean cross-entropy, penalised
    outside the map by ``L1Loss(dy_dx, dy_dx * map)``. The map is GALS's normalisation of
    any map source (CLIP's in the paper) resized to the input; images whose map is empty
    are left out of the penalty's mean, as GALS leaves them out."""

    name = "gals"
    paper = "Petryk, Dunlap, Nasseri, Gonzalez, Darrell, Rohrbach, CVPR 2022"
    summary = "CE + λ · mean abs(∂CE/∂x ⊙ (1 − map)): the L1 of the loss's input gradient outside the map"
    uses_maps = True
    reads_pixels = True  # its loss reaches the input pixels: no cached features
    stackable = False  # the penalty is on input gradients, not the CAM
    default_lambda = 10_000.0  # GALS's GRADIENT_OUTSIDE weight in all its configs (configs/*_gals.yaml)
    epoch_cost = 2.5  # measured (scripts/epoch_cost.py): double backpropagation to the input

    def aux(self, maps: Tensor, backbone: type[Backbone]) -> dict[str, Tensor]:
        """Where gradients are kept (N,1,S,S), which images have a map (N,), and the target
        for the validation alignment diagnostic only."""
        return {"target": self.target(maps, backbone), "keep": gals_keep(maps, backbone.input_size),
                "valid": maps.flatten(1).amax(1) > 0}

    def loss(self, model: Backbone, batch: Batch, epoch: int) -> tuple[Tensor, dict[str, Tensor]]:
        x = batch.x.detach().requires_grad_(True)  # (B,3,S,S)
        logits, _ = model(x)  # (B,K)
        ce = F.cross_entropy(logits, batch.y)
        (grads,) = torch.autograd.grad(ce, x, create_graph=True)  # (B,3,S,S)
        penalty = gals_penalty(grads, batch.aux["keep"], batch.aux["valid"])
        return ce + self.lam(epoch) * penalty, {"ce": ce.detach(), "gals": penalty.detach(),
                                                 "correct": (logits.argmax(1) == batch.y).sum()}
