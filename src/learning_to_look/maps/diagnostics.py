"""Is a map set any good? Checks against what the data set knows about each image.

On MNIST-like data the clean digit is known, so a map can be scored as a detector of
digit pixels (AUROC, pointing game), and on DecoyMNIST the share of its mass on the
decoy square says whether it would teach the shortcut. An AUROC below 0.5 means the
map is inverted (background scored above the digit), a known CLIP failure.
"""

from __future__ import annotations

from typing import Any

import numpy as np

DIGIT_THRESHOLD = 10


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve by the rank-sum rule, ties counted half; None when
    one class is absent."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels, dtype=bool).ravel()
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[inverse]
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def mean_auroc(maps: np.ndarray, masks: np.ndarray) -> float | None:
    """Mean per-image AUROC over images where both classes occur."""
    values = [a for m, t in zip(maps, masks) if (a := auroc(m, t)) is not None]
    return float(np.mean(values)) if values else None


def dilate(masks: np.ndarray, radius: int) -> np.ndarray:
    """Square dilation of (N, H, W) boolean masks by ``radius`` pixels."""
    out = np.asarray(masks, dtype=bool).copy()
    if radius <= 0:
        return out
    padded = np.pad(out, ((0, 0), (radius, radius), (radius, radius)))
    h, w = out.shape[1:]
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out |= padded[:, dy:dy + h, dx:dx + w]
    return out


def pointing_game(maps: np.ndarray, masks: np.ndarray, tolerance: int = 1) -> float:
    """Share of images whose map maximum (first in raster order on ties) lies on the
    digit, within ``tolerance`` pixels."""
    maps = np.asarray(maps)
    n, h, w = maps.shape
    flat = maps.reshape(n, -1).argmax(1)
    hit = dilate(masks, tolerance).reshape(n, -1)[np.arange(n), flat]
    return float(hit.mean()) if n else float("nan")


def mass_share(maps: np.ndarray, region: np.ndarray) -> float | None:
    """Mean over images with any map mass of the share of that mass inside ``region``."""
    maps = np.asarray(maps, dtype=np.float64)
    total = maps.sum(axis=(1, 2))
    inside = (maps * region).sum(axis=(1, 2))
    keep = total > 0
    return float((inside[keep] / total[keep]).mean()) if keep.any() else None


def map_report(maps: np.ndarray, split: Any, stats: dict | None = None, limit: int = 2000) -> dict:
    """Diagnostics of ``maps`` for ``split`` (first ``limit`` images for the per-image
    scores); keys absent when the split lacks what they need."""
    maps = np.asarray(maps, dtype=np.float32)
    report: dict[str, Any] = {"n": int(len(maps)), "mean_map": float(maps.mean()) if maps.size else None, "warnings": []}
    sub = maps[:limit]
    digits = getattr(split, "digits", None)
    if digits is not None:
        masks = np.asarray(digits)[:limit] > DIGIT_THRESHOLD
        report["auroc"] = mean_auroc(sub, masks)
        report["pointing_game"] = pointing_game(sub, masks)
        if report["auroc"] is not None and report["auroc"] < 0.5:
            report["warnings"].append(f"map looks inverted: AUROC {report['auroc']:.3f} < 0.5 (background scored above "
                                      "the digit); swap positive and negative prompts or try another variant")
    decoys = split.decoy_masks() if hasattr(split, "decoy_masks") else None
    if decoys is not None:
        report["decoy_mass"] = mass_share(sub, decoys[:limit])
        report["decoy_area"] = float(decoys[:limit].mean())
        if report["decoy_mass"] is not None and report["decoy_mass"] > 2 * report["decoy_area"]:
            report["warnings"].append(f"map puts {report['decoy_mass']:.1%} of its mass on the decoy square "
                                      f"({report['decoy_area']:.1%} of the image): it would teach the shortcut")
    if stats and stats.get("patches"):
        report["artefact_fraction"] = stats["artefact_patches"] / stats["patches"]
    if report["mean_map"] is not None and (report["mean_map"] < 1e-3 or report["mean_map"] > 1 - 1e-3):
        report["warnings"].append(f"map is nearly constant (mean {report['mean_map']:.4f}); it gives no guidance")
    return report


def format_report(report: dict) -> list[str]:
    """Human-readable lines, warnings last."""
    parts = [f"images {report['n']}", f"mean map {report['mean_map']:.3f}" if report["mean_map"] is not None else None]
    for key, label, fmt in (("auroc", "AUROC vs digit", "{:.3f}"), ("pointing_game", "pointing game", "{:.1%}"),
                            ("decoy_mass", "mass on decoy", "{:.1%}"), ("artefact_fraction", "artefact patches", "{:.2%}")):
        if report.get(key) is not None:
            parts.append(f"{label} {fmt.format(report[key])}")
    return ["  ".join(p for p in parts if p)] + [f"warning: {w}" for w in report["warnings"]]
