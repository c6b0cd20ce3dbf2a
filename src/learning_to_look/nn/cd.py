"""Contextual decomposition (Murdoch et al. 2018; Singh et al. 2019) for CNNs, in the
autograd graph, so that a loss on it trains the network (CDEP, Rieger et al. 2020).

The input is split into a part (a region, or single pixels) and the rest,
``x = part + rest``, and each layer maps the pair to a pair whose sum is the layer's
output on the sum: so the logits split exactly into what is due to the part alone
and what is not. Rules, per layer type:
- affine (conv, linear): each side passes the layer without its bias; the bias is
  shared in proportion to the two sides' absolute values (half each where both are 0);
- ReLU: the part gets ``relu(part)``, the rest ``relu(part + rest) - relu(part)``;
- max-pool: both sides take the values where the sum has its maximum;
- average-pool, mean, flatten: linear, applied to each side.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

Pair = tuple[Tensor, Tensor]


def cd_affine(part: Tensor, rest: Tensor, linear: Callable[[Tensor], Tensor], bias: Tensor | None) -> Pair:
    """An affine layer ``linear(x) + bias``; ``linear`` is the layer without its bias and
    ``bias`` broadcasts against its output (e.g. (C, 1, 1) for a conv)."""
    a, b = linear(part), linear(rest)
    if bias is None:
        return a, b
    total = a.abs() + b.abs()
    share = torch.where(total > 0, a.abs() / total.clamp_min(torch.finfo(total.dtype).tiny), torch.full_like(a, 0.5))
    return a + share * bias, b + (1 - share) * bias


def cd_conv(part: Tensor, rest: Tensor, conv: torch.nn.Conv2d) -> Pair:
    def linear(x: Tensor) -> Tensor:
        return F.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)

    return cd_affine(part, rest, linear, None if conv.bias is None else conv.bias.view(-1, 1, 1))


def cd_linear(part: Tensor, rest: Tensor, fc: torch.nn.Linear) -> Pair:
    return cd_affine(part, rest, lambda x: F.linear(x, fc.weight), fc.bias)


def cd_relu(part: Tensor, rest: Tensor) -> Pair:
    relu_part = F.relu(part)
    return relu_part, F.relu(part + rest) - relu_part


def cd_maxpool(part: Tensor, rest: Tensor, kernel: int) -> Pair:
    """Both sides at the positions where ``part + rest`` is largest in each window."""
    _, idx = F.max_pool2d(part + rest, kernel, return_indices=True)  # (B,C,h,w) flat indices into H*W

    def take(x: Tensor) -> Tensor:
        return x.flatten(2).gather(2, idx.flatten(2)).view_as(idx).to(x.dtype)

    return take(part), take(rest)


def cd_apply(part: Tensor, rest: Tensor, fn: Callable[[Tensor], Tensor]) -> Pair:
    """A linear map without bias (average-pool, mean, flatten) on each side."""
    return fn(part), fn(rest)


def cdep_score(part_logits: Tensor, rest_logits: Tensor) -> Tensor:
    """CDEP's penalty of a batch: per image and class, the share that a softmax over the
    two sides gives the part, averaged. 0.5 when they weigh the same, towards 0 as the
    part stops mattering. ``part_logits``, ``rest_logits`` (B, K)."""
    return torch.softmax(torch.stack([part_logits, rest_logits], dim=-1), dim=-1)[..., 0].mean()
