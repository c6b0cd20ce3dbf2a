"""Penalties on the irrelevant region (1 - map): the family of RRR, Expected Gradients
and CDEP, which differ only in the penalty; and RRR itself (Ross et al. 2017)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..nn.attribution import input_gradients
from ..nn.backbones import Backbone
from ..nn.losses import rrr_penalty
from .base import Batch, Method, register_method


class RegionPrior(Method):
    """CE plus a penalty on how much the model uses the irrelevant region, 1 - map at
    input resolution: the family of RRR, Expected Gradients and CDEP, which differ only
    in :meth:`penalty`. The same maps (e.g. ``not-decoy``) serve all of them."""

    uses_maps = True
    stackable = False  # the penalty is on input attributions, not the CAM
    reads_pixels = True

    def aux(self, maps: Tensor, backbone: type[Backbone]) -> dict[str, Tensor]:
        """Where the input attribution is penalised, 1 - map at input resolution (N, 1, H, W);
        the target too, for the validation alignment diagnostic only (never the loss)."""
        relevant = F.interpolate(maps[:, None], size=(backbone.input_size,) * 2, mode="bilinear", align_corners=False)
        return {"target": self.target(maps, backbone), "irrelevant": 1 - relevant.clamp(0, 1)}

    def penalty(self, model: Backbone, batch: Batch, x: Tensor, logits: Tensor) -> Tensor:
        """The scalar penalty of a batch; ``x`` is the batch's input in the graph, ``logits`` the model's on it."""
        raise NotImplementedError

    def loss(self, model: Backbone, batch: Batch, epoch: int) -> tuple[Tensor, dict[str, Tensor]]:
        x = batch.x.detach().requires_grad_(True)  # (B,3,H,W)
        logits, _ = model(x)
        ce = F.cross_entropy(logits, batch.y)
        penalty = self.penalty(model, batch, x, logits)
        return ce + self.lam(epoch) * penalty, {"ce": ce.detach(), self.name: penalty.detach(),
                                                 "correct": (logits.argmax(1) == batch.y).sum()}


@register_method
class RRR(RegionPrior):
    """Right for the Right Reasons (Ross et al. 2017): penalise input gradients of the
    summed log-probabilities outside the map. Lambda 100 follows Ross et al.'s rule
    of thumb: it puts the penalty on the order of the cross-entropy (measured on
    DecoyMNIST training batches, where it was 0.01 per image)."""

    name = "rrr"
    paper = "Ross, Hughes, Doshi-Velez, IJCAI 2017"
    summary = "CE + λ · Σ ((1 − map) ⊙ ∂ Σ log p / ∂x)²: input gradients on the irrelevant region"
    default_lambda = 100.0  # Ross et al.'s rule of thumb, see the class docstring
    epoch_cost = 2.7  # measured (scripts/epoch_cost.py): double backpropagation to the input

    def penalty(self, model: Backbone, batch: Batch, x: Tensor, logits: Tensor) -> Tensor:
        return rrr_penalty(input_gradients(logits, x, create_graph=True), batch.aux["irrelevant"])
