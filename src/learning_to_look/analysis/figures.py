"""The report's figures, drawn from run records only (``result.json`` and the
``examples.npz`` each run saves after selection).

Each figure answers one question at a glance: where do the models look
(qualitative), what were they told to look at (maps), how did training go
(curves), how do the numbers compare with the papers (accuracy), where does a
shortcut bite (shortcut_search), does alignment help there (verdict), and how good
must maps be (sensitivity). Test images appear only in the qualitative figure, which
shows the final, already selected models and chooses nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..plotting import pyplot, save_figure, to_display
from ..config import PAPER_CONFIG
from .records import BASELINE, DATASET_NAMES, SETTING_KEYS, Row, by_setting, setting_label

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .report import Tables


def _name(ds: str) -> str:
    return DATASET_NAMES.get(ds, ds)


def _short(row: Row) -> str:
    """A legend / tick label: method, non-default backbone and input, then the map source."""
    head = " ".join([row.method] + ([row.backbone] if row.backbone != PAPER_CONFIG.backbone else [])
                    + ([row.input_transform] if row.input_transform != "none" else [])
                    + ([row.schedule] if row.schedule != PAPER_CONFIG.schedule else []))
    return f"{head}\n{row.maps.label}" if row.uses_maps else head


def benchmarks(rows: Sequence[Row]) -> list[str]:
    """Data sets with a compared method, in the rows' order (bounds alone get no panel)."""
    return list(dict.fromkeys(r.dataset for r in rows if r.compared))


def _baseline_and_guided(rows: Sequence[Row], ds: str) -> tuple[Row, Row] | None:
    """The unguided baseline and the paper's method (real VLM maps first, then the paper's
    maps) on the paper's network, for the qualitative figure."""
    paper = [r for r in rows if r.dataset == ds and r.compared and r.on_paper_network]
    base = next((r for r in paper if r.method == BASELINE), None)
    guided = sorted((r for r in paper if r.method == PAPER_CONFIG.method and r.uses_maps),
                    key=lambda r: (not r.maps.is_real_vlm, r.maps.name != PAPER_CONFIG.maps))
    return (base, guided[0]) if base and guided else None


