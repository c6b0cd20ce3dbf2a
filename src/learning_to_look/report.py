"""Aggregation of run results into the report: mean +- std over seeds, published
numbers beside measured ones, and text that says what each number is.

Two rules are enforced here rather than trusted to callers: a map source is only
called a VLM when its kind is ``vlm`` *and* real pretrained weights made it, and
published numbers always carry their source and the word "published".
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from .io import atomic_write_json, atomic_write_text
from .methods import METHODS


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n-1); std is 0 for a single value."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


CDEP_SOURCE = "Rieger et al., ICML 2020 (CDEP)"
L2L_SOURCE = "Yang et al. 2025, arXiv 2509.21247 (WeCLIP+ masks, 1 seed)"

#: Test accuracy % under the CDEP protocol (PROTOCOL 5); ``method`` is ours where we run it.
PUBLISHED = [
    {"label": "Vanilla", "method": "vanilla", "colormnist": 0.2, "decoymnist": 60.1, "source": CDEP_SOURCE},
    {"label": "RRR", "method": "rrr", "colormnist": 0.0, "decoymnist": 99.0, "source": CDEP_SOURCE},
    {"label": "Expected Gradients", "method": None, "colormnist": 10.0, "decoymnist": 97.8, "source": CDEP_SOURCE},
    {"label": "CDEP", "method": None, "colormnist": 31.0, "decoymnist": 97.2, "source": CDEP_SOURCE},
    {"label": "Learning to Look", "method": "l2l", "colormnist": 64.88, "decoymnist": 96.19, "source": L2L_SOURCE},
]

DATASET_NAMES = {"colormnist": "ColorMNIST", "decoymnist": "DecoyMNIST", "mnist": "MNIST (clean)"}
METRICS = ("accuracy", "cam_on_digit", "cam_on_decoy", "grad_on_digit", "grad_on_decoy")
CSV_FIELDS = ("origin", "dataset", "method", "backbone", "maps", "maps_kind", "role", "input_transform", "map_options",
              "n_seeds", "seeds", "test_acc_mean", "test_acc_std", "cam_on_digit", "cam_on_decoy", "grad_on_digit",
              "grad_on_decoy", "map_iou", "map_auroc", "seconds_per_run", "seconds_per_epoch", "epochs",
              "train_subset", "published_acc", "published_source", "run_group")


def is_real_vlm(maps: dict[str, Any]) -> bool:
    return maps.get("kind") == "vlm" and bool(maps.get("real_vlm", False))


def maps_kind(maps: dict[str, Any]) -> str:
    """The kind to print: ``vlm`` only for real pretrained weights."""
    if maps.get("kind") == "vlm" and not is_real_vlm(maps):
        return "test model, not a VLM"
    return maps.get("kind", "none")


def maps_label(maps: dict[str, Any]) -> str:
    """A map source by its name and kind, with the options that tell rows apart."""
    name = maps.get("name", "none")
    if name == "none":
        return "none"
    cfg = maps.get("config") or {}
    if name == "degraded-oracle":
        name = f"{name} {cfg.get('degradation')}={cfg.get('strength'):g}"
    elif maps.get("kind") == "vlm":
        name = f"{name}/{cfg.get('variant', '')}".rstrip("/")
    return f"{name} ({maps_kind(maps)})"


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else None


def aggregate(entries: list[dict[str, Any]], quality: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per configuration (all seeds of a cell), in the order first seen."""
    quality = quality or {}
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in entries:
        groups[str(Path(e["run_dir"]).parent)].append(e)
    rows = []
    for group, members in groups.items():
        first = members[0]
        cfg, cell, maps = first["result"]["config"], first["cell"], first["result"]["maps"]
        tests = [m["result"]["test"] for m in members]
        acc_mean, acc_std = mean_std([t["accuracy"] for t in tests])
        q = quality.get(first["run_dir"]) or {}
        row = {
            "origin": "measured", "dataset": cfg["dataset"], "method": cfg["method"], "backbone": cfg["backbone"],
            "maps": maps_label(maps), "maps_kind": maps_kind(maps), "maps_name": maps.get("name", "none"),
            "real_vlm": is_real_vlm(maps), "role": cell["role"], "input_transform": cfg["input_transform"],
            "map_options": cell.get("map_options") or {}, "n_seeds": len(members),
            "seeds": [m["result"]["config"]["seed"] for m in members],
            "test_acc_mean": acc_mean, "test_acc_std": acc_std,
            **{k: _mean([t.get(k) for t in tests]) for k in METRICS[1:]},
            "map_iou": q.get("iou"), "map_auroc": q.get("auroc"),
            "seconds_per_run": _mean([m["result"]["wall_seconds"] for m in members]),
            "seconds_per_epoch": _mean([m["result"]["seconds_per_epoch"] for m in members]),
            "epochs": cfg["epochs"], "train_subset": cfg["train_subset"],
            "published_acc": None, "published_source": None, "run_group": group,
        }
        rows.append(row)
    for pub in PUBLISHED:
        for ds in ("colormnist", "decoymnist"):
            match = best_match(rows, pub["method"], ds)
            if match is not None:
                match["published_acc"], match["published_source"] = pub[ds], f"{pub['label']}: {pub['source']}"
    return rows


