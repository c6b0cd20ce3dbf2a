"""The report's figures, drawn from finished runs only (result.json and model.pt).

Each figure answers one question at a glance: where do the models look
(qualitative), what were they told to look at (maps), how did training go
(curves), how do the numbers compare with the papers (accuracy), and how good must
maps be (sensitivity). Test images appear only in the qualitative figure, which
shows the final, already selected models and chooses nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .attribution import minmax_normalize
from .data import load_dataset, train_val
from .data.preview import save_figure, to_display
from .report import DATASET_NAMES, PUBLISHED

BENCHMARKS = ("colormnist", "decoymnist")
N_EXAMPLES = 6


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _short(row: dict[str, Any]) -> str:
    """A legend / tick label: method, non-default backbone and input, then the map source."""
    head = " ".join([row["method"]] + ([row["backbone"]] if row["backbone"] != "lenet-gap" else [])
                    + (["colour-inv."] if row["input_transform"] != "none" else []))
    return head if row["maps_name"] == "none" else f"{head}\n{row['maps']}"


def _first_run(entries: list[dict[str, Any]], row: dict[str, Any]) -> dict[str, Any]:
    return next(e for e in entries if str(Path(e["run_dir"]).parent) == row["run_group"])


def _load_model(run_dir: str, backbone: str):
    from .models import build_backbone

    model = build_backbone(backbone)
    model.load_state_dict(torch.load(Path(run_dir) / "model.pt", map_location="cpu", weights_only=True))
    return model.eval()


def _cams(model, images: np.ndarray, labels: np.ndarray, input_transform: str) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, true-class CAM at 28x28 in [0, 1])."""
    from .data.pipeline import as_rgb, to_input
    from .evaluate import raw_attention

    x = as_rgb(to_input(images, model.input_size, input_transform))
    logits, att = raw_attention(model, x, torch.as_tensor(labels))
    att = F.interpolate(minmax_normalize(att.detach())[:, None], size=images.shape[-2:], mode="bilinear",
                        align_corners=False)[:, 0]
    return logits.argmax(1).numpy(), att.clamp(0, 1).numpy()


def _guided_row(rows: list[dict[str, Any]], dataset: str) -> dict[str, Any] | None:
    cands = [r for r in rows if r["dataset"] == dataset and r["method"] == "l2l" and r["backbone"] == "lenet-gap"
             and r["role"] in ("method", "vlm")]
    cands.sort(key=lambda r: (not r["real_vlm"], r["maps_name"] != "oracle"))
    return cands[0] if cands else None


