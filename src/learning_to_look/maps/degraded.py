"""Oracle maps made worse on purpose, to learn how good a VLM's maps must be.

No published anchor says how much map error Learning to Look tolerates. Training
on the oracle mask degraded in one controlled way at a time (blur, a shift, a
missing part of the digit, the decoy added, pixel noise), and plotting test
accuracy against a map-quality measure, answers it for a user's own VLM: measure
its maps the same way and read off the expected accuracy.

Every random choice for image ``i`` comes from a generator seeded by
``(seed, i)``, with ``i`` the image's position in the full training split, so a
subset gets exactly the maps the full split gives those images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..data.builders import DIGIT_THRESHOLD, square_masks
from ..errors import L2LError
from .base import (ImageSet, MapGenerator, check_choice, check_int, check_number, digit_masks, option,
                   register_map_source)

#: degradation -> what ``strength`` means.
DEGRADATIONS = {
    "none": "ignored: the oracle mask itself",
    "blur": "Gaussian blur, standard deviation in pixels",
    "shift": "shift by this many pixels in a random direction per image",
    "drop": "fraction of the digit's pixels removed, as one contiguous part cut by a random line",
    "decoy": "fraction of images whose map also covers the 5x5 decoy square "
             "(a random corner where the data set has none)",
    "noise": "probability that each pixel of the mask is flipped",
}
UNIT_RANGE = ("drop", "decoy", "noise")
#: blur and shift are in pixels; beyond the 28-pixel image a map carries no position left.
MAX_PIXELS = 28.0
DECOY_SIZE = 5


def _per_image(seed: int, indices: np.ndarray, size: int) -> np.ndarray:
    """(N, size) uniforms in [0, 1): row ``k`` depends only on ``(seed, indices[k])``."""
    out = np.empty((len(indices), size))
    for k, i in enumerate(indices):
        out[k] = np.random.default_rng([seed, int(i)]).random(size)
    return out


def gaussian_blur(masks: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return masks.astype(np.float32)
    radius = max(1, int(np.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-x ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    t = torch.as_tensor(masks, dtype=torch.float32)[:, None]
    t = F.conv2d(t, k.view(1, 1, 1, -1), padding=(0, radius))
    t = F.conv2d(t, k.view(1, 1, -1, 1), padding=(radius, 0))
    return t[:, 0].clamp(0, 1).numpy()


def shift(masks: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Each mask moved by its own integer (dy, dx); what leaves the frame is lost, zeros come in."""
    n, h, w = masks.shape
    pad = int(max(np.abs(dy).max(initial=0), np.abs(dx).max(initial=0)))
    padded = np.pad(masks, ((0, 0), (pad, pad), (pad, pad)))
    rows = np.arange(h)[None, :] + pad - dy[:, None]
    cols = np.arange(w)[None, :] + pad - dx[:, None]
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def drop_part(masks: np.ndarray, fraction: float, angles: np.ndarray) -> np.ndarray:
    """Remove ``round(fraction * area)`` mask pixels of each image: those furthest along a
    direction at ``angles``, so the missing part is contiguous, as when a VLM misses a stroke."""
    n, h, w = masks.shape
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    proj = np.cos(angles)[:, None, None] * xs + np.sin(angles)[:, None, None] * ys
    on = masks > 0.5
    proj = np.where(on, proj, -np.inf).reshape(n, -1)
    rank = np.argsort(np.argsort(-proj, axis=1, kind="stable"), axis=1, kind="stable").reshape(n, h, w)
    k = np.round(fraction * on.reshape(n, -1).sum(1))
    return np.where(on & (rank >= k[:, None, None]), 1.0, 0.0).astype(np.float32)


@dataclass
class DegradedOracleMaps(MapGenerator):
    """The oracle digit mask degraded in one controlled way (see ``DEGRADATIONS``).
    Still annotation: it is made from the digit the data set was built with."""

    name: ClassVar[str] = "degraded-oracle"
    kind: ClassVar[str] = "annotation"
    reads_objects: ClassVar[bool] = True
    summary: ClassVar[str] = ("the oracle mask degraded on purpose (blur, shift, dropped part, decoy added, pixel "
                              "noise) for the sensitivity study; not a VLM")
    cacheable: ClassVar[bool] = False
    degradation: str = option("none", "How the oracle mask is degraded.", flag=False)
    strength: float = option(0.0, "How strongly (pixels, or a share for drop, decoy and noise).", flag=False, cli=float)
    seed: int = option(0, "Seed of the per-image randomness of a degradation.", flag=False, cli=int)
    threshold: int = option(DIGIT_THRESHOLD, "Object pixels are brighter than this (of 255).", flag=False, cli=int)

    def __post_init__(self) -> None:
        check_choice("degradation", self.degradation, DEGRADATIONS)
        high = 1.0 if self.degradation in UNIT_RANGE else MAX_PIXELS
        try:
            check_number("strength", self.strength, low=0, high=high)
        except L2LError:
            unit = "" if self.degradation in UNIT_RANGE else " pixels"
            raise L2LError(f"strength of {self.degradation} must be a number in [0, {high:g}]{unit}, "
                           f"got {self.strength!r}; use e.g. strength: {0.5 if high == 1 else 2.0}") from None
        check_int("seed", self.seed, 0, 2**32 - 1, example=0)
        check_int("threshold", self.threshold, 0, 254, example=DIGIT_THRESHOLD)

    def generate(self, split: ImageSet) -> np.ndarray:
        masks = digit_masks(split, self.threshold, f"map source {self.name}").astype(np.float32)  # (N, H, W)
        indices = np.arange(len(masks)) if split.indices is None else np.asarray(split.indices)  # (N,)
        d, s = self.degradation, float(self.strength)
        if d == "none" or s == 0:
            return masks
        if d == "blur":
            return gaussian_blur(masks, s)
        if d == "noise":
            flips = _per_image(self.seed, indices, masks[0].size).reshape(masks.shape) < s  # (N, H, W)
            return np.where(flips, 1.0 - masks, masks).astype(np.float32)
        u = _per_image(self.seed, indices, 3)  # (N, 3)
        if d == "shift":
            angle = 2 * np.pi * u[:, 0]
            return shift(masks, np.round(s * np.sin(angle)).astype(int), np.round(s * np.cos(angle)).astype(int))
        if d == "drop":
            return drop_part(masks, s, 2 * np.pi * u[:, 0])
        added = _decoy_region(split, u, masks.shape[-1]) & (u[:, 0] < s)[:, None, None]  # (N, H, W)
        return np.maximum(masks, added).astype(np.float32)


def _decoy_region(split: ImageSet, u: np.ndarray, size: int) -> np.ndarray:
    """bool (N, size, size): the data set's decoy squares, or where it has none a 5x5
    square in the corner that the (N, 3) uniforms ``u`` pick for each image."""
    region = split.decoy_masks()
    if region is not None:
        return region
    far = size - DECOY_SIZE
    corners = np.stack([np.where(u[:, 1] < 0.5, 0, far), np.where(u[:, 2] < 0.5, 0, far)], 1)  # (N, 2)
    return square_masks(corners, DECOY_SIZE, size)


register_map_source(DegradedOracleMaps)
