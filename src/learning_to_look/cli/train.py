"""`l2l train`: train one method over one or more seeds and print mean +- std."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Optional

import typer

from ..config import PHASE1_CHOICES, SEED_MAX, SELECTION_RULES, TrainConfig
from ..data import DATASETS
from ..data.pipeline import INPUT_TRANSFORMS
from ..errors import L2LError
from ..losses import TARGETS
from ..maps import MAP_SOURCES, PromptSpec
from ..methods import METHODS
from ..models import BACKBONES
from ..records import MapsInfo, mean_std
from .app import DATA_DIR, JOBS, app
from .maps import MapFlags, generator_options, with_map_flags

RUNS_DIR = typer.Option(None, "--runs-dir", envvar="L2L_RUNS_DIR", help="Folder of run folders [default: ./runs].")


#: The most seeds one command may ask for (a typo like 0-99999999 should not plan 10^8 runs).
MAX_SEEDS = 10_000
SEEDS_HELP = "give distinct integers in 0..4294967295 like 0,1,2 or 0-4"


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' or '0-4' -> list of ints; anything else is a one-line error."""
    span = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", text)
    parts = [p.strip() for p in text.split(",")]
    if span:
        lo, hi = int(span[1]), int(span[2])
        seeds = list(range(lo, hi + 1)) if lo <= hi and hi - lo < MAX_SEEDS else []
    elif all(p.isdigit() for p in parts):
        seeds = [int(p) for p in parts]
    else:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds) or len(seeds) > MAX_SEEDS or max(seeds) > SEED_MAX:
        raise L2LError(f"malformed --seeds {text!r}; {SEEDS_HELP}")
    return seeds


def _flag(name: str, choices: str | None = None, flag: str | None = None) -> Any:
    """An option for config field ``name``: help and default from the field, choices from a registry."""
    text = TrainConfig.help(name)
    return typer.Option(None, *([flag] if flag else []), help=f"{choices}. {text}" if choices else text)


def _per_method(attr: str) -> str:
    """The methods' own defaults of ``attr``, e.g. 'l2l 160, rrr 100'."""
    return ", ".join(f"{name} {getattr(cls, attr):g}" if isinstance(getattr(cls, attr), float)
                     else f"{name} {getattr(cls, attr)}" for name, cls in METHODS.items())


def _with_map_flags(cfg: TrainConfig, flags: MapFlags) -> TrainConfig:
    """``cfg`` with the map flags merged into its map options (flags win over the config
    file); flags from the environment count only where the map source takes them."""
    from ..methods import METHODS as methods

    if not flags.given:
        return cfg
    cfg = dataclasses.replace(cfg).validate()  # a malformed config file is named before it is merged into
    explicit = sorted(set(flags.given) - flags.from_env)
    uses_maps = methods.get(cfg.method)(cfg).uses_maps
    if not uses_maps or cfg.maps not in MAP_SOURCES:
        if explicit:
            what = f"method {cfg.method} uses no maps" if not uses_maps \
                else f"{cfg.maps} is a cached map set, made with its options already"
            raise L2LError(f"--{explicit[0].replace('_', '-')} sets a map-source option, but {what}; drop it")
        return cfg
    options = generator_options(cfg.maps, flags)
    if isinstance(options.get("prompts"), PromptSpec):
        options["prompts"] = dataclasses.asdict(options["prompts"])
    return dataclasses.replace(cfg, map_options={**cfg.map_options, **options})


def _seed_line(r: dict) -> str:
    """One finished run (its result.json): test accuracy, the selected epoch, where it looks, speed, maps."""
    t = r["test"]
    where = f"  CAM on digit {t['cam_on_digit']:.2f}" if "cam_on_digit" in t else ""
    where += f"  decoy {t['cam_on_decoy']:.2f}" if "cam_on_decoy" in t else ""
    groups = f"  worst group {t['worst_group_accuracy']:.2f}%" if "worst_group_accuracy" in t else ""
    return (f"seed {r['config']['seed']}: test acc {t['accuracy']:.2f}%{groups}  (epoch {r['selection']['epoch']}, "
            f"val acc {r['selection']['val']['val_acc']:.2f}%){where}  {r['seconds_per_epoch']:.1f}s/epoch  "
            f"maps: {MapsInfo.from_result(r['maps']).label}")


