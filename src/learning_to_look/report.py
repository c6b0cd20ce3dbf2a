"""The report of a set of runs: mean +- std over seeds, published numbers beside
measured ones, and text that says what each number is.

It reads run records only (:mod:`learning_to_look.records`), so the report of
``l2l reproduce`` and that of ``l2l report RUNS_DIR`` on the same runs are the same.
Two rules are enforced here rather than trusted to callers: a map source is only
called a VLM when its kind is ``vlm`` *and* real pretrained weights made it, and
published numbers always carry their source and the word "published".
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .io import atomic_write_json, atomic_write_text
from .records import (DATASET_NAMES, PAPER_CONFIG, SETTING_KEYS, WORST_GROUP, Record, Row, aggregate, by_setting,
                      paper_match, point_label, setting_label)

CSV_FIELDS = ("origin", "dataset", "method", "backbone", "schedule", "maps", "maps_kind", "role", "input_transform",
              "map_options",
              "n_seeds", "n_stopped", "seeds", "test_acc_mean", "test_acc_std", "worst_group_mean", "worst_group_std",
              "select_on",
              "cam_on_digit", "cam_on_decoy", "grad_on_digit",
              "grad_on_decoy", "map_iou", "map_auroc", "seconds_per_run", "seconds_per_epoch", "epochs",
              "train_subset", "published_acc", "published_source", "run_group")
#: Config fields that tell runs apart, as opposed to settings shared by a whole report.
IDENTITY_FIELDS = ("dataset", "method", "backbone", "maps", "map_options", "input_transform", "lambda0", "selection",
                   "seed", "device", "schedule")


def attach_published(rows: Sequence[Row], published: Sequence[dict[str, Any]]) -> None:
    """Set each published number beside the measured row that matches it."""
    for pub in published:
        for ds in {r.dataset for r in rows} & set(pub):
            match = paper_match(rows, pub["method"], ds, pub.get("maps"))
            if match is not None:
                match.published_acc, match.published_source = pub[ds], f"{pub['label']}: {pub['source']}"


def published_rows(rows: Sequence[Row], published: Sequence[dict[str, Any]],
                   datasets: Sequence[str]) -> list[dict[str, Any]]:
    """Each published number with the measured row set beside it (if any)."""
    out = []
    for pub in published:
        for ds in datasets:
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
#: Simpson intervals for Student's t CDF, and the bracket its quantiles are searched in
#: (the 0.995 quantile at 1 degree of freedom, the fewest Welch can give, is 63.66).
T_CDF_STEPS = 20_000
T_QUANTILE_MAX = 128.0


def t_cdf(x: float, df: float) -> float:
    """P(T <= x) for Student's t with real ``df`` > 0: 1/2 plus the density integrated
    from 0 to x by Simpson's rule (no scipy in the dependencies)."""
    grid = np.linspace(0.0, abs(x), T_CDF_STEPS + 1)  # (S+1,)
    norm = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    density = norm * (1 + grid ** 2 / df) ** (-(df + 1) / 2)  # (S+1,)
    weights = np.ones_like(grid)
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
    area = float((weights * density).sum() * (grid[1] - grid[0]) / 3)
    return 0.5 + math.copysign(area, x)


def t_quantile(p: float, df: float) -> float:
    """The ``p``-quantile (0.5 <= p < 1) of Student's t with ``df`` degrees of freedom, by
    bisection on :func:`t_cdf` to about 1e-9."""
    low, high = 0.0, T_QUANTILE_MAX
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2