def best_match(rows: list[dict[str, Any]], method: str | None, dataset: str) -> dict[str, Any] | None:
    """The measured row to set beside a published number: the same method on the
    paper's network, with a real VLM's maps if there are any, else the oracle's."""
    if method is None:
        return None
    candidates = [r for r in rows if r["method"] == method and r["dataset"] == dataset and r["role"] in ("method", "vlm")]
    candidates.sort(key=lambda r: (not r["real_vlm"], r["backbone"] != "lenet-gap", r["maps_name"] not in ("oracle", "none")))
    return candidates[0] if candidates else None


def published_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each published number with the measured row set beside it (if any)."""
    out = []
    for pub in PUBLISHED:
        for ds in ("colormnist", "decoymnist"):
            m = best_match(rows, pub["method"], ds)
            out.append({"origin": "published", "dataset": ds, "method": pub["label"], "published_acc": pub[ds],
                        "published_source": pub["source"],
                        "measured_acc_mean": m["test_acc_mean"] if m else None,
                        "measured_acc_std": m["test_acc_std"] if m else None, "measured_n": m["n_seeds"] if m else None,
                        "measured_as": f"{m['method']}, {m['backbone']}, maps {m['maps']}" if m else None})
    return out


def sensitivity_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Degraded-oracle rows plus, per data set, the clean oracle l2l row as strength 0."""
    sens = [r for r in rows if r["role"] == "sensitivity"]
    out = []
    for ds in sorted({r["dataset"] for r in sens}):
        ref = next((r for r in rows if r["dataset"] == ds and r["method"] == "l2l" and r["maps_name"] == "oracle"
                    and r["backbone"] == "lenet-gap" and r["role"] == "method"), None)
        members = ([(ref, "none", 0.0)] if ref else []) + [
            (r, r["map_options"].get("degradation"), float(r["map_options"].get("strength", 0))) for r in sens if r["dataset"] == ds]
        for r, kind, strength in members:
            out.append({"dataset": ds, "degradation": kind, "strength": strength, "map_iou": r["map_iou"],
                        "map_auroc": r["map_auroc"], "test_acc_mean": r["test_acc_mean"], "test_acc_std": r["test_acc_std"],
                        "n_seeds": r["n_seeds"]})
    return out


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


def _settings_text(settings: dict[str, Any]) -> str:
    d = settings["paper_defaults"]
    run = settings["run"] or {}
    over = ", ".join(f"{k} = {v}" for k, v in run.items()) or "none (the paper's settings throughout)"
    return (f"Profile-wide settings: {over}. Everything else is the paper's (PROTOCOL 3.5): {d['epochs']} epochs, "
            f"batch {d['batch_size']}, SGD lr {d['lr']:g}, momentum {d['momentum']}, weight decay {d['weight_decay']:g}, "
            f"StepLR({d['step_size']}, {d['gamma']}), E_att {d['e_att']} (l2l, gradcam-kl), lambda0 "
            f"{METHODS['l2l'].default_lambda:g} ramped (l2l, gradcam-kl) / {METHODS['rrr'].default_lambda:g} (rrr), "
            f"{d['target']} target. A validation subset of a fifth of the training subset is used when "
            "`train_subset` is set.")


