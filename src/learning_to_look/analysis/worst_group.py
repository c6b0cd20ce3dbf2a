"""The worst-group view of a report: per configuration the group and class summaries
each under its own convention, and every method against vanilla on worst-group accuracy.

The summaries (docs/methods.md, "Worst-group baselines"):
- worst-group accuracy, the lowest test group accuracy;
- the plain mean over groups (GALS's "balanced" test accuracy);
- the average weighted by the training groups' shares (group_DRO's, JTT's, DFR's
  "average accuracy");
- balanced accuracy, the mean of the per-class accuracies (GALS's selection criterion).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from .records import BASELINE, SETTING_KEYS, Row, setting_label
from .stats import mean_std, welch_diff
from .verdicts import effect

#: (test metric, column title): what the table shows per configuration, mean ± std over seeds.
COLUMNS = (("worst_group_accuracy", "worst group %"), ("mean_group_accuracy", "mean over groups % (GALS)"),
           ("weighted_group_accuracy", "weighted by training shares % (group_DRO, JTT, DFR)"),
           ("balanced_accuracy", "balanced (per-class mean) %"), ("accuracy", "test acc %"))


def _values(r: Row, metric: str) -> list[float] | None:
    values = [getattr(m.test, metric) for m in r.members]
    return None if None in values else values


def worst_group_rows(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Per compared configuration with group labels: each summary as mean and std over seeds,
    and, beside the vanilla run of the same setting, the difference in worst-group accuracy
    with its 95 % Welch interval and its verdict."""
    out = []
    grouped = [r for r in rows if r.compared and _values(r, "worst_group_accuracy") is not None]
    for r in grouped:
        base = next((b for b in grouped if b.method == BASELINE and b.setting == r.setting and b is not r
                     and not b.uses_maps), None)
        row = dict(zip(SETTING_KEYS, r.setting)) | {"method": r.method, "maps": r.maps.label, "n": r.n_seeds,
                                                    "selection": r.members[0].config.selection}
        for metric, _ in COLUMNS:
            values = _values(r, metric)
            row[metric] = None if values is None else mean_std(values)
        if base is not None:
            diff, low, high = welch_diff(_values(r, "worst_group_accuracy"), _values(base, "worst_group_accuracy"))
            row |= {"diff": diff, "low": low, "high": high, "baseline_n": base.n_seeds,
                    "effect": effect(r, base.n_seeds, low, high)}
        out.append(row)
    return out


def _cell(value: tuple[float, float] | None, n: int) -> str:
    if value is None:
        return "—"
    return f"{value[0]:.2f}" if n < 2 else f"{value[0]:.2f} ± {value[1]:.2f}"


def worst_group_table(table: Sequence[dict[str, Any]]) -> list[str]:
    """The worst-group table as markdown lines, vanilla first in each setting."""
    body = []
    for v in sorted(table, key=lambda v: (setting_label(v), v["method"] != BASELINE)):
        interval = "[no interval: one seed on a side]" if "diff" in v and math.isnan(v["low"]) else \
            f"[{v.get('low', 0):+.2f}, {v.get('high', 0):+.2f}]"
        verdict = "baseline" if v["method"] == BASELINE else "no vanilla run in this setting" if "diff" not in v \
            else f"{v['diff']:+.2f} {interval}: {v['effect']}"
        body.append([setting_label(v), v["method"] + ("" if v["maps"] == "none" else f" ({v['maps']})"),
                     v["selection"], str(v["n"]), *(_cell(v[m], v["n"]) for m, _ in COLUMNS), verdict])
    header = ["setting", "method", "selection", "n", *(t for _, t in COLUMNS),
              "worst group minus vanilla, points [95 % Welch interval]: verdict"]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(c) + " |" for c in body)]


def worst_group_section(table: Sequence[dict[str, Any]]) -> list[str]:
    """The report's worst-group section (empty without group labels)."""
    if not table:
        return []
    return ["## Worst-group accuracy", "",
            "Test group and class summaries, each named by the convention that reports it, mean ± sample std over "
            "seeds. The weighted average weighs each group's test accuracy by its share of the training split. "
            "The verdict compares worst-group accuracy with vanilla's in the same setting (helps when the interval "
            "lies above 0), as the accuracy verdict does.", "", *worst_group_table(table), ""]
