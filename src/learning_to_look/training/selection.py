"""Model selection on validation data: the score of an epoch under a run's rule, and
which epoch's weights are kept. The test split plays no part here."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..config import TrainConfig
from ..errors import L2LError


def selection_score(rule: str, metrics: dict[str, float], beta: float) -> float:
    acc = metrics["val_acc"] / 100.0
    if rule == "val_acc":
        return acc
    if rule == "val_worst_group":
        if "val_worst_group_accuracy" not in metrics:
            raise L2LError("selection rule val_worst_group needs group labels in the validation split and this data "
                           "set has none; use --selection val_acc")
        return metrics["val_worst_group_accuracy"] / 100.0
    if "val_kl" not in metrics:
        raise L2LError(f"selection rule {rule} needs attention maps; use --selection val_acc for this method")
    if rule == "acc_x_1mkl":
        return acc * (1.0 - metrics["val_kl"])
    return acc * float(np.exp(-beta * metrics["val_rkl"]))


def scored(cfg: TrainConfig, row: dict[str, Any], eligible: bool) -> dict[str, Any]:
    """``row`` with whether its epoch may be selected and, if so, its validation score."""
    return row | {"eligible": eligible,
                  "score": selection_score(cfg.selection, row, cfg.selection_beta) if eligible else None}


def unselected() -> dict[str, Any]:
    """The selection before any epoch: no weights kept yet."""
    return {"epoch": -1, "score": -float("inf"), "state": None}


def keep_if_best(best: dict[str, Any], row: dict[str, Any], state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The selection after ``row``'s epoch: a copy of its weights ``state`` when the epoch is
    eligible and scores higher on validation than every one before, else ``best`` unchanged."""
    if not row["eligible"] or not row["score"] > best["score"]:
        return best
    return {"epoch": row["epoch"], "score": row["score"], "state": {k: v.detach().clone() for k, v in state.items()}}


def no_selection(cfg: TrainConfig, history: list[dict[str, Any]]) -> str:
    """Why no epoch could be selected: none was eligible, or every eligible score was NaN."""
    if any(r["eligible"] for r in history):
        return (f"selection rule {cfg.selection} scored every eligible epoch NaN (its validation metrics are "
                "undefined for these targets); use --selection val_acc")
    return "no epoch was eligible for selection; make --epochs larger than --e-att"
