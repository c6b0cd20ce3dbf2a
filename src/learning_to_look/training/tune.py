"""`l2l tune`: an Optuna search over config fields, chosen on validation alone.

Each trial is an ordinary run (:func:`.run.run_resolved`) whose record lands in the
study's runs folder; TPE proposes the settings, and the median pruner stops a trial
whose per-epoch validation selection score (the ``score`` of its history rows) falls
below the median of earlier trials at the same epoch. The study lives in a database
(a SQLite file beside the records by default, or any SQLAlchemy URL), so machines that
share the runs folder and the database work on one study.

The test split: like every run, a trial's run evaluates it once after its own epoch
selection and writes it in its record. The search never reads it: the objective is
the record's validation score (:func:`validation_score`), the pruner sees the epoch
rows' validation scores, and only after the last trial is the best trial's test
accuracy read, once (:func:`best_result`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..config import TrainConfig
from ..errors import L2LError
from ..io import atomic_write_json, read_settings, sha256_text
from ..record import Record, read_record
from .resolve import resolve_run
from .run import default_runs_dir, run_dir_for, run_resolved

#: How a dimension is sampled: uniform, log-uniform (numbers > 0), integers, or choices.
KINDS = ("float", "log", "int", "cat")
#: Fields no search may vary, and why.
FIXED = {"seed": "a search compares settings on one seed; repeat the tune with --seed to see the spread",
         "selection": "scores of different selection rules cannot be compared",
         "selection_beta": "scores of different selection rules cannot be compared",
         "device": "it is not a hyper-parameter", "data_hash": "it is filled in from the data set",
         "map_options": "it is a mapping; set it in --config"}
TUNABLE = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in FIXED)
SPACE_SYNTAX = "give FIELD=log:LOW:HIGH, FIELD=float:LOW:HIGH, FIELD=int:LOW:HIGH or FIELD=cat:V1,V2"
SPACE_HELP = f"{SPACE_SYNTAX} with FIELD one of {', '.join(TUNABLE)}"
#: The role of a trial's record: a search point, never a compared method.
TUNE_ROLE = "tune"
SUMMARY_FILE = "tune.json"
STUDY_DB = "study.db"


@dataclass(frozen=True)
class Dimension:
    """One searched field: its kind, and its bounds or choices."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """The trial's value of this field, of the field's type."""
        if self.kind == "cat":
            return trial.suggest_categorical(self.name, list(self.choices))
        if _field_type(self.name) is int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.kind == "log")
        return trial.suggest_float(self.name, self.low, self.high, log=self.kind == "log")

    def values(self) -> list[Any]:
        """The values that bound the dimension: its ends, or every choice."""
        return list(self.choices) if self.kind == "cat" else [_cast(self.name, self.low), _cast(self.name, self.high)]


def _field_type(name: str) -> type:
    hint = typing.get_type_hints(TrainConfig)[name]
    return next((t for t in (bool, int, float, str) if t is hint or t in typing.get_args(hint)), str)


def _cast(name: str, value: Any) -> Any:
    kind = _field_type(name)
    if kind is bool and isinstance(value, str):
        if value.lower() not in ("true", "false"):
            raise ValueError(f"{value!r} is not true or false")
        return value.lower() == "true"
    return kind(float(value)) if kind is int and isinstance(value, (str, float)) else kind(value)


def parse_dimension(name: str, spec: Any, base: TrainConfig, data_dir: Path | None = None) -> Dimension:
    """``lambda0``, ``log:1:1000`` (or a list of choices, from a YAML file) -> a checked
    :class:`Dimension`; an unknown field, an empty range or a value the config refuses
    is a one-line error."""
    text = f"{name}={spec}"
    name = name.strip().replace("-", "_")
    if name not in TUNABLE:
        why = f": {FIXED[name]}" if name in FIXED else ""
        raise L2LError(f"--space {text!r} names no field a search can vary{why}; {SPACE_HELP}")
    if isinstance(spec, list):
        spec = "cat:" + ",".join(str(v) for v in spec)
    kind, _, rest = str(spec).partition(":")
    try:
        dim = _dimension(name, kind.strip(), rest)
        # each end (or choice) must make a run, on top of the base config
        runs = {resolve_run(dataclasses.replace(base, **{name: value}), data_dir).cfg.fingerprint()
                for value in dim.values()}
    except (ValueError, L2LError) as e:
        raise L2LError(f"malformed --space {text!r} ({e}); {SPACE_SYNTAX}") from None
    if len(runs) == 1:
        raise L2LError(f"--space {text!r}: every value resolves to the same run for method {base.method} (it does "
                       f"not read {name}); search a field the method uses, or drop it")
    return dim


def _dimension(name: str, kind: str, rest: str) -> Dimension:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}, choose {', '.join(KINDS)}")
    if kind == "cat":
        choices = tuple(_cast(name, v.strip()) for v in rest.split(",") if v.strip())
        if not choices or len(set(choices)) != len(choices):
            raise ValueError("no choices or repeated choices")
        return Dimension(name, kind, choices=choices)
    if _field_type(name) not in (int, float):
        raise ValueError(f"{name} takes choices, not a range: use {name}=cat:V1,V2")
    bounds = re.fullmatch(r"\s*([-+.\deE]+)\s*:\s*([-+.\deE]+)\s*", rest)
    if not bounds:
        raise ValueError("give LOW:HIGH")
    low, high = float(bounds[1]), float(bounds[2])
    if _field_type(name) is int and not (low.is_integer() and high.is_integer()):
        raise ValueError(f"{name} takes whole numbers")
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low or (kind == "log" and low <= 0):
        raise ValueError("empty range: need LOW < HIGH" + (", and LOW > 0 for log" if kind == "log" else ""))
    return Dimension(name, "int" if kind == "int" else kind, low, high)


def parse_space(texts: list[str], space_file: Path | None, base: TrainConfig,
                data_dir: Path | None = None) -> list[Dimension]:
    """Dimensions from ``--space FIELD=SPEC`` flags and a YAML/JSON file of ``FIELD: SPEC``."""
    given = {}
    if space_file is not None:
        loaded = read_settings(space_file, "space file")
        if not isinstance(loaded, dict):
            raise L2LError(f"space file {space_file} must map fields to spaces, e.g. `lambda0: log:1:1000`")
        given |= loaded
    for text in texts:
        name, sep, spec = text.partition("=")
        if not sep:
            raise L2LError(f"malformed --space {text!r}; {SPACE_HELP}")
        given[name] = spec
    if not given:
        raise L2LError(f"a search needs at least one --space (or --space-file); {SPACE_HELP}")
    return [parse_dimension(str(name), spec, base, data_dir) for name, spec in given.items()]


@dataclass
class Tune:
    """A planned search: the base config, the space, where the trials' records and the study live."""

    base: TrainConfig
    space: list[Dimension]
    folder: Path
    storage: str
    study: str