def _map_sources_text(rows: list[dict[str, Any]], settings: dict[str, Any]) -> list[str]:
    names = {r["maps_name"] for r in rows}
    lines = []
    if "oracle" in names:
        lines.append("- **oracle** (annotation): the digit's own pixels, known from how the data set was built. "
                     "An upper bound standing in for a perfect VLM; not a VLM.")
    if "intensity" in names:
        lines.append("- **intensity** (image-statistic): bright pixels of the image itself, no data-set knowledge and no "
                     "VLM. On DecoyMNIST it covers the decoy too: a negative control.")
    if "degraded-oracle" in names:
        lines.append("- **degraded-oracle** (annotation): the oracle mask degraded on purpose (blur, shift, dropped part, "
                     "decoy added, pixel noise) for the sensitivity study; not a VLM.")
    vlm = settings.get("vlm")
    if vlm and vlm["real_vlm"]:
        lines.append(f"- **{vlm['backend']}/{vlm['variant']}** (vlm): training-free dense CLIP maps from "
                     f"`{vlm['identity']}`, prompt \"a handwritten digit\" against background prompts.")
    elif vlm:
        lines.append(f"- **{vlm['backend']}/{vlm['variant']}** from `{vlm['identity']}`: randomly initialised test "
                     "weights, so these are **not** VLM maps and no row here is a VLM result.")
    else:
        lines.append("- No VLM weights were given (`--vlm`), so the VLM rows were skipped: **no number in this "
                     "report comes from VLM maps.** The paper's WeCLIP+ maps are not reproduced here.")
    return lines


