"""WeCLIP-style maps (Zhang et al.; the paper's VLM stage, PROTOCOL 4.1).

A light decoder is trained on frozen CLIP patch features (a learned mix of the last
few layers, optionally concatenated with frozen DINOv2 features) under weak
supervision from the image-level prompt alone: the training-free CLIP map of each
image, propagated along the last block's patch affinity and thresholded into
confident foreground, confident background and ignored patches, is the pseudo-label.
The decoder then runs on every image. Training length follows the device: the
paper's 30k iterations on a GPU, a short schedule on a subset on CPU; the resolved
numbers are part of the fingerprint.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import L2LError
from ..io import atomic_torch_save
from .base import MapGenerator, PromptSpec, register_map_source
from .clip import (VARIANTS, DenseCLIP, _prompt_spec, foreground_probability, self_similarity, split_heads,
                   to_image_size, to_pixels)
from .refine import pamr
from .runtime import autocast, resolve_device
from .weights import DEFAULT_CLIP, Pretrained, load_clip, load_dino

GPU_SCHEDULE = (30000, None)
CPU_SCHEDULE = (300, 1024)


def minmax(x: torch.Tensor) -> torch.Tensor:
    """Per-sample rescale of (B, ...) to [0, 1], the usual CAM normalisation."""
    flat = x.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo + 1e-8)).view_as(x)


def affinity_refine(cam: torch.Tensor, affinity: torch.Tensor, steps: int) -> torch.Tensor:
    """(B, P) scores propagated ``steps`` times along a row-stochastic (B, P, P)
    affinity (``cam_i <- sum_j A_ij cam_j``), so a label spreads over patches that
    look alike, then min-max normalised."""
    for _ in range(steps):
        cam = (affinity @ cam[..., None])[..., 0]
    return minmax(cam)


def pseudo_labels(cam: torch.Tensor, fg: float, bg: float) -> torch.Tensor:
    """1 where ``cam >= fg``, 0 where ``cam <= bg``, -1 (ignored) between."""
    labels = torch.full_like(cam, -1.0)
    labels[cam >= fg] = 1.0
    labels[cam <= bg] = 0.0
    return labels


def masked_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy over the patches with a label; 0 when none has one."""
    keep = labels >= 0
    if not keep.any():
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[keep], labels[keep])


