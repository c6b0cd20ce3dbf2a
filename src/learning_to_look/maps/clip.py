"""Training-free dense CLIP maps: one forward per image, a modified last block.

CLIP's last block mixes every patch with a nearly image-global attention, so its
patch tokens say *what* is in the image but not *where*. The variants below rebuild
that block from its own pretrained projections so each patch keeps its own content
(equations from the papers):

- ``vanilla``: the unmodified block (the weak baseline).
- ``maskclip`` (Zhou et al. 2022): value embeddings through the output projection,
  no attention, no residual, no FFN.
- ``sclip`` (Wang et al. 2024): correlative self-attention
  ``softmax(q q^T s) + softmax(k k^T s)`` applied to the values; like ClearCLIP's
  analysis of it, the residual and FFN are dropped.
- ``clearclip`` (Lan et al. 2024): ``softmax(q q^T s)`` attention, no residual, no FFN.
- ``naclip`` (Hajimiri et al. 2025): ``softmax(k k^T s + G)`` with ``G`` a Gaussian
  window around each patch (std ``sigma`` patches), no residual, no FFN.

The last-block attention runs over patch tokens only: the class token has no place
in the image, and the Gaussian window needs one. Patch embeddings then go through
CLIP's post-layernorm and visual projection and are compared with the text
embeddings of positive and negative prompts.
"""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import L2LError
from .base import (ImageSet, MapGenerator, PromptSpec, check_bool, check_choice, check_int, check_number, option,
                   register_map_source)
from .refine import pamr
from ..device import autocast, check_device, pick_device
from .weights import DEFAULT_CLIP, Pretrained, check_source, check_source_type, load_clip, patch_size
from ..hub import require_vlm_extra

VARIANTS = ("vanilla", "maskclip", "sclip", "clearclip", "naclip")
REFINEMENTS = ("none", "pamr")
#: Largest --input-size accepted: far beyond any CLIP's training resolution already.
MAX_INPUT_SIZE = 4096


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
    each patch attends to the patches that look like it, itself first."""
    logits = a @ a.transpose(-1, -2) * scale
    if bias is not None:
        logits = logits + bias
    return logits.softmax(-1)


def self_similarity_attention(a: torch.Tensor, v: torch.Tensor, scale: float,
                              bias: torch.Tensor | None = None) -> torch.Tensor:
    return self_similarity(a, scale, bias) @ v


def gaussian_window(h: int, w: int, sigma: float) -> torch.Tensor:
    """(h*w, h*w) ``exp(-|p_i - p_j|^2 / (2 sigma^2))`` over patch grid positions:
    NACLIP's additive neighbourhood bias on the attention logits."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()], -1)
    return torch.exp(-torch.cdist(pos, pos).pow(2) / (2 * sigma ** 2))


def variant_mix(variant: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                grid: tuple[int, int], sigma: float = 5.0) -> torch.Tensor:
    """Head-wise (B, n, P, d) output of the modified last-block attention."""
    if variant == "maskclip":
        return v
    if variant == "sclip":
        return self_similarity_attention(q, v, scale) + self_similarity_attention(k, v, scale)
    if variant == "clearclip":
        return self_similarity_attention(q, v, scale)
    if variant == "naclip":
        bias = gaussian_window(*grid, sigma).to(k.device, k.dtype)
        return self_similarity_attention(k, v, scale, bias)
    raise ValueError(f"no attention rule for variant {variant!r}")


def foreground_probability(patch_emb: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                           temperature: float) -> torch.Tensor:
    """Share of the softmax over all prompts (``temperature * cosine``) that falls on
    the positive prompts. Inputs are L2-normalised; output in [0, 1]."""
    sims = patch_emb @ torch.cat([positive, negative]).T
    return (temperature * sims).softmax(-1)[..., : len(positive)].sum(-1)


def artefact_mask(norms: torch.Tensor, z: float) -> torch.Tensor:
    """(B, h, w) bool: tokens whose norm is a robust outlier in their image
    (median + z * 1.4826 * MAD), the high-norm 'register' tokens ViTs park in empty
    regions. ``z <= 0`` disables the guard."""
    if z <= 0:
        return torch.zeros_like(norms, dtype=torch.bool)
    flat = norms.flatten(1)
    med = flat.median(1, keepdim=True).values
    mad = (flat - med).abs().median(1, keepdim=True).values
    return ((flat > med + z * 1.4826 * mad) & (mad > 0)).view_as(norms)


