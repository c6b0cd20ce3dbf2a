"""Typed, serialisable configuration of one training run.

Defaults are the paper's (PROTOCOL 3.5). ``None`` means "the method's default";
:func:`resolve` fills those in, and the resolved config is what every result
carries, so a number can always be traced to the exact settings that made it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import L2LError
from .io import read_settings, sha256_text
from .data.augment import parse_augment
from .data.builders import IRRELEVANT_CHOICES
from .data.pipeline import INPUT_TRANSFORMS
from .scalars import LOGGERS
from .nn.losses import OUTLINE_THRESHOLD
from .registry import Registry

#: With ``train_subset = N`` validation uses the first N // 5 validation images (at
#: least 2), about the full split's 9,600 : 50,400.
SUBSET_VAL_DIVISOR = 5
PHASE1_CHOICES = ("attention", "ce")
#: The attributions the energy method can score (Rao et al. 2023's Grad-CAM and IxG, and CAM).
ATTRIBUTIONS = ("cam", "grad-cam", "input-x-gradient")
#: What replaces an irrelevant region in a counterexample (ce): uniform noise, another
#: image of the batch, or the image's own pixels shuffled.
CE_FILLS = ("noise", "background", "shuffle")
#: Arithmetic of a run's forward passes: fp32, or bf16 autocast (weights and optimiser stay fp32).
PRECISIONS = ("fp32", "bf16")


def _field(default: Any, help: str, low: float | None = None, high: float | None = None, above: float | None = None,
           choices: tuple[str, ...] | None = None) -> Any:
    """A config field: its default declared here once, its ``help`` for the CLI, and its
    allowed range (``low``/``high`` inclusive, ``above`` exclusive) or ``choices``."""
    meta = {"help": help, "low": low, "high": high, "above": above, "choices": choices}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


#: Device names: auto (CUDA when present), cpu, cuda or cuda:N.
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
SEED_MAX = 2**32 - 1  # numpy's seed range


@dataclass(frozen=True)
class Schedule:
    """How the weights are optimised: a named set of defaults for the optimiser fields
    of :class:`TrainConfig` (a field left unset takes its schedule's value)."""

    name: str
    optimizer: str  # "sgd" (with StepLR) or "adam" (constant learning rate)
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    momentum: float | None = None  # SGD only
    step_size: int | None = None  # StepLR only; unset under SGD: a constant learning rate
    gamma: float | None = None  # StepLR only
    head_lr: float | None = None  # learning rate of the classifier head where it differs from the backbone's


#: Default largest stack of `l2l sweep`: memory grows with it (stacked.BYTES_PER_MODEL).
DEFAULT_MAX_STACK = 64

SCHEDULES: Registry[Schedule] = Registry("schedule")
#: The paper's (docs/protocol.md §3.5).
SCHEDULES.register(Schedule("paper", "sgd", epochs=30, batch_size=32, lr=1e-3, weight_decay=1e-4, momentum=0.98,
                            step_size=7, gamma=0.1))
#: The optimiser of CDEP and the XIL typology, for a fixed 20 epochs; selection still on validation.
SCHEDULES.register(Schedule("adam", "adam", epochs=20, batch_size=64, lr=1e-3, weight_decay=1e-4))
#: CDEP's own training, where its published numbers come from (Rieger et al. 2020, the
#: ColorMNIST and DecoyMNIST scripts of its code): Adam at torch's default rate, one
#: epoch on ColorMNIST, and on DecoyMNIST at most 5 epochs (CDEP stops early on
#: validation loss; here all 5 train and the epoch is selected on validation as usual).
SCHEDULES.register(Schedule("cdep-colormnist", "adam", epochs=1, batch_size=256, lr=1e-3, weight_decay=1e-3))
SCHEDULES.register(Schedule("cdep-decoymnist", "adam", epochs=5, batch_size=64, lr=1e-3, weight_decay=1e-4))
#: GALS's training (Petryk et al. 2022, configs/waterbirds_95_gals.yaml and food_gals.yaml of its code):
#: SGD with momentum 0.9, no learning-rate schedule, batch 96, weight decay 1e-5, lr 0.005 for
#: the backbone and 1e-4 for the classifier head; 200 epochs on Waterbirds, 150 on RedMeat.
SCHEDULES.register(Schedule("gals-waterbirds", "sgd", epochs=200, batch_size=96, lr=5e-3, weight_decay=1e-5,
                            momentum=0.9, head_lr=1e-4))
SCHEDULES.register(Schedule("gals-redmeat", "sgd", epochs=150, batch_size=96, lr=5e-3, weight_decay=1e-5,
                            momentum=0.9, head_lr=1e-4))
SCHEDULE_FIELDS = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "step_size", "gamma", "head_lr")
#: Fields added after runs were recorded: left out of the run hash while they hold this
#: value, so that earlier runs keep their folders.
HASH_SKIP_DEFAULTS = {"schedule": "paper", "pretrained": None, "data_hash": None, "network_size": None,
                      "augment": "none",
                      "irrelevant": None, "attribution": None, "counterexamples": None, "ce_fill": None,
                      "head_lr": None, "freeze_until": None, "upweight_by": None, "dro_eta": None, "jtt_epochs": None,
                      "jtt_upweight": None, "afr_gamma": None, "afr_lambda": None,
                      "precision": "fp32", "compile": False}
