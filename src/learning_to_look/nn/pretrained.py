"""ImageNet weights for the ResNet backbones, from timm checkpoints.

A source is a local ``.safetensors`` file or a Hugging Face hub id of a timm model
(e.g. ``timm/resnet18.a1_in1k``, whose ``model.safetensors`` holds the weights).
timm's ResNet names its modules as this project's ResNets do, so keys map one to one
once wrapper prefixes are removed; the classifier is kept only when the class count
matches, and otherwise left at its fresh initialisation (fine-tuning a new head).
Without network a hub id fails in under a second, like the VLM weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import L2LError, corrupt_file
from ..hub import hub_offline, hub_reachable, import_optional, maybe_in_hub_cache, require_vlm_extra
from .backbones import BACKBONES, Backbone

#: Prefixes that wrappers put before timm's keys (DataParallel, training scripts).
WRAPPER_PREFIXES = ("module.", "model.")
#: timm classifier names -> this project's.
HEAD_KEYS = {"head.fc.weight": "fc.weight", "head.fc.bias": "fc.bias"}
HUB_WEIGHTS = "model.safetensors"
EXAMPLE = "timm/resnet18.a1_in1k"


def map_timm_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """timm ResNet state dict -> backbone keys: wrapper prefixes dropped, the head renamed,
    BatchNorm's ``num_batches_tracked`` counters left out (the model keeps its own)."""
    out = {}
    for key, value in state.items():
        for prefix in WRAPPER_PREFIXES:
            key = key[len(prefix):] if key.startswith(prefix) else key
        if key.endswith("num_batches_tracked"):
            continue
        out[HEAD_KEYS.get(key, key)] = value
    return out


def load_into(model: Backbone, state: dict[str, Tensor], source: str) -> list[str]:
    """Copy the mapped ``state`` into ``model``; returns the keys left at initialisation
    (the classifier, when the class count differs). Any other missing, unexpected or
    mis-shaped key is a one-line error: it is not a checkpoint of this architecture."""
    mapped = map_timm_keys(state)
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    fresh = [k for k in ("fc.weight", "fc.bias") if k in mapped and mapped[k].shape != own[k].shape]
    for k in fresh:
        mapped.pop(k)
    missing = sorted(set(own) - set(mapped) - {"fc.weight", "fc.bias"})
    unexpected = sorted(set(mapped) - set(own))
    shapes = sorted(k for k in set(own) & set(mapped) if tuple(mapped[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shapes:
        first = (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}" if unexpected
                 else f"{shapes[0]} has shape {tuple(mapped[shapes[0]].shape)}, expected {tuple(own[shapes[0]].shape)}")
        raise L2LError(f"--pretrained {source} is not a {model.name} checkpoint ({first}; {len(missing)} missing, "
                       f"{len(unexpected)} unexpected, {len(shapes)} mis-shaped keys); pass timm weights of "
                       f"{model.name}, e.g. timm/{model.name}.a1_in1k")
    missing_head = [k for k in ("fc.weight", "fc.bias") if k not in mapped]
    with torch.no_grad():
        for k, v in mapped.items():
            own[k].copy_(v.to(own[k].dtype))
    return sorted(set(fresh) | set(missing_head))


def read_safetensors(path: Path) -> dict[str, Tensor]:
    st = import_optional("safetensors.torch", "loading --pretrained weights")
    try:
        return st.load_file(str(path))
    except Exception as e:  # noqa: BLE001  (a damaged file fails in many ways inside the reader)
        raise corrupt_file(path, f"not a safetensors file: {type(e).__name__}",
                           "download it again or pass another --pretrained") from None


def locate_weights(source: str) -> Path | str:
    """A local file (checked to exist) or a hub id (the cached file, or the id to download
    when the hub is reachable); offline and uncached is one line, in under a second."""
    path = Path(source).expanduser()
    if path.suffix == ".safetensors" or path.exists() or source.startswith((".", "/", "~")):
        if not path.is_file():
            raise L2LError(f"--pretrained {source}: no such .safetensors file; pass a file or a hub id such as "
                           f"{EXAMPLE}")
        return path
    require_vlm_extra("--pretrained weights from the hub")
    if not maybe_in_hub_cache(source) and (hub_offline() or not hub_reachable()):
        raise L2LError(f"--pretrained {source} is not in the local Hugging Face cache and the hub is unreachable "
                       f"(offline or HF_HUB_OFFLINE=1); run `hf download {source}` where there is internet, or "
                       "pass a local .safetensors file")
    return source


def read_weights(source: str) -> dict[str, Tensor]:
    where = locate_weights(source)
    if isinstance(where, Path):
        return read_safetensors(where)
    hub = import_optional("huggingface_hub", "--pretrained weights from the hub")
    try:
        return read_safetensors(Path(hub.hf_hub_download(where, HUB_WEIGHTS)))
    except L2LError:
        raise
    except Exception as e:  # noqa: BLE001  (network, a wrong id, a repo without safetensors)
        raise L2LError(f"--pretrained {source}: cannot fetch {HUB_WEIGHTS} from the hub ({type(e).__name__}); "
                       f"check the id (e.g. {EXAMPLE}) or pass a local .safetensors file") from None


def check_pretrained(backbone: str, source: Any) -> None:
    """Refuse, before any data is loaded, weights for a backbone that takes none or a source
    that cannot be found (cheap: nothing is read)."""
    if source is None:
        return
    cls = BACKBONES.get(backbone)
    if not cls.pretrainable:
        takes = ", ".join(n for n, c in BACKBONES.items() if c.pretrainable)
        raise L2LError(f"--pretrained applies to {takes}, not to {backbone}; drop it or pick one of those")
    locate_weights(source)


def load_pretrained(model: Backbone, source: str) -> list[str]:
    """Load ImageNet weights into ``model``; returns the keys left at initialisation."""
    return load_into(model, read_weights(source), source)