class Decoder(nn.Module):
    """Softmax-weighted mix of L layers' tokens, a 1x1 projection, a 3x3 context conv
    and a 1x1 head: a few thousand parameters on top of frozen features."""

    def __init__(self, layers: int, dim: int, extra_dim: int = 0, hidden: int = 64):
        super().__init__()
        self.mix = nn.Parameter(torch.zeros(layers))
        self.proj = nn.Conv2d(dim + extra_dim, hidden, 1)
        self.context = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.head = nn.Conv2d(hidden, 1, 1)

    def forward(self, layer_tokens: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, h, w, D) [+ (B, h, w, E)] -> (B, h, w) logits."""
        x = (layer_tokens * self.mix.softmax(0).view(1, -1, 1, 1, 1)).sum(1)
        x = F.layer_norm(x, x.shape[-1:])
        if extra is not None:
            x = torch.cat([x, F.layer_norm(extra, extra.shape[-1:])], -1)
        x = F.gelu(self.proj(x.permute(0, 3, 1, 2)))
        x = F.gelu(self.context(x)) + x
        return self.head(x)[:, 0]


@dataclass
class WeCLIPMaps(MapGenerator):
    """Decoder-on-frozen-CLIP maps trained from the prompt alone (see module doc)."""

    name: ClassVar[str] = "weclip"
    kind: ClassVar[str] = "vlm"
    vlm: Any = DEFAULT_CLIP
    dino: Any = None
    prompts: PromptSpec = field(default_factory=PromptSpec)
    variant: str = "naclip"
    input_size: int = 224
    iterations: int | None = None
    train_images: int | None = None
    batch_size: int = 16
    lr: float = 1e-3
    layers: int = 4
    affinity_steps: int = 2
    fg_threshold: float = 0.6
    bg_threshold: float = 0.35
    refine: str = "pamr"
    hard: bool = False
    guard_z: float = 6.0
    seed: int = 0
    device: str | None = None

    def __post_init__(self) -> None:
        self.prompts = _prompt_spec(self.prompts)
        if self.variant not in VARIANTS:
            raise L2LError(f"unknown CLIP variant {self.variant!r} for pseudo-labels; choose one of: {', '.join(VARIANTS)}")
        if self.refine not in ("none", "pamr"):
            raise L2LError(f"unknown refinement {self.refine!r}; choose none or pamr")
        if not self.prompts.negative:
            raise L2LError("weclip pseudo-labels need negative prompts; pass --negatives \"background,black,dark\"")
        if not 0 <= self.bg_threshold < self.fg_threshold <= 1:
            raise L2LError("need 0 <= bg_threshold < fg_threshold <= 1 for weclip pseudo-labels")
        self._device = resolve_device(self.device)
        self.device_used = str(self._device)
        gpu = self._device.type == "cuda"
        default_iters, default_n = GPU_SCHEDULE if gpu else CPU_SCHEDULE
        self.iterations = self.iterations if self.iterations is not None else default_iters
        self.train_images = self.train_images if self.train_images is not None else default_n
        self._clip: DenseCLIP | None = None
        self._dino: Pretrained | None = None
        self.decoder: Decoder | None = None
        self.last_stats: dict = {}
        self.train_log: list[float] = []

    @property
    def weights(self) -> Pretrained:
        if not isinstance(self.vlm, Pretrained):
            self.vlm = load_clip(self.vlm)
        return self.vlm

    @property
    def dino_weights(self) -> Pretrained | None:
        if self.dino is not None and self._dino is None:
            self._dino = load_dino(self.dino)
        return self._dino

    def dense(self) -> DenseCLIP:
        if self._clip is None:
            self._clip = DenseCLIP(self.weights, self._device)
            if self.input_size % self._clip.patch:
                raise L2LError(f"--input-size {self.input_size} is not a multiple of the patch size {self._clip.patch}")
        return self._clip

    def config(self) -> dict:
        skip = {"vlm", "dino", "batch_size", "device", "prompts"}
        cfg = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}
        cfg.update(weights=self.weights.identity, real_vlm=self.weights.is_real and (self.dino is None or self.dino_weights.is_real),
                   dino=self.dino_weights.identity if self.dino is not None else None, prompts=dataclasses.asdict(self.prompts))
        return cfg

    def describe(self) -> dict:
        d = super().describe()
        d["weights"] = d["config"]["weights"]
        d["real_vlm"] = d["config"]["real_vlm"]
        return d

    # ---- features and pseudo-labels ------------------------------------------------

    @torch.no_grad()
    def features(self, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """(layer tokens (B, L, h, w, D), DINO tokens or None, refined CAM (B, h, w),
        artefact mask) for uint8 images."""
        clip = self.dense()
        pixels = to_pixels(images, self.input_size, self.weights.mean, self.weights.std)
        enc = clip.encode(pixels, self.variant, self.guard_z, keep_hidden=True)
        b, h, w, _ = enc.patch_emb.shape
        tokens = torch.stack(enc.hidden[-self.layers:], 1).view(b, -1, h, w, enc.hidden[-1].shape[-1])
        pos = clip.prompt_embeddings(self.prompts.positive, self.prompts.templates)
        neg = clip.prompt_embeddings(self.prompts.negative, self.prompts.templates)
        cam = foreground_probability(enc.patch_emb, pos, neg, self.prompts.temperature).flatten(1)
        cam = affinity_refine(cam, self._affinity(enc.last_input), self.affinity_steps).view(b, h, w)
        return tokens, self._dino_tokens(images, (h, w)), cam, enc.artefacts

    def _affinity(self, last_input: torch.Tensor) -> torch.Tensor:
        """Head-averaged ``(softmax(q q^T) + softmax(k k^T)) / 2`` of the last block
        over patches: which patches the frozen model itself considers alike."""
        layer = self.dense().model.vision_model.encoder.layers[-1]
        attn = layer.self_attn
        with autocast(self._device):
            p = layer.layer_norm1(last_input[:, 1:].to(self._device))
            q, k = split_heads(attn.q_proj(p), attn.num_heads), split_heads(attn.k_proj(p), attn.num_heads)
            aff = (self_similarity(q, attn.scale) + self_similarity(k, attn.scale)) / 2
        return aff.float().mean(1)

    def _dino_tokens(self, images: np.ndarray, grid: tuple[int, int]) -> torch.Tensor | None:
        dino = self.dino_weights
        if dino is None:
            return None
        model = dino.model.to(self._device)
        patch = model.config.patch_size
        size = patch * max(1, round(self.input_size / patch))
        with autocast(self._device):
            out = model(pixel_values=to_pixels(images, size, dino.mean, dino.std).to(self._device)).last_hidden_state
        n = size // patch
        tokens = out[:, -n * n:].float().reshape(len(images), n, n, -1).permute(0, 3, 1, 2)
        return F.interpolate(tokens, size=grid, mode="bilinear", align_corners=False).permute(0, 2, 3, 1)

    # ---- training and inference ------------------------------------------------------

    def _new_decoder(self) -> Decoder:
        torch.manual_seed(self.seed)
        dim = self.dense().model.config.vision_config.hidden_size
        extra = self.dino_weights.model.config.hidden_size if self.dino is not None else 0
        return Decoder(min(self.layers, self.dense().model.config.vision_config.num_hidden_layers), dim, extra).to(self._device)

    def prepare(self, split: Any, workdir: Any = None) -> None:
        """Train the decoder (or reload it from ``workdir`` after a kill)."""
        if self.decoder is not None:
            return
        saved = Path(workdir) / f"decoder-{self.fingerprint()}.pt" if workdir else None
        decoder = self._new_decoder()
        if saved is not None and saved.exists():
            decoder.load_state_dict(torch.load(saved, map_location=self._device, weights_only=True))
        else:
            self._train(decoder, np.asarray(split.images))
            if saved is not None:
                atomic_torch_save(saved, decoder.state_dict())
        self.decoder = decoder.eval()

    def _train(self, decoder: Decoder, images: np.ndarray) -> None:
        from tqdm import tqdm

        rng = np.random.default_rng(self.seed)
        n = len(images) if self.train_images is None else min(self.train_images, len(images))
        pool = rng.choice(len(images), n, replace=False)
        opt = torch.optim.AdamW(decoder.parameters(), lr=self.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, self.iterations))
        decoder.train()
        bar = tqdm(range(self.iterations), desc="weclip decoder", unit="it", file=sys.stderr,
                   disable=self.iterations < 50 or not sys.stderr.isatty())
        for _ in bar:
            batch = images[np.sort(rng.choice(pool, min(self.batch_size, n), replace=False))]
            if rng.random() < 0.5:
                batch = batch[..., ::-1].copy()
            tokens, extra, cam, _ = self.features(batch)
            loss = masked_bce(decoder(tokens, extra).float(), pseudo_labels(cam, self.fg_threshold, self.bg_threshold))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            self.train_log.append(loss.item())
            bar.set_postfix(loss=f"{self.train_log[-1]:.3f}")

    def generate(self, split: Any) -> np.ndarray:
        if self.decoder is None:
            self.prepare(split)
        images = np.asarray(split.images)
        hw = images.shape[-2:]
        out, flagged, total = [], 0, 0
        for i in range(0, len(images), max(1, self.batch_size * 4)):
            batch = images[i:i + self.batch_size * 4]
            tokens, extra, _, artefacts = self.features(batch)
            with torch.no_grad(), autocast(self._device):
                probs = self.decoder(tokens, extra).float().sigmoid().cpu()
            maps = to_image_size(probs, self.input_size, hw)
            if self.refine == "pamr":
                maps = pamr(torch.as_tensor(batch).float() / 255.0, maps)
            if self.hard:
                maps = (maps > 0.5).float()
            out.append(maps.clamp(0, 1).numpy())
            flagged, total = flagged + int(artefacts.sum()), total + artefacts.numel()
        self.last_stats = {"artefact_patches": flagged, "patches": total}
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, *hw), np.float32)


register_map_source(WeCLIPMaps)
