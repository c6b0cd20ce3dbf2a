"""The map-source interface: where, in each training image, the model should look.

A generator turns a :class:`~learning_to_look.data.Split` (or any batch of images
wrapped as one) into float32 maps in [0, 1] at the image resolution. Its ``kind``
says what the map is made from, and travels into every result, so that no number
made with oracle or intensity maps can be read as a VLM result.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Iterable, Mapping, Protocol

import numpy as np

from ..data.builders import DIGIT_THRESHOLD
from ..errors import L2LError
from ..io import sha256_text
from ..registry import Registry

#: What a map is made from. Only ``vlm`` maps may be called VLM maps.
KINDS = ("vlm", "annotation", "image-statistic", "external")

MAP_CODE_VERSION = 2


def option(default: Any = dataclasses.MISSING, help: str = "", *, flag: bool = True, cli: type = str,
           env: str | None = None, name: str | None = None, split: str | None = None, multiple: bool = False,
           default_factory: Any = dataclasses.MISSING) -> Any:
    """A map-source option, declared once, as a dataclass field: its default and its help,
    and how a command line sets it. ``flag`` False keeps it to config files (``map_options``);
    ``cli`` is the type a flag parses (str, int, float, bool); ``env`` an environment
    variable that stands in for a missing flag; ``name`` the flag's name when it is not the
    field's; ``split`` a separator that turns one flag value into a tuple of texts, and
    ``multiple`` a flag that may be repeated. ``l2l maps generate/check/show`` and ``l2l
    train`` derive their map flags from these fields (``maps/options.py``)."""
    meta = {"help": help, "flag": flag, "cli": cli, "env": env, "name": name, "split": split, "multiple": multiple}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


class ImageSet(Protocol):
    """Everything a generator may read from the images it maps. A built data set's
    :class:`~learning_to_look.data.Split` and a folder's
    :class:`~learning_to_look.maps.images.ImageSplit` both are one; what only one of
    them knows (the clean digit, file names, the decoy) is None in the other, so a
    generator that needs it checks for None and says what to use instead."""

    @property
    def name(self) -> str: ...

    @property
    def images(self) -> np.ndarray:
        """uint8 (N, C, H, W)."""

    @property
    def indices(self) -> np.ndarray | None:
        """(N,) positions in the full split (what per-image randomness is keyed by), or None for the full split."""

    @property
    def names(self) -> tuple[str, ...] | None:
        """File names of an image folder; None for a built data set."""

    @property
    def digits(self) -> np.ndarray | None:
        """uint8 (N, H, W) clean grey digit (the ground truth of oracle maps); None for an image folder."""

    @property
    def is_test(self) -> bool:
        """The test split, read only for final metrics, never for map quality."""

    def __len__(self) -> int: ...

    def subset(self, idx: np.ndarray, name: str | None = None) -> ImageSet: ...

    def decoy_masks(self) -> np.ndarray | None:
        """bool (N, H, W) decoy squares, or None where there is no decoy."""


def digit_masks(split: ImageSet, threshold: int, user: str) -> np.ndarray:
    """bool (N, H, W): the clean digit's pixels of ``split``. ``user`` names what needs
    them in the one-line error raised for images without a known digit (a folder)."""
    if split.digits is None:
        raise L2LError(f"{user} needs the clean digit (the object mask) of each image and {split.name} has none; "
                       "use a data set that has them (--dataset of a built set, or one imported with a masks/ "
                       "folder), or a VLM backend such as clip")
    return np.asarray(split.digits) > threshold


@dataclasses.dataclass(frozen=True)
class Declared:
    """One option as a map source declares it. ``parent`` names the field that holds it when
    it belongs to a nested options object (the prompts); ``default`` is this source's."""

    field: str
    flag: str  # e.g. "--input-size"; meaningful only when ``is_flag``
    is_flag: bool
    cli: type
    help: str
    default: Any
    env: str | None = None
    split: str | None = None
    multiple: bool = False
    parent: str | None = None


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def declared(cls: type) -> list[Declared]:
    """Every option a map source class declares, nested options flattened in place."""
    out = []
    for f in dataclasses.fields(cls) if dataclasses.is_dataclass(cls) else ():
        meta, default = f.metadata, _default(f)
        if "help" not in meta:
            continue
        if dataclasses.is_dataclass(default):  # a nested options object: its own fields are the options
            out += [dataclasses.replace(d, parent=f.name, default=getattr(default, d.field))
                    for d in declared(type(default))]
            continue
        flag = "--" + (meta["name"] or f.name).replace("_", "-")
        out.append(Declared(f.name, flag, meta["flag"], meta["cli"], meta["help"], default, meta["env"],
                            meta["split"], meta["multiple"]))
    return out




