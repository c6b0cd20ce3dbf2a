"""Between images and patch grids: CLIP's normalised pixels, logits brought to the window and
to the image, and where sliding windows go."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_pixels(images: np.ndarray | torch.Tensor, size: int, mean: tuple, std: tuple) -> torch.Tensor:
    """uint8 (B, C, H, W) -> normalised float (B, 3, size, size); grey is repeated."""
    x = torch.as_tensor(np.asarray(images)).float() / 255.0
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=bool(x.shape[-1] > size or x.shape[-2] > size))
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, *size), bilinear as every official code brings logits to the window."""
    return F.interpolate(x.float(), size=tuple(size), mode="bilinear", align_corners=False)


def to_hw(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(B, C, S, S) at the model's input size -> (B, C, *hw): area down to a smaller image,
    so thin structures survive, bilinear up to a larger one."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    if hw[0] <= x.shape[-2] and hw[1] <= x.shape[-1]:
        return F.interpolate(x, size=tuple(hw), mode="area")
    return F.interpolate(x, size=tuple(hw), mode="bilinear", align_corners=False)


def to_image_size(patch_map: torch.Tensor, size: int, hw: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) patch scores -> (B, H, W) in [0, 1]: up to the model's input size, then to the image."""
    return to_hw(upsample(patch_map[:, None], (size, size)), hw)[:, 0].clamp(0, 1)


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Offsets of the sliding windows along one side, as the official codes place them:
    every ``stride`` pixels, the last one moved back to end at the border."""
    count = max(size - window + stride - 1, 0) // stride + 1
    return sorted({max(min(i * stride + window, size) - window, 0) for i in range(count)})
