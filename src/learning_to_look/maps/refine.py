"""PAMR (Araslanov & Roth, CVPR 2020): pixel-adaptive mask refinement in plain torch.

A coarse map upsampled from a 14x14 patch grid bleeds over edges. PAMR repeatedly
replaces each pixel's score by an average of its 8 neighbours at each dilation,
weighted by how much their colour resembles its own relative to the local colour
spread, so the map snaps to image edges. As in the official ``LocalAffinity`` kernels
the pixel itself is not among the neighbours it averages; it only enters the spread.
It stands in for the reference pipeline's dense CRF without a compiled extension.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: The 8 neighbours of the 3x3 window in unfold order (row-major), the centre (4) left out.
NEIGHBOURS = (0, 1, 2, 3, 5, 6, 7, 8)


def _window(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, 9, H, W): the 3x3 window at ``dilation``, centre included,
    edge-replicated so border pixels are not pulled towards zero."""
    b, c, h, w = x.shape
    padded = F.pad(x, (dilation,) * 4, mode="replicate")
    return F.unfold(padded, 3, dilation=dilation).view(b, c, 9, h, w)


def _neighbours(x: torch.Tensor, dilations: tuple[int, ...]) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, 8 * len(dilations), H, W): the 8 neighbours at each dilation."""
    return torch.cat([_window(x, d)[:, :, NEIGHBOURS] for d in dilations], 2)


def pamr_affinity(image: torch.Tensor, dilations: tuple[int, ...] = (1, 2), lam: float = 0.1) -> torch.Tensor:
    """(B, 8*len(dilations), H, W) weights summing to 1 over the neighbours j of pixel i:
    ``softmax_j(-mean_c |I_i - I_j| / (lam * std_i))``, ``std_i`` the (unbiased) spread of
    the 3x3 windows at all dilations, centre included."""
    std = torch.cat([_window(image, d) for d in dilations], 2).std(2, keepdim=True)  # (B, C, 1, H, W)
    logits = -(_neighbours(image, dilations) - image[:, :, None]).abs() / (lam * std + 1e-8)
    return logits.mean(1).softmax(1)


def pamr(image: torch.Tensor, maps: torch.Tensor, iterations: int = 10, dilations: tuple[int, ...] = (1, 2),
         lam: float = 0.1) -> torch.Tensor:
    """Refine (B, H, W) or (B, K, H, W) maps with the (B, C, H, W) image in [0, 1]."""
    squeeze = maps.dim() == 3
    m = maps[:, None] if squeeze else maps
    aff = pamr_affinity(image.float(), dilations, lam)[:, None]
    for _ in range(iterations):
        m = (_neighbours(m, dilations) * aff).sum(2)
    return m[:, 0] if squeeze else m