# ---- field checks shared by every generator's __post_init__ --------------------------


def option_name(field: str) -> str:
    """How a user sets option ``field``: the ``--flag`` some map source declares for it, or
    the map option of a config file."""
    flag = next((d.flag for cls in MAP_SOURCES.values() for d in declared(cls) if d.field == field and d.is_flag),
                None)
    return flag or f"map option {field}"


def _bad(field: str, what: str, value: Any, example: Any = None) -> L2LError:
    name = option_name(field)
    fix = f"; pass e.g. {name} {example}" if example is not None and name.startswith("--") else (
        f"; use e.g. {field}: {example}" if example is not None else "")
    return L2LError(f"{name} must be {what}, got {value!r}{fix}")


def check_int(field: str, value: Any, low: int | None = None, high: int | None = None, *, optional: bool = False,
              example: Any = None) -> int | None:
    """``value`` as an int in [low, high] (None allowed when ``optional``); bools and
    fractional numbers are refused, an integral float such as 224.0 is accepted."""
    if value is None and optional:
        return None
    what = "an integer" + (f" >= {low}" if low is not None and high is None else "") + (
        f" in [{low}, {high}]" if low is not None and high is not None else "")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise _bad(field, what, value, example)
    if not isinstance(value, numbers.Integral):
        if not math.isfinite(value) or value != int(value):
            raise _bad(field, what, value, example)
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise _bad(field, what, value, example)
    return value


def check_number(field: str, value: Any, *, low: float | None = None, above: float | None = None,
                 high: float | None = None, optional: bool = False, example: Any = None) -> float | None:
    """``value`` as a finite float with ``value >= low``, ``value > above``, ``value <= high``."""
    if value is None and optional:
        return None
    parts = ["a finite number"] + ([f">= {low:g}"] if low is not None else []) + (
        [f"> {above:g}"] if above is not None else []) + ([f"<= {high:g}"] if high is not None else [])
    what = " ".join(parts[:1]) + (" " + " and ".join(parts[1:]) if parts[1:] else "")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise _bad(field, what, value, example)
    value = float(value)
    if (low is not None and value < low) or (above is not None and value <= above) or (
            high is not None and value > high):
        raise _bad(field, what, value, example)
    return value


def check_choice(field: str, value: Any, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        label = option_name(field).removeprefix("map option ")
        raise L2LError(f"unknown {label} {value!r}; choose one of: {', '.join(choices)}")
    return value


def check_bool(field: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise L2LError(f"{option_name(field)} must be true or false, got {value!r}")
    return bool(value)


def _texts(field: str, value: Any, flag: str) -> tuple[str, ...]:
    """A tuple of non-blank strings from a tuple, list or a single string."""
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, str) for v in value):
        raise L2LError(f"prompt field {field} must be a list of texts, got {value!r}; pass e.g. {flag}")
    blank = [v for v in value if not v.strip()]
    if blank:
        raise L2LError(f"{flag.split()[0]} must be non-empty text, got {blank[0]!r}; pass e.g. {flag}")
    return tuple(value)


def _template(t: str) -> str:
    try:
        a, b = t.format("x"), t.format("y")
    except (IndexError, KeyError, ValueError, AttributeError) as e:
        raise L2LError(f"template {t!r} is not a valid format string ({type(e).__name__}: {e}); use one {{}} where "
                       "the prompt goes, e.g. --templates \"a photo of {}.\"") from None
    if a == b:
        raise L2LError(f"template {t!r} has no {{}} for the prompt, so every prompt would read the same; "
                       "pass e.g. --templates \"a photo of {}.\"")
    return t


