"""Typed, serialisable configuration of one training run.

Defaults are the paper's (PROTOCOL 3.5). ``None`` means "the method's default";
:func:`resolve` fills those in, and the resolved config is what every result
carries, so a number can always be traced to the exact settings that made it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import L2LError
from .io import sha256_text
from .losses import OUTLINE_THRESHOLD

SELECTION_RULES = ("val_acc", "acc_x_1mkl", "acc_exp_rkl")
#: With ``train_subset = N`` validation uses the first N // 5 validation images (at
#: least 2), about the full split's 9,600 : 50,400.
SUBSET_VAL_DIVISOR = 5
PHASE1_CHOICES = ("attention", "ce")


def _field(default: Any, help: str) -> Any:
    """A config field whose default is declared here once and whose ``help`` the CLI shows."""
    if isinstance(default, dict):
        return field(default_factory=dict, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    dataset: str = _field("colormnist", "Data set to train on.")
    method: str = _field("l2l", "Training method.")
    backbone: str = _field("lenet-gap", "Network: the paper's LeNet-GAP or the CDEP CNN.")
    maps: str = _field("oracle", "Map source: a registered source or a cached map set (`l2l maps list`).")
    map_options: dict[str, Any] = _field({}, "Options of the map source (YAML/JSON config only).")
    target: str = _field("outline", "Attention target built from the maps: the reference's outline, or the filled map.")
    target_threshold: float = _field(OUTLINE_THRESHOLD, "Map value above which a pixel counts for the outline target.")
    input_transform: str = _field("none", "Input transform; colour-invariant is the ColorMNIST upper bound.")
    epochs: int = _field(30, "Training epochs (PROTOCOL 3.5).")
    batch_size: int = _field(32, "Mini-batch size.")
    lr: float = _field(1e-3, "SGD learning rate.")
    momentum: float = _field(0.98, "SGD momentum.")
    weight_decay: float = _field(1e-4, "SGD weight decay.")
    step_size: int = _field(7, "StepLR: epochs between learning-rate drops.")
    gamma: float = _field(0.1, "StepLR: factor of each drop.")
    e_att: int = _field(11, "First epoch of phase 2 (two-phase methods); optimiser and scheduler restart there.")
    phase1: str = _field("attention", "Phase 1: alignment loss alone (paper) or CE alone (reference's later variant).")
    lambda0: float | None = _field(None, "Weight of the alignment or penalty term (unset: the method's own default).")
    lambda_ramp: float = _field(10.0, "lambda_t = lambda0 * (1 + (t - E_att) / ramp) in phase 2.")
    selection: str | None = _field(None, "Model-selection rule on validation data (unset: the method's own default).")
    selection_beta: float = _field(1.0, "beta of the acc_exp_rkl rule: val_acc * exp(-beta * reverse KL).")
    seed: int = _field(37, "Seed of initialisation and data order.")
    train_subset: int | None = _field(None, f"Use only the first N training images "
                                            f"(and N/{SUBSET_VAL_DIVISOR} validation images).")
    device: str = _field("auto", "auto (CUDA when present) | cpu | cuda.")

    def validate(self) -> "TrainConfig":
        def bad(msg: str) -> None:
            raise L2LError(msg)

        if self.epochs < 1:
            bad(f"epochs must be >= 1, got {self.epochs}; pass e.g. --epochs 30")
        if self.batch_size < 1:
            bad(f"batch size must be >= 1, got {self.batch_size}; pass e.g. --batch-size 32")
        if self.lr <= 0:
            bad(f"learning rate must be positive, got {self.lr}; pass e.g. --lr 1e-3")
        if self.lambda0 is not None and self.lambda0 < 0:
            bad(f"lambda must be >= 0, got {self.lambda0}; pass e.g. --lambda0 160")
        if self.e_att < 0:
            bad(f"E_att must be >= 0, got {self.e_att}; pass e.g. --e-att 11")
        if self.phase1 not in PHASE1_CHOICES:
            bad(f"unknown phase-1 schedule {self.phase1!r}; choose one of: {', '.join(PHASE1_CHOICES)}")
        if self.selection is not None and self.selection not in SELECTION_RULES:
            bad(f"unknown selection rule {self.selection!r}; choose one of: {', '.join(SELECTION_RULES)}")
        if self.train_subset is not None and self.train_subset < 2:
            bad(f"train subset must hold at least 2 images, got {self.train_subset}")
        return self

    @classmethod
    def help(cls, name: str) -> str:
        """The CLI help of field ``name``: its description and its declared default."""
        f = {f.name: f for f in fields(cls)}[name]
        if f.default is None or f.default is dataclasses.MISSING:
            return f.metadata["help"]
        shown = f"{f.default:g}" if isinstance(f.default, float) else str(f.default)
        return f"{f.metadata['help']}  [default: {shown}]"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self, exclude: tuple[str, ...] = ("seed", "device")) -> str:
        """Hash of everything that changes the outcome except the seed, naming a
        folder in which each seed is one run."""
        d = {k: v for k, v in self.to_dict().items() if k not in exclude}
        return sha256_text(json.dumps(d, sort_keys=True, default=str))[:10]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise L2LError(f"unknown config keys {unknown}; valid keys are: {', '.join(sorted(known))}")
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        if not path.is_file():
            raise L2LError(f"config file {path} does not exist; pass a YAML or JSON file")
        try:
            import yaml

            d = yaml.safe_load(path.read_text()) or {}
        except Exception as e:
            raise L2LError(f"config file {path} is not valid YAML/JSON ({type(e).__name__}); fix its syntax") from None
        if not isinstance(d, dict):
            raise L2LError(f"config file {path} must hold a mapping of settings, e.g. `epochs: 30`")
        return cls.from_dict(d)
