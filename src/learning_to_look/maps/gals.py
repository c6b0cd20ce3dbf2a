"""GALS (Petryk et al., CVPR 2022): where CLIP looks for a language specification.

GALS guides a CNN with CLIP attention for a few generic prompts ("an image of a bird",
"a photo of a bird"), each prompt's map computed as its ``extract_attention.py`` does:

- ``relevancy``, GALS's ViT option, Chefer et al.'s transformer relevancy: the target is
  CLIP's logit for the prompt, ``logit_scale * cos(f, t)``; over the blocks in order
  ``R <- R + mean_heads((dA ⊙ A)^+) R`` from ``R = I``, and the map is the class token's
  row over the patches.
- ``gradcam``, GALS's default on ResNet-50's last stage: Grad-CAM of the dot product of
  the image features with the unit text embedding scaled by the features' norm. On a
  Hugging Face CLIP ViT it is taken, as pytorch-grad-cam does for ViTs, on the last
  block's layer-normed patch tokens (the ``LN1`` output), the last tokens the class
  token reads.

Each prompt's map is normalised at the patch grid, brought bilinearly to the model's
input size, and the prompts combined as GALS's ``parse_attention`` does: maps that are
all zero are dropped, the rest averaged and normalised again. GALS normalises with
``(x - min) / max`` (max 0 read as 1), not ``(x - min) / (max - min)``; that is kept.
An image whose maps are all zero gets an all-zero map, which the attention losses skip,
as GALS skips it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import L2LError
from ..io import torch_load
from .base import check_choice, option, register_map_source
from .clip import ClipBackedMaps
from .geometry import to_hw, upsample
from .clip_rules import block
from .weights import DEFAULT_CLIP

GALS_METHODS = ("relevancy", "gradcam")
GALS_PROMPTS = ("an image of a handwritten digit", "a photo of a handwritten digit")


# ---- pure tensor math -------------------------------------------------------------

def gals_normalize(x: torch.Tensor) -> torch.Tensor:
    """Per sample of (B, ...): ``(x - min) / max``, a zero max read as 1, as GALS's ``normalize``."""
    flat = x.flatten(1)
    top = flat.max(1, keepdim=True).values
    top = torch.where(top == 0, torch.ones_like(top), top)
    return ((flat - flat.min(1, keepdim=True).values) / top).view_as(x)


def grad_cam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) activations and gradients -> (B, h, w) ``relu(sum_d mean_hw(grad_d) act_d)``."""
    return (grads.mean((2, 3), keepdim=True) * acts).sum(1).clamp(min=0)


def chefer_relevancy(weights: list[torch.Tensor], grads: list[torch.Tensor]) -> torch.Tensor:
    """Blocks' (B, n, T, T) attention and its gradients, in forward order -> (B, T-1): the
    class token's row of ``R`` over the patches, ``R <- R + mean_n((grad * A)^+) R``, ``R0 = I``."""
    b, _, t, _ = weights[0].shape
    rel = torch.eye(t, dtype=weights[0].dtype, device=weights[0].device).expand(b, t, t)
    for a, g in zip(weights, grads):
        rel = rel + (g * a).clamp(min=0).mean(1) @ rel
    return rel[:, 0, 1:]


def combine_prompt_maps(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, P, H, W) per-prompt maps -> (B, H, W) GALS's ``average_nonzero``: the mean of the
    maps that are not all zero, normalised; and (B,) True where every map was zero."""
    valid = maps.flatten(2).ne(0).any(-1)  # (B, P)
    total = (maps * valid[..., None, None]).sum(1)
    mean = total / valid.sum(1).clamp(min=1)[:, None, None]
    return gals_normalize(mean), ~valid.any(1)


def _numpy_globals() -> list:
    """What a GALS file's pickled numpy ``probs`` needs under ``weights_only`` loading, for
    files written with numpy 1 (``numpy.core``) or 2 (``numpy._core``)."""
    rebuild = np.ndarray.__reduce__(np.zeros(1))[0]
    allowed: list = [np.ndarray, np.dtype, (rebuild, "numpy.core.multiarray._reconstruct"),
                     (rebuild, "numpy._core.multiarray._reconstruct")]
    return allowed + [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]


def read_gals_file(path: Path, hw: tuple[int, int]) -> np.ndarray:
    """(H, W) map of one file written by GALS's ``extract_attention.py``: its per-prompt
    maps brought bilinearly to ``hw``, then combined as GALS's training code does."""
    fix = "re-extract it with GALS's extract_attention.py"
    with torch.serialization.safe_globals(_numpy_globals()):
        data = torch_load(path, fix, weights_only=True, map_location="cpu")
    att = data.get("unnormalized_attentions") if isinstance(data, dict) else None
    if not isinstance(att, torch.Tensor) or att.dim() != 4 or att.shape[1] != 1:
        raise L2LError(f"{path} holds no GALS attention (a dict with 'unnormalized_attentions' of shape "
                       f"(prompts, 1, h, w)); {fix}")
    maps = F.interpolate(att.float().transpose(0, 1), size=tuple(hw), mode="bilinear", align_corners=False)
    return combine_prompt_maps(maps)[0][0].numpy()


