"""Training-free dense CLIP maps: one forward per image (or per window), a modified last block.

The last-block rules of MaskCLIP, SCLIP, ClearCLIP and NACLIP, and the pipeline settings
of each official code, are in :mod:`.clip_rules`; docs/maps.md compares each variant with
its official code. Here the pipeline runs them as those codes do: position embeddings
interpolated the variant's way, the last block over the class token and the patches,
the cosine of each patch with every prompt's template-averaged text embedding (the
*logits*), upsampled bilinearly to the window, windows averaged, and only then the
softmax across prompts at the variant's temperature. The map is the softmax mass on the
positive prompts, each negative prompt being its own class.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import L2LError
from .base import (ImageSet, MapGenerator, PromptSpec, check_bool, check_choice, check_int, check_number, option,
                   register_map_source)
from .clip_rules import RULES, VARIANTS, block, interpolate_positions
from .geometry import to_hw, to_pixels, upsample, window_starts
from .refine import pamr
from ..device import autocast, check_device, pick_device
from .weights import DEFAULT_CLIP, Pretrained, check_source, check_source_type, load_clip, patch_size
from ..hub import require_vlm_extra

REFINEMENTS = ("none", "pamr")
#: Largest --input-size accepted: far beyond any CLIP's training resolution already.
MAX_INPUT_SIZE = 4096


# ---- pure tensor math -------------------------------------------------------------

def prompt_logits(patch_emb: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """(B, h, w, E) unit patch embeddings, (K, E) unit prompt embeddings -> (B, K, h, w) cosines."""
    return torch.einsum("bhwe,ke->bkhw", patch_emb, text)


def foreground_share(logits: torch.Tensor, n_positive: int, temperature: float) -> torch.Tensor:
    """(B, K, H, W) logits, the first ``n_positive`` of the K prompts positive -> (B, H, W):
    the share of ``softmax_K(temperature * logits)`` on the positive prompts, in [0, 1]."""
    return (temperature * logits).softmax(1)[:, :n_positive].sum(1)


def foreground_probability(patch_emb: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                           temperature: float) -> torch.Tensor:
    """Per patch: share of the softmax over all prompts (``temperature * cosine``) that falls
    on the positive prompts. Inputs are L2-normalised; output in [0, 1]."""
    sims = patch_emb @ torch.cat([positive, negative]).T
    return (temperature * sims).softmax(-1)[..., : len(positive)].sum(-1)


def artefact_mask(norms: torch.Tensor, z: float) -> torch.Tensor:
    """(B, h, w) bool: tokens whose norm is a robust outlier in their image
    (median + z * 1.4826 * MAD), the high-norm 'register' tokens ViTs park in empty
    regions. ``z <= 0`` flags none."""
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


# ---- the model --------------------------------------------------------------------

@dataclass
class Encoded:
    """Dense outputs of one batch: unit patch embeddings in text space, the artefact
    guard's mask, the last block's input tokens (class token first) and (on request)
    every layer's patch tokens."""

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
        """(K, E): each prompt's unit embeddings averaged over templates, then renormalised."""
        templates = templates or ("{}",)
        emb = self.text_embeddings([t.format(p) for p in prompts for t in templates])
        return F.normalize(emb.view(len(prompts), len(templates), -1).mean(1), dim=-1)

    def embed(self, pixels: torch.Tensor, positions: str) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, 3, H, W) pixels -> (B, 1+h*w, D) pre-layer-normed tokens and the (h, w) grid,
        position embeddings interpolated the ``positions`` way."""
        emb, vision = self.model.vision_model.embeddings, self.model.vision_model
        patches = emb.patch_embedding(pixels.to(self.device, emb.patch_embedding.weight.dtype))  # (B, D, h, w)
        grid = (patches.shape[-2], patches.shape[-1])
        cls = emb.class_embedding.expand(len(pixels), 1, -1)
        x = torch.cat([cls, patches.flatten(2).transpose(1, 2)], 1)
        return vision.pre_layrnorm(x + interpolate_positions(emb.position_embedding.weight, grid, positions)), grid

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, variant: str, guard_z: float = 6.0, sigma: float = 5.0,
               keep_hidden: bool = False, repair: bool = True) -> Encoded:
        """Patch embeddings of ``variant``; tokens flagged by the artefact guard (``guard_z``)
        are counted, and with ``repair`` replaced by their neighbours' median before the last block."""
        vision = self.model.vision_model
        with autocast(self.device):
            x, grid = self.embed(pixels, RULES[variant].positions)
            hidden = []
            for layer in vision.encoder.layers[:-1]:
                x = layer(x, None)
                if keep_hidden:
                    hidden.append(x[:, 1:].float())
            patches = x[:, 1:].reshape(len(x), *grid, -1)
            artefacts = artefact_mask(patches.float().norm(dim=-1), guard_z)
            if repair:
                x = torch.cat([x[:, :1], neighbour_median(patches, artefacts).flatten(1, 2)], 1)
            out = block(vision.encoder.layers[-1], x, variant, grid, sigma).out[:, 1:]
            emb = self.model.visual_projection(vision.post_layernorm(out))
        if keep_hidden:
            hidden.append(out.float())
        return Encoded(F.normalize(emb.float(), dim=-1).view(len(x), *grid, -1), artefacts, x.float(), hidden)


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