def plan_tune(base: TrainConfig, space: list[Dimension], runs_dir: Path | None = None, storage: str | None = None,
              study: str | None = None, data_dir: Path | None = None) -> Tune:
    """Name the study after what it searches (so a rerun continues it) and check the base config."""
    resolve_run(base, data_dir)  # a bad base config fails before any database is made
    key = json.dumps({"base": base.to_dict(), "space": [dataclasses.asdict(d) for d in space]}, sort_keys=True,
                     default=str)
    name = study or f"{base.dataset}-{base.method}-{sha256_text(key)[:10]}"
    folder = Path(runs_dir or default_runs_dir()) / "tunes" / name
    return Tune(base, space, folder, storage or f"sqlite:///{(folder / STUDY_DB).resolve()}", name)


def validation_score(record: Record) -> float:
    """What a trial is worth to the search: its selected epoch's validation score."""
    return float(record.selection["score"])


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise L2LError("l2l tune needs optuna, which is not installed; pip install 'learning-to-look[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # each trial is said in one line by run_tune
    return optuna


def run_tune(tune: Tune, trials: int, *, data_dir: Path | None = None, progress: bool = True, prune: bool = True,
             sampler_seed: int = 0, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run ``trials`` more trials of the study, then read the best trial's test accuracy once."""
    if trials < 1:
        raise L2LError(f"--trials must be at least 1, got {trials}")
    optuna = _optuna()
    tune.folder.mkdir(parents=True, exist_ok=True)
    pruner = optuna.pruners.MedianPruner() if prune else optuna.pruners.NopPruner()
    try:
        study = optuna.create_study(study_name=tune.study, storage=tune.storage, direction="maximize",
                                    sampler=optuna.samplers.TPESampler(seed=sampler_seed), pruner=pruner,
                                    load_if_exists=True)
    except (ImportError, ValueError, optuna.exceptions.OptunaError) as e:
        raise L2LError(f"cannot open study storage {tune.storage!r} ({e}); pass --storage sqlite:///FILE.db "
                       "or a database URL whose driver is installed") from None

    def objective(trial: Any) -> float:
        cfg = dataclasses.replace(tune.base, **{d.name: d.suggest(trial) for d in tune.space})
        try:
            run = resolve_run(cfg, data_dir)
        except L2LError as err:  # a combination of values the config refuses: this trial fails, the study goes on
            trial.set_user_attr("failed", str(err))
            raise
        trial.set_user_attr("run", str(run_dir_for(run.cfg, tune.folder)))

        def report(row: dict[str, Any]) -> None:  # each finished epoch's history row
            if row.get("score") is not None and math.isfinite(row["score"]):  # eligible epochs only
                trial.report(row["score"], row["epoch"])
                if trial.should_prune():
                    raise optuna.TrialPruned(f"validation score {row['score']:.4g} below the median at epoch "
                                             f"{row['epoch']}")
        try:
            record = run_resolved(run, runs_dir=tune.folder, data_dir=data_dir, progress=progress, on_epoch=report,
                                  role=TUNE_ROLE)
        except L2LError as err:  # e.g. its loss diverged before any epoch it could select
            trial.set_user_attr("failed", str(err))
            raise
        return validation_score(record)

    def said(study: Any, trial: Any) -> None:
        value = "" if trial.value is None else f" validation score {trial.value:.4g}"
        why = f" ({trial.user_attrs['failed']})" if "failed" in trial.user_attrs else ""
        echo(f"trial {trial.number} {trial.state.name.lower()}{value}: {trial.params}{why}")

    study.optimize(objective, n_trials=trials, catch=(L2LError,), callbacks=[said])
    summary = best_result(study, tune)
    atomic_write_json(tune.folder / SUMMARY_FILE, summary)
    return summary


def best_result(study: Any, tune: Tune) -> dict[str, Any]:
    """The best complete trial by validation score, and only now its test accuracy, read once."""
    states = [t.state.name.lower() for t in study.trials]
    try:
        best = study.best_trial
    except ValueError:
        raise L2LError(f"no trial of study {tune.study} finished (states: {', '.join(sorted(set(states)))}); "
                       "lower --lr or widen the space, then rerun") from None
    record = read_record(Path(best.user_attrs["run"]), "rerun l2l tune to train it again")
    return {"study": tune.study, "storage": tune.storage, "space": [dataclasses.asdict(d) for d in tune.space],
            "trials": {s: states.count(s) for s in sorted(set(states))}, "best_params": best.params,
            "best_trial": best.number, "val_score": best.value, "rule": record.selection.get("rule_used"),
            "run": best.user_attrs["run"], "test_acc": record.test.accuracy}
