"""Counterexamples (Teso & Kersting 2019): copies of a batch whose irrelevant component is
randomised, as pure tensor functions. Inputs are normalised to [-1, 1] (data.pipeline);
``keep`` (B,1,H,W) in [0, 1] is the map at input resolution, where the image is kept. The
random draws are arguments, so a test can fix them; :func:`counterexample` draws them."""

from __future__ import annotations

import torch
from torch import Tensor


def blend(x: Tensor, keep: Tensor, fill: Tensor) -> Tensor:
    """``x`` where the map keeps it, ``fill`` elsewhere (soft maps blend the two)."""
    return keep * x + (1 - keep) * fill


def shuffled(x: Tensor, order: Tensor) -> Tensor:
    """Each image's pixels moved by its own permutation ``order`` (B, H*W) of positions,
    all channels together. (B,C,H,W)"""
    b, c, h, w = x.shape
    idx = order[:, None, :].expand(b, c, h * w)  # (B,C,H*W)
    return x.flatten(2).gather(2, idx).view(b, c, h, w)


def recoloured(x: Tensor, colour: Tensor) -> Tensor:
    """Each image's pixels given colour ``colour`` (B,3) in [0, 1] at their own brightness
    (the channel maximum, as in the colour-invariant transform). (B,3,H,W) in [-1, 1]"""
    bright = ((x + 1) / 2).amax(1, keepdim=True)  # (B,1,H,W) in [0,1]
    return 2 * bright * colour[:, :, None, None] - 1  # (B,3,H,W)


def counterexample(x: Tensor, keep: Tensor, component: str, fill: str | None, channels: int = 3) -> Tensor:
    """One counterexample per image of ``x`` (B,C,H,W), drawn from torch's global random
    stream (the run's, seeded and checkpointed by the trainer); noise has the data set's
    ``channels`` (grey noise for a grey set, whose inputs repeat one channel):
    - region: outside the map, uniform noise, another image's pixels or a shuffle (``fill``);
    - texture: outside the map, another image's pixels;
    - colour: inside the map, the pixels in a uniformly random colour."""
    b, c, h, w = x.shape
    if component == "colour":
        return blend(recoloured(x, torch.rand(b, 3, device=x.device)), keep, x)
    if component == "texture" or fill == "background":
        return blend(x, keep, x[torch.randperm(b, device=x.device)])
    if fill == "noise":
        return blend(x, keep, torch.rand(b, channels, h, w, device=x.device) * 2 - 1)
    order = torch.rand(b, h * w, device=x.device).argsort(1)  # (B,H*W) a permutation per image
    return blend(x, keep, shuffled(x, order))
