"""Learning to Look (Yang et al. 2025, PROTOCOL 3.5): the CAM aligned with the map's
target by a KL term, in two phases; and the same loss on Grad-CAM."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..errors import L2LError
from ..nn.backbones import Backbone
from ..nn.losses import forward_kl, lambda_schedule
from .base import Batch, Method, register_method


@register_method
class L2L(Method):
    """Learning to Look (PROTOCOL 3.5): align the CAM with the map's target, first
    alone (or after CE-only epochs with ``phase1='ce'``), then jointly with CE
    under a growing lambda; optimiser and scheduler restart at E_att."""

    name = "l2l"
    paper = "Yang, Bhusal, Rastogi, arXiv 2509.21247, 2025"
    summary = ("CE + λ_t · KL(target ‖ softmax(CAM)), after an alignment-only phase; λ_t ramps from λ0 at E_att "
               "(PROTOCOL 3.5)")
    uses_maps = True
    two_phase = True
    default_lambda = 160.0  # the paper's lambda0 (PROTOCOL 3.5)
    default_selection = "acc_x_1mkl"
    attention_kind = "cam"  # exact for the paper's GAP network

    def aux(self, maps: Tensor, backbone: type[Backbone]) -> dict[str, Tensor]:
        target = self.target(maps, backbone)  # (N,h,w)
        if len(target) and not bool(target.flatten(1).sum(1).gt(0).any()):
            raise L2LError(f"every {self.cfg.target} attention target from maps {self.cfg.maps} is empty, so the "
                           "alignment term would teach nothing (a map that covers the whole image has no outline); "
                           "use --target filled, or a map source that singles out the object")
        return {"target": target}

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

    def loss_weights(self, epoch: int) -> tuple[float, float]:
        return {"ce": (1.0, 0.0), "attention": (0.0, 1.0), "joint": (1.0, self.lam(epoch))}[self.phase(epoch)]

    def loss(self, model: Backbone, batch: Batch, epoch: int) -> tuple[Tensor, dict[str, Tensor]]:
        w_ce, w_attn = self.loss_weights(epoch)
        if not w_attn:
            return super().loss(model, batch, epoch)
        logits, s = self.attention(model, batch.x, batch.y)  # (B,K), (B,h,w)
        kl = forward_kl(s, batch.aux["target"])
        stats = {"attn": kl.detach(), "correct": (logits.argmax(1) == batch.y).sum()}
        if not w_ce:  # attention only: the fc bias gets no gradient at all (PROTOCOL 3.7)
            return w_attn * kl, stats
        ce = F.cross_entropy(logits, batch.y)
        return w_ce * ce + w_attn * kl, stats | {"ce": ce.detach()}


@register_method
class GradCAMKL(L2L):
    """The same alignment and schedule with Grad-CAM in place of CAM, so it also runs
    on networks without global average pooling."""

    name = "gradcam-kl"
    paper = "the paper's loss on Grad-CAM (this project), for networks without a GAP head"
    summary = "l2l with Grad-CAM in place of CAM"
    attention_kind = "grad-cam"
    stackable = False
    epoch_cost = 1.1  # measured (scripts/epoch_cost.py) on the CDEP CNN
