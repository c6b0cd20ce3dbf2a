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

SELECTION_RULES = ("val_acc", "acc_x_1mkl", "acc_exp_rkl")
PHASE1_CHOICES = ("attention", "ce")


@dataclass
class TrainConfig:
    dataset: str = "colormnist"
    method: str = "l2l"
    backbone: str = "lenet-gap"
    maps: str = "oracle"
    map_options: dict[str, Any] = field(default_factory=dict)
    target: str = "outline"
    target_threshold: float = 10 / 255
    input_transform: str = "none"
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    momentum: float = 0.98
    weight_decay: float = 1e-4
    step_size: int = 7
    gamma: float = 0.1
    e_att: int = 11
    phase1: str = "attention"
    lambda0: float | None = None
    lambda_ramp: float = 10.0
    selection: str | None = None
    selection_beta: float = 1.0
    seed: int = 37
    train_subset: int | None = None
    device: str = "auto"

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
