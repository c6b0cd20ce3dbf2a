"""The losses of the language-guided and XIL baselines (GALS, Energy, HINT), as pure
tensor functions of attributions and maps, each written from its official code or paper
(docs/methods.md names the source of every choice)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: Below this total positive attribution an image's energy is 1 - (attribution inside), as in
#: Rao et al.'s code: no division by (almost) nothing.
ENERGY_EPS = 1e-7


def gals_keep(maps: Tensor, size: int) -> Tensor:
    """GALS's map (N,H,W) -> where input gradients are kept, (N,1,size,size): each map
    minus its minimum, divided by its maximum (1 where the maximum is 0), then resized
    bilinearly to the input, as GALS's ``parse_attention`` does."""
    flat = maps.flatten(1).float()  # (N,H*W)
    peak = flat.amax(1, keepdim=True)  # (N,1)
    norm = (flat - flat.amin(1, keepdim=True)) / torch.where(peak == 0, torch.ones_like(peak), peak)
    norm = norm.view(len(maps), 1, *maps.shape[1:])  # (N,1,H,W)
    return F.interpolate(norm, size=(size, size), mode="bilinear", align_corners=False)


def gals_penalty(grads: Tensor, keep: Tensor, valid: Tensor) -> Tensor:
    """GALS's "gradient outside" term: ``L1Loss(dy_dx, dy_dx * keep)``, the mean of
    |grads * (1 - keep)| over every element of the images with a map (``valid``), 0 when
    none has one. ``grads`` (B,C,H,W) is d(mean CE)/dx, ``keep`` (B,1,H,W), ``valid`` (B,) bool."""
    if not bool(valid.any()):
        return grads.sum() * 0.0
    g = grads[valid]  # (V,C,H,W)
    return (g - g * keep[valid]).abs().mean()


def energy_loss(attributions: Tensor, masks: Tensor, valid: Tensor) -> Tensor:
    """The Energy loss of Rao et al. 2023, summed over the images with a mask (``valid``):
    1 - (positive attribution inside the mask) / (all positive attribution), or 1 - (the
    inside part) where the total is below :data:`ENERGY_EPS`. ``attributions`` (B,H,W),
    ``masks`` (B,H,W) in [0, 1] weigh each pixel (a binary mask is their box mask)."""
    pos = attributions.clamp(min=0).flatten(1)  # (B,H*W)
    inside = (pos * masks.flatten(1)).sum(1)  # (B,)
    total = pos.sum(1)  # (B,)
    share = torch.where(total < ENERGY_EPS, inside, inside / total.clamp_min(ENERGY_EPS))
    return ((1 - share) * valid.to(share.dtype)).sum()


def hint_loss(importance: Tensor, human: Tensor) -> Tensor:
    """HINT's ranking loss (Selvaraju et al. 2019, eq. 3) per image, averaged over the batch:
    the sum over every pair of regions (a, b) that humans rank a above b (``human[a] >
    human[b]``) of max(0, importance[b] - importance[a]). ``importance`` and ``human``
    (B,h,w): the network's and the humans' importance of each region (feature-map cell)."""
    g, h = importance.flatten(1), human.flatten(1)  # (B,R) each
    above = (h[:, :, None] > h[:, None, :]).to(g.dtype)  # (B,R,R): a ranked above b
    wrong = F.relu(g[:, None, :] - g[:, :, None])  # (B,R,R): importance[b] - importance[a]
    return (above * wrong).sum(dim=(1, 2)).mean()
