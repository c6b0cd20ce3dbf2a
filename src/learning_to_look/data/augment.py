"""Training-time augmentation for imported image sets: pure tensor functions on a batch.

The geometric ones (flip, random-resized crop) move the image, so they move every
per-image map a method reads (its ``aux``) with it, by the same affine grid: an
attention target stays on the object it marks, and one that summed to 1 still does.
Colour jitter touches the input only. The paper's benchmarks train without any.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

AUGMENTATIONS = ("flip", "crop", "jitter")
#: Random-resized crop: the kept area's share of the image, and its aspect-ratio range
#: (torchvision's ratio; its area floor of 0.08 loses the object of a small image, so 0.25).
CROP_SCALE, CROP_RATIO = (0.25, 1.0), (3 / 4, 4 / 3)
#: Colour jitter: brightness, contrast and saturation each scaled by a factor in [1 - J, 1 + J]
#: (torchvision's ColorJitter(0.4, 0.4, 0.4), the usual ImageNet setting).
JITTER = 0.4


def parse_augment(spec: str) -> tuple[str, ...]:
    """``"none"`` or a comma list of :data:`AUGMENTATIONS` -> the names, in a fixed order."""
    names = {n.strip() for n in spec.split(",") if n.strip()} - {"none"}
    unknown = sorted(names - set(AUGMENTATIONS))
    if unknown:
        raise ValueError(f"unknown augmentation {', '.join(unknown)}; choose none or a comma list of "
                         f"{', '.join(AUGMENTATIONS)}")
    return tuple(a for a in AUGMENTATIONS if a in names)


def affine(n: int, flip: bool, crop: bool, gen: torch.Generator) -> Tensor:
    """Per-image affine maps (n, 2, 3) from output to input coordinates in [-1, 1]: a
    random horizontal flip and a random crop of area share in CROP_SCALE."""
    theta = torch.zeros(n, 2, 3)
    sx = sy = torch.ones(n)
    cx = cy = torch.zeros(n)
    if crop:
        area = torch.empty(n).uniform_(*CROP_SCALE, generator=gen)  # (n,)
        ratio = torch.exp(torch.empty(n).uniform_(*map(math.log, CROP_RATIO), generator=gen))  # (n,)
        sx, sy = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)  # half-extents in [0, 1]
        cx = (1 - sx) * (2 * torch.rand(n, generator=gen) - 1)  # (n,) the crop stays inside the image
        cy = (1 - sy) * (2 * torch.rand(n, generator=gen) - 1)
    sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    theta[:, 0, 0], theta[:, 0, 2] = sign * sx, cx
    theta[:, 1, 1], theta[:, 1, 2] = sy, cy
    return theta


def warp(t: Tensor, theta: Tensor) -> Tensor:
    """``t`` (B, H, W) or (B, C, H, W) resampled through ``theta`` (B, 2, 3), at its own size."""
    x = t[:, None] if t.ndim == 3 else t  # (B,C,H,W)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)  # (B,H,W,2)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False).to(t.dtype)
    return out[:, 0] if t.ndim == 3 else out


def jitter(x: Tensor, gen: torch.Generator) -> Tensor:
    """Brightness, contrast and saturation jitter of inputs ``x`` (B, C, H, W) in [-1, 1]."""
    b = len(x)
    factor = lambda: (1 + JITTER * (2 * torch.rand(b, 1, 1, 1, generator=gen) - 1)).to(x)  # noqa: E731
    v = (x + 1) / 2  # (B,C,H,W) in [0, 1]
    v = v * factor()
    mean = v.mean(dim=(1, 2, 3), keepdim=True)
    v = (v - mean) * factor() + mean
    grey = v.mean(dim=1, keepdim=True)
    v = (v - grey) * factor() + grey
    return v.clamp(0, 1) * 2 - 1


def augment(x: Tensor, aux: dict[str, Tensor], names: tuple[str, ...],
            gen: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
    """One training batch augmented: inputs (B, C, H, W) and the spatial per-image maps in
    ``aux`` (ndim >= 3) through the same flip/crop; a map that summed to 1 is renormalised."""
    if "flip" in names or "crop" in names:
        theta = affine(len(x), "flip" in names, "crop" in names, gen)  # (B,2,3)
        x = warp(x, theta)
        aux = {k: _warp_map(v, theta) if v.ndim >= 3 else v for k, v in aux.items()}
    if "jitter" in names:
        x = jitter(x, gen)
    return x, aux


def _warp_map(m: Tensor, theta: Tensor) -> Tensor:
    """A per-image map through ``theta``; a distribution (rows summing to 1) stays one."""
    mass = m.flatten(1).sum(1)  # (B,)
    out = warp(m, theta)
    was_dist = (mass - 1).abs() < 1e-3
    if not bool(was_dist.any()):
        return out
    total = out.flatten(1).sum(1).clamp_min(1e-12).view(-1, *[1] * (m.ndim - 1))
    return torch.where(was_dist.view(-1, *[1] * (m.ndim - 1)), out / total, out)
