"""The torch side of the data: whole splits as tensors in memory, batched by index.

No DataLoader, PIL or per-sample Python objects: a split is converted once
(resize 28 -> 32 bilinear, [0, 1], normalise to [-1, 1]) and batches are index
slices, which is what makes a 30-epoch run take about a minute on two CPU cores.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

INPUT_SIZE = 32
INPUT_TRANSFORMS = ("none", "colour-invariant")
#: A split whose float inputs would take more bytes than this stays uint8 and is converted
#: batch by batch (a 60k MNIST split at 32 px is 0.7 GB as float; 10k images at 224 px, 6 GB).
PRECONVERT_BYTES = 1 << 30
#: Images per evaluation pass at 32 px; fewer at larger inputs, so activations stay bounded.
EVAL_IMAGES_32PX = 1000


def eval_batch_size(size: int) -> int:
    """Images per evaluation pass for inputs of ``size`` px: 1000 at 32 px, 20 at 224 px."""
    return max(8, EVAL_IMAGES_32PX * INPUT_SIZE ** 2 // size ** 2)


def preconverts(n: int, channels: int, size: int) -> bool:
    """Whether a split of ``n`` images is converted to float inputs once (small) or per batch."""
    return n * channels * size * size * 4 <= PRECONVERT_BYTES


def colour_invariant(images: np.ndarray) -> np.ndarray:
    """Per-image channel max, rescaled so each image's brightest pixel is 255 again:
    what a colour-blind input looks like (the ColorMNIST upper bound)."""
    gray = images.max(axis=1, keepdims=True).astype(np.float32)
    peak = gray.reshape(len(gray), -1).max(axis=1).reshape(-1, 1, 1, 1)
    return np.round(gray / np.maximum(peak, 1) * 255).astype(np.uint8)


def to_input(images: np.ndarray | torch.Tensor, size: int = INPUT_SIZE, transform: str = "none",
             chunk: int = 8192) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 (N, C, size, size) in [-1, 1], on the images' device.
    Grey stays one channel here; :func:`as_rgb` repeats it when a batch is fed to the network."""
    if transform not in INPUT_TRANSFORMS:
        raise ValueError(f"unknown input transform {transform!r}; choose one of {INPUT_TRANSFORMS}")
    if transform == "colour-invariant":
        images = colour_invariant(np.asarray(images))
    images = torch.as_tensor(images)
    out = torch.empty(len(images), images.shape[1], size, size, device=images.device)
    for i in range(0, len(images), chunk):
        x = images[i:i + chunk].float().div_(255.0)
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        out[i:i + chunk] = (x - 0.5) / 0.5
    return out


def as_rgb(x: torch.Tensor) -> torch.Tensor:
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def batch_indices(n: int, batch_size: int, generator: torch.Generator | None = None,
                  shuffle: bool = True) -> Iterator[torch.Tensor]:
    """Index batches over ``n`` items: a fresh permutation per call when shuffling,
    the last batch kept even if short (as DataLoader with drop_last=False)."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    yield from order.split(batch_size)
