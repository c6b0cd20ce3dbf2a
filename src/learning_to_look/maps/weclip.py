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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import L2LError
from ..io import atomic_torch_save, torch_load
from .base import ImageSet, PromptSpec, check_bool, check_int, check_number, option, register_map_source
from .clip import ClipBackedMaps, artefact_counts
from .geometry import to_image_size, to_pixels
from .clip_rules import self_similarity, split_heads
from ..device import autocast
from .weights import DEFAULT_CLIP, Pretrained, check_source, check_source_type, load_dino

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
class WeCLIPMaps(ClipBackedMaps):
    """Decoder-on-frozen-CLIP maps trained from the prompt alone (see module doc)."""

    name: ClassVar[str] = "weclip"
    summary: ClassVar[str] = ("a WeCLIP-style decoder on frozen CLIP features, trained on CLIP's own pseudo-labels "
                              "from the prompts alone")
    vlm: Any = option(DEFAULT_CLIP, "CLIP hub id or save_pretrained folder.", env="L2L_VLM")
    dino: Any = option(None, "DINOv2 hub id or folder for a second feature stream.")
    prompts: PromptSpec = option(help="What CLIP is asked (prompt flags).", default_factory=PromptSpec)
    variant: str = option("naclip", "Last-block rule of the CLIP features.")
    input_size: int = option(224, "Model input size in pixels, a multiple of the patch.", cli=int)
    iterations: int | None = option(None, f"Decoder iterations [unset: {GPU_SCHEDULE[0]} on GPU, {CPU_SCHEDULE[0]} "
                                          "on CPU].", cli=int)
    train_images: int | None = option(None, f"Train the decoder on N images [unset: all on GPU, {CPU_SCHEDULE[1]} "
                                            "on CPU].", cli=int)
    batch_size: int = option(16, "Images per forward pass.", cli=int)
    lr: float = option(1e-3, "Decoder learning rate.", flag=False, cli=float)
    layers: int = option(4, "Last CLIP layers the decoder reads.", flag=False, cli=int)
    affinity_steps: int = option(2, "Affinity refinement steps of the pseudo-labels.", flag=False, cli=int)
    fg_threshold: float = option(0.6, "Pseudo-label foreground threshold.", flag=False, cli=float)
    bg_threshold: float = option(0.35, "Pseudo-label background threshold.", flag=False, cli=float)
    refine: str = option("pamr", "Refinement of the maps: none | pamr.")
    hard: bool = option(False, "Reference-style binary mask instead of soft maps.", cli=bool)
    guard_z: float = option(6.0, "Artefact token threshold in robust z units (flagged tokens are replaced by "
                                 "their neighbours' median; 0 flags none).", cli=float)
    seed: int = option(0, "Seed of the decoder's initialisation and sampling.", flag=False, cli=int)
    device: str | None = option(None, "auto | cpu | cuda | cuda:N (auto: CUDA when available).")

    def __post_init__(self) -> None:
        check_int("iterations", self.iterations, 1, optional=True, example=300)
        check_int("train_images", self.train_images, 1, optional=True, example=1024)
        check_number("lr", self.lr, above=0, example=1e-3)
        check_int("layers", self.layers, 1, example=4)
        check_int("affinity_steps", self.affinity_steps, 0, example=2)
        check_number("fg_threshold", self.fg_threshold, low=0, high=1, example=0.6)
        check_number("bg_threshold", self.bg_threshold, low=0, high=1, example=0.35)
        if not self.bg_threshold < self.fg_threshold:
            raise L2LError(f"need bg_threshold < fg_threshold for weclip pseudo-labels, got {self.bg_threshold} and "
                           f"{self.fg_threshold}; use e.g. 0.35 and 0.6")
        check_bool("hard", self.hard)
        check_int("seed", self.seed, 0, 2**32 - 1, example=0)
        super().__post_init__()
        if self.dino is not None:
            check_source_type(self.dino, "DINOv2")
        default_iters, default_n = GPU_SCHEDULE if self.torch_device.type == "cuda" else CPU_SCHEDULE
        self.iterations = self.iterations if self.iterations is not None else default_iters
        self.train_images = self.train_images if self.train_images is not None else default_n
        self._dino: Pretrained | None = None
        self.decoder: Decoder | None = None
        self.train_log: list[float] = []

    def check_ready(self) -> None:
        super().check_ready()
        if self.dino is not None:
            check_source(self.dino, "DINOv2")

    @property
    def dino_weights(self) -> Pretrained | None:
        if self.dino is not None and self._dino is None:
            self._dino = load_dino(self.dino)
        return self._dino

    @property
    def real_vlm(self) -> bool:
        return self.weights.is_real and (self.dino is None or self.dino_weights.is_real)

    @property
    def inference_batch(self) -> int:
        """Inference keeps no activations for a backward pass, so it takes 4 training batches at once."""
        return max(1, self.batch_size * 4)

    def config(self) -> dict:
        """Every field that changes the maps (the resolved schedule too), with weights identities for models."""
        skip = {"vlm", "dino", "batch_size", "device", "prompts"}
        cfg = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}
        cfg.update(**self._weights_config(), dino=self.dino_weights.identity if self.dino is not None else None,
                   prompts=dataclasses.asdict(self.prompts))
        return cfg

    # ---- features and pseudo-labels ------------------------------------------------

    @torch.no_grad()
    def features(self, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """(layer tokens (B, L, h, w, D), DINO tokens or None, refined CAM (B, h, w),
        artefact mask) for uint8 images."""
        enc = self.dense().encode(self._pixels(images), self.variant, self.guard_z, keep_hidden=True)
        b, h, w, _ = enc.patch_emb.shape
        tokens = torch.stack(enc.hidden[-self.layers:], 1).view(b, -1, h, w, enc.hidden[-1].shape[-1])
        cam = self.foreground(enc.patch_emb).flatten(1)  # (B, h * w)
        cam = affinity_refine(cam, self._affinity(enc.last_input), self.affinity_steps).view(b, h, w)
        return tokens, self._dino_tokens(images, (h, w)), cam, enc.artefacts

    def _affinity(self, last_input: torch.Tensor) -> torch.Tensor:
        """Head-averaged ``(softmax(q q^T) + softmax(k k^T)) / 2`` of the last block
        over patches: which patches the frozen model itself considers alike."""
        layer = self.dense().model.vision_model.encoder.layers[-1]
        attn = layer.self_attn
        with autocast(self.torch_device):
            p = layer.layer_norm1(last_input[:, 1:].to(self.torch_device))
            q, k = split_heads(attn.q_proj(p), attn.num_heads), split_heads(attn.k_proj(p), attn.num_heads)
            aff = (self_similarity(q, attn.scale) + self_similarity(k, attn.scale)) / 2
        return aff.float().mean(1)

    def _dino_tokens(self, images: np.ndarray, grid: tuple[int, int]) -> torch.Tensor | None:
        dino = self.dino_weights
        if dino is None:
            return None
        model = dino.model.to(self.torch_device)
        patch = model.config.patch_size
        size = patch * max(1, round(self.input_size / patch))
        with autocast(self.torch_device):
            pixels = to_pixels(images, size, dino.mean, dino.std).to(self.torch_device)
            out = model(pixel_values=pixels).last_hidden_state
        n = size // patch
        tokens = out[:, -n * n:].float().reshape(len(images), n, n, -1).permute(0, 3, 1, 2)
        return F.interpolate(tokens, size=grid, mode="bilinear", align_corners=False).permute(0, 2, 3, 1)

    # ---- training and inference ------------------------------------------------------

    def _new_decoder(self) -> Decoder:
        torch.manual_seed(self.seed)
        vision = self.dense().model.config.vision_config
        extra = self.dino_weights.model.config.hidden_size if self.dino is not None else 0
        return Decoder(min(self.layers, vision.num_hidden_layers), vision.hidden_size, extra).to(self.torch_device)

    def prepare(self, split: ImageSet, workdir: Path | None = None) -> None:
        """Train the decoder (or reload it from ``workdir`` after a kill)."""
        if self.decoder is not None:
            return
        saved = Path(workdir) / f"decoder-{self.fingerprint()}.pt" if workdir else None
        decoder = self._new_decoder()
        if saved is None or not saved.exists() or not self._reload(decoder, saved):
            self._train(decoder, np.asarray(split.images))
            if saved is not None:
                atomic_torch_save(saved, decoder.state_dict())
        self.decoder = decoder.eval()

    def _reload(self, decoder: Decoder, saved: Path) -> bool:
        """Load a decoder kept by an earlier (killed) run; a damaged file is reported and
        the decoder trained again, as a damaged map chunk is regenerated."""
        try:
            state = torch_load(saved, map_location=self.torch_device, weights_only=True)
            decoder.load_state_dict(state)
            return True
        except (L2LError, RuntimeError, TypeError, AttributeError) as e:
            print(f"warning: saved weclip decoder {saved} is unusable ({str(e)[:120]}); training it again",
                  file=sys.stderr)
            saved.unlink(missing_ok=True)
            return False

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
            labels = pseudo_labels(cam, self.fg_threshold, self.bg_threshold)  # (B, h, w)
            loss = masked_bce(decoder(tokens, extra).float(), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            self.train_log.append(loss.item())
            bar.set_postfix(loss=f"{self.train_log[-1]:.3f}")

    def generate(self, split: ImageSet) -> np.ndarray:
        if self.decoder is None:
            self.prepare(split)
        return super().generate(split)

    def _batch_maps(self, batch: np.ndarray, hw: tuple[int, int]) -> tuple[torch.Tensor, dict[str, int]]:
        tokens, extra, _, artefacts = self.features(batch)
        with torch.no_grad(), autocast(self.torch_device):
            probs = self.decoder(tokens, extra).float().sigmoid().cpu()  # (B, h, w)
        maps = self._refined(batch, to_image_size(probs, self.input_size, hw))  # (B, H, W)
        return ((maps > 0.5).float() if self.hard else maps), artefact_counts([artefacts])


register_map_source(WeCLIPMaps)
