"""The run record: what one finished run wrote into its folder, its schema, and the
only code that writes or reads it.

Records are the interface between training and everything after it: reports, figures,
sweeps' choices, plans and ``load_run`` read a run through :func:`read_record`, never
its JSON directly, so the schema lives here once. A record is written once, when its
run ends, and never changed on read. ``schema`` numbers the layout; records without
it are version 1, which this reader still accepts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from .config import TrainConfig
from .data import DATASETS
from .errors import L2LError
from .io import atomic_write_json, read_json

RESULT_FILE = "result.json"
EXAMPLES_FILE = "examples.npz"
WEIGHTS_FILE = "model.pt"
#: The layout written now. 2: ``schema``, the data file's hash, the weights' SHA-256.
SCHEMA_VERSION = 2
#: Top-level keys every record has, whatever its version.
REQUIRED = {"config": dict, "maps": dict, "selection": dict, "test": dict, "history": list}


@dataclass(frozen=True)
class TestMetrics:
    """A selected model on the test split (``training.evaluate.evaluate_split``)."""

    __test__ = False  # a result type, not a pytest test class
    accuracy: float
    n: int
    cam_on_digit: float | None = None  # None where the data set keeps no object (an import without masks)
    grad_on_digit: float | None = None
    kl_to_oracle: float | None = None
    cam_on_decoy: float | None = None
    grad_on_decoy: float | None = None
    worst_group_accuracy: float | None = None  # data sets with group labels
    mean_group_accuracy: float | None = None  # plain mean over groups (GALS's convention)
    weighted_group_accuracy: float | None = None  # groups weighted by their training share (group_DRO's, DFR's)
    balanced_accuracy: float | None = None  # mean over classes of per-class accuracy
    class_accuracy: dict[str, float] | None = None  # class name -> accuracy %
    confusion: list[list[int]] | None = None  # [true class][predicted class] counts
    masked_images: int | None = None  # images whose attention metrics could be measured (they have a mask)


@dataclass(frozen=True)
class MapsInfo:
    """The map source a run was guided by, and how good its maps were on training images."""

    name: str = "none"
    kind: str = "none"
    config: dict[str, Any] = field(default_factory=dict)
    fingerprint: str | None = None
    real_vlm: bool = False
    weights: str | None = None  # identity of the VLM's weights, for VLM sources
    iou: float | None = None
    auroc: float | None = None
    summary: str = ""  # what the maps are made from, as the source says (records before schema 2 lack it)

    @classmethod
    def from_result(cls, maps: dict[str, Any]) -> "MapsInfo":
        quality = maps.get("quality") or {}
        return cls(maps.get("name", "none"), maps.get("kind", "none"), maps.get("config") or {},
                   maps.get("fingerprint"), bool(maps.get("real_vlm", False)), maps.get("weights"),
                   quality.get("iou"), quality.get("auroc"), maps.get("summary") or "")

    @property
    def is_real_vlm(self) -> bool:
        """A map is a VLM map only when its kind is ``vlm`` *and* real pretrained weights made it."""
        return self.kind == "vlm" and self.real_vlm

    @property
    def display_kind(self) -> str:
        """The kind to print: ``vlm`` only for real pretrained weights."""
        return "test model, not a VLM" if self.kind == "vlm" and not self.real_vlm else self.kind

    @property
    def label(self) -> str:
        """The source by name and kind, with the options that tell rows apart."""
        if self.name == "none":
            return "none"
        name = self.name
        if "degradation" in self.config:
            name = f"{name} {self.config['degradation']}={self.config.get('strength', 0):g}"
        elif self.kind == "vlm":
            name = f"{name}/{self.config.get('variant', '')}".rstrip("/")
        return f"{name} ({self.display_kind})"


@dataclass(frozen=True)
class Record:
    """One finished run (one config, one seed), read from its folder."""

    run_dir: Path
    role: str
    config: TrainConfig
    maps: MapsInfo
    test: TestMetrics
    history: tuple[dict[str, Any], ...]
    selected_epoch: int
    seconds_per_epoch: float
    wall_seconds: float
    device: str
    environment: dict[str, Any]
    stopped: str | None = None  # why training ended early (the loss diverged), None when it ran every epoch
    num_classes: int | None = None  # None where neither the record nor the registry tells
    classes: tuple[str, ...] = ()  # class names, where the record keeps them
    schema: int = 1
    data_sha256: str | None = None  # the data file's content hash (schema 2)
    weights_sha256: str | None = None  # SHA-256 of model.pt as written (schema 2)
    selection: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # the JSON as read

    def __getitem__(self, key: str) -> Any:
        """The record's JSON as the run wrote it (``record["test"]["accuracy"]``), for code
        written against the plain mapping ``run`` returned before records were typed."""
        return self.raw[key]

    @property
    def val_acc(self) -> float | None:
        """In-distribution validation accuracy % of the selected epoch."""
        return next((row.get("val_acc") for row in self.history if row.get("epoch") == self.selected_epoch), None)

    @property
    def words(self) -> tuple[str, str]:
        """What the data set calls its object and its shortcut (the digit and the decoy on
        the MNIST sets); records before schema 2 take the registry's words."""
        words = self.dataset.get("words") or {}
        if words:
            return words.get("object", "object"), words.get("shortcut", "shortcut")
        spec = DATASETS[self.config.dataset] if self.config.dataset in DATASETS else None
        return (spec.object_word, spec.shortcut_word) if spec else ("object", "shortcut")

    @property
    def selection_inverted(self) -> bool:
        """The paper's rule chose this run's epoch where it inverts (some eligible epoch had
        KL >= 1, where the least accurate epoch wins): a record of an earlier version, made
        before selection fell back there (docs/protocol.md §3.6)."""
        if self.config.selection != "acc_x_1mkl" or "rule_used" in self.selection:
            return False
        return any(h.get("eligible") and h.get("val_kl", 0.0) >= 1.0 for h in self.history)

    @property
    def group(self) -> Path:
        """The folder of all seeds of this configuration."""
        return self.run_dir.parent

    def curve(self, key: str) -> list[float] | None:
        """``key`` (e.g. ``val_acc``) per epoch, or None when some epoch lacks it."""
        values = [row.get(key) for row in self.history]
        return None if any(v is None for v in values) else values

    @property
    def joint_from(self) -> int | None:
        """The first epoch of a two-phase method's joint phase (E_att), None for one-phase runs."""
        return next((row["epoch"] for row in self.history if row.get("phase") == "joint"), None)

    def examples(self) -> dict[str, np.ndarray] | None:
        """The arrays the run saved for figures, or None for runs that saved none."""
        path = self.run_dir / EXAMPLES_FILE
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}


