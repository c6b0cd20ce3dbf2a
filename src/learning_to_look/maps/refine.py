"""PAMR (Araslanov & Roth, CVPR 2020): pixel-adaptive mask refinement in plain torch.

A coarse map upsampled from a 14x14 patch grid bleeds over edges. PAMR repeatedly
replaces each pixel's score by an average of its neighbours weighted by how much
their colour resembles its own (relative to the local colour spread), so the map
snaps to image edges. It stands in for the reference pipeline's dense CRF without a
compiled extension.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _neighbours(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, 9, H, W): the 3x3 neighbourhood at ``dilation``,
    edge-replicated so border pixels are not pulled towards zero."""
    b, c, h, w = x.shape
    padded = F.pad(x, (dilation,) * 4, mode="replicate")
    return F.unfold(padded, 3, dilation=dilation).view(b, c, 9, h, w)


def pamr_affinity(image: torch.Tensor, dilations: tuple[int, ...] = (1, 2), lam: float = 0.1) -> torch.Tensor:
    """(B, 9*len(dilations), H, W) weights summing to 1 over neighbours:
    ``softmax_j(-mean_c |I_i - I_j| / (lam * std_i))``."""
    nbrs = torch.cat([_neighbours(image, d) for d in dilations], 2)
    std = nbrs.std(2, keepdim=True)
    logits = -(nbrs - image[:, :, None]).abs() / (lam * std + 1e-8)
    return logits.mean(1).softmax(1)


def pamr(image: torch.Tensor, maps: torch.Tensor, iterations: int = 10, dilations: tuple[int, ...] = (1, 2),
         lam: float = 0.1) -> torch.Tensor:
    """Refine (B, H, W) or (B, K, H, W) maps with the (B, C, H, W) image in [0, 1]."""
    squeeze = maps.dim() == 3
    m = maps[:, None] if squeeze else maps
    aff = pamr_affinity(image.float(), dilations, lam)[:, None]
    for _ in range(iterations):
        m = (torch.cat([_neighbours(m, d) for d in dilations], 2) * aff).sum(2)
    return m[:, 0] if squeeze else m
