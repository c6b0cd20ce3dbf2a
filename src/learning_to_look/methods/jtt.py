"""Just Train Twice (Liu, Haghgoo, Chen, Raghunathan, Koh, Sagawa, Liang, Finn, ICML 2021)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ..data.pipeline import batch_indices, eval_batch_size
from ..errors import L2LError
from ..nn.backbones import Backbone
from .base import Batch, Method, register_method


def upsampled_rows(n: int, errors: Tensor, up: int) -> Tensor:
    """Every row once plus ``up`` more copies of each error (JTT's run_expt.py: the
    training set concatenated with the error set repeated up_weight times)."""
    return torch.cat([torch.arange(n), errors.repeat(up)])


@register_method
class JTT(Method):
    """Just Train Twice, as JTT's code runs it: ERM for T epochs (the identification
    model, taken at its last epoch, never selected), its misclassified training images
    form the error set; then the network restarts from its initial weights (the same
    seeded or pretrained start) with a fresh optimiser and trains on the training set with
    each error added lambda_up more times. Only the second stage's epochs are selected
    from. Here T counts towards --epochs: the second stage has epochs - T."""

    name = "jtt"
    paper = "Liu, Haghgoo, Chen, Raghunathan, Koh, Sagawa, Liang, Finn, ICML 2021"
    summary = "ERM for T epochs; restart and train with its training errors repeated λ_up more times"
    restarts = True
    stackable = False
    T_SHARE = 5  # default T = epochs // 5: JTT's Waterbirds identification T = 60 beside 300 final epochs
    options: ClassVar[dict[str, Any]] = {"jtt_epochs": lambda cfg: max(1, cfg.epochs // JTT.T_SHARE),
                                         "jtt_upweight": 100.0}  # JTT's Waterbirds lambda_up

    def __init__(self, cfg):
        super().__init__(cfg)
        self.errors: Tensor | None = None  # (E,) training rows the identification model got wrong

    def check_options(self) -> None:
        if self.cfg.jtt_epochs >= self.cfg.epochs:
            raise L2LError(f"jtt needs a second stage: --jtt-epochs ({self.cfg.jtt_epochs}) must lie below --epochs "
                           f"({self.cfg.epochs}); lower --jtt-epochs or raise --epochs")
        if self.cfg.jtt_upweight != int(self.cfg.jtt_upweight):
            raise L2LError(f"--jtt-upweight counts copies of each error and must be whole, got "
                           f"{self.cfg.jtt_upweight:g}; pass e.g. --jtt-upweight 100")

    def before_epoch(self, epoch: int, model: Backbone, train: Batch, device: torch.device) -> None:
        if epoch != self.cfg.jtt_epochs:
            return
        model.eval()
        wrong = []
        with torch.no_grad():
            for idx in batch_indices(len(train), eval_batch_size(model.input_size), shuffle=False):
                b = train.take(idx, device)
                wrong.append(idx[(model(b.x)[0].argmax(1) != b.y).cpu()])
        self.errors = torch.cat(wrong)

    def rows(self, epoch: int, n: int) -> Tensor | None:
        if epoch < self.cfg.jtt_epochs:
            return None
        return upsampled_rows(n, self.errors, int(self.cfg.jtt_upweight))

    def restarts_model(self, epoch: int) -> bool:
        return epoch == self.cfg.jtt_epochs

    def resets_optimizer(self, epoch: int) -> bool:
        return epoch == self.cfg.jtt_epochs

    def eligible(self, epoch: int) -> bool:
        return epoch >= self.cfg.jtt_epochs

    def state_dict(self) -> dict[str, Any]:
        return {"errors": self.errors}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.errors = state.get("errors")