@dataclass(frozen=True)
class PromptSpec:
    """What the VLM is asked: positive prompts (the concept), negative (background)
    prompts, templates they are put into, and the softmax temperature across prompts.
    Templates and temperature left None are the map source's own (a method's official
    ones), filled in by the source."""

    positive: tuple[str, ...] = option(("handwritten digit",), "Positive prompt (repeatable).", name="prompt",
                                       multiple=True)
    negative: tuple[str, ...] = option(("background", "black", "dark"), "Comma-separated background prompts.",
                                       name="negatives", split=",")
    templates: tuple[str, ...] | None = option(None, "';'-separated templates with {} where the prompt goes "
                                                     "[default: the method's own].", split=";")
    temperature: float | None = option(None, "Softmax temperature across prompts [default: the method's own].",
                                       cli=float)

    def __post_init__(self) -> None:
        positive = _texts("positive", self.positive, '--prompt "handwritten digit"')
        if not positive:
            raise L2LError("the prompt needs at least one positive text; pass --prompt \"handwritten digit\"")
        negative = _texts("negative", self.negative, '--negatives "background,black,dark"')
        templates = self.templates if self.templates is None else tuple(
            _template(t) for t in _texts("templates", self.templates, '--templates "a photo of {}."'))
        if self.temperature is not None and (
                isinstance(self.temperature, (bool, np.bool_)) or not isinstance(self.temperature, numbers.Real)
                or not math.isfinite(self.temperature) or self.temperature <= 0):
            raise L2LError(f"--temperature must be a finite number > 0, got {self.temperature!r}; "
                           "pass e.g. --temperature 40")
        for name, value in (("positive", positive), ("negative", negative), ("templates", templates)):
            object.__setattr__(self, name, value)

    def completed(self, templates: tuple[str, ...], temperature: float) -> PromptSpec:
        """This spec with the source's own ``templates`` and ``temperature`` where it has none."""
        return dataclasses.replace(self, templates=templates if self.templates is None else self.templates,
                                   temperature=temperature if self.temperature is None else self.temperature)


class MapGenerator(ABC):
    """Base class of every map source. Subclasses set ``name`` and ``kind`` and
    implement :meth:`generate`; :meth:`config` must hold everything that changes
    the output, since the fingerprint (the cache key) is its hash."""

    name: ClassVar[str]
    kind: ClassVar[str]
    #: One sentence a report prints about maps of this source: what they are made from.
    summary: ClassVar[str] = ""
    #: Worth a disk cache: False for sources cheaper to recompute than to load.
    cacheable: ClassVar[bool] = True
    #: Made from the object masks a data set keeps: an image without a mask has no map then.
    reads_objects: ClassVar[bool] = False
    #: Counts from the last :meth:`generate` call (e.g. artefact patches), summed over
    #: chunks into the cache sidecar. Read-only and empty until a generator assigns its
    #: own dict, so no instance can write into a default that all of them share.
    last_stats: Mapping[str, float] = MappingProxyType({})
    #: The device the maps were made on, recorded in the cache sidecar.
    device_used: str = "cpu"

    def check_ready(self) -> None:
        """Cheap checks of what the generator will read (model folders, the hub), without
        loading anything or reading any data: commands call it first, so a missing model
        fails in well under a second. Construction checks only the fields, so that a run
        can be planned before its weights are downloaded."""

    def prepare(self, split: ImageSet, workdir: Path | None = None) -> None:
        """Hook run once on the whole split before :meth:`generate` sees it in chunks:
        for sources that train on it or check its keys. ``workdir`` is a folder in the
        cache where such work can be kept across a resume."""

    @abstractmethod
    def generate(self, split: ImageSet) -> np.ndarray:
        """float32 maps (N, H, W) in [0, 1] for the N images of ``split``."""

    def config(self) -> dict:
        return dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}

    def fingerprint(self) -> str:
        payload = {"name": self.name, "kind": self.kind, "code_version": MAP_CODE_VERSION, "config": self.config()}
        return sha256_text(json.dumps(payload, sort_keys=True, default=str))[:16]

    @property
    def is_vlm(self) -> bool:
        return self.kind == "vlm"

    def describe(self) -> dict:
        """What goes into every result that used these maps."""
        return {"name": self.name, "kind": self.kind, "fingerprint": self.fingerprint(), "config": self.config(),
                "summary": self.summary}


MAP_SOURCES: Registry[type[MapGenerator]] = Registry("map source")