def check_patch_multiple(option_flag: str, pixels: int, patch: int) -> None:
    if pixels % patch:
        raise L2LError(f"{option_flag} {pixels} is not a multiple of the patch size {patch}; "
                       f"use e.g. {patch * max(1, round(pixels / patch))}")


class ClipBackedMaps(MapGenerator):
    """What every generator that reads CLIP shares, written once: the option checks,
    the weights (loaded on first use; their identity goes into the fingerprint and
    every result, so a test model never passes for real CLIP), the dense model on
    the device, and the batched loop with its counts.

    Subclasses are dataclasses that declare the fields annotated here, check their own
    in :meth:`_check_options` (by default the prompt-scoring fields below) and turn one
    batch into maps in :meth:`_batch_maps`."""

    kind: ClassVar[str] = "vlm"
    vlm: Any
    input_size: int
    batch_size: int
    device: str | None
    prompts: PromptSpec
    variant: str
    refine: str
    guard_z: float

    def __post_init__(self) -> None:
        """Every field checked for type and range (the weights are located by
        :meth:`check_ready` and loaded on first use)."""
        require_vlm_extra(f"the {self.name} backend")
        check_int("input_size", self.input_size, 1, MAX_INPUT_SIZE, example=224)
        check_int("batch_size", self.batch_size, 1, example=32)
        check_device(self.device)
        check_source_type(self.vlm, "CLIP")
        self._check_options()
        self._clip: DenseCLIP | None = None

    def prompt_defaults(self) -> tuple[tuple[str, ...], float]:
        """The templates and temperature used where the prompts name none."""
        return ("a photo of {}.", "a clean origami {}."), 40.0

    def _check_options(self) -> None:
        """Prompts (completed with :meth:`prompt_defaults`), last-block rule, refinement, artefact guard."""
        check_choice("variant", self.variant, VARIANTS)
        check_choice("refine", self.refine, REFINEMENTS)
        check_number("guard_z", self.guard_z, low=0, example=6)
        self.prompts = _prompt_spec(self.prompts, PromptSpec()).completed(*self.prompt_defaults())
        if not self.prompts.negative:
            raise L2LError(f"the {self.name} backend scores positive against negative prompts; "
                           "pass --negatives \"background,black,dark\"")

    def check_ready(self) -> None:
        """The CLIP weights are where ``vlm`` says (a sound folder, the hub cache, or a
        reachable hub), and ``input_size`` fits their patch size."""
        patch = patch_size(check_source(self.vlm, "CLIP") or {})
        if patch:
            self._check_fits(patch)

    def _check_fits(self, patch: int) -> None:
        """The sizes in pixels are multiples of the model's ``patch``."""
        check_patch_multiple("--input-size", self.input_size, patch)

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
            self._check_fits(self._clip.patch)
        return self._clip

    def _weights_config(self) -> dict:
        """The weights part of :meth:`config`: which weights, and whether they are real."""
        return {"weights": self.weights.identity, "real_vlm": self.real_vlm}

    def describe(self) -> dict:
        return {**super().describe(), "weights": self.weights.identity, "real_vlm": self.real_vlm}

    def text(self) -> torch.Tensor:
        """(P + Q, E) unit embeddings of the positive, then the negative prompts."""
        clip = self.dense()
        return torch.cat([clip.prompt_embeddings(self.prompts.positive, self.prompts.templates),
                          clip.prompt_embeddings(self.prompts.negative, self.prompts.templates)])

    def foreground(self, patch_emb: torch.Tensor) -> torch.Tensor:
        """(B, h, w) share of each patch's softmax over all prompts on the positive ones."""
        text = self.text()
        n = len(self.prompts.positive)
        return foreground_probability(patch_emb, text[:n], text[n:], self.prompts.temperature)

    def _pixels(self, batch: np.ndarray) -> torch.Tensor:
        """uint8 (B, C, H, W) -> normalised (B, 3, input_size, input_size)."""
        return to_pixels(batch, self.input_size, self.weights.mean, self.weights.std)

    def _refined(self, batch: np.ndarray, maps: torch.Tensor) -> torch.Tensor:
        """(B, H, W) or (B, K, H, W) maps snapped to the edges of the uint8 (B, C, H, W) images
        when ``refine`` is pamr."""
        if self.refine == "pamr":
            return pamr(torch.as_tensor(batch).float() / 255.0, maps)
        return maps

    @property
    def inference_batch(self) -> int:
        """Images per forward pass in :meth:`generate`."""
        return self.batch_size

    def _batch_maps(self, batch: np.ndarray, hw: tuple[int, int]) -> tuple[torch.Tensor, dict[str, int]]:
        """(B, H, W) maps for uint8 (B, C, H, W) images, and counts to sum over batches."""
        raise NotImplementedError

    def generate(self, split: ImageSet) -> np.ndarray:
        self.dense()
        images = np.asarray(split.images)  # (N, C, H, W)
        hw = images.shape[-2:]
        out, stats = [], {}
        for i in range(0, len(images), self.inference_batch):
            maps, counts = self._batch_maps(images[i:i + self.inference_batch], hw)  # (B, H, W)
            out.append(maps.clamp(0, 1).numpy())
            stats = {k: stats.get(k, 0) + v for k, v in counts.items()}
        self.last_stats = stats
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, *hw), np.float32)


