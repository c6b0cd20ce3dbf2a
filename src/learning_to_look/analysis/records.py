"""Collect run records and aggregate them over seeds: the rows every table and figure is drawn from.

Analysis reads records only (``learning_to_look.record``): never a model, a data set or a
map source, so any folder of runs can be re-reported on its own, as DomainBed's
``collect_results`` does. Rows are computed once here, so tables and figures agree.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config import PAPER_CONFIG, SCHEDULE_FIELDS, SCHEDULES
from ..errors import L2LError
from ..record import RESULT_FILE, MapsInfo, Record, read_record
from .stats import mean_or_none, mean_std

#: How a report reads a run, in the order its tables list them.
ROLES = ("method", "vlm", "upper-bound", "control", "sensitivity", "sweep")
#: Data sets in the order reports list them; others follow alphabetically.
DATASET_ORDER = ("colormnist", "decoymnist", "decoymnist-rrr", "mnist")
DATASET_NAMES = {"colormnist": "ColorMNIST", "decoymnist": "DecoyMNIST", "decoymnist-rrr": "DecoyMNIST-RRR",
                 "mnist": "MNIST (clean)"}


#: The data set of a setting's upper bound: the same network and schedule on clean digits.
BOUND_DATASET = "mnist"
#: Roles read as written: search points (never compared) and VLM rows (named by their profile).
KEPT_ROLES = ("sweep", "tune", "vlm")


def comparison_role(record: Record) -> str:
    """The part a run plays in a comparison, read from what it computed, so that a run
    trained alone (`l2l train`, which records the role "method") and the same run trained
    by a profile read alike: vanilla on clean MNIST or on colour-invariant input is an
    upper bound, degraded oracle maps a sensitivity point, intensity maps (no annotation
    at all) a control. Any other run keeps the role it recorded."""
    cfg = record.config
    if record.role in KEPT_ROLES:
        return record.role
    if cfg.method == BASELINE and (cfg.dataset == BOUND_DATASET or cfg.input_transform == "colour-invariant"):
        return "upper-bound"
    if cfg.maps == "degraded-oracle":
        return "sensitivity"
    if cfg.maps == "intensity":
        return "control"
    return record.role


def collect(runs_dir: str | Path) -> list[Record]:
    """Every finished run under ``runs_dir`` (``<dataset>/<group>/seed<k>/result.json``),
    in path order, each in its :func:`comparison_role`. An unreadable result is reported
    on stderr and left out."""
    records = []
    for path in sorted(Path(runs_dir).glob(f"*/*/seed*/{RESULT_FILE}")):
        try:
            record = read_record(path.parent)
            records.append(dataclasses.replace(record, role=comparison_role(record)))
        except (OSError, L2LError) as e:
            print(f"warning: skipping {path}: {e}", file=sys.stderr)
    return records


# ---- aggregation over seeds --------------------------------------------------------------

#: What makes a benchmark setting: a guided run is compared with the baseline that shares all of it.
SETTING_KEYS = ("dataset", "schedule", "backbone", "train_subset", "epochs", "select_on")
#: The unguided baseline every other method is compared with (the worst-group baselines,
#: which add no guidance term either, are compared with it too, never used as it).
BASELINE = "vanilla"
#: ``select_on`` of runs whose epoch was chosen by the worst validation group (``val_worst_group``):
#: they are compared with each other only, since the rule changes which model a run is.
WORST_GROUP = "worst group"
#: ``select_on`` of runs selected on class-balanced validation accuracy (``val_balanced``, GALS's rule).
BALANCED = "class-balanced"
SELECT_ON = {"val_worst_group": WORST_GROUP, "val_balanced": BALANCED}


def setting_label(d: Mapping[str, Any]) -> str:
    """A setting (the values of :data:`SETTING_KEYS` in a table row) as tables and figures name it."""
    subset = f", {d['train_subset']:,} images" if d.get("train_subset") else ""
    worst = {WORST_GROUP: ", selected on the worst validation group",
             BALANCED: ", selected on class-balanced validation accuracy"}.get(d.get("select_on"), "")
    return f"{DATASET_NAMES.get(d['dataset'], d['dataset'])}, {d['schedule']}, {d['backbone']}{subset}{worst}"


def point_label(point: Mapping[str, Any]) -> str:
    """A sweep's grid point as text, e.g. "lambda0 160, e_att 11"."""
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in point.items())