# ---- the map source ---------------------------------------------------------------

@dataclass
class GalsMaps(ClipBackedMaps):
    """GALS's CLIP attention maps for a few prompts, combined (see module doc)."""

    name: ClassVar[str] = "gals"
    summary: ClassVar[str] = ("GALS's CLIP attention for the prompts (transformer relevancy or Grad-CAM of the "
                              "image-text similarity), averaged over the prompts")
    vlm: Any = option(DEFAULT_CLIP, "CLIP hub id or save_pretrained folder.", env="L2L_VLM")
    method: str = option("relevancy", f"GALS's attention: {' | '.join(GALS_METHODS)}.")
    texts: tuple[str, ...] = option(GALS_PROMPTS, "Prompt, one map each (repeatable).", name="prompt", multiple=True)
    input_size: int = option(224, "Model input size in pixels, a multiple of the patch.", cli=int)
    batch_size: int = option(16, "Images per forward and backward pass.", cli=int)
    device: str | None = option(None, "auto | cpu | cuda | cuda:N (auto: CUDA when available).")

    def _check_options(self) -> None:
        check_choice("method", self.method, GALS_METHODS)
        texts = (self.texts,) if isinstance(self.texts, str) else self.texts
        if not isinstance(texts, (tuple, list)) or not texts or not all(
                isinstance(t, str) and t.strip() for t in texts):
            raise L2LError(f"--prompt must be one or more non-empty texts, got {self.texts!r}; pass e.g. "
                           f"--prompt \"{GALS_PROMPTS[0]}\" --prompt \"{GALS_PROMPTS[1]}\"")
        self.texts = tuple(texts)

    def config(self) -> dict:
        """Everything that changes the maps; batch size and device do not."""
        return {**self._weights_config(), "method": self.method, "texts": list(self.texts),
                "input_size": self.input_size}

    def prompt_maps(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, P, h, w) normalised map of each prompt for (B, 3, S, S) pixels."""
        clip = self.dense()
        model, vision = clip.model, clip.model.vision_model
        text = clip.text_embeddings(list(self.texts))  # (P, E)
        with torch.enable_grad():
            x, grid = clip.embed(pixels.to(clip.device).requires_grad_(True), "size")
            blocks = []
            for layer in vision.encoder.layers:
                blocks.append(block(layer, x))
                x = blocks[-1].out
            feats = model.visual_projection(vision.post_layernorm(x[:, 0]))  # (B, E)
            maps = [self._prompt_map(model, feats, t, blocks, grid) for t in text]
        return torch.stack(maps, 1)

    def _prompt_map(self, model: Any, feats: torch.Tensor, text: torch.Tensor, blocks: list,
                    grid: tuple[int, int]) -> torch.Tensor:
        """(B, h, w) normalised map of one (E,) unit text embedding."""
        if self.method == "relevancy":
            target = model.logit_scale.exp() * F.normalize(feats, dim=-1) @ text  # (B,)
            weights = [b.weights for b in blocks]
            grads = torch.autograd.grad(target.sum(), weights, retain_graph=True)
            cam = chefer_relevancy(weights, list(grads)).reshape(-1, *grid)
        else:
            target = (feats @ text) * feats.norm(dim=-1).detach()  # (B,)
            normed = blocks[-1].normed
            (grads,) = torch.autograd.grad(target.sum(), normed, retain_graph=True)
            acts, grads = (t[:, 1:].transpose(1, 2).reshape(len(t), -1, *grid) for t in (normed, grads))
            cam = grad_cam(acts, grads)
        return gals_normalize(cam.detach())

    def _batch_maps(self, batch: np.ndarray, hw: tuple[int, int]) -> tuple[torch.Tensor, dict[str, int]]:
        pixels = self._pixels(batch)
        maps = upsample(self.prompt_maps(pixels), pixels.shape[-2:])  # (B, P, S, S)
        combined, empty = combine_prompt_maps(maps)
        return to_hw(combined[:, None].cpu(), hw)[:, 0], {"empty_maps": int(empty.sum()), "images": len(batch)}


register_map_source(GalsMaps)