def artefact_counts(artefacts: list[torch.Tensor]) -> dict[str, int]:
    """Flagged and total patches of the artefact guard's masks."""
    return {"artefact_patches": sum(int(a.sum()) for a in artefacts), "patches": sum(a.numel() for a in artefacts)}


@dataclass
class ClipMaps(ClipBackedMaps):
    """Training-free CLIP maps: positive-vs-negative prompt softmax per pixel."""

    name: ClassVar[str] = "clip"
    summary: ClassVar[str] = ("training-free dense CLIP maps: each pixel's softmax over the positive against the "
                              "background prompts")
    vlm: Any = option(DEFAULT_CLIP, "CLIP hub id or save_pretrained folder.", env="L2L_VLM")
    variant: str = option("naclip", f"Last-block rule: {' | '.join(VARIANTS)}.")
    prompts: PromptSpec = option(help="What CLIP is asked (prompt flags).", default_factory=PromptSpec)
    input_size: int = option(224, "Model input size in pixels, a multiple of the patch.", cli=int)
    window: int | None = option(None, "Sliding window in pixels, 0 for one pass [default: the method's own: 224; "
                                      "448 for clearclip and the -nores ablations; 0 for maskclip].", cli=int)
    stride: int | None = option(None, "Sliding-window stride in pixels [default: half the window].", cli=int)
    flip: bool = option(False, "Average with the horizontally flipped image.", cli=bool)
    refine: str = option("none", f"Refinement of the maps: {' | '.join(REFINEMENTS)}.")
    guard_z: float = option(6.0, "Artefact token threshold in robust z units (counted; 0 flags none).", cli=float)
    repair: bool = option(False, "Replace flagged artefact tokens by their neighbours' median before the last block "
                                 "(no official method does).", cli=bool)
    sigma: float = option(5.0, "naclip: the Gaussian window's sigma in patches.", flag=False, cli=float)
    batch_size: int = option(32, "Images per forward pass.", cli=int)
    device: str | None = option(None, "auto | cpu | cuda | cuda:N (auto: CUDA when available).")

    def prompt_defaults(self) -> tuple[tuple[str, ...], float]:
        rule = RULES[self.variant]
        return rule.templates, rule.temperature

    def _check_options(self) -> None:
        super()._check_options()
        check_bool("flip", self.flip)
        check_bool("repair", self.repair)
        check_number("sigma", self.sigma, above=0, example=5.0)
        self.window = check_int("window", RULES[self.variant].window if self.window is None else self.window, 0,
                                MAX_INPUT_SIZE, example=224)
        if not self.window and self.stride not in (None, 0):
            raise L2LError(f"--stride {self.stride} needs a sliding window; pass --window 224 too, or drop --stride")
        stride = self.window // 2 if self.stride is None else self.stride
        self.stride = check_int("stride", stride, 1, self.window, example=112) if self.window else 0

    @property
    def sliding(self) -> bool:
        """Whether windows slide: a window at least the input's size is one pass."""
        return 0 < self.window < self.input_size

    def _check_fits(self, patch: int) -> None:
        super()._check_fits(patch)
        if self.sliding:
            check_patch_multiple("--window", self.window, patch)

    def config(self) -> dict:
        """Everything that changes the maps; batch size and device do not."""
        cfg = {**self._weights_config(), "variant": self.variant, "prompts": dataclasses.asdict(self.prompts),
               "input_size": self.input_size, "window": self.window if self.sliding else 0,
               "stride": self.stride if self.sliding else 0, "flip": self.flip, "refine": self.refine,
               "guard_z": self.guard_z, "repair": self.repair}
        if RULES[self.variant].attention == "kk+gauss":
            cfg["sigma"] = self.sigma
        return cfg

    def _pass_logits(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K, S, S) prompt logits at the pixels of one (B, 3, S, S) pass, and its artefact mask."""
        enc = self.dense().encode(pixels, self.variant, self.guard_z, self.sigma, repair=self.repair)
        return upsample(prompt_logits(enc.patch_emb, self.text()), pixels.shape[-2:]), enc.artefacts

    def pixel_logits(self, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, K, S, S) logits of (B, 3, S, S) pixels, averaged over the sliding windows
        that cover each pixel, and the windows' artefact masks."""
        if not self.sliding:
            logits, artefacts = self._pass_logits(pixels)
            return logits, [artefacts]
        size = pixels.shape[-1]
        total = torch.zeros(len(pixels), len(self.text()), size, size, device=self.torch_device)
        count = torch.zeros(size, size, device=self.torch_device)
        masks = []
        for y in window_starts(size, self.window, self.stride):
            for x in window_starts(size, self.window, self.stride):
                logits, artefacts = self._pass_logits(pixels[..., y:y + self.window, x:x + self.window])
                total[..., y:y + self.window, x:x + self.window] += logits
                count[y:y + self.window, x:x + self.window] += 1
                masks.append(artefacts)
        return total / count, masks

    def _batch_maps(self, batch: np.ndarray, hw: tuple[int, int]) -> tuple[torch.Tensor, dict[str, int]]:
        pixels = self._pixels(batch)
        logits, masks = self.pixel_logits(pixels)  # (B, K, S, S)
        if self.flip:
            logits = (logits + self.pixel_logits(pixels.flip(-1))[0].flip(-1)) / 2
        logits = self._refined(batch, to_hw(logits.cpu(), hw))  # (B, K, H, W)
        maps = foreground_share(logits, len(self.prompts.positive), self.prompts.temperature)
        return maps, artefact_counts(masks)


register_map_source(ClipMaps)


def _variant_source(variant: str) -> type[ClipMaps]:
    """``--maps naclip`` etc.: the clip backend with its variant fixed by the name."""
    fixed = option(variant, "Fixed by the source's name.", flag=False)
    cls = dataclasses.make_dataclass(f"{variant.title().replace('-', '')}Maps", [("variant", str, fixed)],
                                     bases=(ClipMaps,),
                                     namespace={"name": variant, "__doc__": f"ClipMaps with variant {variant}."})
    return register_map_source(cls)


for _v in VARIANTS[1:]:
    _variant_source(_v)
