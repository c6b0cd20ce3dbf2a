"""`l2l sweep`: a hyper-parameter grid over seeds, trained as stacks of models."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer

from ..config import DEFAULT_MAX_STACK, TrainConfig
from ..data import DATASETS
from ..errors import L2LError
from ..maps import MAP_SOURCES
from ..methods import METHODS
from .app import app
from .common import DATA_DIR, JOBS
from .common import RUNS_DIR, config_flag, parse_seeds, with_launcher
from ..training.launchers import Launcher


@app.command("sweep")
@with_launcher
def sweep(
    grid: list[str] = typer.Option(..., "--grid", help="FIELD=START:STOP:STEP (STOP included) or FIELD=V1,V2; "
                                                       "repeat for more axes. FIELD: lambda0, e_att, lr, phase1."),
    dataset: Optional[str] = config_flag("dataset", DATASETS.help()),
    method: Optional[str] = config_flag("method", METHODS.help()),
    maps: Optional[str] = config_flag("maps", MAP_SOURCES.help() + " | a cached map set"),
    seeds: str = typer.Option("0", help="Seeds, e.g. 0,1,2 or 0-4; each seed's grid points share one stack."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML/JSON file of settings; flags override it."),
    epochs: Optional[int] = config_flag("epochs"),
    e_att: Optional[int] = config_flag("e_att", flag="--e-att"),
    lambda0: Optional[float] = config_flag("lambda0"),
    train_subset: Optional[int] = config_flag("train_subset"),
    device: Optional[str] = config_flag("device"),
    max_stack: int = typer.Option(DEFAULT_MAX_STACK, "--max-stack",
                                  help="Most models trained as one stack (memory grows with it)."),
    jobs: Optional[int] = JOBS, runs_dir: Optional[Path] = RUNS_DIR, data_dir: Optional[Path] = DATA_DIR,
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    launcher: Launcher = None,
) -> None:
    """Train every grid point for every seed, each seed's points as one stacked network,
    then choose the point with the best mean validation score (PROTOCOL 3.8).

    Example: l2l sweep --dataset colormnist --method l2l --grid lambda0=100:300:20 --grid e_att=5:25:2 --seeds 0-4
    """
    from ..data.imported import dataset_spec
    from ..analysis.records import point_label
    from ..training.sweep import parse_grid, plan_sweep, run_sweep

    base = TrainConfig.from_file(config) if config else TrainConfig()
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    base = dataclasses.replace(base, **{k: v for k, v in locals().items() if k in fields and v is not None})
    if isinstance(base.dataset, str):
        dataset_spec(base.dataset, data_dir)  # an imported data set is known from its file
    axes = dict(parse_grid(g) for g in grid)
    if len(axes) != len(grid):
        raise L2LError("the same field is given twice in --grid; give each field once")
    plan = plan_sweep(base, axes, parse_seeds(seeds), runs_dir, data_dir)
    s = run_sweep(plan, max_stack=max_stack, data_dir=data_dir, progress=not quiet, jobs=jobs,
                  echo=typer.echo, launcher=launcher)
    chosen = point_label(s["chosen"])
    typer.echo(f"chosen on validation: {chosen}; test accuracy {s['test_acc_mean']:.2f} +- {s['test_acc_std']:.2f} % "
               f"over {len(s['seeds'])} seeds; records in {plan.folder} (l2l report {plan.folder} --out DIR)")
    if s["left_out"]:
        typer.echo(f"left out of the choice: {len(s['left_out'])} grid point(s) with a seed whose loss diverged "
                   "before any epoch it could select (listed in selection.json and the report)")
