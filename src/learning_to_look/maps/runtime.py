"""Where the VLM runs: CUDA with autocast when present, else every CPU core."""

from __future__ import annotations

import contextlib
import os

import torch


def resolve_device(device: str | None = None) -> torch.device:
    """``None`` picks CUDA when available; on CPU all cores are used (or
    ``L2L_THREADS``), since map generation is the stage whose cost scales with the
    data set. Tiny test models want one thread: more only contend."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cpu":
        torch.set_num_threads(int(os.environ.get("L2L_THREADS") or os.cpu_count() or 1))
    return dev


def autocast(device: torch.device):
    """fp16 autocast on CUDA (the maps are stored as uint8, far coarser than fp16);
    a no-op on CPU, where fp32 is both exact and fastest."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()
