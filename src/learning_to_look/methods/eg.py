"""Expected Gradients as an attribution prior (Erion et al. 2021)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..nn.attribution import expected_gradients
from ..nn.backbones import Backbone
from ..nn.losses import attribution_mass
from .base import Batch, register_method
from .region import RegionPrior


@register_method
class ExpectedGradients(RegionPrior):
    """An attribution prior (Erion et al. 2021): the absolute Expected Gradients of the
    true class on the irrelevant region. Each image gets one reference, another image of
    the same batch, and one interpolation point per step, as in the paper. Lambda 300
    puts the term on the order of the cross-entropy at initialisation, by Ross et al.'s
    rule of thumb (measured on DecoyMNIST with not-decoy maps and a fresh LeNet-GAP:
    0.0072 per image, so 2.2 against a cross-entropy of 2.31)."""

    name = "eg"
    paper = "Erion, Janizek, Sturmfels, Lundberg, Lee, Nature Machine Intelligence 2021"
    summary = "CE + λ · mean |Expected Gradients| on the irrelevant region (one reference, one α per image)"
    default_lambda = 300.0  # the rule of thumb, see the class docstring
    epoch_cost = 4.0  # measured (scripts/epoch_cost.py): a second forward and a double backward

    def penalty(self, model: Backbone, batch: Batch, x: Tensor, logits: Tensor) -> Tensor:
        refs = batch.x[torch.randperm(len(batch.x), device=batch.x.device)]  # (B,3,H,W) one reference per image
        alpha = torch.rand(len(batch.x), device=batch.x.device)  # (B,)
        eg = expected_gradients(model, batch.x, batch.y, refs, alpha)  # (B,3,H,W)
        return attribution_mass(eg, batch.aux["irrelevant"])
