"""The feature cache: what a fixed part of a network computes for a split, computed once
and kept on disk as a memory-mapped fp16 array.

Two things read it:
- ``--freeze-until STAGE`` (ResNets): the frozen stem and stages run once per image, and
  training covers the rest, reading their output from the cache;
- last-layer retraining (``dfr``, ``afr``): the trained network's pooled features, on
  which a new linear head is fitted.

An entry is named by a hash of the fixed part's weights, the rows it was computed for
and what was computed, so every run that shares them (all seeds of a pretrained frozen
backbone, say) reads one file, and a different part or split never reads a stale one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..data.pipeline import batch_indices, eval_batch_size
from ..io import sha256_array, sha256_text
from ..methods import Batch
from ..nn.backbones import Backbone

FEATURE_DTYPE = np.float16  # half the disk and memory of float32; features are read back as float32


def weights_hash(model: Backbone, prefixes: tuple[str, ...] | None = None) -> str:
    """Hash of the parameters and buffers whose names start with one of ``prefixes`` (all: None)."""
    parts = []
    for name, t in sorted(model.state_dict().items()):
        if prefixes is None or name.startswith(prefixes):
            parts.append(f"{name}:{sha256_array(t.detach().cpu().numpy())}")
    return sha256_text("|".join(parts))[:16]


def rows_key(batch: Batch) -> str:
    """The identity of a split's rows: its own key where it has one, else a hash of its contents."""
    if batch.key:
        return batch.key
    return sha256_text(sha256_array(batch.x.detach().cpu().numpy()) + sha256_array(batch.y.cpu().numpy()))[:16]


def cached(folder: Path, key: str, batch: Batch, fn: Callable[[Tensor], Tensor], device: torch.device,
           batch_size: int) -> Tensor:
    """``fn`` of every row of ``batch`` (N, ...), read from ``folder/key.npy`` when there, else
    computed batch by batch under no_grad, written there atomically, and memory-mapped back."""
    path = Path(folder) / f"{key}.npy"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        out = None
        with torch.no_grad():
            for idx in batch_indices(len(batch), batch_size, shuffle=False):
                f = fn(batch.take(idx, device).x).float().cpu().numpy()  # (B, ...)
                if out is None:
                    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=FEATURE_DTYPE,
                                                    shape=(len(batch), *f.shape[1:]))
                out[idx.numpy()] = f
        out.flush()
        del out
        os.replace(tmp, path)
    return torch.from_numpy(np.load(path, mmap_mode="c"))  # copy-on-write: shared pages, never written back


def frozen_prefixes(model: Backbone, stage: str) -> tuple[str, ...]:
    """The parameter-name prefixes of the stem and every stage up to ``stage``."""
    prefixes: list[str] = []
    for name in model.stages[:model.stages.index(stage) + 1]:
        prefixes += ["conv1.", "bn1."] if name == "stem" else [f"{name}."]
    return tuple(prefixes)


def freeze(model: Backbone, stage: str, train: Batch, val: Batch, folder: Path | None,
           device: torch.device) -> tuple[Batch, Batch]:
    """Freeze ``model`` up to ``stage`` (no gradients, left out of the optimiser) and give
    the training and validation splits as that stage's cached outputs; ``model`` then
    takes those outputs instead of images until its ``start_after`` is cleared."""
    from ..data.store import data_folder

    prefixes = frozen_prefixes(model, stage)
    for name, p in model.named_parameters():
        if name.startswith(prefixes):
            p.requires_grad_(False)
    part = weights_hash(model, prefixes)
    model.eval()  # the frozen part's batch norm uses its running statistics, as it will at test time
    out = []
    for split in (train, val):
        key = sha256_text(f"{part}|{stage}|{rows_key(split)}|{split.transform}")[:24]
        x = cached(folder or data_folder(None) / "features", f"{stage}-{key}", split,
                   lambda b: model.run_until(b, stage), device, eval_batch_size(model.input_size))
        out.append(Batch(x, split.y, split.aux, split.groups, key=split.key))
    model.start_after = stage
    return out[0], out[1]


def embeddings(model: Backbone, batch: Batch, folder: Path | None, device: torch.device) -> Tensor:
    """The pooled features (N, D) that ``model``'s linear head reads, for every row of ``batch``, cached."""
    from ..data.store import data_folder

    model.eval()
    key = sha256_text(f"{weights_hash(model)}|embed|{rows_key(batch)}|{batch.transform}")[:24]
    return cached(folder or data_folder(None) / "features", f"embed-{key}", batch, model.embed, device,
                  eval_batch_size(model.input_size)).float()
