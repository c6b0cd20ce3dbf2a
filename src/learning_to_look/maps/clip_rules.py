"""The last-block rules of the training-free dense CLIP methods, as their official codes run them.

CLIP's last block mixes every token with a nearly image-global attention, so its patch
tokens say *what* is in the image but not *where*. Each method rebuilds that block from
its own pretrained projections (``q, k, v`` of the layer-normed input ``h = LN1(x)``,
head-wise, ``s = d ** -0.5``) so that each patch keeps its own content:

- ``vanilla``: the unmodified block, ``x' = x + W_o softmax(q k^T s) v``, ``x'' = x' + FFN(LN2(x'))``.
- ``maskclip`` (Zhou et al. 2022): no attention, ``x' = x + W_o v``, ``x'' = x' + FFN(LN2(x'))``.
- ``sclip`` (Wang et al. 2024): ``x' = x + W_o (softmax(q q^T s) + softmax(k k^T s)) v``, then the FFN.
- ``clearclip`` (Lan et al. 2024): ``x'' = W_o softmax(q q^T s) v``, no residual, no FFN.
- ``naclip`` (Hajimiri et al. 2025): ``x'' = W_o softmax(k k^T s + G) v``, no residual, no FFN;
  ``G`` is a Gaussian window (std ``sigma`` patches) around each patch, zero in the class
  token's row and column.
- ``maskclip-nores``, ``sclip-nores``: ClearCLIP's "w/o residual" ablations of the two,
  without the residual and the FFN, run with ClearCLIP's settings.

The attention runs over the class token and the patches, as in every official code.
The output tokens then go through CLIP's post-layernorm and visual projection. Each
rule also carries the rest of its official pipeline: the prompt templates, the softmax
temperature across prompts, the sliding window, and how position embeddings are
interpolated for other input sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .templates import IMAGENET_TEMPLATES, MASKCLIP_TEMPLATES

@dataclass(frozen=True)
class Rule:
    """One method's last block and the pipeline around it, as its official code runs it.

    ``attention`` names the token mixing (``qk``, ``none``, ``qq+kk``, ``qq``, ``kk+gauss``);
    ``residual`` keeps ``x +`` and the FFN; ``window``/``stride`` (pixels) slide a window
    over larger inputs (0: one pass over the whole image); ``positions`` is how position
    embeddings are resized (:func:`interpolate_positions`)."""

    attention: str
    residual: bool
    templates: tuple[str, ...]
    temperature: float
    window: int
    stride: int
    positions: str


#: Settings read from the official repositories: SCLIP (wangf3014/SCLIP) and NACLIP
#: (sinahmr/NACLIP) slide 224-px windows by 112 with logit scale 40; ClearCLIP
#: (mc-lan/ClearCLIP) slides 448 by 224 with logit scale 50, and so do its "w/o residual"
#: ablations; MaskCLIP (chongzhou96/MaskCLIP) runs the whole image, 85 templates, and reads
#: its logits at CLIP's own scale 100; vanilla is SCLIP's and NACLIP's CLIP baseline.
RULES: dict[str, Rule] = {
    "vanilla": Rule("qk", True, IMAGENET_TEMPLATES, 40.0, 224, 112, "scaled"),
    "maskclip": Rule("none", True, MASKCLIP_TEMPLATES, 100.0, 0, 0, "size"),
    "sclip": Rule("qq+kk", True, IMAGENET_TEMPLATES, 40.0, 224, 112, "scaled"),
    "clearclip": Rule("qq", False, IMAGENET_TEMPLATES, 50.0, 448, 224, "scaled"),
    "naclip": Rule("kk+gauss", False, IMAGENET_TEMPLATES, 40.0, 224, 112, "scaled"),
    "maskclip-nores": Rule("none", False, IMAGENET_TEMPLATES, 50.0, 448, 224, "scaled"),
    "sclip-nores": Rule("qq+kk", False, IMAGENET_TEMPLATES, 50.0, 448, 224, "scaled"),
}
VARIANTS = tuple(RULES)


# ---- pure tensor math -------------------------------------------------------------

def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, T, n*d) -> (B, n, T, d)."""
    b, t, _ = x.shape
    return x.view(b, t, n_heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, n, T, d) -> (B, T, n*d)."""
    b, n, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, n * d)


def self_similarity(a: torch.Tensor, scale: float, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax(a a^T * scale + bias)``: attention of a projection with itself, so
    each token attends to the tokens that look like it, itself first."""
    logits = a @ a.transpose(-1, -2) * scale
    if bias is not None:
        logits = logits + bias
    return logits.softmax(-1)


