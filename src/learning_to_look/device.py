"""Devices and threads, decided in one place.

A device name is ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``; a CUDA
device must exist on this machine. Thread counts are set only where a process starts its
work (the CLI entry, a worker's initialiser), never by a library call, so a run's
numbers cannot depend on which code touched torch first.
"""

from __future__ import annotations

import contextlib
import os
import re

import torch

from .errors import L2LError

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
THREADS_ENV = "L2L_THREADS"


def check_device(device: str | None, flag: str = "--device") -> None:
    """``None``/``auto``, ``cpu``, ``cuda`` or ``cuda:N``; a CUDA device must exist here."""
    if device is None:
        return
    if not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device):
        raise L2LError(f"{flag} must be auto, cpu, cuda or cuda:N, got {device!r}; pass e.g. {flag} cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise L2LError(f"{flag} {device} asks for CUDA, which is not available on this machine; "
                           f"pass {flag} cpu (or auto)")
        index, count = int(device.partition(":")[2] or 0), torch.cuda.device_count()
        if index >= count:
            raise L2LError(f"{flag} {device} does not exist: this machine has {count} CUDA device(s), "
                           f"cuda:0 to cuda:{count - 1}; pass one of those")


def pick_device(device: str | None = "auto") -> torch.device:
    """The torch device a name means: ``None`` or ``auto`` picks CUDA when available."""
    check_device(device)
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_threads() -> int:
    """Threads for a process whose work is one big job (map generation): ``L2L_THREADS``
    (a whole number >= 1), else every core."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return os.cpu_count() or 1
    if not raw.isdigit() or int(raw) < 1:
        raise L2LError(f"{THREADS_ENV} must be a whole number of threads >= 1, got {raw!r}; unset it or use e.g. 4")
    return int(raw)


def autocast(device: torch.device):
    """fp16 autocast on CUDA (maps are stored as uint8, far coarser than fp16); a no-op on
    the CPU, where fp32 is both exact and fastest."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()