def render_markdown(rows: list[dict[str, Any]], published: list[dict[str, Any]], sens: list[dict[str, Any]],
                    settings: dict[str, Any], environment: dict[str, Any], n_runs: int) -> str:
    seeds = settings["seeds"]
    methods = sorted({f"{r['method']} ({r['backbone']})" for r in rows if r["role"] in ("method", "vlm")})
    parts = [
        "# Learning to Look: reproduction report",
        "",
        f"Profile **{settings['profile']}**: {settings['description']}.",
        "",
        "## What was run",
        "",
        f"- {n_runs} training runs: {len(rows)} configurations, seeds {', '.join(map(str, seeds))} "
        f"(sensitivity seeds: {', '.join(map(str, settings['sensitivity'].get('seeds') or seeds))}).",
        f"- Methods: {', '.join(methods)}; upper bounds: the same network on clean MNIST and on colour-invariant "
        "ColorMNIST input.",
        f"- {_settings_text(settings)}",
        "- Model selection used the in-distribution validation split only (PROTOCOL 3.6). The shifted test split was "
        "read once per run, after selection, for the test metrics below; nothing was chosen with it. Map quality "
        "(IoU of map > 10/255, AUROC to the clean digit) is measured on training images.",
        "- CAM on digit / decoy: share of the positive class-activation (Grad-CAM for cdep-cnn) mass on the clean "
        "digit (dilated 3x3) / on the decoy square, on the test split.",
        "",
        "Map sources:",
        "",
        *_map_sources_text(rows, settings),
        "",
        "## Results (measured here)",
        "",
        "Test accuracy in %, mean ± sample std over seeds; n = seeds. The published column is the number another "
        "paper reports for that method (source in the next table), not measured here.",
        "",
    ]
    main = [r for r in rows if r["role"] != "sensitivity"]
    body = [[DATASET_NAMES.get(r["dataset"], r["dataset"]), r["method"] + (" (colour-invariant input)" if r["input_transform"] != "none" else ""),
             r["backbone"], r["maps"], r["role"], str(r["n_seeds"]), _acc(r["test_acc_mean"], r["test_acc_std"], r["n_seeds"]),
             _num(r["cam_on_digit"]), _num(r["cam_on_decoy"]),
             "—" if r["map_iou"] is None else f"{r['map_iou']:.2f} / {_num(r['map_auroc'])}",
             _num(r["seconds_per_run"], 0), "—" if r["published_acc"] is None else f"{r['published_acc']} (published)"]
            for r in main]
    parts += [_table(["data set", "method", "backbone", "maps (kind)", "role", "n", "test acc %", "CAM on digit",
                      "CAM on decoy", "map IoU / AUROC", "s / run", "published %"], body), ""]
    parts += ["## Published numbers (not measured here)", "",
              "Copied from the papers named; their networks and maps differ from ours where noted. The measured column "
              "is the matching row above.", ""]
    body = [[p["method"], DATASET_NAMES[p["dataset"]], str(p["published_acc"]),
             "not run here" if p["measured_acc_mean"] is None else f"{_acc(p['measured_acc_mean'], p['measured_acc_std'], p['measured_n'])} (n={p['measured_n']}; {p['measured_as']})",
             p["published_source"]] for p in published]
    parts += [_table(["method (published)", "data set", "published test acc %", "measured here", "source"], body), ""]
    if sens:
        parts += ["## Map-quality sensitivity", "",
                  "l2l trained on oracle maps degraded in one controlled way at a time; strength 0 is the clean oracle. "
                  "Map quality is measured on training images. Use it to judge a VLM: measure its maps the same way "
                  "(`learning_to_look.maps.map_quality`) and read the expected accuracy off `sensitivity.png`.", ""]
        body = [[DATASET_NAMES.get(s["dataset"], s["dataset"]), s["degradation"], f"{s['strength']:g}", _num(s["map_iou"]),
                 _num(s["map_auroc"]), _acc(s["test_acc_mean"], s["test_acc_std"], s["n_seeds"]), str(s["n_seeds"])] for s in sens]
        parts += [_table(["data set", "degradation", "strength", "map IoU", "map AUROC", "test acc %", "n"], body), ""]
    parts += ["## Figures", "",
              "- `qualitative.png`: the first test image of each of the first classes, the CAM of the selected vanilla "
              "model and of the selected guided model (first seed); shown only, nothing is chosen from it.",
              "- `maps_<data set>.png`: training images and the map of each map source used for guidance.",
              "- `curves.png`: validation accuracy and validation alignment KL per epoch, mean over seeds (band: ± std).",
              "- `accuracy.png`: test accuracy per method with ± std error bars; published numbers marked.",
              *(["- `sensitivity.png`: test accuracy against map IoU for each degradation."] if sens else []),
              "", "## Environment", "",
              f"device {environment.get('device', '?')}, torch {environment.get('torch', '?')}, "
              f"{environment.get('threads', '?')} threads, learning_to_look {environment.get('learning_to_look', '?')} "
              f"(git {str(environment.get('git_commit') or 'unknown')[:10]}), python {environment.get('python', '?')}. "
              "Full settings of every configuration: `results.json`.", ""]
    return "\n".join(parts)


def _csv(rows: list[dict[str, Any]], published: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else ("" if v is None else v) for k, v in r.items()})
    for p in published:
        w.writerow({"origin": "published", "dataset": p["dataset"], "method": p["method"],
                    "published_acc": p["published_acc"], "published_source": p["published_source"]})
    return buf.getvalue()


def write_report(out: Path, entries: list[dict[str, Any]], quality: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """Write report.md, results.csv and results.json into ``out``; returns what they hold."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = aggregate(entries, quality)
    published = published_rows(rows)
    sens = sensitivity_rows(rows)
    first = entries[0]["result"] if entries else {}
    environment = {**first.get("environment", {}), "device": first.get("device")}
    runs = [{"run_dir": e["run_dir"], "role": e["cell"]["role"], "config": e["result"]["config"], "maps": e["result"]["maps"],
             "selection": e["result"]["selection"], "test": e["result"]["test"], "wall_seconds": e["result"]["wall_seconds"],
             "cached": e["cached"]} for e in entries]
    summary = {"generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "settings": settings, "environment": environment,
               "rows": rows, "published": published, "sensitivity": sens, "runs": runs}
    atomic_write_text(out / "report.md", render_markdown(rows, published, sens, settings, environment, len(entries)))
    atomic_write_text(out / "results.csv", _csv(rows, published))
    atomic_write_json(out / "results.json", summary)
    return summary
