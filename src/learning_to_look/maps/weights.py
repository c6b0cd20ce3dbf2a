"""Pretrained weights: a hub id, a local ``save_pretrained`` folder, or model objects.

The weights' identity goes into every map fingerprint, so maps from a randomly
initialised test model can never pass for maps from real CLIP. Without network the
hub fails in well under two seconds with one line saying how to supply weights,
instead of transformers' retry loop. A local folder is checked before anything is
loaded (its config names the right model type, it has weights and, for CLIP, a
tokenizer whose vocabulary is the model's), so a damaged folder is one line naming
what is wrong, never a traceback or, worse, garbage maps.

transformers, safetensors and huggingface_hub are the optional ``vlm`` extra: they are
imported only here and only when a model is located or loaded.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import L2LError, corrupt_file
from ..hub import (hub_offline, hub_reachable, import_optional, maybe_in_hub_cache,
                   require_vlm_extra)
from ..io import read_json

DEFAULT_CLIP = "openai/clip-vit-base-patch16"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Set on a config (``config.l2l_weights = RANDOM_INIT``) before ``save_pretrained`` to
#: mark test weights; the mark travels into the fingerprint and every result.
RANDOM_INIT = "random-init test model"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
#: model_type in config.json of the models each loader can use.
MODEL_TYPES = {"CLIP": ("clip",), "DINOv2": ("dinov2", "dinov2_with_registers")}
OPTION = {"CLIP": "--vlm", "DINOv2": "--dino"}


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


#: Off by default: only generation with progress on (``l2l maps generate`` without
#: ``--quiet``) shows transformers' "Loading weights" bar; a check or an error stays one line.
_SHOW_LOADING = contextvars.ContextVar("l2l_show_loading_bars", default=False)


@contextlib.contextmanager
def loading_progress(show: bool) -> Iterator[None]:
    """Within this block, loading weights shows transformers' progress bars only if
    ``show`` (``--quiet`` passes False; outside any such block they are off)."""
    token = _SHOW_LOADING.set(show)
    try:
        yield
    finally:
        _SHOW_LOADING.reset(token)


@contextlib.contextmanager
def _transformers_quiet() -> Iterator[None]:
    """transformers' "Loading weights" bar and warnings off while loading, when asked."""
    if _SHOW_LOADING.get():
        yield
        return
    hf_logging = import_optional("transformers.utils.logging", "loading weights")
    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


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
        meta = read_json(cfg, fix="fix or delete it (CLIP's own normalisation is used without it)")
        if isinstance(meta, dict) and "image_mean" in meta and "image_std" in meta:
            mean, std = meta["image_mean"], meta["image_std"]
            ok = all(isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)
                     for v in (mean, std)) and all(x > 0 for x in std)
            if not ok:
                raise corrupt_file(cfg, "image_mean and image_std must be three numbers each, std > 0",
                                   "fix or delete it (CLIP's own normalisation is used without it)")
            return tuple(mean), tuple(std)
    return default


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or (os.sep != "/" and os.sep in source)


def _folder_fix(what: str) -> str:
    parts = " (model and tokenizer)" if what == "CLIP" else ""
    return (f"pass {OPTION[what]} PATH to a complete folder written by save_pretrained{parts}, "
            f"or a hub id like {DEFAULT_CLIP if what == 'CLIP' else 'facebook/dinov2-small'}")


def check_folder(folder: Path, what: str) -> dict:
    """The config of a ``save_pretrained`` folder after the checks that need no model
    load: config.json readable and of the right model type, a weights file, and for CLIP
    tokenizer files. Returns config.json as a dict."""
    path = folder / "config.json"
    if not path.is_file():
        raise L2LError(f"{what} folder {folder} has no config.json; {_folder_fix(what)}")
    fix = "re-save the model there with save_pretrained, or download it again"
    cfg = read_json(path, fix=fix)
    if not isinstance(cfg, dict):
        raise corrupt_file(path, "not a JSON object", fix)
    model_type = cfg.get("model_type")
    if model_type not in MODEL_TYPES[what]:
        raise L2LError(f"{folder} holds a {model_type or 'untyped'} model (config.json model_type {model_type!r}), "
                       f"not {what}; {_folder_fix(what)}")
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise L2LError(f"{what} folder {folder} has no weights file ({' or '.join(WEIGHT_FILES[::2])}); {fix}")
    if what == "CLIP":
        if not ((folder / "tokenizer.json").is_file()
                or ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file())):
            raise L2LError(f"CLIP folder {folder} has no tokenizer (tokenizer.json, or vocab.json and merges.txt), "
                           "so every prompt would read the same; save the model's tokenizer there with "
                           "tokenizer.save_pretrained, or use a complete hub snapshot")
    return cfg


