"""What the numbers say: each guided run against its baseline (Welch interval, verdict),
where a shortcut bites, published numbers beside measured ones, and the settings a set
of runs shares. Plain data out, for the markdown, the CSV and the figures alike."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

from ..record import Record
from ..config import PAPER_CONFIG
from .records import BASELINE, BOUND_DATASET, SETTING_KEYS, Row, by_setting, paper_match
from .stats import welch_diff

#: Config fields that tell runs apart, as opposed to settings shared by a whole report.
IDENTITY_FIELDS = ("dataset", "method", "backbone", "maps", "map_options", "lambda0", "selection", "seed", "device",
                   "data_hash")


def attach_published(rows: Sequence[Row], published: Sequence[dict[str, Any]]) -> None:
    """Set each published number beside the measured row that matches it."""
    for pub in published:
        for ds in {r.dataset for r in rows} & set(pub):
            match = paper_match(rows, pub["method"], ds, pub.get("maps"))
            if match is not None:
                match.published_acc, match.published_source = pub[ds], f"{pub['label']}: {pub['source']}"


def published_rows(rows: Sequence[Row], published: Sequence[dict[str, Any]],
                   datasets: Sequence[str]) -> list[dict[str, Any]]:
    """Each published number of a data set the rows measured, with the measured row set
    beside it (if any): an own data set's report carries no benchmark's published numbers."""
    out = []
    present = {r.dataset for r in rows}
    for pub in published:
        for ds in (d for d in datasets if d in present):
            m = paper_match(rows, pub["method"], ds, pub.get("maps"))
            out.append({"origin": "published", "dataset": ds, "method": pub["label"], "published_acc": pub[ds],
                        "published_source": pub["source"],
                        "measured_acc_mean": m.test_acc_mean if m else None,
                        "measured_acc_std": m.test_acc_std if m else None, "measured_n": m.n_seeds if m else None,
                        "measured_as": f"{m.method}, {m.backbone}, maps {m.maps.label}"
                        + (f", {m.schedule} schedule" if m.schedule != PAPER_CONFIG.schedule else "") if m else None})
    return out


def sensitivity_rows(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Degraded-map rows plus, per setting (data set, backbone, schedule), the same
    method on the paper's maps in that setting as strength 0."""
    sens = [r for r in rows if r.role == "sensitivity"]
    out = []
    for setting in sorted({r.setting for r in sens}, key=str):
        group = [r for r in sens if r.setting == setting]
        method = group[0].method
        ref = next((r for r in rows if r.setting == setting and r.method == method
                    and r.maps.name == PAPER_CONFIG.maps and r.input_transform == PAPER_CONFIG.input_transform
                    and r.role == "method"), None)
        members = ([(ref, "none", 0.0)] if ref else []) + [
            (r, r.map_options.get("degradation"), float(r.map_options.get("strength", 0))) for r in group]
        for r, kind, strength in members:
            out.append(dict(zip(SETTING_KEYS, setting)) | {"method": method,
                        "degradation": kind, "strength": strength, "map_iou": r.maps.iou,
                        "map_auroc": r.maps.auroc, "test_acc_mean": r.test_acc_mean, "test_acc_std": r.test_acc_std,
                        "n_seeds": r.n_seeds})
    return out


