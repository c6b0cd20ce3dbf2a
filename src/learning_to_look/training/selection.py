"""Model selection on validation data: the score of an epoch under a run's rule, and
which epoch's weights are kept (docs/protocol.md §3.6). The test split plays no part here.

Every rule is monotone in validation accuracy and breaks ties by it. The paper's
``acc · (1 − KL)`` inverts once KL reaches 1 (every score is then negative and the least
accurate epoch wins), so where any eligible epoch has KL ≥ 1 the selection falls back to
``acc · exp(−β · KL)``, the reference code's later form, and the record says so. Both are
tracked from the first epoch, so the fallback costs one more copy of the weights, not a
second training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..config import TrainConfig
from ..errors import L2LError, corrupt_file
from ..registry import Registry

#: What breaks a tie between equal scores, and the only thing that orders all-equal ones.
TIE_BREAK = "val_acc"


def _needs(metrics: dict[str, float], key: str, rule: str, fix: str) -> float:
    if key not in metrics:
        raise L2LError(f"selection rule {rule} needs {fix}")
    return metrics[key]


@dataclass(frozen=True)
class Rule:
    """A selection rule: its score of an epoch's validation metrics (higher is better),
    and, where it can break down, when (``undefined``) and which rule then decides."""

    name: str
    score: Callable[[dict[str, float], float], float]  # (metrics, beta) -> score
    help: str
    fallback: str | None = None
    undefined: Callable[[dict[str, float]], bool] | None = None


def _acc(m: dict[str, float]) -> float:
    return m["val_acc"] / 100.0


def _kl(m: dict[str, float], rule: str) -> float:
    return _needs(m, "val_kl", rule, "attention maps; use --selection val_acc for this method")


RULES: Registry[Rule] = Registry("selection rule")
RULES.register(Rule("val_acc", lambda m, b: _acc(m), "validation accuracy"))
RULES.register(Rule("val_worst_group", lambda m, b: _needs(
    m, "val_worst_group_accuracy", "val_worst_group",
    "group labels in the validation split and this data set has none; use --selection val_acc") / 100.0,
    "accuracy of the worst validation group"))
RULES.register(Rule("val_balanced", lambda m, b: _needs(
    m, "val_balanced_accuracy", "val_balanced", "class-balanced validation accuracy, which this run did not "
    "log; use --selection val_acc") / 100.0, "class-balanced validation accuracy (mean of the per-class "
    "accuracies; GALS's selection)"))
RULES.register(Rule("acc_x_1mkl", lambda m, b: _acc(m) * (1.0 - _kl(m, "acc_x_1mkl")),
                    "the paper's val_acc * (1 - KL); acc_exp_kl where an eligible epoch has KL >= 1",
                    fallback="acc_exp_kl", undefined=lambda m: m.get("val_kl", 0.0) >= 1.0))
RULES.register(Rule("acc_exp_kl", lambda m, b: _acc(m) * math.exp(-b * _kl(m, "acc_exp_kl")),
                    "val_acc * exp(-beta * KL), the reference code's later form"))
RULES.register(Rule("acc_exp_rkl", lambda m, b: _acc(m) * math.exp(-b * _needs(
    m, "val_rkl", "acc_exp_rkl", "attention maps; use --selection val_acc for this method")),
    "val_acc * exp(-beta * reverse KL)"))


def selection_score(rule: str, metrics: dict[str, float], beta: float) -> float:
    return RULES.get(rule).score(metrics, beta)


def tracked(rule: str) -> list[str]:
    """The rules whose best epoch a run keeps: its own, and the one it may fall back to."""
    fallback = RULES.get(rule).fallback
    return [rule] + ([fallback] if fallback else [])


def scored(cfg: TrainConfig, row: dict[str, Any], eligible: bool) -> dict[str, Any]:
    """``row`` with whether its epoch may be selected and, if so, its score under each
    tracked rule (``score`` is the run's own rule's)."""
    rules = tracked(cfg.selection)
    scores = {r: selection_score(r, row, cfg.selection_beta) if eligible else None for r in rules}
    return row | {"eligible": eligible, "score": scores[cfg.selection]} | {
        f"score_{r}": s for r, s in scores.items() if r != cfg.selection}


def unselected(rule: str) -> dict[str, Any]:
    """The selection before any epoch: no weights kept yet, under each tracked rule."""
    return {"rule": rule, "broken": None,
            "best": {r: {"epoch": -1, "score": -math.inf, "val_acc": -math.inf, "state": None} for r in tracked(rule)}}


def _beats(row: dict[str, Any], score: float, best: dict[str, Any]) -> bool:
    """Whether (score, val_acc) beats the kept epoch's; a NaN score never does."""
    return not math.isnan(score) and (score, row["val_acc"]) > (best["score"], best["val_acc"])


def keep_if_best(sel: dict[str, Any], row: dict[str, Any], state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The selection after ``row``'s epoch: under each tracked rule, a copy of its weights
    ``state`` when the epoch is eligible and beats every one before; and, the first time
    the run's rule is undefined on an eligible epoch, why (``broken``)."""
    if not row["eligible"]:
        return sel
    rule = RULES.get(sel["rule"])
    broken = sel["broken"]
    if broken is None and rule.undefined is not None and rule.undefined(row):
        broken = f"epoch {row['epoch']} has validation KL {row['val_kl']:.3f} >= 1"
    best, copy = dict(sel["best"]), None
    for name in best:
        score = row["score"] if name == sel["rule"] else row[f"score_{name}"]
        if _beats(row, score, best[name]):
            copy = copy or {k: v.detach().clone() for k, v in state.items()}
            best[name] = {"epoch": row["epoch"], "score": score, "val_acc": row["val_acc"], "state": copy}
    return {"rule": sel["rule"], "broken": broken, "best": best}


def chosen(sel: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(the rule that decided, its kept epoch): the run's own rule, or its fallback where it broke down."""
    rule = RULES.get(sel["rule"])
    name = rule.fallback if sel["broken"] and rule.fallback else sel["rule"]
    return name, sel["best"][name]


def selection_note(sel: dict[str, Any], beta: float) -> str | None:
    """The one line a run prints and records when its rule fell back, else None."""
    name, _ = chosen(sel)
    if name == sel["rule"]:
        return None
    return (f"selection rule {sel['rule']} is undefined where KL >= 1 ({sel['broken']}): the epoch was selected by "
            f"{name} (beta {beta:g}) instead")


def check_selection_state(sel: Any, path: Any) -> None:
    """A checkpoint's selection must be this module's: one written by an earlier version is
    refused with the fix, since its kept weights may have been chosen by another rule."""
    if not isinstance(sel, dict) or not {"rule", "broken", "best"} <= set(sel):
        raise corrupt_file(path, "its model selection was saved by an earlier version",
                           f"delete {path} to restart this run from its first epoch")


def no_selection(cfg: TrainConfig, history: list[dict[str, Any]]) -> str:
    """Why no epoch could be selected: none was eligible, or every eligible score was NaN."""
    if any(r["eligible"] for r in history):
        return (f"selection rule {cfg.selection} scored every eligible epoch NaN (its validation metrics are "
                "undefined for these targets); use --selection val_acc")
    return "no epoch was eligible for selection; make --epochs larger than --e-att"