def text_vocab_size(config: Any) -> int | None:
    """``text_config.vocab_size`` of a CLIP config (a dict or a config object)."""
    text = config.get("text_config") if isinstance(config, dict) else getattr(config, "text_config", None)
    size = text.get("vocab_size") if isinstance(text, dict) else getattr(text, "vocab_size", None)
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None


@dataclass
class Location:
    """Where weights come from: a folder (``local``) or a hub id, checked to exist."""

    where: str
    local_only: bool
    folder: Path | None
    identity_prefix: str


def locate(source: Any, what: str) -> Location:
    """Check that ``source`` (a folder or hub id) can be loaded, without loading it: a
    folder passes :func:`check_folder`; a hub id must be in the local cache or the hub
    reachable (asked once, under a second). Raises a one-line :class:`L2LError`."""
    option = OPTION[what]
    if not isinstance(source, (str, os.PathLike)) or not str(source).strip():
        raise L2LError(f"{option} must be a folder or a hub id, got {source!r}; {_folder_fix(what)}")
    source = str(source)
    folder = Path(source).expanduser()
    if folder.is_dir():
        check_folder(folder, what)
        return Location(str(folder), True, folder, "local")
    if folder.exists() or _looks_like_path(source):
        kind = "folder" if not folder.exists() else "folder (it is a file)"
        raise L2LError(f"no {what} {kind} at {source}; {_folder_fix(what)}")
    unreachable = (f"{what} weights {source!r} are not in the local Hugging Face cache and the hub is unreachable "
                   f"(offline or HF_HUB_OFFLINE=1); run `hf download {source}` where there is internet, "
                   f"or pass {option} PATH to a folder written by save_pretrained")
    require_vlm_extra(f"{what} weights from the hub")
    if not maybe_in_hub_cache(source) and (hub_offline() or not hub_reachable()):
        raise L2LError(unreachable)  # fast: neither the cache nor the network has it
    hub = import_optional("huggingface_hub", f"{what} weights from the hub")
    try:
        cached = hub.try_to_load_from_cache(source, "config.json")
    except Exception as e:  # huggingface_hub validates the id: a malformed one is the user's to fix
        raise L2LError(f"{option} {source!r} is neither a folder nor a valid hub id ({type(e).__name__}); "
                       f"{_folder_fix(what)}") from None
    if isinstance(cached, str):
        snapshot = Path(cached).parent
        check_folder(snapshot, what)
        return Location(source, True, snapshot, f"hub:{source}@{snapshot.name}")
    if hub_offline() or not hub_reachable():
        raise L2LError(unreachable)
    return Location(source, False, None, f"hub:{source}")


def check_source_type(source: Any, what: str) -> None:
    """A path, a hub id or loaded model objects; anything else is a one-line error. Touches
    neither disk nor network, so generators call it at construction."""
    if isinstance(source, (Pretrained, tuple)) or (source is not None and hasattr(source, "config")):
        return
    if not isinstance(source, (str, os.PathLike)) or not str(source).strip():
        raise L2LError(f"{OPTION[what]} must be a folder or a hub id, got {source!r}; {_folder_fix(what)}")


def check_source(source: Any, what: str) -> Any:
    """:func:`locate` for a path or hub id; returns the model's config (a dict read from
    config.json, or the config object of an already loaded model), or None when the
    weights are still to be downloaded."""
    if isinstance(source, Pretrained):
        return source.model.config
    if isinstance(source, tuple):
        if len(source) != 2 or not hasattr(source[0], "config"):
            raise L2LError(f"{OPTION[what]} as objects must be a (CLIPModel, tokenizer) pair")
        return source[0].config
    if source is not None and hasattr(source, "config"):
        return source.config
    loc = locate(source, what)
    return check_folder(loc.folder, what) if loc.folder is not None else None


def patch_size(config: Any) -> int | None:
    """The vision tower's patch size from a CLIP config (a dict or a config object)."""
    vision = config.get("vision_config") if isinstance(config, dict) else getattr(config, "vision_config", None)
    size = vision.get("patch_size", 32) if isinstance(vision, dict) else getattr(vision, "patch_size", None)
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None