@app.command("train")
@with_map_flags
def train(
    dataset: Optional[str] = _flag("dataset", DATASETS.help() + " | a data set imported with `l2l data import`"),
    method: Optional[str] = _flag("method", METHODS.help()),
    maps: Optional[str] = _flag("maps", MAP_SOURCES.help() + " | a cached map set"),
    backbone: Optional[str] = _flag("backbone", BACKBONES.help()),
    pretrained: Optional[str] = _flag("pretrained"),
    seeds: Optional[str] = typer.Option(None, help="Seeds, e.g. 0,1,2 or 0-4  [default: the config's seed, 37]."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML/JSON file of settings; flags override it."),
    schedule: Optional[str] = _flag("schedule"),
    epochs: Optional[int] = _flag("epochs"), batch_size: Optional[int] = _flag("batch_size"),
    lr: Optional[float] = _flag("lr"), momentum: Optional[float] = _flag("momentum"),
    weight_decay: Optional[float] = _flag("weight_decay"), step_size: Optional[int] = _flag("step_size"),
    gamma: Optional[float] = _flag("gamma"),
    e_att: Optional[int] = _flag("e_att", flag="--e-att"),
    phase1: Optional[str] = _flag("phase1", " | ".join(PHASE1_CHOICES)),
    lambda0: Optional[float] = _flag("lambda0", f"Per-method default: {_per_method('default_lambda')}"),
    target: Optional[str] = _flag("target", TARGETS.help()),
    selection: Optional[str] = _flag("selection", " | ".join(SELECTION_RULES)
                                     + f"; per-method default: {_per_method('default_selection')}"),
    input_transform: Optional[str] = _flag("input_transform", " | ".join(INPUT_TRANSFORMS)),
    train_subset: Optional[int] = _flag("train_subset"),
    device: Optional[str] = _flag("device"),
    jobs: Optional[int] = JOBS, runs_dir: Optional[Path] = RUNS_DIR, data_dir: Optional[Path] = DATA_DIR,
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    map_flags: MapFlags = None,
) -> None:
    """Train a method on a data set, select on validation, test once.

    Example: l2l train --dataset colormnist --method l2l --maps oracle --seeds 0,1,2

    Map sources take their options as flags (--vlm, --prompt, --negatives, --variant, ...), e.g.
    l2l train --dataset decoymnist --method l2l --maps clip --prompt "a handwritten digit"
    """
    from ..data.imported import dataset_spec
    from ..methods import resolve
    from ..parallel import run_tasks, workers
    from ..train import run_task

    base = TrainConfig.from_file(config) if config else TrainConfig()
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    flags = {k: v for k, v in locals().items() if k in fields and v is not None}
    cfg = _with_map_flags(dataclasses.replace(base, **flags), map_flags)
    cfgs = [dataclasses.replace(cfg, seed=s) for s in (parse_seeds(seeds) if seeds is not None else [cfg.seed])]
    if isinstance(cfg.dataset, str):
        dataset_spec(cfg.dataset, data_dir)  # an imported data set is known from its file
    tasks = [(resolve(c), runs_dir, data_dir, not quiet and workers(jobs, len(cfgs)) == 1) for c in cfgs]
    results = []
    for _, r in run_tasks(run_task, tasks, jobs, unit=None if quiet else "run"):
        typer.echo(_seed_line(r))
        if r.get("stopped"):
            typer.echo(f"seed {r['config']['seed']}: {r['stopped']}")
        results.append(r)
    if len(results) > 1:
        typer.echo(_over_seeds(cfg, results))


def _over_seeds(cfg: TrainConfig, results: list[dict]) -> str:
    """Test accuracy (and worst-group accuracy, where the data set has groups) as mean +- std over the seeds."""
    m, s = mean_std([r["test"]["accuracy"] for r in results])
    lines = [f"{cfg.dataset} {cfg.method}: test accuracy {m:.2f} +- {s:.2f} % over {len(results)} seeds"]
    if all("worst_group_accuracy" in r["test"] for r in results):
        m, s = mean_std([r["test"]["worst_group_accuracy"] for r in results])
        lines.append(f"{cfg.dataset} {cfg.method}: worst-group accuracy {m:.2f} +- {s:.2f} %")
    return "\n".join(lines)

