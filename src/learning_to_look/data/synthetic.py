"""``shapes-bg``: a spurious-background data set built offline in a second (no MNIST).

A bright shape (the class) is painted on a dark procedural texture. In training
the texture agrees with the class for most images, as the background does in
Waterbirds (Sagawa et al. 2020), so a network can score well by reading the
texture; the test split is balanced over every (shape, texture) pair, so only a
network that reads the shape scores well on every group. The clean shape is kept
as the object image (``digit_*``: what oracle maps and attention metrics read) and
``group_*`` = shape * N_TEXTURES + texture.
"""

from __future__ import annotations

import colorsys

import numpy as np

from .builders import DatasetSpec, register

SHAPES = ("circle", "square", "triangle", "plus")
TEXTURES = ("h-stripes", "v-stripes", "checks", "diagonal")
N_TEXTURES = len(TEXTURES)
#: Share of training images whose texture is their shape's own (Waterbirds has 95 %).
MAJORITY = 0.95
N_TRAIN, N_TEST = 12_000, 2_400  # the test split: 150 images per (shape, texture) group
SIDE = 28
SEED = 0
SHAPE_RADIUS = (5, 9)  # half the shape's side in pixels, drawn uniformly in [low, high)
SHAPE_VALUE = (170, 256)  # brightness of the shape's colour (HSV value, of 255)
TEXTURE_VALUE = (60, 130)  # brightness of the texture's lit cells: darker than any shape
GROUP_NAMES = tuple(f"{s}/{t}" for s in SHAPES for t in TEXTURES)


def shape_masks(kind: np.ndarray, cy: np.ndarray, cx: np.ndarray, r: np.ndarray) -> np.ndarray:
    """bool (N, SIDE, SIDE): shape ``kind[n]`` (index into SHAPES) centred at (cy, cx) with half-side r."""
    yy, xx = np.mgrid[:SIDE, :SIDE]
    dy, dx = yy[None] - cy[:, None, None], xx[None] - cx[:, None, None]  # (N,S,S)
    r = r[:, None, None].astype(np.float64)
    masks = np.stack([
        dy ** 2 + dx ** 2 <= r ** 2,  # circle
        (np.abs(dy) <= 0.8 * r) & (np.abs(dx) <= 0.8 * r),  # square
        (dy <= r) & (np.abs(dx) <= (dy + r) / 2),  # triangle, apex up
        ((np.abs(dx) <= r / 3) & (np.abs(dy) <= r)) | ((np.abs(dy) <= r / 3) & (np.abs(dx) <= r)),  # plus
    ])  # (4,N,S,S)
    return masks[kind, np.arange(len(kind))]


def texture_masks(kind: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """bool (N, SIDE, SIDE): the lit cells of texture ``kind[n]`` (index into TEXTURES), shifted by ``phase``."""
    yy, xx = np.mgrid[:SIDE, :SIDE]
    y, x = yy[None] + phase[:, None, None], xx[None] + phase[:, None, None]  # (N,S,S)
    lit = np.stack([(y // 2) % 2 == 0, (x // 2) % 2 == 0, ((y // 3) + (x // 3)) % 2 == 0, ((x + y) // 2) % 2 == 0])
    return lit[kind, np.arange(len(kind))]


def _colours(rng: np.random.Generator, n: int, value: tuple[int, int]) -> np.ndarray:
    """(N, 3) uint8 colours of random hue and saturation and a brightness drawn from ``value``."""
    h, s, v = rng.random(n), rng.uniform(0.3, 1.0, n), rng.integers(*value, size=n) / 255
    return np.round(np.array([colorsys.hsv_to_rgb(*c) for c in zip(h, s, v)]) * 255).astype(np.uint8)


def _textures(rng: np.random.Generator, labels: np.ndarray, split: str) -> np.ndarray:
    """Training: the label's own texture with probability MAJORITY, else one of the others.
    Test: every (label, texture) pair equally often."""
    if split == "test":
        return np.arange(len(labels)) // len(SHAPES) % N_TEXTURES
    other = (labels + rng.integers(1, N_TEXTURES, len(labels))) % N_TEXTURES
    return np.where(rng.random(len(labels)) < MAJORITY, labels % N_TEXTURES, other)


def _split(rng: np.random.Generator, n: int, split: str) -> dict[str, np.ndarray]:
    labels = np.arange(n) % len(SHAPES) if split == "test" else rng.integers(0, len(SHAPES), n)
    texture = _textures(rng, labels, split)
    r = rng.integers(*SHAPE_RADIUS, size=n)
    cy, cx = rng.integers(r, SIDE - r), rng.integers(r, SIDE - r)  # the whole shape inside the image
    shape = shape_masks(labels, cy, cx, r)  # (N,S,S)
    lit = texture_masks(texture, rng.integers(0, 6, n))  # (N,S,S)
    fg, bg = _colours(rng, n, SHAPE_VALUE), _colours(rng, n, TEXTURE_VALUE)  # (N,3)
    image = np.where(lit[:, None], bg[:, :, None, None], 0).astype(np.uint8)  # (N,3,S,S)
    image = np.where(shape[:, None], fg[:, :, None, None], image).astype(np.uint8)
    obj = np.where(shape, fg.max(axis=1)[:, None, None], 0).astype(np.uint8)  # (N,S,S) the clean object
    return {f"x_{split}": image, f"y_{split}": labels.astype(np.uint8), f"digit_{split}": obj,
            f"group_{split}": (labels * N_TEXTURES + texture).astype(np.uint8)}


def build_shapes_bg(_mnist: None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    return _split(rng, N_TRAIN, "train") | _split(rng, N_TEST, "test")


register(DatasetSpec("shapes-bg", build_shapes_bg, "shapes-bg, spurious texture background (synthetic)",
                     f"{len(SHAPES)} shapes on {N_TEXTURES} textures; training texture = the shape's own for "
                     f"{MAJORITY:.0%} of images, test balanced over the {len(GROUP_NAMES)} groups", channels=3,
                     num_classes=len(SHAPES), group_names=GROUP_NAMES, uses_mnist=False, class_names=SHAPES,
                     object_word="shape", shortcut="texture", shortcut_word="texture"))
