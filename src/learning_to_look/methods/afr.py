"""Automatic feature reweighting (Qiu, Potapczynski, Izmailov, Wilson, ICML 2023)."""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch
from torch import Tensor

from ..nn.backbones import Backbone
from ..nn.linear import afr_loss, afr_weights
from .base import Batch, Method, register_method
from .dfr import check_head


@register_method
class AFR(Method):
    """AFR as its code runs it (train_embeddings.py, the README's Waterbirds commands):
    ERM on 80 % of the training split (the run's ordinary training), then the last layer
    is retrained on the pooled features of the other 20 %, without group labels: each
    row weighted by exp(-gamma * p_true) under the ERM model, rebalanced by class and
    normalised, the loss their weighted cross-entropy plus lambda * ||(W, b) - (W, b)_ERM||^2,
    minimised by full-batch gradient descent (lr 0.02, no momentum, 500 steps) from the
    ERM head. gamma and lambda default to the README's Waterbirds command."""

    name = "afr"
    paper = "Qiu, Potapczynski, Izmailov, Wilson, ICML 2023"
    summary = ("ERM on 80 % of training, then the last layer on the other 20 %, rows weighted "
               "exp(−γ·p_true), pulled to the ERM head by λ")
    stackable = False
    holdout = 0.2  # AFR's --train_prop=80 for the first stage, -20 for the second
    options: ClassVar[dict[str, Any]] = {"afr_gamma": 14.0, "afr_lambda": 0.2}  # README: focal_loss_gamma, reg_coeff
    LR, STEPS = 0.02, 500  # README: --init_lr=0.02 --momentum=0. --num_epochs=500, full batch

    def check_backbone(self, model: Backbone | type[Backbone]) -> None:
        check_head(self.name, model)

    def after_fit(self, model: Backbone, splits: dict[str, Batch | None],
                  embed: Callable[[Batch], Tensor]) -> dict[str, Any]:
        held = splits["held"]
        x, y = embed(held), held.y.cpu().long()
        w0, b0 = model.head.weight.detach().cpu().clone(), model.head.bias.detach().cpu().clone()
        with torch.no_grad():
            weights = afr_weights(x @ w0.T + b0, y, self.cfg.afr_gamma)
        weight, bias = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
        opt = torch.optim.SGD([weight, bias], lr=self.LR, momentum=0.0)
        for _ in range(self.STEPS):
            opt.zero_grad()
            afr_loss(x @ weight.T + bias, y, weights, weight, bias, w0, b0, self.cfg.afr_lambda).backward()
            opt.step()
        with torch.no_grad():
            model.head.weight.copy_(weight.detach().to(model.head.weight))
            model.head.bias.copy_(bias.detach().to(model.head.bias))
        return {"method": "afr", "gamma": self.cfg.afr_gamma, "lambda": self.cfg.afr_lambda, "held_rows": len(y),
                "steps": self.STEPS, "lr": self.LR}
