"""`l2l train`: train one method over one or more seeds and print mean +- std."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer

from ..config import TrainConfig
from ..errors import L2LError
from ..report import maps_label, mean_std
from .app import DATA_DIR, app

RUNS_DIR = typer.Option(None, "--runs-dir", envvar="L2L_RUNS_DIR", help="Folder of run folders [default: ./runs].")


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' or '0-4' -> list of ints."""
    try:
        if "-" in text.strip("-") and "," not in text:
            lo, hi = (int(p) for p in text.split("-"))
            seeds = list(range(lo, hi + 1))
        else:
            seeds = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise L2LError(f"malformed --seeds {text!r}; give distinct non-negative integers like 0,1,2 or 0-4")
    return seeds


@app.command("train")
def train(
    dataset: Optional[str] = typer.Option(None, help="colormnist | decoymnist | mnist  [default: colormnist]"),
    method: Optional[str] = typer.Option(None, help="vanilla | l2l | rrr | gradcam-kl  [default: l2l]"),
    maps: Optional[str] = typer.Option(None, help="Map source: oracle | intensity | not-decoy | a VLM backend  [default: oracle]"),
    backbone: Optional[str] = typer.Option(None, help="lenet-gap | cdep-cnn  [default: lenet-gap]"),
    seeds: str = typer.Option("37", help="Seeds, e.g. 0,1,2 or 0-4."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML/JSON file of settings; flags override it."),
    epochs: Optional[int] = typer.Option(None), batch_size: Optional[int] = typer.Option(None),
    lr: Optional[float] = typer.Option(None), momentum: Optional[float] = typer.Option(None),
    weight_decay: Optional[float] = typer.Option(None), step_size: Optional[int] = typer.Option(None),
    gamma: Optional[float] = typer.Option(None),
    e_att: Optional[int] = typer.Option(None, "--e-att", help="First epoch of phase 2 [default: 11]."),
    phase1: Optional[str] = typer.Option(None, help="attention (paper) | ce (reference's later variant)"),
    lambda0: Optional[float] = typer.Option(None, help="Alignment weight (l2l: 160, ramped; rrr: 100)."),
    target: Optional[str] = typer.Option(None, help="outline (reference) | filled"),
    selection: Optional[str] = typer.Option(None, help="val_acc | acc_x_1mkl | acc_exp_rkl [default: per method]"),
    input_transform: Optional[str] = typer.Option(None, help="none | colour-invariant (ColorMNIST upper bound)"),
    train_subset: Optional[int] = typer.Option(None, help="Use only the first N training images (smoke tests)."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda"),
    runs_dir: Optional[Path] = RUNS_DIR, data_dir: Optional[Path] = DATA_DIR,
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Train a method on a data set, select on validation, test once.

    Example: l2l train --dataset colormnist --method l2l --maps oracle --seeds 0,1,2
    """
    from ..train import run

    base = TrainConfig.from_file(config) if config else TrainConfig()
    flags = {k: v for k, v in locals().items() if k in {f.name for f in dataclasses.fields(TrainConfig)} and v is not None}
    cfg = dataclasses.replace(base, **flags)
    results = []
    for seed in parse_seeds(seeds):
        r = run(dataclasses.replace(cfg, seed=seed), runs_dir=runs_dir, data_dir=data_dir, progress=not quiet)
        t = r["test"]
        extra = f"  decoy {t['cam_on_decoy']:.2f}" if "cam_on_decoy" in t else ""
        typer.echo(f"seed {seed}: test acc {t['accuracy']:.2f}%  (epoch {r['selection']['epoch']}, "
                   f"val acc {r['selection']['val']['val_acc']:.2f}%)  CAM on digit {t['cam_on_digit']:.2f}{extra}  "
                   f"{r['seconds_per_epoch']:.1f}s/epoch  maps: {maps_label(r['maps'])}")
        results.append(r)
    if len(results) > 1:
        m, s = mean_std([r["test"]["accuracy"] for r in results])
        typer.echo(f"{cfg.dataset} {cfg.method}: test accuracy {m:.2f} +- {s:.2f} % over {len(results)} seeds")
