"""Pretrained weights: a hub id, a local ``save_pretrained`` folder, or model objects.

The weights' identity goes into every map fingerprint, so maps from a randomly
initialised test model can never pass for maps from real CLIP. Without network the
hub fails in well under two seconds with one line saying how to supply weights,
instead of transformers' retry loop.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..errors import L2LError

DEFAULT_CLIP = "openai/clip-vit-base-patch16"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Set on a config (``config.l2l_weights = RANDOM_INIT``) before ``save_pretrained`` to
#: mark test weights; the mark travels into the fingerprint and every result.
RANDOM_INIT = "random-init test model"


@dataclass
class Pretrained:
    """A loaded model with what is needed to use and to name it."""

    model: Any
    tokenizer: Any
    identity: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def is_real(self) -> bool:
        return RANDOM_INIT not in self.identity


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 1.5) -> bool:
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
        socket.create_connection((url.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _folder_hash(folder: Path) -> str:
    """Names, sizes and the first and last MiB of each file: cheap on 600 MB
    checkpoints, yet any re-save or different checkpoint changes it."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()[:16]


def _params_hash(model: Any) -> str:
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _memory_identity(model: Any) -> str:
    """An object built from a config, unmarked and never loaded, is random-init."""
    label = getattr(model.config, "l2l_weights", None) or getattr(model.config, "_name_or_path", "") or RANDOM_INIT
    return f"memory:{label}:{_params_hash(model)}"


def _mark(config: Any) -> str:
    mark = getattr(config, "l2l_weights", None)
    return f"{mark}:" if mark else ""


def _norm_stats(folder: Path | None, default: tuple) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cfg = folder / "preprocessor_config.json" if folder else None
    if cfg and cfg.is_file():
        meta = json.loads(cfg.read_text())
        if "image_mean" in meta and "image_std" in meta:
            return tuple(meta["image_mean"]), tuple(meta["image_std"])
    return default


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or (os.sep != "/" and os.sep in source)


def _locate(source: str, what: str) -> tuple[str, bool, str]:
    """(where to load from, local_files_only, identity prefix) for a path or hub id."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        return str(folder), True, f"local:{_folder_hash(folder)}"
    if _looks_like_path(source):
        raise L2LError(f"no {what} folder at {source}; pass --vlm PATH to a folder written by save_pretrained, "
                       f"or a hub id like {DEFAULT_CLIP}")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(source, "config.json")
    if isinstance(cached, str):
        return source, True, f"hub:{source}@{Path(cached).parent.name}"
    if hub_offline() or not hub_reachable():
        raise L2LError(f"{what} weights {source!r} are not in the local Hugging Face cache and the hub is unreachable "
                       f"(offline or HF_HUB_OFFLINE=1); run `hf download {source}` where there is internet, "
                       f"or pass --vlm PATH to a folder written by save_pretrained")
    return source, False, f"hub:{source}"


def _from_pretrained(cls: Any, where: str, local_only: bool, what: str) -> Any:
    try:
        return cls.from_pretrained(where, local_files_only=local_only)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise L2LError(f"cannot load {what} weights from {where} ({first[:160]}); pass --vlm PATH to a folder "
                       f"written by save_pretrained, or a hub id like {DEFAULT_CLIP}") from None


def _hub_identity(source: str, identity: str) -> str:
    """After a download, pin the identity to the snapshot's commit."""
    if not identity.startswith("hub:") or "@" in identity:
        return identity
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(source, "config.json")
    return f"{identity}@{Path(cached).parent.name}" if isinstance(cached, str) else identity


def load_clip(source: Any = DEFAULT_CLIP) -> Pretrained:
    """CLIP from a hub id, a local folder, a ``(CLIPModel, tokenizer)`` pair, or a
    :class:`Pretrained` (returned as is)."""
    if isinstance(source, Pretrained):
        return source
    if isinstance(source, tuple):
        model, tokenizer = source
        return Pretrained(model.eval(), tokenizer, _memory_identity(model), CLIP_MEAN, CLIP_STD)
    where, local_only, identity = _locate(str(source), "CLIP")
    from transformers import AutoTokenizer, CLIPModel

    model = _from_pretrained(CLIPModel, where, local_only, "CLIP")
    tokenizer = _from_pretrained(AutoTokenizer, where, local_only, "CLIP tokenizer")
    folder = Path(where) if Path(where).is_dir() else None
    mean, std = _norm_stats(folder, (CLIP_MEAN, CLIP_STD))
    identity = _hub_identity(str(source), identity)
    return Pretrained(model.eval(), tokenizer, identity.replace(":", f":{_mark(model.config)}", 1), mean, std)


def load_dino(source: Any) -> Pretrained:
    """DINOv2 (for WeCLIP's second feature stream) from a hub id, a folder or a model."""
    if isinstance(source, Pretrained):
        return source
    if not isinstance(source, (str, os.PathLike)):
        return Pretrained(source.eval(), None, _memory_identity(source), IMAGENET_MEAN, IMAGENET_STD)
    where, local_only, identity = _locate(str(source), "DINOv2")
    from transformers import AutoModel

    model = _from_pretrained(AutoModel, where, local_only, "DINOv2")
    folder = Path(where) if Path(where).is_dir() else None
    mean, std = _norm_stats(folder, (IMAGENET_MEAN, IMAGENET_STD))
    identity = _hub_identity(str(source), identity)
    return Pretrained(model.eval(), None, identity.replace(":", f":{_mark(model.config)}", 1), mean, std)
