"""Deep feature reweighting (Kirichenko, Izmailov, Wilson, ICLR 2023): DFR on validation data."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from ..errors import L2LError
from ..nn.backbones import Backbone
from ..nn.linear import fold_scaling, l1_logistic_classes, standardise
from .base import Batch, Method, register_method


def check_head(method: str, model: Backbone | type[Backbone]) -> None:
    """Last-layer retraining needs a linear head on pooled features (:meth:`Backbone.embed`)."""
    cls = model if isinstance(model, type) else type(model)
    if cls.embed is Backbone.embed:
        raise L2LError(f"method {method} retrains a linear head on pooled features, which backbone {cls.name!r} "
                       "does not have; use --backbone lenet-gap, resnet18 or resnet50")


def balanced_subset(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """As many rows of each group present as the smallest group has, drawn without replacement."""
    ids = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    m = min(len(i) for i in ids)
    return np.concatenate([rng.permutation(i)[:m] for i in ids])


def worst_group(pred: Tensor, y: Tensor, groups: np.ndarray) -> float:
    """The lowest accuracy over the groups present, as a fraction."""
    right = (pred == y).numpy()
    return min(float(right[groups == g].mean()) for g in np.unique(groups))


@register_method
class DFR(Method):
    """DFR(Val) as its code computes it (dfr_evaluate_spurious.py, default flags): ERM
    first (the run's ordinary training, selected on validation accuracy), then a new
    linear head on the selected network's pooled features, fitted on group-balanced
    validation data by L1-penalised logistic regression (liblinear's objective) on
    standardised features.
    - C is chosen from {1, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01} by worst-group accuracy on one
      random half of validation, fitting on a group-balanced draw of the other half
      (features standardised by that draw);
    - the head is then the average of 20 fits with that C, each on a fresh group-balanced
      draw of the whole validation split, on features standardised by the training split.
    The test split is read once, afterwards, as for every run."""

    name = "dfr"
    paper = "Kirichenko, Izmailov, Wilson, ICLR 2023"
    summary = ("ERM, then a new last layer: L1 logistic regression on group-balanced validation features, "
               "C tuned on a validation half, 20 draws averaged")
    needs_groups = True
    stackable = False
    C_OPTIONS = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)  # DFR's Waterbirds grid
    RETRAINS = 20  # dfr_on_validation_eval's num_retrains

    def check_backbone(self, model: Backbone | type[Backbone]) -> None:
        check_head(self.name, model)

    def after_fit(self, model: Backbone, splits: dict[str, Batch | None],
                  embed: Callable[[Batch], Tensor]) -> dict[str, Any]:
        val, k = splits["val"], model.num_classes
        x, y, g = embed(val), val.y.cpu().long(), val.groups.cpu().numpy()
        rng = np.random.default_rng(self.cfg.seed)
        c, tuned = self._tune(x, y, g, k, rng)
        mean, std = standardise(embed(splits["train"]))
        heads = []
        for _ in range(self.RETRAINS):
            rows = balanced_subset(g, rng)
            heads.append(l1_logistic_classes((x[rows] - mean) / std, y[rows], k, c))
        w, b = fold_scaling(torch.stack([h[0] for h in heads]).mean(0), torch.stack([h[1] for h in heads]).mean(0),
                            mean.double(), std.double())
        with torch.no_grad():
            model.head.weight.copy_(w.to(model.head.weight))
            model.head.bias.copy_(b.to(model.head.bias))
        return {"method": "dfr", "C": c, "tuning_worst_group_accuracy": 100 * tuned, "retrains": self.RETRAINS,
                "rows_per_fit": int(len(np.unique(g)) * np.bincount(g)[np.unique(g)].min())}

    def _tune(self, x: Tensor, y: Tensor, g: np.ndarray, k: int, rng: np.random.Generator) -> tuple[float, float]:
        """(best C, its worst-group accuracy on the held half), fitting on a balanced draw of the other half."""
        order = rng.permutation(len(y))
        half = len(y) // 2
        judge, fit = order[:half], order[half:]
        fit = fit[balanced_subset(g[fit], rng)]
        mean, std = standardise(x[fit])
        scores = []
        for c in self.C_OPTIONS:
            w, b = l1_logistic_classes((x[fit] - mean) / std, y[fit], k, c)
            pred = (((x[judge] - mean) / std).double() @ w.T + b).argmax(1)
            scores.append(worst_group(pred, y[judge], g[judge]))
        best = int(np.argmax(scores))
        return self.C_OPTIONS[best], scores[best]
