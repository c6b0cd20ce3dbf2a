"""Online group DRO (Sagawa, Koh, Hashimoto, Liang, ICLR 2020)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nn.backbones import Backbone
from .base import Batch, Method, register_method


def group_means(losses: Tensor, groups: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(mean loss per group (k,), 0 where a group has no row; rows per group (k,))."""
    onehot = (groups.view(1, -1) == torch.arange(k, device=groups.device).view(-1, 1)).to(losses.dtype)  # (k,B)
    counts = onehot.sum(1)  # (k,)
    return onehot @ losses / (counts + (counts == 0).to(losses.dtype)), counts


def dro_step(q: Tensor, group_loss: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    """One step of group_DRO's LossComputer.compute_robust_loss (no adjustment, not
    normalised): q <- q * exp(eta * group_loss) / sum, and the robust loss group_loss . q
    with the new q (the weights carry no gradient). Returns (loss, new q)."""
    q = q * torch.exp(eta * group_loss.detach())
    q = q / q.sum()
    return group_loss @ q, q


def balanced_rows(groups: Tensor, generator: torch.Generator) -> Tensor:
    """N rows drawn with replacement, each with probability 1 / (its group's count): the
    group-balanced sampler group_DRO trains with (--reweight_groups)."""
    counts = torch.bincount(groups)  # (G,)
    w = 1.0 / counts[groups].double()  # (N,)
    return torch.multinomial(w, len(groups), replacement=True, generator=generator)


@register_method
class GroupDRO(Method):
    """Online group DRO as group_DRO's code computes it (loss.py, run_expt.py): per
    mini-batch the mean loss of each group, the adversary's group weights q updated by
    exponentiated gradient with step size eta (q starts uniform), and the loss is their
    q-weighted sum; batches are drawn group-balanced with replacement (--reweight_groups,
    as its commands train). The generalisation adjustment is 0 and the loss is not
    normalised (the README's Waterbirds command and the code's defaults)."""

    name = "groupdro"
    paper = "Sagawa, Koh, Hashimoto, Liang, ICLR 2020"
    summary = "minimise the q-weighted group losses, q <- q · exp(η · group loss), group-balanced batches"
    needs_groups = True
    options: ClassVar[dict[str, Any]] = {"dro_eta": 0.01}  # group_DRO's robust_step_size default
    stackable = False

    def __init__(self, cfg):
        super().__init__(cfg)
        self.q: Tensor | None = None  # (G,) the adversary's group weights
        self.groups: Tensor | None = None  # (N,) training groups, for the sampler

    def prepare(self, train: Batch) -> None:
        self.groups = train.groups.long().cpu()
        if self.q is None:
            k = int(self.groups.max()) + 1
            self.q = torch.full((k,), 1.0 / k)

    SAMPLER_STRIDE = 100_003  # seed * stride + epoch: a distinct sampler seed per (run seed, epoch)

    def rows(self, epoch: int, n: int) -> Tensor:
        """This epoch's draw, seeded by run seed and epoch alone, so a resumed run draws the same."""
        return balanced_rows(self.groups, torch.Generator().manual_seed(self.cfg.seed * self.SAMPLER_STRIDE + epoch))

    def state_dict(self) -> dict[str, Any]:
        return {"q": self.q}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("q") is not None:
            self.q = state["q"].cpu()

    def loss(self, model: Backbone, batch: Batch, epoch: int) -> tuple[Tensor, dict[str, Tensor]]:
        logits, _ = model(batch.x)  # (B,K)
        ce = F.cross_entropy(logits, batch.y, reduction="none")  # (B,)
        group_loss, _ = group_means(ce, batch.groups.long(), len(self.q))
        loss, q = dro_step(self.q.to(ce.device), group_loss, self.cfg.dro_eta)
        self.q = q.detach().cpu()
        return loss, {"ce": ce.mean().detach(), "correct": (logits.argmax(1) == batch.y).sum()}