def register_map_source(cls: type[MapGenerator]) -> type[MapGenerator]:
    """Add a generator class under its ``name``; its ``kind`` must be one of ``KINDS``."""
    if cls.kind not in KINDS:
        raise ValueError(f"{cls.__name__}.kind must be one of {KINDS}")
    return MAP_SOURCES.register(cls)


def get_map_source(name: str, **options: Any) -> MapGenerator:
    """The generator called ``name`` built with ``options`` (its dataclass fields)."""
    return MAP_SOURCES.get(name)(**options)


def validate_maps(maps: np.ndarray, n: int, hw: tuple[int, int], source: str) -> np.ndarray:
    """Shape, finiteness and range checks that every map set passes before training."""
    maps = np.asarray(maps)
    if maps.shape != (n, *hw):
        raise L2LError(f"maps from {source} have shape {maps.shape}, expected {(n, *hw)}; "
                       "regenerate them for this data set")
    if not np.isfinite(maps).all():
        raise L2LError(f"maps from {source} contain NaN or infinite values; regenerate them or fix the source")
    if maps.size and (maps.min() < 0 or maps.max() > 1):
        raise L2LError(f"maps from {source} fall outside [0, 1] ({maps.min():.3g}..{maps.max():.3g}); "
                       "rescale them to [0, 1]")
    return maps.astype(np.float32, copy=False)


@dataclass
class OracleMaps(MapGenerator):
    """The digit's own pixels, known from how the data set was built: an upper bound
    standing in for a perfect VLM. It is annotation, not language."""

    name: ClassVar[str] = "oracle"
    kind: ClassVar[str] = "annotation"
    reads_objects: ClassVar[bool] = True
    summary: ClassVar[str] = ("the object's own pixels (the digit, or an imported mask), known from how the data set "
                              "was built: an upper bound standing in for a perfect VLM; not a VLM")
    cacheable: ClassVar[bool] = False
    threshold: int = option(DIGIT_THRESHOLD, "Object pixels are brighter than this (of 255).", flag=False, cli=int)

    def __post_init__(self) -> None:
        check_int("threshold", self.threshold, 0, 254, example=DIGIT_THRESHOLD)

    def generate(self, split: ImageSet) -> np.ndarray:
        return digit_masks(split, self.threshold, f"map source {self.name}").astype(np.float32)  # (N, H, W)


@dataclass
class IntensityMaps(MapGenerator):
    """Bright pixels of the image itself (channel max), with no data-set knowledge.
    On DecoyMNIST it lights up the decoy too: a negative control, not a VLM."""

    name: ClassVar[str] = "intensity"
    kind: ClassVar[str] = "image-statistic"
    summary: ClassVar[str] = ("bright pixels of the image itself, no knowledge of the data set and no VLM; on "
                              "DecoyMNIST it covers the decoy too: a negative control")
    cacheable: ClassVar[bool] = False
    threshold: int = option(DIGIT_THRESHOLD, "Pixels brighter than this (of 255) are mapped.", flag=False, cli=int)

    def __post_init__(self) -> None:
        check_int("threshold", self.threshold, 0, 254, example=DIGIT_THRESHOLD)

    def generate(self, split: ImageSet) -> np.ndarray:
        return (np.asarray(split.images).max(axis=1) > self.threshold).astype(np.float32)  # (N, H, W)


@dataclass
class NotDecoyMaps(MapGenerator):
    """Everything except the decoy square: the shortcut annotation that Ross et al.
    and CDEP penalise on DecoyMNIST (with ``rrr`` the irrelevant region is then the
    decoy alone, as in their published 99.0 %). It names the shortcut, which a VLM
    prompted with the object cannot; use it to separate that from map quality."""

    name: ClassVar[str] = "not-decoy"
    kind: ClassVar[str] = "annotation"
    summary: ClassVar[str] = ("everything but DecoyMNIST's decoy square, the shortcut annotation that Ross et al. "
                              "and CDEP penalise; not a VLM")
    cacheable: ClassVar[bool] = False

    def generate(self, split: ImageSet) -> np.ndarray:
        decoys = split.decoy_masks()  # (N, H, W) bool
        if decoys is None:
            raise L2LError("map source not-decoy needs a data set with a decoy square and this one has none; "
                           "use --dataset decoymnist, or --maps oracle")
        return 1.0 - decoys.astype(np.float32)


register_map_source(OracleMaps)
register_map_source(IntensityMaps)
register_map_source(NotDecoyMaps)