#: Fewer seeds than this on either side and the interval means little: no verdict.
MIN_VERDICT_SEEDS = 3
#: Accuracy within this share of the way from chance to 100 % is near chance: on validation
#: a collapsed model, on the test split no real gain (12 % on ten classes is near a guess).
COLLAPSE_SHARE = 0.1
def verdict_rows(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Per benchmark setting (``SETTING_KEYS``) with an unguided baseline: each guided
    method's difference from it in points, with its 95 % interval, and its effect
    (:func:`effect`)."""
    out = []
    for base in (r for r in rows if r.compared and r.method == BASELINE and r.input_transform == "none"):
        guided = [r for r in rows if r.guided and r.role in ("method", "vlm", "control", "sensitivity")
                  and r.setting == base.setting]
        for g in guided:
            diff, low, high = welch_diff([m.test.accuracy for m in g.members],
                                         [m.test.accuracy for m in base.members])
            out.append(dict(zip(SETTING_KEYS, base.setting)) | {
                        "baseline": base.method, "baseline_acc_mean": base.test_acc_mean,
                        "baseline_acc_std": base.test_acc_std, "baseline_n": base.n_seeds, "method": g.method,
                        "role": g.role,
                        "lambda0": g.lambda0, "maps": g.maps.label, "label": _guided_label(g),
                        "acc_mean": g.test_acc_mean,
                        "acc_std": g.test_acc_std, "n": g.n_seeds, "diff": diff, "low": low, "high": high,
                        "collapsed": collapsed(g), "effect": effect(g, base.n_seeds, low, high),
                        "cam_on_digit": g.cam_on_digit, "cam_on_decoy": g.cam_on_decoy,
                        "grad_on_digit": g.grad_on_digit, "grad_on_decoy": g.grad_on_decoy,
                        "baseline_cam_on_decoy": base.cam_on_decoy, "baseline_grad_on_decoy": base.grad_on_decoy})
    return out


def _guided_label(g: Row) -> str:
    """Method, weight and maps: several runs of one method on one setting differ by λ or maps."""
    maps = g.maps.label if g.uses_maps else "no maps"  # e.g. CDEP's penalty on ColorMNIST's colour
    weight = f" λ {g.lambda0:g}" if g.lambda0 is not None else ""  # counterexamples weigh no extra term
    return f"{g.method}{weight}, {maps}"


def near_chance(acc: float | None, chance: float | None) -> bool:
    """Whether an accuracy (%) is within ``COLLAPSE_SHARE`` of the way from chance to 100 %."""
    if acc is None or chance is None:
        return False
    return acc < chance + COLLAPSE_SHARE * (100.0 - chance)


def collapsed(g: Row) -> bool:
    """Whether the guided runs learned next to nothing in-distribution: their validation
    accuracy is near chance. On a shifted test set where the baseline scores below chance,
    such a model (about one class predicted for every image) would otherwise count as a gain."""
    return near_chance(g.val_acc_mean, g.chance)


def effect(g: Row, baseline_n: int, low: float, high: float) -> str:
    """helps (interval above 0), hurts (below 0) or no clear effect; a collapsed model,
    or a gain that leaves the model near chance on the test split, is not called help."""
    if collapsed(g):
        return f"collapsed (validation accuracy {g.val_acc_mean:.1f} %, chance {g.chance:.0f} %)"
    if min(g.n_seeds, baseline_n) < MIN_VERDICT_SEEDS:
        return "too few seeds to tell"
    if low > 0 and near_chance(g.test_acc_mean, g.chance):
        return f"no real gain: still near chance (test {g.test_acc_mean:.1f} %, chance {g.chance:.0f} %)"
    return "helps" if low > 0 else "hurts" if high < 0 else "no clear effect"


#: A setting "bites" when vanilla's mean test accuracy is at least this many points below
#: its clean bound: the shortcut is learned, so there is something for alignment to fix.
BITE_POINTS = 15.0


def clean_bound(rows: Sequence[Row], setting: tuple[Any, ...]) -> Row | None:
    """The upper-bound row on clean MNIST that shares everything of ``setting`` but the data
    set, for a data set of the same objects (the digits): shapes or an import have none."""
    objects = next((r.words[0] for r in rows if r.dataset == setting[0]), None)
    return next((r for r in rows if r.role == "upper-bound" and r.dataset == BOUND_DATASET
                 and r.setting[1:] == setting[1:] and r.words[0] == objects), None)


def bite_rows(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Per setting with an unguided baseline and a clean bound: how far vanilla falls
    below the bound (bound minus vanilla, with its 95 % interval) and whether the
    shortcut bites (``BITE_POINTS``). Only unguided runs enter, so the settings worth a
    guided method can be fixed from this table before any guided run exists."""
    out = []
    for base in (r for r in rows if r.compared and r.method == BASELINE and r.input_transform == "none"
                 and r.dataset != BOUND_DATASET):
        bound = clean_bound(rows, base.setting)
        if bound is None:
            continue
        base_accs, bound_accs = [m.test.accuracy for m in base.members], [m.test.accuracy for m in bound.members]
        gap, low, high = welch_diff(bound_accs, base_accs)
        enough = min(base.n_seeds, bound.n_seeds) >= MIN_VERDICT_SEEDS
        out.append(dict(zip(SETTING_KEYS, base.setting)) | {
                   "baseline": base.method, "baseline_acc_mean": base.test_acc_mean,
                   "baseline_acc_std": base.test_acc_std, "baseline_n": base.n_seeds,
                   "bound_acc_mean": bound.test_acc_mean, "bound_acc_std": bound.test_acc_std,
                   "bound_n": bound.n_seeds, "gap": gap, "low": low, "high": high,
                   "baseline_accs": base_accs, "bound_accs": bound_accs,
                   "bites": ("yes" if gap >= BITE_POINTS else "no") if enough else "too few seeds to tell"})
    return out


def verdict_summary(rows: Sequence[Row], verdict: Sequence[dict[str, Any]], paper_loss: Sequence[str] = (),
                    notes: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One line per benchmark setting: the baseline, the clean-MNIST bound of the same
    network and schedule, the best guided run (highest mean test accuracy among the
    compared methods, a description of what was measured, not a model selection; among
    the runs with enough seeds for a verdict that did not collapse, where there are any)
    and the paper's loss (the methods named in ``paper_loss``) on oracle maps.

    The setting's verdict is the paper's loss on oracle maps, the comparison fixed before
    any run; where it did not run, the best run's, said to be the best of K, since the
    best of many runs can clear its interval by chance. ``notes`` add a reason per data set."""
    out = []
    for mine in by_setting(verdict):
        setting = tuple(mine[0][k] for k in SETTING_KEYS)
        compared = [v for v in mine if v["role"] in ("method", "vlm")] or mine  # no controls, no degraded maps
        learned = [v for v in compared if not v["collapsed"]]
        best = max([v for v in learned if v["n"] >= MIN_VERDICT_SEEDS] or learned or compared,
                   key=lambda v: v["acc_mean"])
        oracle = next((v for v in mine if v["method"] in paper_loss and v["maps"].startswith("oracle")), None)
        effect = (oracle["effect"] if oracle else
                  best["effect"] + (f" (the best of {len(compared)} runs compared)" if len(compared) > 1 else ""))
        bound = clean_bound(rows, setting)
        out.append(dict(zip(SETTING_KEYS, setting)) | {"baseline": best["baseline"],
                    "baseline_acc_mean": best["baseline_acc_mean"], "baseline_acc_std": best["baseline_acc_std"],
                    "baseline_n": best["baseline_n"],
                    "bound_acc_mean": bound.test_acc_mean if bound else None,
                    "bound_acc_std": bound.test_acc_std if bound else None, "bound_n": bound.n_seeds if bound else 0,
                    "best": best, "l2l_oracle": oracle, "effect": effect,
                    "note": (notes or {}).get(setting[0]) or _no_bite_note(best, bound)})
    return out


def _no_bite_note(best: dict[str, Any], bound: Row | None) -> str:
    """Why alignment cannot help where vanilla is not fooled: it is near its clean bound."""
    if bound is None or bound.test_acc_mean - best["baseline_acc_mean"] >= BITE_POINTS:
        return ""
    gap = bound.test_acc_mean - best["baseline_acc_mean"]
    return (f"vanilla is {gap:.1f} points from the clean bound here, so the shortcut is not learned and alignment "
            "has nothing to fix; it can only cost accuracy")


def sweep_summary(selection: dict[str, Any] | None, published: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """A sweep's answer (``selection.json``: the point validation chose, its test accuracy
    over seeds) and how many of all its runs reach the published number of its method."""
    if not selection:
        return None
    runs = [a for p in selection["points"] for a in p["test_acc"]]
    ds = selection["dataset"]
    pub = next((p for p in published if p.get("method") == selection["method"] and ds in p), None)
    return selection | {"n_runs": len(runs), "published_acc": pub[ds] if pub else None,
                        "published_source": pub["source"] if pub else None,
                        "reach_published": sum(a >= pub[ds] for a in runs) if pub else None}


def shared_settings(records: Sequence[Record]) -> dict[str, Any]:
    """How the runs' settings stand to the paper's (beyond what each row names: data set,
    method, network, maps, the method's own λ and rule): ``shared``, the settings every run
    shares that differ from the paper's, and ``varying``, those that differ between runs."""
    if not records:
        return {"shared": {}, "varying": []}
    configs = [dataclasses.asdict(r.config) for r in records]
    paper = dataclasses.asdict(PAPER_CONFIG)
    keys = [k for k in configs[0] if k not in IDENTITY_FIELDS]
    varying = [k for k in keys if len({json.dumps(c[k], sort_keys=True, default=str) for c in configs}) > 1]
    return {"shared": {k: configs[0][k] for k in keys if k not in varying and configs[0][k] != paper[k]},
            "varying": varying}