def gaussian_window(h: int, w: int, sigma: float) -> torch.Tensor:
    """(h*w, h*w) ``exp(-|p_i - p_j|^2 / (2 sigma^2))`` over patch grid positions:
    NACLIP's additive neighbourhood bias on the attention logits."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()], -1)
    return torch.exp(-torch.cdist(pos, pos).pow(2) / (2 * sigma ** 2))


def with_class_token(bias: torch.Tensor) -> torch.Tensor:
    """(P, P) patch bias -> (1+P, 1+P) with a zero row and column for the class token."""
    return F.pad(bias, (1, 0, 1, 0))


def attention_weights(kind: str, q: torch.Tensor, k: torch.Tensor, scale: float, grid: tuple[int, int],
                      sigma: float = 5.0) -> torch.Tensor | None:
    """Head-wise (B, n, T, T) mixing weights of rule ``kind`` over the class token and the
    patches of a ``grid``; None for MaskCLIP's (each token keeps its own value)."""
    if kind == "none":
        return None
    if kind == "qk":
        return (q @ k.transpose(-1, -2) * scale).softmax(-1)
    if kind == "qq":
        return self_similarity(q, scale)
    if kind == "qq+kk":
        return self_similarity(q, scale) + self_similarity(k, scale)
    if kind == "kk+gauss":
        bias = with_class_token(gaussian_window(*grid, sigma)).to(k.device, k.dtype)
        return self_similarity(k, scale, bias)
    raise ValueError(f"no attention rule {kind!r}")


@dataclass
class BlockOut:
    """A block's output tokens (B, T, D), its mixing weights (B, n, T, T; None without
    attention) and its layer-normed input ``LN1(x)`` (B, T, D)."""

    out: torch.Tensor
    weights: torch.Tensor | None
    normed: torch.Tensor


def block(layer: Any, x: torch.Tensor, variant: str = "vanilla", grid: tuple[int, int] = (0, 0),
          sigma: float = 5.0) -> BlockOut:
    """One Hugging Face ``CLIPEncoderLayer`` on (B, T, D) tokens under ``variant``'s rule,
    written out so the weights and ``LN1(x)`` can be read (``vanilla`` is the layer itself)."""
    rule, attn = RULES[variant], layer.self_attn
    normed = layer.layer_norm1(x)
    q, k, v = (split_heads(proj(normed), attn.num_heads) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    weights = attention_weights(rule.attention, q, k, attn.scale, grid, sigma)
    out = attn.out_proj(merge_heads(v if weights is None else weights @ v))  # (B, T, D)
    if rule.residual:
        out = x + out
        out = out + layer.mlp(layer.layer_norm2(out))
    return BlockOut(out, weights, normed)


def interpolate_positions(pos: torch.Tensor, grid: tuple[int, int], mode: str) -> torch.Tensor:
    """(1+N, D) position embeddings of a square n0 x n0 training grid -> (1+h*w, D) for ``grid``,
    bicubic, the class token's kept; unchanged on the training grid itself. ``scaled`` resizes
    by the factor ``(n + 0.1) / n0``, as the SCLIP, ClearCLIP and NACLIP codes do; ``size``
    to ``n`` exactly, as MaskCLIP's mmseg backbone and Hugging Face's ``interpolate_pos_encoding``."""
    n0 = math.isqrt(pos.shape[0] - 1)
    if tuple(grid) == (n0, n0):
        return pos
    patch = pos[1:].reshape(1, n0, n0, -1).permute(0, 3, 1, 2)  # (1, D, n0, n0)
    if mode == "scaled":
        factor = ((grid[0] + 0.1) / n0, (grid[1] + 0.1) / n0)
        patch = F.interpolate(patch, scale_factor=factor, mode="bicubic", align_corners=False,
                              recompute_scale_factor=False)
    else:
        patch = F.interpolate(patch, size=tuple(grid), mode="bicubic", align_corners=False)
    if tuple(patch.shape[-2:]) != tuple(grid):
        raise ValueError(f"position embeddings resized to {tuple(patch.shape[-2:])}, wanted {tuple(grid)}")
    return torch.cat([pos[:1], patch.permute(0, 2, 3, 1).reshape(-1, pos.shape[1])])