def neighbour_median(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Replace each masked (B, h, w, D) token by the element-wise median of its
    unmasked 3x3 neighbours; a token with no such neighbour is left alone."""
    if not mask.any():
        return tokens
    b, h, w, d = tokens.shape
    vals = tokens.float().masked_fill(mask[..., None], float("nan")).permute(0, 3, 1, 2)
    patches = F.unfold(F.pad(vals, (1, 1, 1, 1), value=float("nan")), 3).view(b, d, 9, h, w)
    med = patches.nanmedian(2).values.permute(0, 2, 3, 1)
    fill = mask[..., None] & ~med.isnan()
    return torch.where(fill, med.to(tokens.dtype), tokens)


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


def to_image_size(patch_map: torch.Tensor, size: int, hw: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) patch scores -> (B, H, W): bilinear up to the model's input size,
    then area down (or bilinear up) to the image, so thin structures survive."""
    x = F.interpolate(patch_map[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)
    mode = "area" if hw[0] <= size and hw[1] <= size else "bilinear"
    x = F.interpolate(x, size=hw, mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))
    return x[:, 0].clamp(0, 1)


# ---- the model --------------------------------------------------------------------

@dataclass
class Encoded:
    """Dense outputs of one batch: unit patch embeddings in text space, the artefact
    guard's mask, and (on request) every layer's patch tokens."""

    patch_emb: torch.Tensor
    artefacts: torch.Tensor
    last_input: torch.Tensor
    hidden: list[torch.Tensor] = field(default_factory=list)


class DenseCLIP:
    """CLIP's towers wrapped for dense scoring, with text embeddings cached."""

    def __init__(self, weights: Pretrained, device: torch.device):
        self.weights = weights
        self.device = device
        self.model = weights.model.to(device).eval()
        self.patch = self.model.config.vision_config.patch_size
        self._text: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """(K, E) unit text embeddings, each text computed once per model."""
        todo = [t for t in dict.fromkeys(texts) if t not in self._text]
        if todo:
            tok = self.weights.tokenizer(todo, padding=True, return_tensors="pt")
            tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
            out = self.model.get_text_features(**tok)
            emb = getattr(out, "pooler_output", out)
            for t, e in zip(todo, F.normalize(emb.float(), dim=-1)):
                self._text[t] = e
        return torch.stack([self._text[t] for t in texts])

    def prompt_embeddings(self, prompts: tuple[str, ...], templates: tuple[str, ...]) -> torch.Tensor:
        """(K, E): each prompt's embedding averaged over templates, then renormalised."""
        templates = templates or ("{}",)
        emb = self.text_embeddings([t.format(p) for p in prompts for t in templates])
        return F.normalize(emb.view(len(prompts), len(templates), -1).mean(1), dim=-1)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, variant: str, guard_z: float = 6.0, sigma: float = 5.0,
               keep_hidden: bool = False) -> Encoded:
        vision = self.model.vision_model
        b, _, hgt, wid = pixels.shape
        grid = (hgt // self.patch, wid // self.patch)
        with autocast(self.device):
            x = vision.pre_layrnorm(vision.embeddings(pixels.to(self.device), interpolate_pos_encoding=True))
            hidden = []
            for layer in vision.encoder.layers[:-1]:
                x = layer(x, None)
                if keep_hidden:
                    hidden.append(x[:, 1:].float())
            patches = x[:, 1:].reshape(b, *grid, -1)
            artefacts = artefact_mask(patches.float().norm(dim=-1), guard_z)
            patches = neighbour_median(patches, artefacts)
            x = torch.cat([x[:, :1], patches.flatten(1, 2)], 1)
            out = self._last_block(x, variant, grid, sigma)
            emb = self.model.visual_projection(vision.post_layernorm(out))
        if keep_hidden:
            hidden.append(out.float())
        return Encoded(F.normalize(emb.float(), dim=-1).view(b, *grid, -1), artefacts, x.float(), hidden)

    def _last_block(self, x: torch.Tensor, variant: str, grid: tuple[int, int], sigma: float) -> torch.Tensor:
        layer = self.model.vision_model.encoder.layers[-1]
        if variant == "vanilla":
            return layer(x, None)[:, 1:]
        attn = layer.self_attn
        p = layer.layer_norm1(x[:, 1:])
        q, k, v = (split_heads(proj(p), attn.num_heads) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
        return attn.out_proj(merge_heads(variant_mix(variant, q, k, v, attn.scale, grid, sigma)))


def _prompt_spec(prompts: Any, default: PromptSpec) -> PromptSpec:
    """The prompts a source is given: a PromptSpec as it is, or a mapping of some of its
    fields (a config's, a command line's) completed with the source's ``default``."""
    if isinstance(prompts, PromptSpec):
        return prompts
    if isinstance(prompts, dict):
        known = {f.name for f in dataclasses.fields(PromptSpec)}
        unknown = sorted(set(prompts) - known)
        if unknown:
            raise L2LError(f"unknown prompt field(s) {', '.join(map(str, unknown))}; prompts take: "
                           f"{', '.join(sorted(known))}")
        given = {k: tuple(v) if isinstance(v, list) else v for k, v in prompts.items()}
        return dataclasses.replace(default, **given)
    raise L2LError(f"prompts must be a PromptSpec or a dict of its fields, got {type(prompts).__name__}")


def _check_patch_multiple(input_size: int, patch: int) -> None:
    if input_size % patch:
        raise L2LError(f"--input-size {input_size} is not a multiple of the patch size {patch}; "
                       f"use e.g. {patch * max(1, round(input_size / patch))}")


class ClipBackedMaps(MapGenerator):
    """What every generator that reads CLIP shares, written once: the option checks,
    the weights (loaded on first use; their identity goes into the fingerprint and
    every result, so a test model never passes for real CLIP), the dense model on
    the device, prompt scoring and the batched loop with its artefact counts.

    Subclasses are dataclasses that declare the fields annotated here and turn one
    batch into maps in :meth:`_batch_maps`."""

    kind: ClassVar[str] = "vlm"
    vlm: Any
    prompts: PromptSpec
    variant: str
    input_size: int
    refine: str
    guard_z: float
    batch_size: int
    device: str | None

    def __post_init__(self) -> None:
        """Every field checked for type and range (the weights are located by
        :meth:`check_ready` and loaded on first use)."""
        require_vlm_extra(f"the {self.name} backend")
        self.prompts = _prompt_spec(self.prompts, PromptSpec())
        check_choice("variant", self.variant, VARIANTS)
        check_choice("refine", self.refine, REFINEMENTS)
        check_int("input_size", self.input_size, 1, MAX_INPUT_SIZE, example=224)
        check_number("guard_z", self.guard_z, low=0, example=6)
        check_int("batch_size", self.batch_size, 1, example=32)
        check_device(self.device)
        if not self.prompts.negative:
            raise L2LError(f"the {self.name} backend scores positive against negative prompts; "
                           "pass --negatives \"background,black,dark\"")
        check_source_type(self.vlm, "CLIP")
        self._clip: DenseCLIP | None = None

    def check_ready(self) -> None:
        """The CLIP weights are where ``vlm`` says (a sound folder, the hub cache, or a
        reachable hub), and ``input_size`` fits their patch size."""
        patch = patch_size(check_source(self.vlm, "CLIP") or {})
        if patch:
            _check_patch_multiple(self.input_size, patch)

    @property
    def weights(self) -> Pretrained:
        if not isinstance(self.vlm, Pretrained):
            self.vlm = load_clip(self.vlm)
        return self.vlm

    @property
    def real_vlm(self) -> bool:
        """Whether every model behind the maps has real pretrained weights."""
        return self.weights.is_real

    @cached_property
    def torch_device(self) -> torch.device:
        """Resolved on first use, not at construction: a generator built only for its
        fingerprint touches no device."""
        device = pick_device(self.device)
        self.device_used = str(device)
        return device

    def dense(self) -> DenseCLIP:
        """CLIP on the device, built once; the input size must be a multiple of its patch."""
        if self._clip is None:
            self._clip = DenseCLIP(self.weights, self.torch_device)
            _check_patch_multiple(self.input_size, self._clip.patch)
        return self._clip

    def _weights_config(self) -> dict:
        """The weights part of :meth:`config`: which weights, and whether they are real."""
        return {"weights": self.weights.identity, "real_vlm": self.real_vlm}

    def describe(self) -> dict:
        return {**super().describe(), "weights": self.weights.identity, "real_vlm": self.real_vlm}

    def foreground(self, patch_emb: torch.Tensor) -> torch.Tensor:
        """(B, h, w) share of each patch's softmax over all prompts on the positive ones."""
        clip = self.dense()
        pos = clip.prompt_embeddings(self.prompts.positive, self.prompts.templates)  # (P, E)
        neg = clip.prompt_embeddings(self.prompts.negative, self.prompts.templates)  # (Q, E)
        return foreground_probability(patch_emb, pos, neg, self.prompts.temperature)

    def _pixels(self, batch: np.ndarray) -> torch.Tensor:
        """uint8 (B, C, H, W) -> normalised (B, 3, input_size, input_size)."""
        return to_pixels(batch, self.input_size, self.weights.mean, self.weights.std)

    def _refined(self, batch: np.ndarray, maps: torch.Tensor) -> torch.Tensor:
        """(B, H, W) maps snapped to the edges of the uint8 (B, C, H, W) images when ``refine`` is pamr."""
        if self.refine == "pamr":
            return pamr(torch.as_tensor(batch).float() / 255.0, maps)
        return maps

    @property
    def inference_batch(self) -> int:
        """Images per forward pass in :meth:`generate`."""
        return self.batch_size

    @abstractmethod
    def _batch_maps(self, batch: np.ndarray, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W) maps and the (B, h, w) artefact mask for uint8 (B, C, H, W) images."""

    def generate(self, split: ImageSet) -> np.ndarray:
        self.dense()
        images = np.asarray(split.images)  # (N, C, H, W)
        hw = images.shape[-2:]
        out, flagged, total = [], 0, 0
        for i in range(0, len(images), self.inference_batch):
            maps, artefacts = self._batch_maps(images[i:i + self.inference_batch], hw)  # (B, H, W), (B, h, w)
            out.append(maps.clamp(0, 1).numpy())
            flagged += int(artefacts.sum())
            total += artefacts.numel()
        self.last_stats = {"artefact_patches": flagged, "patches": total}
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, *hw), np.float32)


@dataclass
class ClipMaps(ClipBackedMaps):
    """Training-free CLIP maps: positive-vs-negative prompt softmax per patch."""

    name: ClassVar[str] = "clip"
    summary: ClassVar[str] = ("training-free dense CLIP maps: each patch's softmax over the positive against the "
                              "background prompts")
    vlm: Any = option(DEFAULT_CLIP, "CLIP hub id or save_pretrained folder.", env="L2L_VLM")
    variant: str = option("naclip", f"Last-block rule: {' | '.join(VARIANTS)}.")
    prompts: PromptSpec = option(help="What CLIP is asked (prompt flags).", default_factory=PromptSpec)
    input_size: int = option(224, "Model input size in pixels, a multiple of the patch.", cli=int)
    flip: bool = option(False, "Average with the horizontally flipped image.", cli=bool)
    refine: str = option("none", f"Refinement of the maps: {' | '.join(REFINEMENTS)}.")
    guard_z: float = option(6.0, "Artefact guard threshold in robust z units; 0 disables.", cli=float)
    sigma: float = option(5.0, "naclip: the Gaussian window's sigma in patches.", flag=False, cli=float)
    batch_size: int = option(32, "Images per forward pass.", cli=int)
    device: str | None = option(None, "auto | cpu | cuda | cuda:N (auto: CUDA when available).")

    def __post_init__(self) -> None:
        check_bool("flip", self.flip)
        check_number("sigma", self.sigma, above=0, example=5.0)
        super().__post_init__()

    def config(self) -> dict:
        """Everything that changes the maps; batch size and device do not."""
        cfg = {**self._weights_config(), "variant": self.variant, "prompts": dataclasses.asdict(self.prompts),
               "input_size": self.input_size, "flip": self.flip, "refine": self.refine, "guard_z": self.guard_z}
        if self.variant == "naclip":
            cfg["sigma"] = self.sigma
        return cfg

    def patch_scores(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, h, w) foreground probability per patch and the artefact mask."""
        clip = self.dense()
        enc = clip.encode(pixels, self.variant, self.guard_z, self.sigma)
        scores = self.foreground(enc.patch_emb)  # (B, h, w)
        if self.flip:
            flipped = clip.encode(pixels.flip(-1), self.variant, self.guard_z, self.sigma)
            scores = (scores + self.foreground(flipped.patch_emb).flip(-1)) / 2  # (B, h, w)
        return scores, enc.artefacts

    def _batch_maps(self, batch: np.ndarray, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        scores, artefacts = self.patch_scores(self._pixels(batch))  # (B, h, w)
        return self._refined(batch, to_image_size(scores.cpu(), self.input_size, hw)), artefacts


register_map_source(ClipMaps)


def _variant_source(variant: str) -> type[ClipMaps]:
    """``--maps naclip`` etc.: the clip backend with its variant fixed by the name."""
    fixed = option(variant, "Fixed by the source's name.", flag=False)
    cls = dataclasses.make_dataclass(f"{variant.capitalize()}Maps", [("variant", str, fixed)],
                                     bases=(ClipMaps,),
                                     namespace={"name": variant, "__doc__": f"ClipMaps with variant {variant}."})
    return register_map_source(cls)


for _v in VARIANTS[1:]:
    _variant_source(_v)