def qualitative(out: Path, entries: list[dict[str, Any]], rows: list[dict[str, Any]], data_dir: Any = None) -> Path | None:
    """The paper's figure: input, vanilla CAM, guided CAM, for the first test image of
    each of the first classes (not picked by outcome)."""
    blocks = []
    for ds in BENCHMARKS:
        van = next((r for r in rows if r["dataset"] == ds and r["method"] == "vanilla" and r["backbone"] == "lenet-gap"
                    and r["role"] == "method"), None)
        guided = _guided_row(rows, ds)
        if van and guided:
            blocks.append((ds, van, guided))
    if not blocks:
        return None
    plt = _plt()
    fig, axes = plt.subplots(3 * len(blocks), N_EXAMPLES, figsize=(N_EXAMPLES * 1.35 + 1.2, 3 * len(blocks) * 1.45 + 0.5),
                             dpi=110, squeeze=False)
    for b, (ds, van, guided) in enumerate(blocks):
        test = load_dataset(ds, data_dir).test
        idx = np.array([np.flatnonzero(test.labels == c)[0] for c in range(N_EXAMPLES)])
        images, labels = test.images[idx], test.labels[idx]
        shown = to_display(images)
        panels = [("input", None, None)]
        for row in (van, guided):
            model = _load_model(_first_run(entries, row)["run_dir"], row["backbone"])
            panels.append((f"{row['method']} CAM\n{row['maps'] if row['maps_name'] != 'none' else '(no maps)'}",
                           *_cams(model, images, labels, row["input_transform"])))
        for p, (title, pred, cams) in enumerate(panels):
            r = 3 * b + p
            for c in range(N_EXAMPLES):
                ax = axes[r, c]
                ax.imshow(shown[c], interpolation="nearest")
                if cams is not None:
                    ax.imshow(cams[c], cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
                    ok = pred[c] == labels[c]
                    ax.set_title(f"pred {pred[c]}", fontsize=7, color="green" if ok else "red", pad=2)
                elif p == 0:
                    ax.set_title(f"label {labels[c]}", fontsize=7, pad=2)
                ax.set_xticks([])
                ax.set_yticks([])
            axes[r, 0].set_ylabel(f"{DATASET_NAMES[ds]}\n{title}" if p == 0 else title, fontsize=7)
    fig.suptitle("Where the models look on the shifted test set (first seed; CAM of the true class)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out)


def _map_rows(rows: list[dict[str, Any]], dataset: str) -> list[dict[str, Any]]:
    """One row per map source used on ``dataset``; of the degraded ones, the middle strength of each kind."""
    seen, by_kind = {}, {}
    for r in rows:
        if r["dataset"] != dataset or r["maps_name"] == "none":
            continue
        if r["maps_name"] == "degraded-oracle":
            by_kind.setdefault(r["map_options"].get("degradation"), []).append(r)
        else:
            seen.setdefault(r["maps"], r)
    for kind_rows in by_kind.values():
        kind_rows.sort(key=lambda r: r["map_options"].get("strength", 0))
        r = kind_rows[len(kind_rows) // 2]
        seen.setdefault(r["maps"], r)
    return list(seen.values())


def guidance_maps(out_dir: Path, entries: list[dict[str, Any]], rows: list[dict[str, Any]], data_dir: Any = None) -> list[Path]:
    """Per data set: training images, and under them the map of each source used for guidance."""
    from .config import TrainConfig
    from .maps import cached_maps, get_map_source

    written = []
    for ds in BENCHMARKS:
        map_rows = _map_rows(rows, ds)
        if not map_rows:
            continue
        dataset = load_dataset(ds, data_dir)
        train, _ = train_val(dataset)
        images = train.subset(np.arange(N_EXAMPLES))
        plt = _plt()
        fig, axes = plt.subplots(1 + len(map_rows), N_EXAMPLES, dpi=110, squeeze=False,
                                 figsize=(N_EXAMPLES * 1.2 + 1.6, (1 + len(map_rows)) * 1.25 + 0.5))
        shown = to_display(images.images)
        for c in range(N_EXAMPLES):
            axes[0, c].imshow(shown[c], interpolation="nearest")
            axes[0, c].set_title(f"label {images.labels[c]}", fontsize=7, pad=2)
        axes[0, 0].set_ylabel("training\nimage", fontsize=7)
        for i, row in enumerate(map_rows, 1):
            cfg = TrainConfig.from_dict(_first_run(entries, row)["result"]["config"])
            source = get_map_source(cfg.maps, **cfg.map_options)
            maps = (cached_maps(source, ds, dataset.train, progress=False)[images.indices] if source.cacheable
                    else source.generate(images))
            for c in range(N_EXAMPLES):
                axes[i, c].imshow(maps[c], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            axes[i, 0].set_ylabel(row["maps"].replace(" (", "\n(").replace("oracle ", "oracle\n"), fontsize=7)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(f"{DATASET_NAMES[ds]}: maps used for guidance (white = look here)", fontsize=9)
        fig.tight_layout()
        written.append(save_figure(fig, Path(out_dir) / f"maps_{ds}.png"))
    return written


def curves(out: Path, entries: list[dict[str, Any]], rows: list[dict[str, Any]]) -> Path | None:
    """Validation accuracy and alignment KL per epoch, mean over seeds with a ± std band."""
    shown = [r for r in rows if r["role"] != "sensitivity" and r["dataset"] in BENCHMARKS]
    datasets = [ds for ds in BENCHMARKS if any(r["dataset"] == ds for r in shown)]
    if not datasets:
        return None
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, len(datasets), figsize=(5.2 * len(datasets), 6.4), dpi=110, squeeze=False)
    colours = plt.get_cmap("tab10")
    for c, ds in enumerate(datasets):
        for k, row in enumerate(r for r in shown if r["dataset"] == ds):
            members = [e for e in entries if str(Path(e["run_dir"]).parent) == row["run_group"]]
            for a, key in enumerate(("val_acc", "val_kl")):
                series = [[h.get(key) for h in e["result"]["history"]] for e in members]
                if any(v is None for s in series for v in s):
                    continue
                arr = np.array(series, dtype=float)
                epochs = np.arange(arr.shape[1])
                mean, std = arr.mean(0), arr.std(0, ddof=1) if len(arr) > 1 else np.zeros(arr.shape[1])
                label = _short(row).replace("\n", " ")
                axes[a, c].plot(epochs, mean, color=colours(k % 10), label=label, marker="." if len(epochs) < 10 else None)
                axes[a, c].fill_between(epochs, mean - std, mean + std, color=colours(k % 10), alpha=0.2)
        e_att = {e["result"]["config"]["e_att"] for e in entries
                 if e["result"]["config"]["method"] in ("l2l", "gradcam-kl") and e["result"]["config"]["dataset"] == ds}
        for a in range(2):
            for k, x in enumerate(sorted(e_att)):
                axes[a, c].axvline(x - 0.5, color="black", ls=":", lw=1, label="E_att: l2l phase 2 starts" if k == 0 else None)
            axes[a, c].xaxis.set_major_locator(MaxNLocator(integer=True))
            axes[a, c].grid(alpha=0.3)
            axes[a, c].legend(fontsize=6.5, loc="best")
        axes[0, c].set_title(DATASET_NAMES[ds], fontsize=10)
        axes[0, c].set_ylabel("validation accuracy %")
        axes[1, c].set_ylabel("validation alignment KL(target || CAM)")
        axes[1, c].set_xlabel("epoch")
    fig.suptitle("Training curves (validation split, in-distribution); mean over seeds, band ± std", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out)


def accuracy_bars(out: Path, rows: list[dict[str, Any]]) -> Path | None:
    """Test accuracy per configuration with error bars; published numbers as markers."""
    datasets = [ds for ds in BENCHMARKS if any(r["dataset"] == ds for r in rows)]
    if not datasets:
        return None
    clean = next((r for r in rows if r["dataset"] == "mnist"), None)
    plt = _plt()
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 5.2), dpi=110, squeeze=False)
    for c, ds in enumerate(datasets):
        ax = axes[0, c]
        mine = [r for r in rows if r["dataset"] == ds and r["role"] != "sensitivity"]
        x = np.arange(len(mine))
        colours = ["tab:green" if r["role"] == "upper-bound" else "tab:gray" if r["role"] == "control" else "tab:blue"
                   for r in mine]
        ax.bar(x, [r["test_acc_mean"] for r in mine], yerr=[r["test_acc_std"] for r in mine], color=colours,
               capsize=3, label="measured here (mean ± std)")
        for xi, r in zip(x, mine):
            ax.text(xi, r["test_acc_mean"] + r["test_acc_std"] + 1.5, f"{r['test_acc_mean']:.1f}", ha="center", fontsize=7)
        pub_x = [xi for xi, r in zip(x, mine) if r["published_acc"] is not None]
        pub_y = [r["published_acc"] for r in mine if r["published_acc"] is not None]
        extra = [p for p in PUBLISHED if p["method"] is None]
        ex = np.arange(len(mine), len(mine) + len(extra))
        px, py = list(pub_x) + list(ex), pub_y + [p[ds] for p in extra]
        ax.scatter(px, py, marker="D", color="tab:red", zorder=3, clip_on=False, label="published (other papers)")
        for xi, yi in zip(px, py):
            ax.annotate(f"{yi}", (xi, yi), textcoords="offset points", xytext=(6, -3), fontsize=7, color="tab:red")
        labels = [_short(r) for r in mine] + [f"{p['label']}\n(published only)" for p in extra]
        ax.set_xticks(np.arange(len(labels)))
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
        if clean is not None:
            ax.axhline(clean["test_acc_mean"], color="tab:green", ls="--", lw=1, label="upper bound: clean MNIST")
        ax.set_ylim(0, 109)
        ax.set_ylabel("test accuracy % (shifted test set)")
        ax.set_title(DATASET_NAMES[ds], fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8)
    fig.suptitle("Test accuracy per method (green: upper bounds, grey: negative control)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return save_figure(fig, out)


def sensitivity(out: Path, sens: list[dict[str, Any]], rows: list[dict[str, Any]] = ()) -> Path | None:
    """Test accuracy against map IoU, one line per degradation from the clean oracle
    outwards; l2l with other map sources (intensity, a VLM) placed on the same axes."""
    datasets = [ds for ds in BENCHMARKS if any(s["dataset"] == ds for s in sens)]
    if not datasets:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4.4), dpi=110, squeeze=False)
    colours = plt.get_cmap("tab10")
    for c, ds in enumerate(datasets):
        ax = axes[0, c]
        pts = [s for s in sens if s["dataset"] == ds]
        ref = next((s for s in pts if s["degradation"] == "none"), None)
        kinds = sorted({s["degradation"] for s in pts} - {"none"})
        for k, kind in enumerate(kinds):
            line = sorted((s for s in pts if s["degradation"] == kind), key=lambda s: s["strength"])
            line = ([ref] if ref else []) + line
            xs = [s["map_iou"] for s in line]
            ax.errorbar(xs, [s["test_acc_mean"] for s in line], yerr=[s["test_acc_std"] for s in line], marker="o",
                        color=colours(k % 10), capsize=3, label=kind)
            for s in line[1 if ref else 0:]:
                ax.annotate(f"{s['strength']:g}", (s["map_iou"], s["test_acc_mean"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=7, color=colours(k % 10))
        if ref:
            ax.scatter([ref["map_iou"]], [ref["test_acc_mean"]], marker="*", s=160, color="black", zorder=3,
                       label="clean oracle")
        others = [r for r in rows if r["dataset"] == ds and r["method"] == "l2l" and r["backbone"] == "lenet-gap"
                  and r["maps_name"] not in ("oracle", "degraded-oracle", "none") and r["map_iou"] is not None]
        for j, r in enumerate(others):
            ax.errorbar([r["map_iou"]], [r["test_acc_mean"]], yerr=[r["test_acc_std"]], marker="X", ms=9, ls="none",
                        color=("dimgray", "tab:purple", "tab:brown")[j % 3], capsize=3, label=f"{r['maps']} maps")
        ax.set_xlabel("map quality: IoU of map > 10/255 with the digit (training images)")
        ax.set_ylabel("l2l test accuracy %")
        ax.set_title(DATASET_NAMES[ds], fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="maps (numbers: degradation strength)", title_fontsize=7)
    fig.suptitle("How good must the maps be? l2l on degraded oracle maps (annotation, not VLM)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out)


def write_figures(out: str | os.PathLike, entries: list[dict[str, Any]], summary: dict[str, Any],
                  data_dir: Any = None) -> list[Path]:
    out = Path(out)
    rows = summary["rows"]
    written = [qualitative(out / "qualitative.png", entries, rows, data_dir),
               *guidance_maps(out, entries, rows, data_dir),
               curves(out / "curves.png", entries, rows),
               accuracy_bars(out / "accuracy.png", rows),
               sensitivity(out / "sensitivity.png", summary["sensitivity"], rows)]
    return [p for p in written if p is not None]