def by_setting(items: Sequence[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    """Table rows grouped by setting (the values of :data:`SETTING_KEYS`), in first-seen order."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for it in items:
        groups.setdefault(tuple(it[k] for k in SETTING_KEYS), []).append(it)
    return list(groups.values())


@dataclass
class Row:
    """One configuration: all seeds of one run group, mean ± std over them."""

    dataset: str
    method: str
    backbone: str
    maps: MapsInfo
    role: str
    input_transform: str
    schedule: str
    map_options: dict[str, Any]
    seeds: list[int]
    test_acc_mean: float
    test_acc_std: float
    val_acc_mean: float | None  # in-distribution validation accuracy % of the selected epochs
    chance: float | None  # accuracy % of guessing uniformly; None where the class count is unknown
    worst_group_mean: float | None
    worst_group_std: float | None
    select_on: str  # "validation", or WORST_GROUP where selection read the worst validation group
    cam_on_digit: float | None
    cam_on_decoy: float | None
    grad_on_digit: float | None
    grad_on_decoy: float | None
    seconds_per_run: float | None
    seconds_per_epoch: float | None
    epochs: int
    train_subset: int | None
    lambda0: float | None
    run_group: str
    members: list[Record] = field(repr=False)
    published_acc: float | None = None
    published_source: str | None = None
    #: The config fields in which this row differs from others of the same table, beyond those
    #: every table shows (data set, method, backbone, maps, schedule): what tells two rows apart.
    varying: dict[str, Any] = field(default_factory=dict)

    @property
    def words(self) -> tuple[str, str]:
        """What the data set calls its object and its shortcut (e.g. digit and decoy)."""
        return self.members[0].words

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)

    @property
    def n_stopped(self) -> int:
        """Seeds whose loss diverged, so training stopped before the last epoch."""
        return sum(m.stopped is not None for m in self.members)

    @property
    def setting(self) -> tuple[Any, ...]:
        """The values of :data:`SETTING_KEYS`: what a guided run and its unguided baseline
        must share to be compared."""
        return tuple(getattr(self, k) for k in SETTING_KEYS)

    @property
    def uses_maps(self) -> bool:
        return self.maps.name != "none"

    @property
    def guided(self) -> bool:
        """The method adds a term to the cross-entropy with a positive weight (a map
        alignment, or a penalty on a declared shortcut such as CDEP's colour), or reads
        maps without one (counterexamples); vanilla's weight is 0 and it reads no maps."""
        return self.lambda0 is not None or self.uses_maps

    @property
    def on_paper_network(self) -> bool:
        """The paper's backbone on unmodified input, trained with the paper's schedule."""
        return (self.backbone == PAPER_CONFIG.backbone and self.input_transform == PAPER_CONFIG.input_transform
                and self.schedule == PAPER_CONFIG.schedule)

    @property
    def compared(self) -> bool:
        """A compared method (the paper's table), as opposed to a bound, control or sweep."""
        return self.role in ("method", "vlm")

    def sort_key(self) -> tuple:
        ds = DATASET_ORDER.index(self.dataset) if self.dataset in DATASET_ORDER else len(DATASET_ORDER)
        role = ROLES.index(self.role) if self.role in ROLES else len(ROLES)
        options = sorted((k, str(v)) for k, v in self.map_options.items())
        return (ds, self.dataset, self.schedule != PAPER_CONFIG.schedule, self.schedule, role, self.uses_maps,
                self.method, self.backbone, self.input_transform,
                self.maps.label, options, self.run_group)

    def summary(self) -> dict[str, Any]:
        """The row as plain data for results.json / results.csv (members left out)."""
        return {"origin": "measured", "dataset": self.dataset, "method": self.method, "backbone": self.backbone,
                "maps": self.maps.label, "maps_kind": self.maps.display_kind, "maps_name": self.maps.name,
                "real_vlm": self.maps.is_real_vlm, "role": self.role, "input_transform": self.input_transform,
                "schedule": self.schedule,
                "map_options": self.map_options,
                "n_seeds": self.n_seeds, "seeds": self.seeds, "test_acc_mean": self.test_acc_mean,
                "test_acc_std": self.test_acc_std, "worst_group_mean": self.worst_group_mean,
                "worst_group_std": self.worst_group_std, "select_on": self.select_on,
                "cam_on_digit": self.cam_on_digit, "cam_on_decoy": self.cam_on_decoy,
                "grad_on_digit": self.grad_on_digit, "grad_on_decoy": self.grad_on_decoy, "map_iou": self.maps.iou,
                "map_auroc": self.maps.auroc, "seconds_per_run": self.seconds_per_run,
                "seconds_per_epoch": self.seconds_per_epoch, "epochs": self.epochs, "train_subset": self.train_subset,
                "lambda0": self.lambda0, "published_acc": self.published_acc,
                "published_source": self.published_source, "run_group": self.run_group,
                "n_stopped": self.n_stopped}


def _row(group: str, members: list[Record]) -> Row:
    first = members[0]
    cfg = first.config
    acc_mean, acc_std = mean_std([m.test.accuracy for m in members])
    worst = [m.test.worst_group_accuracy for m in members]
    worst_mean, worst_std = mean_std(worst) if None not in worst else (None, None)
    return Row(dataset=cfg.dataset, method=cfg.method, backbone=cfg.backbone, maps=first.maps, role=first.role,
               input_transform=cfg.input_transform, schedule=cfg.schedule, map_options=cfg.map_options,
               seeds=[m.config.seed for m in members], test_acc_mean=acc_mean,
               test_acc_std=acc_std, val_acc_mean=mean_or_none([m.val_acc for m in members]),
               chance=100.0 / first.num_classes if first.num_classes else None,
               worst_group_mean=worst_mean, worst_group_std=worst_std,
               select_on=SELECT_ON.get(cfg.selection, "validation"),
               cam_on_digit=mean_or_none([m.test.cam_on_digit for m in members]),
               cam_on_decoy=mean_or_none([m.test.cam_on_decoy for m in members]),
               grad_on_digit=mean_or_none([m.test.grad_on_digit for m in members]),
               grad_on_decoy=mean_or_none([m.test.grad_on_decoy for m in members]),
               seconds_per_run=mean_or_none([m.wall_seconds for m in members]),
               seconds_per_epoch=mean_or_none([m.seconds_per_epoch for m in members]), epochs=cfg.epochs,
               train_subset=cfg.train_subset, lambda0=cfg.lambda0 if cfg.lambda0 else None, run_group=group,
               members=members)


def aggregate(records: Sequence[Record], runs_dir: str | Path | None = None) -> list[Row]:
    """One row per run group (all seeds of a configuration), in a fixed order that
    does not depend on the order of ``records``: data set, role, then the method.
    ``run_group`` is written relative to ``runs_dir`` when given."""
    groups: dict[Path, list[Record]] = defaultdict(list)
    for r in records:
        groups[r.group].append(r)
    rows = []
    for group, members in groups.items():
        members.sort(key=lambda m: m.config.seed)
        inside = runs_dir is not None and group.is_relative_to(runs_dir)
        name = str(group.relative_to(runs_dir)) if inside else str(group)
        rows.append(_row(name, members))
    mark_varying(rows)
    return sorted(rows, key=Row.sort_key)


#: Fields every table names already, or that never tell two configurations apart.
SHOWN_FIELDS = ("dataset", "method", "backbone", "maps", "map_options", "schedule", "seed", "device", "data_hash")


def mark_varying(rows: Sequence[Row]) -> None:
    """Set each row's ``varying``: among rows that would otherwise read alike (same data set,
    method, network, maps and schedule), the config fields whose values differ (target,
    selection, epochs, train subset, lambda0, ...), so no two rows look the same."""
    alike: dict[tuple, list[Row]] = defaultdict(list)
    for r in rows:
        alike[(r.dataset, r.method, r.backbone, r.maps.label, r.schedule)].append(r)
    for group in alike.values():
        configs = [_beyond_schedule(dataclasses.asdict(r.members[0].config)) for r in group]
        keys = [k for k in configs[0] if k not in SHOWN_FIELDS
                and len({json.dumps(c[k], sort_keys=True, default=str) for c in configs}) > 1]
        for r, c in zip(group, configs):
            r.varying = {k: c[k] for k in keys}


def _beyond_schedule(c: dict[str, Any]) -> dict[str, Any]:
    """A config with the optimiser fields its schedule sets blanked: the schedule names them."""
    schedule = SCHEDULES.get(c["schedule"]) if c.get("schedule") in SCHEDULES else None
    return c | {f: None for f in SCHEDULE_FIELDS if schedule is not None and c.get(f) == getattr(schedule, f)}


def varying_label(r: Row) -> str:
    """``r.varying`` as text, e.g. "lambda0 180, e_att 17, target filled"."""
    return point_label({k: v for k, v in r.varying.items() if v is not None})


def paper_match(rows: Sequence[Row], method: str | None, dataset: str, maps: str | None = None) -> Row | None:
    """The measured row to set beside a published number: the same method on the
    paper's network, with a real VLM's maps if there are any, else ``maps`` (the
    published number's annotation) if given, else the paper's maps."""
    if method is None:
        return None
    candidates = [r for r in rows if r.method == method and r.dataset == dataset and r.compared]
    candidates.sort(key=lambda r: (not r.maps.is_real_vlm, r.maps.name != maps, not r.on_paper_network,
                                   r.maps.name not in (PAPER_CONFIG.maps, "none")))
    return candidates[0] if candidates else None
