"""`l2l train`: train one method over one or more seeds and print mean +- std."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer

from ..config import ATTRIBUTIONS, CE_FILLS, FREEZE_STAGES, PHASE1_CHOICES, PRECISIONS, UPWEIGHT_BY, TrainConfig
from ..data import DATASETS, IRRELEVANT_CHOICES
from ..data.pipeline import INPUT_TRANSFORMS
from ..errors import L2LError
from ..nn.losses import TARGETS
from ..maps import MAP_SOURCES
from ..methods import METHODS
from ..nn.backbones import BACKBONES
from ..analysis.stats import mean_std
from ..record import Record
from ..training.launchers import Launcher
from ..training.resolve import Resolved, resolve_run
from ..training.run import default_runs_dir, run_task
from ..training.selection import RULES
from .app import app
from .common import (DATA_DIR, JOBS, RUNS_DIR, config_flag, parse_seeds, per_method, per_method_option,
                     with_launcher)
from .maps import MapFlags, generator_options, with_map_flags

#: Config fields, which are this command's own flags: a map option of the same name is a config-file setting here.
TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))

def _with_map_flags(cfg: TrainConfig, flags: MapFlags) -> TrainConfig:
    """``cfg`` with the map flags merged into its map options (flags win over the config
    file); flags from the environment count only where the map source takes them."""
    explicit = sorted(set(flags.given) - flags.from_env)
    if not flags.given or not isinstance(cfg.maps, str):
        return cfg
    if cfg.maps not in MAP_SOURCES:
        if explicit:
            raise L2LError(f"--{explicit[0].replace('_', '-')} sets a map-source option, but {cfg.maps} is a cached "
                           "map set, made with its options already; drop it")
        return cfg
    options = generator_options(cfg.maps, flags)
    given = cfg.map_options if isinstance(cfg.map_options, dict) else {}
    merged = {**given, **{k: {**given.get(k, {}), **v} if isinstance(v, dict) else v for k, v in options.items()}}
    return dataclasses.replace(cfg, map_options=merged)


def _check_flags_used(run: Resolved, flags: MapFlags) -> None:
    """Map flags given to a method that reads no maps would be silently dropped: refuse them."""
    explicit = sorted(set(flags.given) - flags.from_env)
    if explicit and not run.method.uses_maps:
        raise L2LError(f"--{explicit[0].replace('_', '-')} sets a map-source option, but method {run.cfg.method} "
                       "uses no maps; drop it")


def _seed_line(r: Record) -> str:
    """One finished run: test accuracy, the selected epoch, where it looks, speed, maps."""
    t = r.test
    thing, shortcut = r.words
    where = f"  CAM on {thing} {t.cam_on_digit:.2f}" if t.cam_on_digit is not None else ""
    where += f"  {shortcut} {t.cam_on_decoy:.2f}" if t.cam_on_decoy is not None else ""
    groups = f"  worst group {t.worst_group_accuracy:.2f}%" if t.worst_group_accuracy is not None else ""
    return (f"seed {r.config.seed}: test acc {t.accuracy:.2f}%{groups}  (epoch {r.selected_epoch}, "
            f"val acc {r.val_acc:.2f}%){where}  {r.seconds_per_epoch:.1f}s/epoch  maps: {r.maps.label}")


@app.command("train")
@with_map_flags(exclude=TRAIN_FIELDS)
@with_launcher
def train(
    dataset: Optional[str] = config_flag("dataset", DATASETS.help() + " | a data set imported with `l2l data import`"),
    method: Optional[str] = config_flag("method", METHODS.help()),
    maps: Optional[str] = config_flag("maps", MAP_SOURCES.help() + " | a cached map set"),
    backbone: Optional[str] = config_flag("backbone", BACKBONES.help()),
    pretrained: Optional[str] = config_flag("pretrained"),
    seeds: Optional[str] = typer.Option(None, help="Seeds, e.g. 0,1,2 or 0-4  [default: the config's seed, 37]."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML/JSON file of settings; flags override it."),
    schedule: Optional[str] = config_flag("schedule"),
    epochs: Optional[int] = config_flag("epochs"), batch_size: Optional[int] = config_flag("batch_size"),
    lr: Optional[float] = config_flag("lr"), momentum: Optional[float] = config_flag("momentum"),
    weight_decay: Optional[float] = config_flag("weight_decay"), step_size: Optional[int] = config_flag("step_size"),
    gamma: Optional[float] = config_flag("gamma"), head_lr: Optional[float] = config_flag("head_lr"),
    freeze_until: Optional[str] = config_flag("freeze_until", " | ".join(FREEZE_STAGES)),
    upweight_by: Optional[str] = config_flag("upweight_by", " | ".join(UPWEIGHT_BY)),
    dro_eta: Optional[float] = config_flag("dro_eta"), jtt_epochs: Optional[int] = config_flag("jtt_epochs"),
    jtt_upweight: Optional[float] = config_flag("jtt_upweight"), afr_gamma: Optional[float] = config_flag("afr_gamma"),
    afr_lambda: Optional[float] = config_flag("afr_lambda"),
    e_att: Optional[int] = config_flag("e_att", flag="--e-att"),
    phase1: Optional[str] = config_flag("phase1", " | ".join(PHASE1_CHOICES)),
    lambda0: Optional[float] = config_flag("lambda0", f"Per-method default: {per_method('default_lambda')}"),
    target: Optional[str] = config_flag("target", TARGETS.help()),
    selection: Optional[str] = config_flag("selection", RULES.help()
                                     + f"; per-method default: {per_method('default_selection')}"),
    input_transform: Optional[str] = config_flag("input_transform", " | ".join(INPUT_TRANSFORMS)),
    network_size: Optional[int] = config_flag("network_size"), augment: Optional[str] = config_flag("augment"),
    log: Optional[str] = config_flag("log"),
    irrelevant: Optional[str] = config_flag("irrelevant", " | ".join(IRRELEVANT_CHOICES)),
    attribution: Optional[str] = config_flag("attribution", " | ".join(ATTRIBUTIONS)
                                             + f"; default: {per_method_option('attribution')}"),
    counterexamples: Optional[int] = config_flag("counterexamples",
                                                 f"Default: {per_method_option('counterexamples')}"),
    ce_fill: Optional[str] = config_flag("ce_fill", " | ".join(CE_FILLS)
                                         + f"; default: {per_method_option('ce_fill')}"),
    train_subset: Optional[int] = config_flag("train_subset"),
    device: Optional[str] = config_flag("device"),
    precision: Optional[str] = config_flag("precision", " | ".join(PRECISIONS)),
    compile: Optional[bool] = config_flag("compile"),
    jobs: Optional[int] = JOBS, runs_dir: Optional[Path] = RUNS_DIR, data_dir: Optional[Path] = DATA_DIR,
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    map_flags: MapFlags = None, launcher: Launcher = None,
) -> None:
    """Train a method on a data set, select on validation, test once.

    Example: l2l train --dataset colormnist --method l2l --maps oracle --seeds 0,1,2

    Map sources take their options as flags (--vlm, --prompt, --negatives, --variant, ...), e.g.
    l2l train --dataset decoymnist --method l2l --maps clip --prompt "handwritten digit"
    """
    base = TrainConfig.from_file(config) if config else TrainConfig()
    flags = {k: v for k, v in locals().items() if k in TRAIN_FIELDS and v is not None}
    cfg = _with_map_flags(dataclasses.replace(base, **flags), map_flags)
    runs = [resolve_run(dataclasses.replace(cfg, seed=s), data_dir)
            for s in (parse_seeds(seeds) if seeds is not None else [cfg.seed])]
    _check_flags_used(runs[0], map_flags)
    tasks = [(run, runs_dir, data_dir, not quiet and launcher.in_process(jobs, len(runs))) for run in runs]
    records = []
    for _, r in launcher.map(run_task, tasks, jobs, runs_dir=runs_dir or default_runs_dir(),
                             unit=None if quiet else "run"):
        typer.echo(_seed_line(r))
        for note in (r.stopped, r.selection.get("note")):
            if note:
                typer.echo(f"seed {r.config.seed}: {note}")
        records.append(r)
    typer.echo(f"runs in {records[0].group}")
    if len(records) > 1:
        typer.echo(_over_seeds(runs[0].cfg, records))


def _over_seeds(cfg: TrainConfig, records: list[Record]) -> str:
    """Test accuracy (and worst-group accuracy, where the data set has groups) as mean +- std over the seeds."""
    m, s = mean_std([r.test.accuracy for r in records])
    lines = [f"{cfg.dataset} {cfg.method}: test accuracy {m:.2f} +- {s:.2f} % over {len(records)} seeds"]
    if all(r.test.worst_group_accuracy is not None for r in records):
        m, s = mean_std([r.test.worst_group_accuracy for r in records])
        lines.append(f"{cfg.dataset} {cfg.method}: worst-group accuracy {m:.2f} +- {s:.2f} %")
    return "\n".join(lines)

