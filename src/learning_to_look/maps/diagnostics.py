"""Is a map set any good? Checks against what the data set knows about each image.

On MNIST-like data the clean digit is known, so a map can be scored as a detector of
digit pixels (AUROC, pointing game), and on DecoyMNIST the share of its mass on the
decoy square says whether it would teach the shortcut. An AUROC below 0.5 means the
map is inverted (background scored above the digit), a known CLIP failure.
:func:`map_quality` puts one number on a training split's maps for the sensitivity
study, and :func:`mass_share` is shared with the attention evaluation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..data.builders import DIGIT_THRESHOLD
from ..errors import L2LError
from .base import ImageSet, digit_masks


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


def mass_share(maps: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """(N,) share of each image's non-negative map mass that lies inside ``region``
    (broadcast against the (N, H, W) maps), in the dtype of ``maps``. NaN where a map
    has no mass, so each caller decides how empty maps count (a nan-mean skips them)."""
    total = maps.flatten(1).sum(1)  # (N,)
    inside = (maps * region).flatten(1).sum(1)  # (N,)
    return torch.where(total > 0, inside / total.clamp_min(1e-12), torch.full_like(total, float("nan")))


def _nan_mean(values: torch.Tensor) -> float | None:
    """Mean over the non-NaN entries, None when there are none; in numpy, as it always was."""
    values = values.numpy()
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else None


def map_quality(maps: np.ndarray, split: ImageSet, threshold: float = DIGIT_THRESHOLD / 255,
                digit_threshold: int = DIGIT_THRESHOLD) -> dict[str, float]:
    """How well ``maps`` find the clean digit of each image of a *training* split:
    mean IoU of ``map > threshold`` (the binarisation the outline target applies)
    and mean AUROC of the map as a digit-pixel detector. Refuses the test split,
    which is only ever read for the final metrics."""
    if split.is_test:
        raise L2LError("map quality is measured on training images only, never on the test split")
    digit = digit_masks(split, digit_threshold, "map quality")  # (N, H, W)
    pred = np.asarray(maps) > threshold  # (N, H, W)
    inter = (pred & digit).reshape(len(digit), -1).sum(1)  # (N,)
    union = (pred | digit).reshape(len(digit), -1).sum(1)  # (N,)
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)  # (N,)
    return {"iou": float(iou.mean()), "auroc": mean_auroc(maps, digit), "n_images": int(len(digit))}


def _digit_checks(report: dict, maps: np.ndarray, digits: np.ndarray) -> None:
    """AUROC and pointing game of (N, H, W) ``maps`` against the digit pixels; warns when inverted."""
    masks = digits > DIGIT_THRESHOLD  # (N, H, W)
    report["auroc"] = mean_auroc(maps, masks)
    report["pointing_game"] = pointing_game(maps, masks)
    if report["auroc"] is not None and report["auroc"] < 0.5:
        report["warnings"].append(f"map looks inverted: AUROC {report['auroc']:.3f} < 0.5 (background scored above "
                                  "the digit); swap positive and negative prompts or try another variant")


def _decoy_checks(report: dict, maps: np.ndarray, decoys: np.ndarray) -> None:
    """Share of map mass on the (N, H, W) decoy squares; warns when well above their area."""
    share = mass_share(torch.as_tensor(maps, dtype=torch.float64), torch.as_tensor(decoys))  # (N,)
    report["decoy_mass"] = _nan_mean(share)
    report["decoy_area"] = float(decoys.mean())
    if report["decoy_mass"] is not None and report["decoy_mass"] > 2 * report["decoy_area"]:
        report["warnings"].append(f"map puts {report['decoy_mass']:.1%} of its mass on the decoy square "
                                  f"({report['decoy_area']:.1%} of the image): it would teach the shortcut")


def map_report(maps: np.ndarray, split: ImageSet, stats: dict | None = None, limit: int = 2000) -> dict:
    """Diagnostics of ``maps`` for ``split`` (first ``limit`` images for the per-image
    scores); keys absent when the split lacks what they need."""
    maps = np.asarray(maps, dtype=np.float32)  # (N, H, W)
    report: dict[str, Any] = {"n": int(len(maps)), "mean_map": float(maps.mean()) if maps.size else None,
                              "warnings": []}
    if split.digits is not None:
        _digit_checks(report, maps[:limit], np.asarray(split.digits)[:limit])
    decoys = split.decoy_masks()  # (N, H, W) bool or None
    if decoys is not None:
        _decoy_checks(report, maps[:limit], decoys[:limit])
    if stats and stats.get("patches"):
        report["artefact_fraction"] = stats["artefact_patches"] / stats["patches"]
    if stats and stats.get("images"):
        report["empty_fraction"] = stats["empty_maps"] / stats["images"]
    if report["mean_map"] is not None and (report["mean_map"] < 1e-3 or report["mean_map"] > 1 - 1e-3):
        report["warnings"].append(f"map is nearly constant (mean {report['mean_map']:.4f}); it gives no guidance")
    return report


def format_report(report: dict) -> list[str]:
    """Human-readable lines, warnings last."""
    parts = [f"images {report['n']}", f"mean map {report['mean_map']:.3f}" if report["mean_map"] is not None else None]
    for key, label, fmt in (("auroc", "AUROC vs digit", "{:.3f}"), ("pointing_game", "pointing game", "{:.1%}"),
                            ("decoy_mass", "mass on decoy", "{:.1%}"),
                            ("artefact_fraction", "artefact patches", "{:.2%}"),
                            ("empty_fraction", "all-zero maps", "{:.1%}")):
        if report.get(key) is not None:
            parts.append(f"{label} {fmt.format(report[key])}")
    return ["  ".join(p for p in parts if p)] + [f"warning: {w}" for w in report["warnings"]]