def _load_error(what: str, where: str, e: BaseException) -> L2LError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return L2LError(f"cannot load {what} from {where}: its files are incomplete or corrupt "
                    f"({type(e).__name__}: {first[:160]}); re-save the folder with save_pretrained, or download it "
                    f"again (a hub id like {DEFAULT_CLIP})")


def _from_pretrained(cls: Any, where: str, local_only: bool, what: str) -> Any:
    """``cls.from_pretrained`` on the user's files; whatever reading them raises (OS and
    format errors, safetensors' and tokenizers' own exception types) is one line naming
    the folder. Running out of memory is not a damaged file and is left alone."""
    try:
        with _transformers_quiet():
            return cls.from_pretrained(where, local_files_only=local_only)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to read a model folder is the folder's
        raise _load_error(what, where, e) from None


def _hub_identity(source: str, identity: str) -> str:
    """After a download, pin the identity to the snapshot's commit."""
    if not identity.startswith("hub:") or "@" in identity:
        return identity
    hub = import_optional("huggingface_hub", "CLIP weights from the hub")
    cached = hub.try_to_load_from_cache(source, "config.json")
    return f"{identity}@{Path(cached).parent.name}" if isinstance(cached, str) else identity


def _identity(loc: Location, source: str, config: Any) -> str:
    prefix = f"local:{_folder_hash(loc.folder)}" if loc.identity_prefix == "local" else loc.identity_prefix
    prefix = _hub_identity(source, prefix)
    return prefix.replace(":", f":{_mark(config)}", 1)


def check_tokenizer(tokenizer: Any, config: Any, where: str) -> None:
    """The tokenizer must cover exactly the model's text vocabulary: a wrong or default
    tokenizer would feed every prompt as the same few tokens, and the maps be garbage."""
    expected = text_vocab_size(config)
    try:
        size = len(tokenizer)
    except TypeError:
        size = None
    if expected is not None and size != expected:
        raise L2LError(f"the tokenizer in {where} has {size} tokens but the CLIP model's text vocabulary has "
                       f"{expected} (config.json text_config.vocab_size); save the model's own tokenizer there with "
                       "tokenizer.save_pretrained")


def load_clip(source: Any = DEFAULT_CLIP) -> Pretrained:
    """CLIP from a hub id, a local folder, a ``(CLIPModel, tokenizer)`` pair, or a
    :class:`Pretrained` (returned as is)."""
    if isinstance(source, Pretrained):
        return source
    if isinstance(source, tuple):
        model, tokenizer = source
        check_tokenizer(tokenizer, model.config, "the (model, tokenizer) pair")
        return Pretrained(model.eval(), tokenizer, _memory_identity(model), CLIP_MEAN, CLIP_STD)
    loc = locate(source, "CLIP")
    transformers = import_optional("transformers", "the CLIP backends")
    tokenizer = _from_pretrained(transformers.AutoTokenizer, loc.where, loc.local_only, "the CLIP tokenizer")
    if loc.folder is not None:
        check_tokenizer(tokenizer, check_folder(loc.folder, "CLIP"), str(loc.folder))
    model = _from_pretrained(transformers.CLIPModel, loc.where, loc.local_only, "CLIP weights")
    check_tokenizer(tokenizer, model.config, loc.where)
    mean, std = _norm_stats(loc.folder if loc.identity_prefix == "local" else None, (CLIP_MEAN, CLIP_STD))
    return Pretrained(model.eval(), tokenizer, _identity(loc, str(source), model.config), mean, std)


def load_dino(source: Any) -> Pretrained:
    """DINOv2 (for WeCLIP's second feature stream) from a hub id, a folder or a model."""
    if isinstance(source, Pretrained):
        return source
    if not isinstance(source, (str, os.PathLike)):
        return Pretrained(source.eval(), None, _memory_identity(source), IMAGENET_MEAN, IMAGENET_STD)
    loc = locate(source, "DINOv2")
    transformers = import_optional("transformers", "the weclip backend's --dino")
    model = _from_pretrained(transformers.AutoModel, loc.where, loc.local_only, "DINOv2 weights")
    mean, std = _norm_stats(loc.folder if loc.identity_prefix == "local" else None, (IMAGENET_MEAN, IMAGENET_STD))
    return Pretrained(model.eval(), None, _identity(loc, str(source), model.config), mean, std)
