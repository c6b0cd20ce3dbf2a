"""HINT: Human Importance-aware Network Tuning (Selvaraju et al. 2019)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..nn.attribution import attention
from ..nn.backbones import Backbone
from ..nn.guidance import hint_loss
from .base import Batch, Method, register_method


@register_method
class HINT(Method):
    """HINT's ranking loss (the paper's eq. 3; the XIL typology's ``HINTLoss`` is a simpler
    mean squared error between normalised Grad-CAM and the mask instead): the network's
    importance of each region, Grad-CAM of the true class, must rank the regions as the
    human importance does. Regions are the cells of the last feature map (the paper's are
    object proposals), and a cell's human importance is the map averaged over it."""

    name = "hint"
    paper = "Selvaraju, Lee, Shen, Jin, Ghosh, Heck, Batra, Parikh, ICCV 2019"
    summary = ("CE + λ · Σ over region pairs the map ranks a > b of max(0, g_b − g_a), g the Grad-CAM of the "
               "true class per feature-map cell")
    uses_maps = True
    stackable = False
    attention_kind = "grad-cam"
    default_lambda = 20.0  # Ross et al.'s rule of thumb, see docs/methods.md
    epoch_cost = 1.0  # measured (scripts/epoch_cost.py): the second backward pass stops at the features

    def aux(self, maps: Tensor, backbone: type[Backbone]) -> dict[str, Tensor]:
        """The human importance of each cell (N,h,w), and the target for the validation
        alignment diagnostic only."""
        human = F.adaptive_avg_pool2d(maps[:, None].float(), backbone.feature_size)[:, 0]
        return {"target": self.target(maps, backbone), "human": human}

    def loss(self, model: Backbone, batch: Batch, epoch: int) -> tuple[Tensor, dict[str, Tensor]]:
        logits, importance = attention(model, batch.x, batch.y, kind="grad-cam")  # (B,K), (B,h,w)
        ce = F.cross_entropy(logits, batch.y)
        rank = hint_loss(importance, batch.aux["human"])
        return ce + self.lam(epoch) * rank, {"ce": ce.detach(), "hint": rank.detach(),
                                              "correct": (logits.argmax(1) == batch.y).sum()}
