"""Where the VLM runs: CUDA with autocast when present, else every CPU core."""

from __future__ import annotations

import contextlib
import os
import re

import torch

from ..errors import L2LError

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device(device: str | None) -> None:
    """``None``/``auto``, ``cpu``, ``cuda`` or ``cuda:N``; a CUDA device must exist here."""
    if device is None:
        return
    if not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device):
        raise L2LError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}; pass e.g. --device cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise L2LError(f"--device {device} asks for CUDA, which is not available on this machine; "
                           "pass --device cpu (or auto)")
        index, count = int(device.partition(":")[2] or 0), torch.cuda.device_count()
        if index >= count:
            raise L2LError(f"--device {device} does not exist: this machine has {count} CUDA device(s), "
                           f"cuda:0 to cuda:{count - 1}; pass one of those")


def resolve_device(device: str | None = None) -> torch.device:
    """``None`` or ``auto`` picks CUDA when available; on CPU all cores are used (or
    ``L2L_THREADS``), since map generation is the stage whose cost scales with the
    data set. Tiny test models want one thread: more only contend."""
    check_device(device)
    auto = device in (None, "auto")
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if auto else device)
    if dev.type == "cpu":
        torch.set_num_threads(cpu_threads())
    return dev


def cpu_threads() -> int:
    """``L2L_THREADS`` (a whole number >= 1), else every core."""
    raw = os.environ.get("L2L_THREADS", "").strip()
    if not raw:
        return os.cpu_count() or 1
    if not raw.isdigit() or int(raw) < 1:
        raise L2LError(f"L2L_THREADS must be a whole number of threads >= 1, got {raw!r}; unset it or use e.g. 4")
    return int(raw)


def autocast(device: torch.device):
    """fp16 autocast on CUDA (the maps are stored as uint8, far coarser than fp16);
    a no-op on CPU, where fp32 is both exact and fastest."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()