def qualitative(rows: Sequence[Row]) -> Figure | None:
    """The paper's figure: input, baseline CAM, guided CAM, for the first test image of
    each of the first classes (fixed before training, not picked by outcome)."""
    blocks = []
    for ds in benchmarks(rows):
        pair = _baseline_and_guided(rows, ds)
        shown = [r.members[0].examples() for r in pair] if pair else []
        if pair and all(e is not None for e in shown):
            blocks.append((ds, list(zip(pair, shown))))
    if not blocks:
        return None
    n = min(len(e["test_labels"]) for _, pairs in blocks for _, e in pairs)
    plt = pyplot()
    fig, axes = plt.subplots(3 * len(blocks), n, figsize=(n * 1.35 + 1.2, 3 * len(blocks) * 1.45 + 0.5),
                             dpi=110, squeeze=False)
    for b, (ds, pairs) in enumerate(blocks):
        first = pairs[0][1]
        images, labels = to_display(first["test_images"][:n]), first["test_labels"][:n]
        name = class_namer(pairs[0][0])
        panels = [("input", None, None)] + [(f"{row.method} CAM\n{row.maps.label if row.uses_maps else '(no maps)'}",
                                             e["test_predictions"], e["test_cams"]) for row, e in pairs]
        for p, (title, pred, cams) in enumerate(panels):
            for c in range(n):
                ax = axes[3 * b + p, c]
                ax.imshow(images[c], interpolation="nearest")
                if cams is not None:
                    ax.imshow(cams[c], cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
                    ax.set_title(f"pred {name(pred[c])}", fontsize=7, color="green" if pred[c] == labels[c] else "red",
                                 pad=2)
                else:
                    ax.set_title(name(labels[c]), fontsize=7, pad=2)
                ax.set_xticks([])
                ax.set_yticks([])
            axes[3 * b + p, 0].set_ylabel(f"{_name(ds)}\n{title}" if p == 0 else title, fontsize=7)
    fig.suptitle("Where the models look on the shifted test set (first seed; CAM of the true class)", fontsize=9)
    fig.tight_layout()
    return fig


def class_namer(row: Row):
    """Class index -> the name the data set gives it (its record's), else the index."""
    classes = row.members[0].classes
    return lambda k: classes[int(k)] if int(k) < len(classes) else str(k)


def _map_rows(rows: Sequence[Row], dataset: str) -> list[Row]:
    """One row per map source used on ``dataset``; of degraded ones, the middle strength of each kind."""
    seen: dict[str, Row] = {}
    by_kind: dict[Any, list[Row]] = {}
    for r in rows:
        if r.dataset != dataset or not r.uses_maps:
            continue
        if "degradation" in r.map_options:
            by_kind.setdefault(r.map_options["degradation"], []).append(r)
        else:
            seen.setdefault(r.maps.label, r)
    for kind_rows in by_kind.values():
        kind_rows.sort(key=lambda r: r.map_options.get("strength", 0))
        r = kind_rows[len(kind_rows) // 2]
        seen.setdefault(r.maps.label, r)
    return list(seen.values())


def guidance_maps(rows: Sequence[Row]) -> dict[str, Figure]:
    """Per data set: training images, and under them the map of each source used for guidance."""
    figures = {}
    for ds in benchmarks(rows):
        saved = [(r, e) for r in _map_rows(rows, ds)
                 if (e := r.members[0].examples()) is not None and "train_maps" in e]
        if not saved:
            continue
        n = min(len(e["train_labels"]) for _, e in saved)
        first = saved[0][1]
        plt = pyplot()
        fig, axes = plt.subplots(1 + len(saved), n, dpi=110, squeeze=False,
                                 figsize=(n * 1.2 + 1.6, (1 + len(saved)) * 1.25 + 0.5))
        shown, name = to_display(first["train_images"][:n]), class_namer(saved[0][0])
        for c in range(n):
            axes[0, c].imshow(shown[c], interpolation="nearest")
            axes[0, c].set_title(name(first["train_labels"][c]), fontsize=7, pad=2)
        axes[0, 0].set_ylabel("training\nimage", fontsize=7)
        for i, (row, e) in enumerate(saved, 1):
            for c in range(n):
                axes[i, c].imshow(e["train_maps"][c], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            axes[i, 0].set_ylabel(row.maps.label.replace(" (", "\n(").replace("oracle ", "oracle\n"), fontsize=7)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(f"{_name(ds)}: maps used for guidance (white = look here)", fontsize=9)
        fig.tight_layout()
        figures[f"maps_{ds}.png"] = fig
    return figures


def band_stats(series: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (ddof 1; 0 where one seed is left) over seeds, per epoch. A seed that
    stopped early (its loss diverged) has fewer epochs and counts only where it has them;
    an epoch with no value at all (a metric undefined there) is NaN, so it is not drawn."""
    arr = np.full((len(series), max(len(s) for s in series)), np.nan)  # (seeds, epochs)
    for i, s in enumerate(series):
        arr[i, :len(s)] = s
    n = (~np.isnan(arr)).sum(0)  # (epochs,)
    mean = np.divide(np.nansum(arr, 0), n, out=np.full(n.shape, np.nan), where=n > 0)
    var = np.nansum((arr - mean) ** 2, 0) / np.maximum(n - 1, 1)
    return mean, np.where(n > 1, np.sqrt(var), 0.0)


def _band(ax, series: list[list[float]], colour, label: str) -> None:
    """Mean over seeds with a ± std band."""
    mean, std = band_stats(series)
    epochs = np.arange(len(mean))
    ax.plot(epochs, mean, color=colour, label=label, marker="." if len(epochs) < 10 else None)
    ax.fill_between(epochs, mean - std, mean + std, color=colour, alpha=0.2)


def curves(rows: Sequence[Row]) -> Figure | None:
    """Validation accuracy and alignment KL per epoch, mean over seeds with a ± std band."""
    datasets = benchmarks(rows)
    if not datasets:
        return None
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, len(datasets), figsize=(5.2 * len(datasets), 6.4), dpi=110, squeeze=False)
    colours = plt.get_cmap("tab10")
    for c, ds in enumerate(datasets):
        shown = [r for r in rows if r.dataset == ds and r.role != "sensitivity"]
        for k, row in enumerate(shown):
            for a, key in enumerate(("val_acc", "val_kl")):
                series = [m.curve(key) for m in row.members]
                if all(s is not None for s in series):
                    _band(axes[a, c], series, colours(k % 10), _short(row).replace("\n", " "))
        e_att = sorted({m.joint_from for r in shown for m in r.members if m.joint_from is not None})
        for a in range(2):
            for k, x in enumerate(e_att):
                axes[a, c].axvline(x - 0.5, color="black", ls=":", lw=1,
                                   label="E_att: joint phase starts" if k == 0 else None)
            axes[a, c].xaxis.set_major_locator(MaxNLocator(integer=True))
            axes[a, c].grid(alpha=0.3)
            if axes[a, c].get_legend_handles_labels()[0]:  # vanilla alone has no alignment KL to draw
                axes[a, c].legend(fontsize=6.5, loc="best")
        axes[0, c].set_title(_name(ds), fontsize=10)
        axes[0, c].set_ylabel("validation accuracy %")
        axes[1, c].set_ylabel("validation alignment KL(target || CAM)")
        axes[1, c].set_xlabel("epoch")
    fig.suptitle("Training curves (validation split, in-distribution); mean over seeds, band ± std", fontsize=10)
    fig.tight_layout()
    return fig


def _published_markers(ax, mine: Sequence[Row], ds: str, published: Sequence[dict[str, Any]]) -> list[str]:
    """Red diamonds: published numbers beside their measured bars, and published-only
    methods after them; returns the tick labels of the latter."""
    px = [x for x, r in enumerate(mine) if r.published_acc is not None]
    py = [r.published_acc for r in mine if r.published_acc is not None]
    extra = [p for p in published if p["method"] is None and ds in p]
    px += list(range(len(mine), len(mine) + len(extra)))
    py += [p[ds] for p in extra]
    if px:  # no legend entry with nothing behind it
        ax.scatter(px, py, marker="D", color="tab:red", zorder=3, clip_on=False, label="published (other papers)")
    for x, y in zip(px, py):
        ax.annotate(f"{y}", (x, y), textcoords="offset points", xytext=(6, -3), fontsize=7, color="tab:red")
    return [f"{p['label']}\n(published only)" for p in extra]


def accuracy_bars(rows: Sequence[Row], published: Sequence[dict[str, Any]]) -> Figure | None:
    """Test accuracy per configuration with error bars; published numbers as markers;
    upper bounds measured on another data set (clean MNIST) as a dashed line."""
    datasets = benchmarks(rows)
    if not datasets:
        return None
    bounds = [r for r in rows if r.role == "upper-bound" and r.dataset not in datasets]
    plt = pyplot()
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 5.2), dpi=110, squeeze=False)
    colour = {"upper-bound": "tab:green", "control": "tab:gray"}
    for c, ds in enumerate(datasets):
        ax = axes[0, c]
        mine = [r for r in rows if r.dataset == ds and r.role != "sensitivity"]
        x = np.arange(len(mine))
        ax.bar(x, [r.test_acc_mean for r in mine], yerr=[r.test_acc_std for r in mine], capsize=3,
               color=[colour.get(r.role, "tab:blue") for r in mine], label="measured here (mean ± std)")
        for xi, r in zip(x, mine):
            ax.text(xi, r.test_acc_mean + r.test_acc_std + 1.5, f"{r.test_acc_mean:.1f}", ha="center", fontsize=7)
        labels = [_short(r) for r in mine] + _published_markers(ax, mine, ds, published)
        ax.set_xticks(np.arange(len(labels)))
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
        for b in bounds:
            ax.axhline(b.test_acc_mean, color="tab:green", ls="--", lw=1, label=f"upper bound: {_name(b.dataset)}")
        if mine and mine[0].chance is not None:
            ax.axhline(mine[0].chance, color="black", ls=":", lw=1, label="chance (a uniform guess)")
        ax.set_ylim(0, 109)
        ax.set_ylabel("test accuracy % (shifted test set)")
        ax.set_title(_name(ds), fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8)
    fig.suptitle("Test accuracy per method (green: upper bounds, grey: negative control)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def sensitivity(sens: Sequence[dict[str, Any]], rows: Sequence[Row] = ()) -> Figure | None:
    """Test accuracy against map IoU, one panel per setting (data set, backbone, schedule)
    and one line per degradation from the clean oracle outwards; the same method with
    other map sources (intensity, a VLM) in the same setting on the same axes."""
    groups = by_setting(sens)
    if not groups:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.4), dpi=110, squeeze=False)
    for ax, pts in zip(axes[0], groups):
        _sensitivity_panel(ax, pts, rows)
    fig.suptitle("How good must the maps be? Degraded oracle maps (annotation, not VLM)", fontsize=10)
    fig.tight_layout()
    return fig


def _sensitivity_panel(ax, pts: Sequence[dict[str, Any]], rows: Sequence[Row]) -> None:
    colours = pyplot().get_cmap("tab10")
    setting = tuple(pts[0][k] for k in SETTING_KEYS)
    method = pts[0]["method"]
    ref = next((s for s in pts if s["degradation"] == "none"), None)
    for k, kind in enumerate(sorted({s["degradation"] for s in pts} - {"none"})):
        line = ([ref] if ref else []) + sorted((s for s in pts if s["degradation"] == kind),
                                               key=lambda s: s["strength"])
        ax.errorbar([s["map_iou"] for s in line], [s["test_acc_mean"] for s in line],
                    yerr=[s["test_acc_std"] for s in line], marker="o", color=colours(k % 10), capsize=3, label=kind)
        for s in line[1 if ref else 0:]:
            ax.annotate(f"{s['strength']:g}", (s["map_iou"], s["test_acc_mean"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7, color=colours(k % 10))
    if ref:
        ax.scatter([ref["map_iou"]], [ref["test_acc_mean"]], marker="*", s=160, color="black", zorder=3,
                   label="clean oracle")
    others = [r for r in rows if r.setting == setting and r.method == method
              and r.input_transform == PAPER_CONFIG.input_transform and r.role != "sensitivity"
              and r.maps.name != PAPER_CONFIG.maps and r.maps.iou is not None]
    for j, r in enumerate(others):
        ax.errorbar([r.maps.iou], [r.test_acc_mean], yerr=[r.test_acc_std], marker="X", ms=9, ls="none",
                    color=("dimgray", "tab:purple", "tab:brown")[j % 3], capsize=3, label=f"{r.maps.label} maps")
    baseline = next((r for r in rows if r.setting == setting and r.compared and r.method == BASELINE
                     and r.input_transform == PAPER_CONFIG.input_transform), None)
    if baseline is not None:
        ax.axhline(baseline.test_acc_mean, color="gray", ls="--", lw=1, label=f"{baseline.method} (unguided)")
    ax.set_xlabel("map IoU with the digit (map above the digit threshold; training images)", fontsize=8)
    ax.set_ylabel(f"{method} test accuracy %")
    ax.set_title(setting_label(pts[0]), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, title="maps (numbers: degradation strength)", title_fontsize=7)


def shortcut_search(bites: Sequence[dict[str, Any]]) -> Figure | None:
    """Per setting, vanilla's seeds beside the clean-MNIST bound's: how far the shortcut
    pulls the unguided network down, and which settings pass the bite threshold."""
    if not bites:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.42 * len(bites)), dpi=110)
    y = np.arange(len(bites))[::-1]
    for yi, b in zip(y, bites):
        colour = "tab:red" if b["bites"] == "yes" else "tab:gray"
        ax.plot([b["baseline_acc_mean"], b["bound_acc_mean"]], [yi, yi], color=colour, lw=2, zorder=1)
        ax.scatter(b["baseline_accs"], [yi] * len(b["baseline_accs"]), s=14, color="tab:blue", zorder=2)
        ax.scatter(b["bound_accs"], [yi] * len(b["bound_accs"]), s=14, color="tab:green", zorder=2)
    ax.set_yticks(y)
    ax.set_yticklabels([f"{setting_label(b)} (bites: {b['bites']})" for b in bites], fontsize=7)
    ax.scatter([], [], color="tab:blue", label="vanilla, one dot per seed")
    ax.scatter([], [], color="tab:green", label="clean-MNIST bound, same network and schedule")
    ax.plot([], [], color="tab:red", lw=2, label="gap of a setting that bites")
    ax.set_xlabel("test accuracy % (shifted test set; MNIST's own for the bound)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title("Where does the shortcut bite? (unguided runs only)", fontsize=10)
    fig.tight_layout()
    return fig


def verdict(rows: Sequence[dict[str, Any]]) -> Figure | None:
    """The verdict as a forest plot: each guided run's difference from the unguided
    baseline of its setting, with its 95 % interval, one panel per setting."""
    groups = by_setting(rows)
    if not groups:
        return None
    plt = pyplot()
    sizes = [len(g) for g in groups]
    fig, axes = plt.subplots(len(groups), 1, figsize=(10, 0.9 * len(groups) + 0.35 * sum(sizes)), dpi=110,
                             squeeze=False, gridspec_kw={"height_ratios": sizes})
    colour = {"helps": "tab:green", "hurts": "tab:red"}
    for ax, mine in zip(axes[:, 0], groups):
        y = np.arange(len(mine))[::-1]
        for yi, v in zip(y, mine):  # a run with one seed on a side has no interval: a bare point
            err = None if np.isnan(v["low"]) else [[v["diff"] - v["low"]], [v["high"] - v["diff"]]]
            ax.errorbar([v["diff"]], [yi], xerr=err, fmt="o",
                        capsize=3, color=colour.get(v["effect"], "tab:gray"))
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(y)
        ax.set_yticklabels([f"{v['label']} (n {v['n']}): {v['effect']}" for v in mine], fontsize=7)
        ax.set_ylim(-0.6, len(mine) - 0.4)
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(f"{setting_label(mine[0])}: against {mine[0]['baseline']} "
                     f"({mine[0]['baseline_acc_mean']:.2f} %, n {mine[0]['baseline_n']})", fontsize=8)
    axes[-1, 0].set_xlabel("difference from the unguided baseline, test accuracy points (95 % Welch t-interval)")
    fig.suptitle("Does alignment help? (green: helps, red: hurts, grey: no verdict of help)", fontsize=10)
    fig.tight_layout()
    return fig


def sweep(summary: dict[str, Any] | None, bound: dict[str, Any] | None = None) -> Figure | None:
    """Left: mean test accuracy per grid point (a heat map for two axes, a line for one),
    the point validation chose outlined. Right: every run's test accuracy, with the
    published number of the method when there is one, and, outlined, the same runs with
    their epoch chosen on test (the optimistic bound's share of each run): how much
    peeking would add is seen, labelled as what it is, never in place of the result."""
    if not summary or len(summary["axes"]) > 2:
        return None
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    names = list(summary["axes"])
    mean = {tuple(p["point"][k] for k in names): float(np.mean(p["test_acc"])) for p in summary["points"]}
    chosen = tuple(summary["chosen"][k] for k in names)
    if len(names) == 2:
        xs, ys = summary["axes"][names[0]], summary["axes"][names[1]]
        grid = np.array([[mean.get((x, y), np.nan) for x in xs] for y in ys])  # (len ys, len xs); NaN: left out
        im = left.imshow(grid, origin="lower", aspect="auto", cmap="viridis")
        left.set_xticks(range(len(xs)), [f"{x:g}" if isinstance(x, float) else str(x) for x in xs], fontsize=7)
        left.set_yticks(range(len(ys)), [f"{y:g}" if isinstance(y, float) else str(y) for y in ys], fontsize=7)
        left.set_xlabel(names[0])
        left.set_ylabel(names[1])
        left.scatter([xs.index(chosen[0])], [ys.index(chosen[1])], marker="s", s=120, facecolors="none",
                     edgecolors="red", linewidths=2)
        fig.colorbar(im, ax=left, label="mean test accuracy %")
        key = "\nred square: chosen on validation"  # in the title: a legend would hide grid cells
    else:
        xs = summary["axes"][names[0]]
        left.plot(range(len(xs)), [mean.get((x,), np.nan) for x in xs], marker="o")
        left.set_xticks(range(len(xs)), [str(x) for x in xs], fontsize=7)
        left.axvline(xs.index(chosen[0]), color="red", ls="--", label="chosen on validation")
        left.set_xlabel(names[0])
        left.set_ylabel("mean test accuracy %")
        left.legend(fontsize=7)
        key = ""
    left.set_title(f"test accuracy per grid point (shown after the choice){key}", fontsize=9)
    runs = [a for p in summary["points"] for a in p["test_acc"]]
    peeked = [a for p in bound["points"] for a in p["best_test_acc"]] if bound else []
    bins = np.histogram_bin_edges(runs + peeked, bins=min(30, max(5, len(runs) // 3)))
    right.hist(runs, bins=bins, color="tab:blue", alpha=0.8, label="epoch chosen on validation")
    if peeked:
        right.hist(peeked, bins=bins, histtype="step", color="tab:orange", lw=1.5,
                   label="epoch chosen on test: optimistic bound, not a result")
    if summary.get("published_acc") is not None:
        right.axvline(summary["published_acc"], color="black", ls="--",
                      label=f"published {summary['published_acc']:g} %")
    right.legend(fontsize=7)
    right.set_xlabel("test accuracy % of each run")
    right.set_ylabel("runs")
    right.set_title(f"{_name(summary['dataset'])}, {summary['method']}: all {len(runs)} runs", fontsize=9)
    fig.tight_layout()
    return fig


def write_figures(out: str | os.PathLike, tables: Tables, published: Sequence[dict[str, Any]],
                  stamp: str | None = None) -> list[Path]:
    """Draw every figure that the report's tables support and write it into ``out``;
    ``stamp`` (e.g. "smoke run: numbers mean nothing") is written across each of them."""
    rows = tables.rows
    figures = {"qualitative.png": qualitative(rows), **guidance_maps(rows), "curves.png": curves(rows),
               "accuracy.png": accuracy_bars(rows, published),
               "shortcut_search.png": shortcut_search(tables.bites), "verdict.png": verdict(tables.verdict),
               "sensitivity.png": sensitivity(tables.sensitivity, rows), "sweep.png": sweep(tables.sweep, tables.bound)}
    written = []
    for name, fig in figures.items():
        if fig is None:
            continue
        if stamp:
            fig.text(0.5, 0.5, stamp, ha="center", va="center", rotation=25, fontsize=28, color="red", alpha=0.35,
                     weight="bold", transform=fig.transFigure, zorder=10)
        written.append(save_figure(fig, Path(out) / name))
    return written
