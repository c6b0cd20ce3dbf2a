"""The Hugging Face hub and the optional packages that reach it, in one place for every
loader (CLIP and DINOv2 maps, ImageNet weights for the ResNets).

Without network a hub id fails in well under two seconds with one line saying how to
supply the weights, instead of the hub client's retry loop; the optional packages are
imported only when weights are actually located or loaded.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .errors import L2LError

VLM_EXTRA = "pip install 'learning-to-look[vlm]'"
#: The packages of the ``vlm`` extra.
VLM_PACKAGES = ("transformers", "safetensors", "huggingface_hub")
#: Seconds a TCP connection to the hub may take before it counts as unreachable.
HUB_TIMEOUT = 0.8


def installed(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require_vlm_extra(user: str) -> None:
    """One line naming the extra when the packages VLM backends need are missing; cheap
    (no import), so generators call it at construction."""
    missing = [m for m in VLM_PACKAGES if not installed(m)]
    if missing:
        raise L2LError(f"{user} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
                       f"installed; {VLM_EXTRA}")


def import_optional(module: str, user: str) -> Any:
    require_vlm_extra(user)
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise L2LError(f"{user} cannot import {module} ({e}); reinstall it with {VLM_EXTRA}") from None


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


_REACHABLE: dict[tuple[str, int], bool] = {}


def hub_reachable(timeout: float = HUB_TIMEOUT) -> bool:
    """Whether a TCP connection to the hub opens within ``timeout`` seconds; asked once
    per process (the answer is kept), so a missing network costs under a second once."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        key = (url.hostname or "", url.port or (443 if url.scheme == "https" else 80))
    except ValueError:
        return False
    if key not in _REACHABLE:
        try:
            socket.create_connection(key, timeout=timeout).close()
            _REACHABLE[key] = True
        except (OSError, ValueError):
            _REACHABLE[key] = False
    return _REACHABLE[key]


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, resolved as huggingface_hub resolves it (HF_HUB_CACHE,
    HUGGINGFACE_HUB_CACHE, HF_HOME, XDG_CACHE_HOME), without importing it."""
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return Path(hub).expanduser()


def maybe_in_hub_cache(repo_id: str) -> bool:
    """Whether the hub cache may hold ``repo_id``: a cheap look that lets an offline
    failure skip importing huggingface_hub; huggingface_hub has the final word."""
    return (hub_cache_dir() / f"models--{repo_id.replace('/', '--')}").exists()