def welch_diff(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """mean(a) - mean(b) with a Welch t-interval (unequal variances, Welch-Satterthwaite
    degrees of freedom). A percentile bootstrap is far too narrow with 3-5 seeds: on two
    samples from one distribution its 95 % interval left out 0 in 19 % of trials at n = 3
    and 12 % at n = 5, Welch's in 4 % (scripts/interval_coverage.py). With one seed on a
    side its spread is unknown: no interval (NaN)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(a.mean() - b.mean())
    if min(len(a), len(b)) < 2:
        return diff, math.nan, math.nan
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)  # squared standard errors of the two means
    if va + vb == 0:
        return diff, diff, diff
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = t_quantile((1 + level) / 2, df) * math.sqrt(va + vb)
    return diff, diff - half, diff + half


def verdict_rows(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Per benchmark setting (``SETTING_KEYS``) with an unguided baseline: each guided
    method's difference from it in points, with its 95 % interval, and its effect
    (:func:`effect`)."""
    out = []
    for base in (r for r in rows if r.compared and not r.guided and r.input_transform == "none"):
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
    return f"{g.method} λ {g.lambda0:g}, {maps}"


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


#: The data set of a setting's upper bound: the same network and schedule on clean digits.
BOUND_DATASET = "mnist"
#: A setting "bites" when vanilla's mean test accuracy is at least this many points below
#: its clean bound: the shortcut is learned, so there is something for alignment to fix.
BITE_POINTS = 15.0


def clean_bound(rows: Sequence[Row], setting: tuple[Any, ...]) -> Row | None:
    """The upper-bound row on clean MNIST that shares everything of ``setting`` but the data set."""
    return next((r for r in rows if r.role == "upper-bound" and r.dataset == BOUND_DATASET
                 and r.setting[1:] == setting[1:]), None)


def bite_rows(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Per setting with an unguided baseline and a clean bound: how far vanilla falls
    below the bound (bound minus vanilla, with its 95 % interval) and whether the
    shortcut bites (``BITE_POINTS``). Only unguided runs enter, so the settings worth a
    guided method can be fixed from this table before any guided run exists."""
    out = []
    for base in (r for r in rows if r.compared and not r.guided and r.input_transform == "none"
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
                    "note": (notes or {}).get(setting[0], "")})
    return out


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
    """Settings every run shares and that differ from the paper's: what a profile changed."""
    if not records:
        return {}
    configs = [dataclasses.asdict(r.config) for r in records]
    paper = dataclasses.asdict(PAPER_CONFIG)
    return {k: v for k, v in configs[0].items()
            if k not in IDENTITY_FIELDS and all(c[k] == v for c in configs) and v != paper[k]}


# ---- rendering ----------------------------------------------------------------------

def _num(v: float | None, digits: int = 2) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _acc(mean: float | None, std: float | None, n: int) -> str:
    """A single seed has no spread: show its number alone rather than a fake ± 0."""
    if mean is None:
        return "—"
    return f"{mean:.2f}" if n < 2 else f"{mean:.2f} ± {std:.2f}"


def _table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def _seeds(rows: Sequence[Row]) -> str:
    return ", ".join(map(str, sorted({s for r in rows for s in r.seeds}))) or "none"


def _schedule_text(rows: Sequence[Row]) -> str:
    """lambda0 and E_att of the runs, per method, as recorded (no default restated here)."""
    lambdas, e_att = {}, {}
    for r in rows:
        joint = r.members[0].joint_from
        if r.lambda0 is not None:
            lambdas.setdefault(r.method, f"{r.lambda0:g}" + (" ramped" if joint is not None else ""))
        if joint is not None:
            e_att.setdefault(r.method, joint)
    parts = [f"lambda0 {', '.join(f'{v} ({m})' for m, v in lambdas.items())}" if lambdas else "",
             f"E_att {', '.join(f'{v} ({m})' for m, v in e_att.items())}" if e_att else ""]
    return "; ".join(p for p in parts if p)


def _settings_text(rows: Sequence[Row], shared: dict[str, Any]) -> str:
    d = PAPER_CONFIG
    over = ", ".join(f"{k} = {v}" for k, v in shared.items()) or "none (the paper's settings throughout)"
    return (f"Settings shared by every run that differ from the paper's: {over}. Otherwise the paper's "
            "(docs/protocol.md §3.5): "
            f"{d.epochs} epochs, batch {d.batch_size}, SGD lr {d.lr:g}, momentum {d.momentum}, weight decay "
            f"{d.weight_decay:g}, StepLR({d.step_size}, {d.gamma}), {d.target} target. Per method: "
            f"{_schedule_text(rows) or 'no extra term'}. A validation subset of a fifth of the training subset is "
            "used when `train_subset` is set.")


MAP_SOURCE_TEXT = {
    "oracle": "- **oracle** (annotation): the digit's own pixels, known from how the data set was built. "
              "An upper bound standing in for a perfect VLM; not a VLM.",
    "intensity": "- **intensity** (image-statistic): bright pixels of the image itself, no data-set knowledge and no "
                 "VLM. On DecoyMNIST it covers the decoy too: a negative control.",
    "not-decoy": "- **not-decoy** (annotation): everything but DecoyMNIST's decoy square, the shortcut annotation that "
                 "Ross et al. and CDEP penalise; not a VLM.",
    "degraded-oracle": "- **degraded-oracle** (annotation): the oracle mask degraded on purpose (blur, shift, dropped "
                       "part, decoy added, pixel noise) for the sensitivity study; not a VLM.",
}


def _map_sources_text(rows: Sequence[Row]) -> list[str]:
    names = {r.maps.name for r in rows}
    lines = [text for name, text in MAP_SOURCE_TEXT.items() if name in names]
    vlm = next((r.maps for r in rows if r.maps.kind == "vlm"), None)
    if vlm and vlm.is_real_vlm:
        lines.append(f"- **{vlm.label}**: training-free dense CLIP maps from `{vlm.weights}`, prompt "
                     f"{vlm.config.get('prompts', {}).get('positive')} against background prompts.")
    elif vlm:
        lines.append(f"- **{vlm.label}** from `{vlm.weights}`: randomly initialised test weights, so these are "
                     "**not** VLM maps and no row here is a VLM result.")
    else:
        lines.append("- No VLM weights were given (`--vlm`), so there are no VLM rows: **no number in this "
                     "report comes from VLM maps.** The paper's WeCLIP+ maps are not reproduced here.")
    return lines


def _results_table(rows: Sequence[Row]) -> str:
    """Every row; the worst-group column appears when some data set has group labels."""
    groups = any(r.worst_group_mean is not None for r in rows)
    body = [[DATASET_NAMES.get(r.dataset, r.dataset),
             r.method + _grid_point(r) + (f" ({r.input_transform} input)" if r.input_transform != "none" else "")
             + (f", {r.schedule} schedule" if r.schedule != PAPER_CONFIG.schedule else "")
             + (", worst-group selection" if r.select_on == WORST_GROUP else ""), r.backbone,
             r.maps.label, r.role, str(r.n_seeds) + (f" ({r.n_stopped} diverged)" if r.n_stopped else ""),
             _acc(r.test_acc_mean, r.test_acc_std, r.n_seeds),
             *([_acc(r.worst_group_mean, r.worst_group_std, r.n_seeds) if r.worst_group_mean is not None else "—"]
               if groups else []),
             _num(r.cam_on_digit), _num(r.cam_on_decoy),
             "—" if r.maps.iou is None else f"{r.maps.iou:.2f} / {_num(r.maps.auroc)}", _num(r.seconds_per_run, 0),
             "—" if r.published_acc is None else f"{r.published_acc} (published)"]
            for r in rows if r.role != "sensitivity"]
    return _table(["data set", "method", "backbone", "maps (kind)", "role", "n", "test acc %",
                   *(["worst-group acc %"] if groups else []), "CAM on digit", "CAM on decoy", "map IoU / AUROC",
                   "s / run", "published %"], body)


def _grid_point(r: Row) -> str:
    """A sweep's row names its grid point: its rows differ in nothing else."""
    if r.role != "sweep":
        return ""
    c = r.members[0].config
    return f" (λ0 {c.lambda0:g}, E_att {c.e_att}, lr {c.lr:g}, phase 1 {c.phase1})"


def _published_table(published: Sequence[dict[str, Any]]) -> str:
    body = [[p["method"], DATASET_NAMES.get(p["dataset"], p["dataset"]), str(p["published_acc"]),
             "not run here" if p["measured_acc_mean"] is None else
             f"{_acc(p['measured_acc_mean'], p['measured_acc_std'], p['measured_n'])} "
             f"(n={p['measured_n']}; {p['measured_as']})", p["published_source"]] for p in published]
    return _table(["method (published)", "data set", "published test acc %", "measured here", "source"], body)


def _sensitivity_table(sens: Sequence[dict[str, Any]]) -> str:
    body = [[setting_label(s), s["method"], s["degradation"], f"{s['strength']:g}", _num(s["map_iou"]),
             _num(s["map_auroc"]), _acc(s["test_acc_mean"], s["test_acc_std"], s["n_seeds"]), str(s["n_seeds"])]
            for s in sens]
    return _table(["setting (data set, schedule, backbone)", "method", "degradation", "strength", "map IoU",
                   "map AUROC", "test acc %", "n"], body)


def _bite_table(bites: Sequence[dict[str, Any]]) -> str:
    body = [[setting_label(b), f"{_acc(b['baseline_acc_mean'], b['baseline_acc_std'], b['baseline_n'])} "
             f"(n {b['baseline_n']})", f"{_acc(b['bound_acc_mean'], b['bound_acc_std'], b['bound_n'])} "
             f"(n {b['bound_n']})", f"{b['gap']:+.2f} {_interval(b)}", b["bites"]]
            for b in bites]
    return _table(["setting (data set, schedule, backbone)", "vanilla test acc %", "clean-MNIST bound %",
                   "bound minus vanilla, points [95 % interval]", "bites"], body)


def _verdict_table(verdict: Sequence[dict[str, Any]]) -> str:
    body = [[setting_label(v),
             f"{_acc(v['baseline_acc_mean'], v['baseline_acc_std'], v['baseline_n'])} ({v['baseline']})",
             v["label"], _acc(v["acc_mean"], v["acc_std"], v["n"]), str(v["n"]),
             f"{v['diff']:+.2f} {_interval(v)}", v["effect"],
             f"{_num(v['cam_on_digit'])} / {_num(v['cam_on_decoy'])} ({_num(v['baseline_cam_on_decoy'])})",
             f"{_num(v['grad_on_digit'])} / {_num(v['grad_on_decoy'])} ({_num(v['baseline_grad_on_decoy'])})"]
            for v in verdict]
    return _table(["setting (data set, schedule, backbone)", "baseline test acc %", "guided method, maps",
                   "test acc %", "n", "difference, points [95 % interval]", "verdict",
                   "CAM share on digit / decoy (baseline's on decoy)",
                   "gradient share on digit / decoy (baseline's on decoy)"], body)


def _interval(v: dict[str, Any]) -> str:
    """``v``'s 95 % interval as [low, high]; none where a side has one seed."""
    if math.isnan(v["low"]):
        return "[no interval: one seed on a side]"
    return f"[{v['low']:+.2f}, {v['high']:+.2f}]"


def _vs(v: dict[str, Any] | None) -> str:
    if v is None:
        return "not run"
    return (f"{v['label']}: {_acc(v['acc_mean'], v['acc_std'], v['n'])} (n {v['n']}); "
            f"{v['diff']:+.2f} {_interval(v)}")


def _summary_table(summary: Sequence[dict[str, Any]]) -> str:
    body = [[setting_label(s), f"{_acc(s['baseline_acc_mean'], s['baseline_acc_std'], s['baseline_n'])} "
             f"(n {s['baseline_n']})",
             f"{_acc(s['bound_acc_mean'], s['bound_acc_std'], s['bound_n'])} (n {s['bound_n']})" if s["bound_n"]
             else "not run", _vs(s["best"]), _vs(s["l2l_oracle"]),
             s["effect"] + (f": {s['note']}" if s["note"] else "")]
            for s in summary]
    return _table(["setting (data set, schedule, backbone)", "vanilla test acc %", "clean-MNIST bound %",
                   "best guided: test acc %; difference [95 % interval]",
                   "paper's loss, oracle maps: test acc %; difference [95 % interval]", "verdict"], body)


def _sweep_text(sw: dict[str, Any]) -> list[str]:
    chosen = point_label(sw["chosen"])
    acc = _acc(sw["test_acc_mean"], sw["test_acc_std"], len(sw["seeds"]))
    reach = ("" if sw["published_acc"] is None else
             f" {sw['reach_published']} of the sweep's {sw['n_runs']} runs reach the published "
             f"{sw['published_acc']:g} % ({sw['published_source']}), each run validation-selected within itself.")
    return ["## Sweep", "",
            f"Grid: {', '.join(f'{k} {v}' for k, v in sw['axes'].items())}; seeds {', '.join(map(str, sw['seeds']))}. "
            f"Chosen on validation alone (best mean selection score over seeds, docs/protocol.md §3.8): {chosen}. "
            f"Its test accuracy: **{acc} %** over {len(sw['seeds'])} seeds.{reach} `sweep.png`: the mean test "
            "accuracy of every grid point (shown after the choice, never used for it) and the distribution of all "
            "runs.", "", *_left_out_text(sw.get("left_out", []))]


def _left_out_text(left_out: Sequence[dict[str, Any]]) -> list[str]:
    """The grid points that could not be chosen: a seed's loss diverged before it had a model."""
    if not left_out:
        return []
    return [f"Left out of the choice ({len(left_out)} grid points; a seed's loss diverged before any epoch it could "
            "select, so the point has no mean over seeds):", "",
            *(f"- {point_label(p['point'])}: {p['why'][0]}" for p in left_out), ""]


def _bound_text(bound: dict[str, Any]) -> list[str]:
    point = point_label(bound["bound_point"])
    return ["### Optimistic bound (test-peeking; not a result)", "",
            f"{bound['label']}. Best mean over seeds: {bound['bound_test_acc_mean']:.2f} % at {point}, from "
            f"{bound['runs_with_saved_weights']} runs' per-epoch weights (`optimistic_bound.json`). It says how much "
            "choosing by test accuracy would inflate a number; compare it with the validation-chosen result above, "
            "never in its place.", ""]


def _bites_section(bites: Sequence[dict[str, Any]]) -> list[str]:
    return ["## Where does the shortcut bite?", "",
            "Each unguided baseline against the clean-MNIST bound of the same network, schedule and training-set "
            f"size. A setting bites when vanilla's mean test accuracy is at least {BITE_POINTS:g} points below the "
            f"bound (with at least {MIN_VERDICT_SEEDS} seeds on each side); the interval is the same Welch "
            "t-interval as the verdict's. Only unguided runs enter this table, so where guided methods are worth "
            "running can be decided from it before any of them has run.", "", _bite_table(bites), ""]


def _verdict_section(tables: Tables) -> list[str]:
    return ["## Verdict: does alignment help?", "",
            "Each guided run against the unguided baseline of the same setting: the difference in test accuracy, "
            "in points, with a 95 % Welch t-interval over seeds (unequal variances; a bootstrap is too narrow "
            "with this few seeds). It helps when the interval lies above 0, hurts when below; with fewer than "
            f"{MIN_VERDICT_SEEDS} seeds on either side there is no verdict. A guided model whose in-distribution "
            f"validation accuracy is within {COLLAPSE_SHARE * 100:g} % of the way from chance to 100 % has "
            "collapsed (it predicts about one class), and a gain that leaves the test accuracy as near chance "
            "is not called help: where the baseline is below chance, a constant guess would beat it.", "",
            "Per setting: the best guided run is the one with the highest mean test accuracy among the compared "
            "methods with enough seeds that did not collapse (a description of what was measured; nothing is "
            "selected with it; controls and degraded maps are left out). The setting's verdict is that of the "
            "paper's loss on oracle maps, the comparison fixed in advance; where it did not run, the best guided "
            "run's, marked as the best of the runs compared, since the best of many can help by chance. "
            f"The paper's loss: {' or '.join(tables.paper_loss) or 'not named'}.", "",
            _summary_table(tables.summary), "", "Every guided run:", "", _verdict_table(tables.verdict), ""]


def _sensitivity_section(sens: Sequence[dict[str, Any]]) -> list[str]:
    return ["## Map-quality sensitivity", "",
            "The guided method trained on oracle maps degraded in one controlled way at a time; strength 0 is the "
            "clean oracle. Map quality is measured on training images. Use it to judge a VLM: measure its maps the "
            "same way (`learning_to_look.maps.map_quality`) and read the expected accuracy off `sensitivity.png`.",
            "", _sensitivity_table(sens), ""]


def _figures_section(tables: Tables) -> list[str]:
    optional = [(tables.bites, "- `shortcut_search.png`: vanilla's seeds beside the clean bound's, per setting."),
                (tables.verdict, "- `verdict.png`: each guided run's difference from its baseline with its 95 % "
                                 "interval."),
                (tables.sensitivity, "- `sensitivity.png`: test accuracy against map IoU for each degradation.")]
    return ["## Figures", "",
            "- `qualitative.png`: the first test image of each of the first classes, the CAM of the selected "
            "baseline model and of the selected guided model (first seed), saved by each run after selection; "
            "shown only, nothing is chosen from it.",
            "- `maps_<data set>.png`: training images and the map of each map source used for guidance.",
            "- `curves.png`: validation accuracy and validation alignment KL per epoch, mean over seeds "
            "(band: ± std).",
            "- `accuracy.png`: test accuracy per method with ± std error bars; published numbers marked.",
            *[line for present, line in optional if present], ""]


def _environment_section(environment: dict[str, Any]) -> list[str]:
    return ["## Environment", "",
            f"device {environment.get('device', '?')}, torch {environment.get('torch', '?')}, "
            f"{environment.get('threads', '?')} threads, learning_to_look {environment.get('learning_to_look', '?')} "
            f"(git {str(environment.get('git_commit') or 'unknown')[:10]}), python {environment.get('python', '?')}. "
            "Full settings of every configuration: `results.json`.", ""]


def render_markdown(tables: Tables, header: dict[str, Any], environment: dict[str, Any], n_runs: int) -> str:
    rows, sens = tables.rows, tables.sensitivity
    methods = sorted({f"{r.method} ({r.backbone})" for r in rows if r.compared})
    main = [r for r in rows if r.role != "sensitivity"]
    parts = [
        "# Learning to Look: reproduction report", "",
        f"{header['title']}.", "",
        "## What was run", "",
        f"- {n_runs} training runs: {len(rows)} configurations, seeds {_seeds(main)}"
        + (f" (sensitivity seeds: {_seeds([r for r in rows if r.role == 'sensitivity'])})." if sens else "."),
        f"- Methods: {', '.join(methods) or 'none'}; roles: " + ", ".join(sorted({r.role for r in rows})) + ".",
        f"- {_settings_text(rows, tables.shared)}",
        "- Model selection used the in-distribution validation split only (docs/protocol.md §3.6). The shifted test "
        "split was "
        "read once per run, after selection, for the test metrics below; nothing was chosen with it. Map quality "
        "(IoU of the map above the digit threshold, AUROC to the clean digit) is measured on training images.",
        "- CAM on digit / decoy: share of the positive class-activation (Grad-CAM where the network has no GAP head) "
        "mass on the clean digit (dilated 3x3) / on the decoy square, on the test split.", "",
        "Map sources:", "", *_map_sources_text(rows), "",
        "## Results (measured here)", "",
        "Test accuracy in %, mean ± sample std over seeds; n = seeds. The published column is the number another "
        "paper reports for that method (source in the next table), not measured here.", "",
        _results_table(main), "",
        "## Published numbers (not measured here)", "",
        "Copied from the papers named; their networks and maps differ from ours where noted. The measured column "
        "is the matching row above.", "",
        _published_table(tables.published), "",
        *(_bites_section(tables.bites) if tables.bites else []),
        *(_verdict_section(tables) if tables.verdict else []),
        *(_sweep_text(tables.sweep) if tables.sweep else []),
        *(_bound_text(tables.bound) if tables.bound else []),
        *(_sensitivity_section(sens) if sens else []),
        *_figures_section(tables), *_environment_section(environment)]
    return "\n".join(parts)


def _csv(rows: Sequence[Row], published: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else ("" if v is None else v)
                    for k, v in r.summary().items()})
    for p in published:
        w.writerow({"origin": "published", "dataset": p["dataset"], "method": p["method"],
                    "published_acc": p["published_acc"], "published_source": p["published_source"]})
    return buf.getvalue()


@dataclass
class Tables:
    """What the report and the figures show, computed once from the records."""

    rows: list[Row]
    published: list[dict[str, Any]]
    sensitivity: list[dict[str, Any]]
    verdict: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    shared: dict[str, Any]
    paper_loss: tuple[str, ...] = ()
    bites: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    sweep: dict[str, Any] | None = None
    bound: dict[str, Any] | None = None  # a sweep's optimistic bound: shown, labelled, never in results.json


def build(records: Sequence[Record], runs_dir: str | Path | None, published: Sequence[dict[str, Any]],
          datasets: Sequence[str], paper_loss: Sequence[str] = (), notes: dict[str, str] | None = None,
          selection: dict[str, Any] | None = None, bound: dict[str, Any] | None = None) -> Tables:
    """The tables of ``records``; ``published`` numbers are set beside the matching rows;
    ``paper_loss`` and ``notes`` as in :func:`verdict_summary`; ``selection`` is a
    sweep's ``selection.json`` when the records are a sweep's, ``bound`` its optimistic bound."""
    rows = aggregate(records, runs_dir)
    attach_published(rows, published)
    verdict = verdict_rows(rows)
    return Tables(rows, published_rows(rows, published, datasets), sensitivity_rows(rows), verdict,
                  verdict_summary(rows, verdict, paper_loss, notes), shared_settings(records), tuple(paper_loss),
                  bite_rows(rows), sweep_summary(selection, published), bound)


def write_report(out: str | Path, tables: Tables, records: Sequence[Record], runs_dir: str | Path | None,
                 header: dict[str, Any]) -> dict[str, Any]:
    """Write report.md, results.csv and results.json into ``out``; returns what results.json holds."""
    out = Path(out)
    first = records[0] if records else None
    environment = {**(first.environment if first else {}), "device": first.device if first else None}
    runs = [{"run_dir": _relative(r.run_dir, runs_dir), "role": r.role, "config": dataclasses.asdict(r.config),
             "maps": dataclasses.asdict(r.maps), "selected_epoch": r.selected_epoch,
             "test": dataclasses.asdict(r.test), "wall_seconds": r.wall_seconds} for r in records]
    summary = {"generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "header": header, "shared_settings": tables.shared,
               "environment": environment, "rows": [r.summary() for r in tables.rows], "published": tables.published,
               "sensitivity": tables.sensitivity, "shortcut_bites": tables.bites, "verdict": tables.verdict,
               "verdict_summary": tables.summary,
               "sweep": tables.sweep,
               "runs": runs}
    md = render_markdown(tables, header, environment, len(records))
    atomic_write_text(out / "report.md", md)
    atomic_write_text(out / "results.csv", _csv(tables.rows, tables.published))
    atomic_write_json(out / "results.json", summary)
    return summary


def _relative(path: Path, root: str | Path | None) -> str:
    return str(path.relative_to(root)) if root is not None and path.is_relative_to(root) else str(path)
