"""The GPU path of one run: bf16 autocast, channels_last, torch.compile and batch prefetch.

Each piece is chosen by the config (``precision``, ``compile``) or by the device, and
each is a no-op where it cannot help: channels_last and compile act on CUDA only (on
the CPU one thread of tiny convolutions gains nothing and inductor would need a C++
toolchain), while bf16 autocast runs on both, so that it is tested on the CPU too.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterable, Iterator, TypeVar

import torch

from ..config import TrainConfig
from ..nn.backbones import Backbone

log = logging.getLogger(__name__)
T = TypeVar("T")


def autocast(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` for ``precision: bf16`` (weights, gradients and the
    optimiser stay fp32); nothing for fp32."""
    if cfg.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(model: Backbone, device: torch.device) -> torch.memory_format:
    """channels_last for networks that declare it (the ResNets) on CUDA, where cuDNN's
    NHWC kernels are faster with tensor cores; the default layout elsewhere."""
    if device.type == "cuda" and model.channels_last:
        return torch.channels_last
    return torch.contiguous_format


def accelerate(model: Backbone, cfg: TrainConfig, device: torch.device) -> Backbone:
    """``model`` laid out and compiled for ``device`` as ``cfg`` asks, in place (its
    state-dict keys stay those of the plain network, so checkpoints are unchanged)."""
    model = model.to(memory_format=memory_format(model, device))
    if cfg.compile and device.type == "cuda":
        model.compile()
    elif cfg.compile:
        log.info("--compile acts on CUDA only; training %s uncompiled on %s", cfg.backbone, device)
    return model


def prefetched(items: Iterable[T], take: Callable[[T], object]) -> Iterator[object]:
    """``take(item)`` for each item, one ahead: the next batch is gathered (and its copy
    from pinned memory queued) while the device still runs the current one."""
    it = iter(items)
    nxt = next(it, None)
    ahead = None if nxt is None else take(nxt)
    while ahead is not None:
        current = ahead
        nxt = next(it, None)
        ahead = None if nxt is None else take(nxt)
        yield current