def has_record(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a finished run."""
    return (Path(run_dir) / RESULT_FILE).is_file()


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where} is {value!r}, not a number")
    return float(value)


def _test_metrics(test: dict[str, Any]) -> TestMetrics:
    known = {f.name for f in fields(TestMetrics)}
    kept = {k: v for k, v in test.items() if k in known}
    for k, v in kept.items():
        if k not in ("n", "class_accuracy", "confusion") and v is not None:
            _number(v, f"test {k}")
    if "accuracy" not in kept or "n" not in kept:
        raise ValueError("test has no accuracy or n")
    if not math.isfinite(kept["accuracy"]):
        raise ValueError(f"its test accuracy is {kept['accuracy']}")
    return TestMetrics(**kept)


def _num_classes(result: dict[str, Any]) -> int | None:
    """The class count a record lists; records written before it kept the list fall back
    to the registry's count for a built-in data set."""
    classes, name = result.get("dataset", {}).get("classes"), result["config"].get("dataset")
    return len(classes) if classes else DATASETS[name].num_classes if name in DATASETS else None


def parse_record(run_dir: Path, r: Any) -> Record:
    """A record from its JSON ``r``; a malformed one raises ValueError naming what is wrong."""
    if not isinstance(r, dict):
        raise ValueError(f"the top level is a {type(r).__name__}, not a mapping")
    for key, kind in REQUIRED.items():
        if not isinstance(r.get(key), kind):
            raise ValueError(f"{key!r} is missing or not a {kind.__name__}")
    selection, dataset = r["selection"], r.get("dataset") or {}
    epoch = selection.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int):
        raise ValueError(f"selection epoch is {epoch!r}, not an integer")
    config = TrainConfig.from_dict(r["config"]).validate()
    classes = dataset.get("classes") if isinstance(dataset, dict) else None
    return Record(run_dir=run_dir, role=str(r.get("role", "method")), config=config,
                  maps=MapsInfo.from_result(r["maps"]), test=_test_metrics(r["test"]),
                  history=tuple(r["history"]), selected_epoch=epoch,
                  seconds_per_epoch=_number(r.get("seconds_per_epoch", math.nan), "seconds_per_epoch"),
                  wall_seconds=_number(r.get("wall_seconds", math.nan), "wall_seconds"),
                  device=str(r.get("device", "?")), environment=r.get("environment") or {}, stopped=r.get("stopped"),
                  num_classes=_num_classes(r), classes=tuple(classes or ()), schema=int(r.get("schema", 1)),
                  data_sha256=dataset.get("sha256"), weights_sha256=(r.get("weights") or {}).get("sha256"),
                  selection=selection, dataset=dataset, raw=r)


def read_record(run_dir: str | Path, fix: str | None = None) -> Record:
    """The record of the finished run in ``run_dir``; a malformed one is a one-line error
    naming the file, whatever is wrong inside it."""
    run_dir = Path(run_dir)
    path = run_dir / RESULT_FILE
    fix = fix or f"delete the run folder {run_dir} to train it again"
    try:
        return parse_record(run_dir, read_json(path, fix))
    except (ValueError, KeyError, TypeError, AttributeError, L2LError) as e:
        if str(e).startswith(str(path)):  # already says which file and what to do
            raise
        raise L2LError(f"{path} is not a run record ({type(e).__name__}: {e}); {fix}") from None


def write_record(run_dir: str | Path, record: dict[str, Any]) -> Record:
    """Write ``record`` (a run's JSON, :data:`SCHEMA_VERSION`) atomically, after checking
    that it reads back: no run ends with a record its readers would refuse."""
    run_dir = Path(run_dir)
    record = {"schema": SCHEMA_VERSION} | record
    parsed = parse_record(run_dir, record)
    atomic_write_json(run_dir / RESULT_FILE, record)
    return parsed