#: Where a ResNet may be frozen up to (``--freeze-until``): its stem and its four stages.
FREEZE_STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")
UPWEIGHT_BY = ("class", "group")


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits the annotation ``hint`` (bool is not a number here)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if typing.get_origin(hint) is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
    base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
    name = "a mapping of options" if typing.get_origin(base) is dict else {
        int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(base, str(base))
    return name + (" or unset" if optional else "")


@dataclass
class TrainConfig:
    dataset: str = _field("colormnist", "Data set to train on.")
    method: str = _field("l2l", "Training method.")
    backbone: str = _field("lenet-gap", "Network: the paper's LeNet-GAP, the CDEP CNN, or a ResNet for "
                                        "ordinary images.")
    pretrained: str | None = _field(None, "ResNets: ImageNet weights, a timm hub id (timm/resnet18.a1_in1k) or a "
                                          ".safetensors file (unset: random init).")
    maps: str = _field("oracle", "Map source: a registered source or a cached map set (`l2l maps list`).")
    map_options: dict[str, Any] = _field({}, "Options of the map source (YAML/JSON config only).")
    target: str = _field("outline", "Attention target built from the maps: the reference's outline, or the filled map.")
    target_threshold: float = _field(OUTLINE_THRESHOLD, "Map value above which a pixel counts for the outline target.",
                                    low=0, high=1)
    network_size: int | None = _field(None, "Network input side in pixels (unset: an imported set's own image size "
                                          "where the backbone takes any size, else the backbone's own, e.g. "
                                          "LeNet-GAP's 32 px for the 28 px MNIST sets, as in the paper).", low=8,
                                    high=1024)
    augment: str = _field("none", "Training augmentation of imported sets: none, or a comma list of flip, crop "
                                  "(random-resized, area 0.25-1) and jitter (brightness/contrast/saturation "
                                  "±0.4); maps move with the image.")
    input_transform: str = _field("none", "Input transform; colour-invariant is the ColorMNIST upper bound.",
                                  choices=INPUT_TRANSFORMS)
    schedule: str = _field("paper", "Training schedule: the paper's SGD + StepLR, Adam for 20 epochs, or "
                                  "CDEP's own Adam training per data set.")
    epochs: int | None = _field(None, "Training epochs.", low=1)
    batch_size: int | None = _field(None, "Mini-batch size.", low=1)
    lr: float | None = _field(None, "Learning rate.", above=0)
    momentum: float | None = _field(None, "SGD momentum (paper schedule only).", low=0, high=1)
    weight_decay: float | None = _field(None, "Weight decay (L2 penalty).", low=0)
    step_size: int | None = _field(None, "StepLR: epochs between learning-rate drops (paper schedule only).", low=1)
    gamma: float | None = _field(None, "StepLR: factor of each drop (paper schedule only).", above=0, high=1)
    head_lr: float | None = _field(None, "Learning rate of the classifier head (GALS schedules; unset elsewhere: "
                                         "the head trains at --lr).", above=0)
    freeze_until: str | None = _field(None, "ResNets: freeze the network up to and including this stage; its "
                                            "output is computed once and cached (fp16, memory-mapped), and "
                                            "training covers the rest.", choices=FREEZE_STAGES)
    upweight_by: str | None = _field(None, "upweight: weigh the loss by class or by group, inversely to training "
                                        "frequency (unset: the method's default).", choices=UPWEIGHT_BY)
    dro_eta: float | None = _field(None, "groupdro: step size of the group weights (unset: the method's "
                                         "default, group_DRO's).", above=0)
    jtt_epochs: int | None = _field(None, "jtt: epochs of the identification model T; the rest of --epochs "
                                          "retrains from the start (unset: the method's default).", low=1)
    jtt_upweight: float | None = _field(None, "jtt: lambda_up, extra copies of each error per epoch "
                                              "(unset: the method's default).", low=1)
    afr_gamma: float | None = _field(None, "afr: gamma of the weights exp(-gamma * p_correct) (unset: the "
                                           "method's default).", low=0)
    afr_lambda: float | None = _field(None, "afr: lambda of the pull ||W - W_erm||^2 to the ERM head "
                                            "(unset: the method's default).", low=0)
    e_att: int = _field(11, "First epoch of phase 2 (two-phase methods); optimiser and scheduler restart there.",
                        low=0)
    phase1: str = _field("attention", "Phase 1: alignment loss alone (paper) or CE alone (reference's later variant).",
                         choices=PHASE1_CHOICES)
    lambda0: float | None = _field(None, "Weight of the alignment or penalty term (unset: the method's own default).",
                                  low=0)
    lambda_ramp: float = _field(10.0, "lambda_t = lambda0 * (1 + (t - E_att) / ramp) in phase 2.", above=0)
    selection: str | None = _field(None, "Model-selection rule on validation data (unset: the method's own default).")
    selection_beta: float = _field(1.0, "beta of the exponential rules: val_acc * exp(-beta * KL).", low=0)
    irrelevant: str | None = _field(None, "What is irrelevant in an imported data set: background (the region outside "
                                          "the maps), colour (of the maps' pixels) or texture (outside the maps); "
                                          "built data sets declare their own.", choices=IRRELEVANT_CHOICES)
    attribution: str | None = _field(None, "energy: the attribution whose positive share inside the maps is "
                                           "rewarded (unset: the method's default).", choices=ATTRIBUTIONS)
    counterexamples: int | None = _field(None, "ce: augmented copies of each image per step (unset: the method's "
                                               "default).", low=1, high=16)
    ce_fill: str | None = _field(None, "ce on a region: what replaces it, uniform noise, another image's pixels or "
                                       "the image's own pixels shuffled (unset: the method's default).",
                                 choices=CE_FILLS)
    seed: int = _field(37, "Seed of initialisation and data order.", low=0, high=SEED_MAX)
    train_subset: int | None = _field(None, f"Use only the first N training images "
                                            f"(and N/{SUBSET_VAL_DIVISOR} validation images; unset: all).", low=2)
    device: str = _field("auto", "auto (CUDA when present) | cpu | cuda.")
    log: str = _field("none", "Also write the per-epoch scalars to: none | tensorboard (the run folder's tensorboard/, "
                              "needs the `log` extra).", choices=LOGGERS)
    precision: str = _field("fp32", "Arithmetic of training and validation: fp32, or bf16 autocast (weights stay "
                                    "fp32; GPUs with bf16, and CPUs).", choices=PRECISIONS)
    compile: bool = _field(False, "torch.compile the network on CUDA (helps tiny backbones, which are bound by "
                                  "kernel launches); a no-op on the CPU.")
    data_hash: str | None = _field(None, "Content hash of an imported data set, filled in when the run is resolved: "
                                         "a re-imported set trains in its own folder.")

    def validate(self) -> "TrainConfig":
        """Check every field's type and range, in place; a number given as an int where a
        float is declared becomes a float, so equal configs hash equally."""
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            if not _type_ok(value, hints[f.name]):
                raise L2LError(f"{f.name} must be {_type_name(hints[f.name])}, got {value!r}; "
                               f"pass e.g. {_example(f)}")
            if float in (hints[f.name], *typing.get_args(hints[f.name])) and value is not None:
                value = float(value)
                setattr(self, f.name, value)
                if not math.isfinite(value):
                    raise L2LError(f"{f.name} must be a finite number, got {value}; pass e.g. {_example(f)}")
            _check_range(f, value)
        if not DEVICE_PATTERN.match(self.device):
            raise L2LError(f"unknown device {self.device!r}; choose auto, cpu, cuda or cuda:N")
        SCHEDULES.get(self.schedule)
        try:
            parse_augment(self.augment)
        except ValueError as err:
            raise L2LError(f"{err}, e.g. --augment flip,crop") from None
        return self

    def with_schedule_defaults(self) -> "TrainConfig":
        """A copy whose unset optimiser fields hold the schedule's values; a field the
        schedule does not use (momentum under Adam) must stay unset."""
        schedule = SCHEDULES.get(self.schedule)
        out = dataclasses.replace(self)
        for name in SCHEDULE_FIELDS:
            own, default = getattr(self, name), getattr(schedule, name)
            if default is None and own is not None:
                raise L2LError(f"{name} does not apply to the {schedule.name} schedule; "
                               "drop it or use --schedule paper")
            setattr(out, name, default if own is None else own)
        return out

    @classmethod
    def help(cls, name: str) -> str:
        """The CLI help of field ``name``: its description and its declared default."""
        f = {f.name: f for f in fields(cls)}[name]
        if name in SCHEDULE_FIELDS:
            per = ", ".join(f"{s.name} {getattr(s, name):g}" for s in SCHEDULES.values()
                            if getattr(s, name) is not None)
            return f"{f.metadata['help']}  [default: per schedule: {per}]"
        if name == "schedule":
            return f"{SCHEDULES.help()}. {f.metadata['help']}  [default: {f.default}]"
        if f.default is None or f.default is dataclasses.MISSING:
            return f.metadata["help"]
        shown = f"{f.default:g}" if isinstance(f.default, float) else str(f.default)
        return f"{f.metadata['help']}  [default: {shown}]"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self, exclude: tuple[str, ...] = ("seed", "device", "log")) -> str:
        """Hash of everything that changes the outcome except the seed, naming a
        folder in which each seed is one run."""
        d = {k: v for k, v in self.to_dict().items()
             if k not in exclude and not (k in HASH_SKIP_DEFAULTS and v == HASH_SKIP_DEFAULTS[k])}
        return sha256_text(json.dumps(d, sort_keys=True, default=str))[:10]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """A config from a mapping (a YAML/JSON file, a record); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise L2LError(f"unknown config keys {unknown}; valid keys are: {', '.join(sorted(known))}")
        return cls(**d)

    def matches(self, saved: dict[str, Any]) -> bool:
        """Whether ``saved`` (a checkpoint's config) describes this config. A field added
        since it was saved counts at its default, as it does in the run's folder name
        (``HASH_SKIP_DEFAULTS``), so an older checkpoint still resumes."""
        try:
            return TrainConfig.from_dict(saved | {"log": self.log}).to_dict() == self.to_dict()
        except (L2LError, TypeError, ValueError):
            return False

    @classmethod
    def from_file(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        if not path.is_file():
            raise L2LError(f"config file {path} does not exist; pass a YAML or JSON file")
        d = read_settings(path) or {}
        if not isinstance(d, dict):
            raise L2LError(f"config file {path} must hold a mapping of settings, e.g. `epochs: 30`")
        try:  # checked as written, so a value a flag overrides is not a wrong one accepted unseen
            return cls.from_dict(d).validate()
        except L2LError as err:
            raise L2LError(f"config file {path}: {err}") from None


def _example(f: dataclasses.Field) -> str:
    """A valid setting of field ``f`` to show in an error: its flag and its default."""
    default = f.default if f.default is not dataclasses.MISSING else None
    if f.name in SCHEDULE_FIELDS:
        default = getattr(SCHEDULES.get("paper"), f.name)
    flag = f"--{f.name.replace('_', '-')}"
    if f.name == "map_options":
        return "map_options: {degradation: blur, strength: 2.0} in a config file"
    if f.name == "seed":
        return "--seeds 0,1,2"
    if isinstance(default, bool):
        return f"{flag} or --no-{flag[2:]} (true or false in a config file)"
    return f"{flag} {default:g}" if isinstance(default, float) else f"{flag} {default}" if default is not None \
        else f"{flag} VALUE (or leave it unset)"


def _check_range(f: dataclasses.Field, value: Any) -> None:
    """The declared range or choices of field ``f``; None (unset) always passes."""
    m = f.metadata
    if value is None:
        return
    if m["choices"] is not None and value not in m["choices"]:
        raise L2LError(f"unknown {f.name} {value!r}; choose one of: {', '.join(m['choices'])}")
    too_low = (m["low"] is not None and value < m["low"]) or (m["above"] is not None and value <= m["above"])
    if too_low or (m["high"] is not None and value > m["high"]):
        bounds = [f">= {m['low']}" if m["low"] is not None else None,
                  f"> {m['above']}" if m["above"] is not None else None,
                  f"<= {m['high']}" if m["high"] is not None else None]
        raise L2LError(f"{f.name} must be {' and '.join(b for b in bounds if b)}, got {value}; pass e.g. {_example(f)}")


#: The paper's configuration (PROTOCOL 3.1, 3.5): the defaults of :class:`TrainConfig`.
#: Published numbers and the qualitative figure are set beside runs that match its
#: method, backbone and input first.
PAPER_CONFIG = TrainConfig().with_schedule_defaults()
