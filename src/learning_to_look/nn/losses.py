"""Attention targets, alignment losses and the lambda schedule, as pure tensor functions.

Targets are distributions over the cells of the model's feature map (each sums to 1),
except that an image with an empty map gets an all-zero target: it gives no guidance,
and every loss here makes such a row contribute exactly 0 (never NaN).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.builders import DIGIT_THRESHOLD
from ..errors import L2LError
from ..registry import Registry

KL_REDUCTIONS = ("batchmean", "none")
RRR_REDUCTIONS = ("mean", "sum")


def _check_maps(maps: Tensor, what: str) -> None:
    if maps.ndim != 3:
        raise ValueError(f"{what} must have shape (N, H, W), got {tuple(maps.shape)}")


def _normalize_sum(maps: Tensor) -> Tensor:
    """Divide each map by its sum; an all-zero map stays all zeros instead of NaN."""
    total = maps.sum(dim=(1, 2), keepdim=True)
    return torch.where(total > 0, maps / total.clamp_min(torch.finfo(maps.dtype).tiny), torch.zeros_like(maps))


def _dilate(x: Tensor, k: int) -> Tensor:
    return F.max_pool2d(x, k, stride=1, padding=k // 2)


def _erode(x: Tensor, k: int) -> Tensor:
    """Max-pool pads with -inf, so outside the image never erodes (OpenCV's default border)."""
    return -F.max_pool2d(-x, k, stride=1, padding=k // 2)


#: The reference's outline target (PROTOCOL 3.3), declared once: the map is binarised
#: at the digit threshold, dilated with a 7x7 square, its morphological gradient taken
#: with a 3x3 one, upsampled to the network input, multiplied by 8 and clipped to 1.
OUTLINE_THRESHOLD = DIGIT_THRESHOLD / 255
OUTLINE_DILATE = 7
OUTLINE_GRADIENT = 3
OUTLINE_GAIN = 8.0


def outline_target(
    masks: Tensor,
    threshold: float = OUTLINE_THRESHOLD,
    dilate: int = OUTLINE_DILATE,
    gradient: int = OUTLINE_GRADIENT,
    upsample: int = 32,
    gain: float = OUTLINE_GAIN,
    size: int = 10,
    pool: bool = False,
) -> Tensor:
    """The reference's outline target (PROTOCOL 3.3) from masks (N,H,W) in [0,1].

    The outline of the dilated digit, not the digit itself: it pulls attention onto
    the region around the strokes. Kernels must be odd so that the result is centred.
    The reference samples the outline onto the feature grid by nearest neighbour (32 to
    10 px); ``pool`` takes each cell's maximum instead, so that a thin outline on a
    larger image cannot fall between the samples.
    """
    _check_maps(masks, "masks")
    if dilate % 2 == 0 or gradient % 2 == 0:
        raise ValueError(f"dilate and gradient kernels must be odd, got {dilate} and {gradient}")
    x = (masks > threshold).to(torch.float32).unsqueeze(1)
    x = _dilate(x, dilate)
    x = _dilate(x, gradient) - _erode(x, gradient)
    x = F.interpolate(x, size=(upsample, upsample), mode="bilinear", align_corners=False)
    x = (x * gain).clamp(0.0, 1.0)
    x = F.adaptive_max_pool2d(x, size) if pool else F.interpolate(x, size=(size, size), mode="nearest")
    return _normalize_sum(x.squeeze(1))


def filled_target(maps: Tensor, size: int = 10) -> Tensor:
    """A soft target: the map averaged onto the size x size grid (adaptive average
    pooling, whose windows overlap when size does not divide H) and normalised."""
    _check_maps(maps, "maps")
    x = F.adaptive_avg_pool2d(maps.to(torch.float32).unsqueeze(1), size).squeeze(1)
    return _normalize_sum(x)


TARGETS: Registry[Callable[..., Tensor]] = Registry("target")
TARGETS.add("outline", outline_target)
TARGETS.add("filled", filled_target)


def make_target(name: str, maps: Tensor, **kw) -> Tensor:
    return TARGETS.get(name)(maps, **kw)


def _reduce_kl(per_row: Tensor, reduction: str) -> Tensor:
    if reduction not in KL_REDUCTIONS:
        raise L2LError(f"unknown KL reduction {reduction!r}; choose one of: {', '.join(KL_REDUCTIONS)}")
    return per_row.sum() / per_row.shape[0] if reduction == "batchmean" else per_row


def forward_kl(s: Tensor, q: Tensor, reduction: str = "batchmean") -> Tensor:
    """KL(q || p), p = softmax of the normalised CAM ``s`` over its cells (PROTOCOL 3.4).

    Same value as ``F.kl_div(log_softmax(s), q, reduction="batchmean")``: rows with an
    all-zero target contribute 0 but still count in the batch size B. ``"none"`` gives
    the per-row values (B,), e.g. for validation metrics.
    """
    log_p = F.log_softmax(s.flatten(1), dim=1)
    per_row = F.kl_div(log_p, q.flatten(1), reduction="none").sum(dim=1)
    return _reduce_kl(per_row, reduction)


def kl_per_image(s: Tensor, q: Tensor) -> Tensor:
    """:func:`forward_kl` per image (B,), NaN where the target is empty, so that those
    images are left out of a metric's mean instead of counting as 0."""
    kl = forward_kl(s, q, reduction="none")  # (B,)
    return torch.where(q.flatten(1).sum(1) > 0, kl, torch.full_like(kl, float("nan")))


def reverse_kl(s: Tensor, q: Tensor, eps: float = 1e-8, reduction: str = "batchmean") -> Tensor:
    """KL(p || q'), p = softmax(s) over the cells, q' = (q + eps) renormalised to sum 1.

    The smoothing keeps log q' finite where the target is 0, so attention outside the
    target costs about log(1/eps) per unit of mass instead of infinity. Rows with an
    all-zero target are skipped (contribute 0), like in :func:`forward_kl`, and still
    count in B.
    """
    log_p = F.log_softmax(s.flatten(1), dim=1)
    q = q.flatten(1)
    smoothed = q + eps
    log_q = torch.log(smoothed / smoothed.sum(dim=1, keepdim=True))
    per_row = (log_p.exp() * (log_p - log_q)).sum(dim=1)
    per_row = torch.where(q.sum(dim=1) > 0, per_row, torch.zeros_like(per_row))
    return _reduce_kl(per_row, reduction)


def rrr_penalty(input_grads: Tensor, irrelevant: Tensor, reduction: str = "mean") -> Tensor:
    """Ross et al.'s "right reasons" term: squared input gradients on irrelevant pixels.

    Summed over channels and pixels per sample, then averaged over the batch by
    default, so that lambda does not depend on the batch size; ``"sum"`` is Ross
    et al.'s own reduction. ``irrelevant`` (B,H,W) or (B,1,H,W) applies to every channel.
    """
    if reduction not in RRR_REDUCTIONS:
        raise L2LError(f"unknown RRR reduction {reduction!r}; choose one of: {', '.join(RRR_REDUCTIONS)}")
    if input_grads.ndim == 4 and irrelevant.ndim == 3:
        irrelevant = irrelevant.unsqueeze(1)
    per_sample = (irrelevant * input_grads).pow(2).flatten(1).sum(dim=1)
    return per_sample.mean() if reduction == "mean" else per_sample.sum()


def attribution_mass(attributions: Tensor, irrelevant: Tensor) -> Tensor:
    """The attribution prior of Erion et al. 2021 on a region: absolute attributions on
    irrelevant pixels, summed over channels and pixels per image, averaged over the batch.
    ``attributions`` (B,C,H,W), ``irrelevant`` (B,H,W) or (B,1,H,W) in [0, 1]."""
    if attributions.ndim == 4 and irrelevant.ndim == 3:
        irrelevant = irrelevant.unsqueeze(1)
    return (irrelevant * attributions.abs()).flatten(1).sum(dim=1).mean()


def lambda_schedule(epoch: int, e_att: int, lambda0: float, ramp: float = 10.0) -> float:
    """Weight of the attention loss in phase 2 (PROTOCOL 3.5): a linear ramp from
    lambda0 at epoch e_att, 0 before."""
    if epoch < e_att:
        return 0.0
    return lambda0 + lambda0 * (epoch - e_att) / ramp
