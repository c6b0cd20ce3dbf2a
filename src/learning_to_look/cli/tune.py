"""`l2l tune`: an Optuna search over config fields, selected on validation alone."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer

from ..config import PRECISIONS, TrainConfig
from ..data import DATASETS
from ..maps import MAP_SOURCES
from ..methods import METHODS
from ..nn.backbones import BACKBONES
from ..training.tune import FIXED, parse_space, plan_tune, run_tune
from .app import app
from .common import DATA_DIR, RUNS_DIR, config_flag


@app.command("tune")
def tune(
    space: list[str] = typer.Option([], "--space", help="FIELD=log:LOW:HIGH | float:LOW:HIGH | int:LOW:HIGH | "
                                                        "cat:V1,V2; repeat for more fields. FIELD: any config field "
                                                        f"but {', '.join(FIXED)}."),
    space_file: Optional[Path] = typer.Option(None, "--space-file", help="YAML/JSON file of FIELD: SPEC (a list "
                                                                         "is a cat space); --space adds to it."),
    trials: int = typer.Option(20, "--trials", help="Trials to run now (a rerun adds to the same study)."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna storage: a database URL shared by "
                                          "machines, e.g. postgresql://host/db  [default: sqlite file in the "
                                          "study's folder]."),
    study: Optional[str] = typer.Option(None, "--study", help="Study name [default: data set, method and a hash "
                                                              "of the base config and space]."),
    prune: bool = typer.Option(True, "--prune/--no-prune", help="Median pruning on the per-epoch validation score."),
    sampler_seed: int = typer.Option(0, "--sampler-seed", help="Seed of the TPE sampler."),
    dataset: Optional[str] = config_flag("dataset", DATASETS.help()),
    method: Optional[str] = config_flag("method", METHODS.help()),
    maps: Optional[str] = config_flag("maps", MAP_SOURCES.help() + " | a cached map set"),
    backbone: Optional[str] = config_flag("backbone", BACKBONES.help()),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML/JSON file of settings; flags override it."),
    epochs: Optional[int] = config_flag("epochs"),
    e_att: Optional[int] = config_flag("e_att", flag="--e-att"),
    train_subset: Optional[int] = config_flag("train_subset"),
    seed: Optional[int] = config_flag("seed"),
    device: Optional[str] = config_flag("device"),
    precision: Optional[str] = config_flag("precision", " | ".join(PRECISIONS)),
    runs_dir: Optional[Path] = RUNS_DIR, data_dir: Optional[Path] = DATA_DIR,
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Search config fields with Optuna (TPE, median pruning), each trial an ordinary run;
    choose on validation, then read the best trial's test accuracy once.

    Example: l2l tune --dataset decoymnist --method l2l --space lambda0=log:1:1000 --space lr=log:1e-4:1e-2 --trials 30
    """
    base = TrainConfig.from_file(config) if config else TrainConfig()
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    base = dataclasses.replace(base, **{k: v for k, v in locals().items() if k in fields and v is not None})
    plan = plan_tune(base, parse_space(space, space_file, base, data_dir), runs_dir, storage, study, data_dir)
    typer.echo(f"study {plan.study} in {plan.storage}; trial records in {plan.folder}")
    s = run_tune(plan, trials, data_dir=data_dir, progress=not quiet, prune=prune, sampler_seed=sampler_seed,
                 echo=typer.echo)
    typer.echo(f"best on validation: trial {s['best_trial']} {s['best_params']} (validation score "
               f"{s['val_score']:.4g}); its test accuracy {s['test_acc']:.2f}% (read once, now); {s['trials']}")
