"""`l2l reproduce`: every method on both benchmarks over several seeds, then a report.

A profile is plain data (what to train, on how much, with which seeds); the work
is :func:`reproduce`, which leans on the engine's caching: a finished run is read
back from its ``result.json`` and a killed one resumes from its checkpoint, so a
second call with the same settings trains nothing.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .config import TrainConfig
from .data import dataset_path, load_dataset, train_val
from .errors import L2LError
from .io import atomic_write_json, read_json


@dataclass
class Cell:
    """One row of the results table, trained once per seed. ``role`` says how to read
    it: ``method`` (a compared method), ``upper-bound``, ``control`` (a map source
    expected to fail), ``vlm`` or ``sensitivity``."""

    dataset: str
    method: str
    maps: str = "oracle"
    backbone: str = "lenet-gap"
    role: str = "method"
    map_options: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)

    def config(self, run: dict[str, Any], seed: int) -> TrainConfig:
        return TrainConfig(dataset=self.dataset, method=self.method, maps=self.maps, backbone=self.backbone,
                           map_options=dict(self.map_options), seed=seed, **{**run, **self.overrides})


@dataclass
class Sensitivity:
    """Map-quality sensitivity: l2l trained on degraded oracle maps (``maps/degraded.py``),
    ``grid`` mapping a degradation to its strengths; ``seeds`` None means the profile's."""

    datasets: tuple[str, ...] = ()
    grid: dict[str, list[float]] = field(default_factory=dict)
    seeds: list[int] | None = None
    map_seed: int = 0

    def cells(self) -> list[Cell]:
        return [Cell(ds, "l2l", "degraded-oracle", role="sensitivity",
                     map_options={"degradation": kind, "strength": float(s), "seed": self.map_seed})
                for ds in self.datasets for kind, strengths in self.grid.items() for s in strengths]


@dataclass
class Profile:
    name: str
    description: str
    seeds: list[int]
    #: Settings applied to every run of the profile (on top of the paper's defaults).
    run: dict[str, Any]
    cells: list[Cell]
    sensitivity: Sensitivity = field(default_factory=Sensitivity)


# ---- the profiles: edit here ------------------------------------------------------

BENCHMARKS = ("colormnist", "decoymnist")

#: The compared methods, the two upper bounds and the negative control.
CORE_CELLS = [
    *(Cell(ds, m) for ds in BENCHMARKS for m in ("vanilla", "l2l", "rrr")),
    Cell("mnist", "vanilla", role="upper-bound"),
    Cell("colormnist", "vanilla", role="upper-bound", overrides={"input_transform": "colour-invariant"}),
    Cell("decoymnist", "l2l", "intensity", role="control"),
]

#: Everything, for --full: also Grad-CAM alignment, CDEP's CNN and the control on both sets.
FULL_CELLS = [
    *(Cell(ds, m) for ds in BENCHMARKS for m in ("vanilla", "l2l", "rrr", "gradcam-kl")),
    *(Cell(ds, m, backbone="cdep-cnn") for ds in BENCHMARKS for m in ("vanilla", "rrr", "gradcam-kl")),
    Cell("mnist", "vanilla", role="upper-bound"),
    Cell("colormnist", "vanilla", role="upper-bound", overrides={"input_transform": "colour-invariant"}),
    *(Cell(ds, "l2l", "intensity", role="control") for ds in BENCHMARKS),
]

FULL_GRID = {"blur": [1.0, 2.0, 4.0], "shift": [2.0, 4.0, 8.0], "drop": [0.25, 0.5, 0.75],
             "decoy": [0.25, 0.5, 1.0], "noise": [0.02, 0.05, 0.1]}

PROFILES: dict[str, Profile] = {
    "quick": Profile(
        "quick", "smoke test: 500 training images, 2 epochs, 1 seed; numbers mean nothing",
        seeds=[0], run={"train_subset": 500, "epochs": 2, "e_att": 1}, cells=CORE_CELLS,
        sensitivity=Sensitivity(("decoymnist",), {"drop": [0.5], "shift": [4.0]})),
    "default": Profile(
        "default", "at most 20 minutes on 2 CPU cores: paper hyper-parameters on 8,000 training images, 2 seeds, "
        "a reduced sensitivity grid with 1 seed",
        seeds=[0, 1], run={"train_subset": 8_000}, cells=CORE_CELLS,
        sensitivity=Sensitivity(BENCHMARKS, {"blur": [2.0], "drop": [0.5]}, seeds=[0])),
    "full": Profile(
        "full", "the paper's complete protocol: all 50,400 training images, 30 epochs, 5 seeds per cell, "
        "every method, the full sensitivity grid with 3 seeds",
        seeds=[0, 1, 2, 3, 4], run={}, cells=FULL_CELLS,
        sensitivity=Sensitivity(BENCHMARKS, FULL_GRID, seeds=[0, 1, 2])),
}

VLM_BACKEND = "clip"
VLM_VARIANT = "naclip"
NO_VLM_LINE = ("no VLM weights given (--vlm), so the VLM rows are skipped; guidance uses map sources that need no "
               "weights: oracle (annotation), intensity (image-statistic), degraded-oracle (annotation)")

#: Training images on which map quality (IoU / AUROC to the digit) is measured.
QUALITY_IMAGES = 1000


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise L2LError(f"unknown profile {name!r}; choose one of: {', '.join(PROFILES)}")
    return PROFILES[name]


def vlm_cells(vlm: str) -> list[Cell]:
    return [Cell(ds, "l2l", VLM_BACKEND, role="vlm", map_options={"vlm": str(vlm), "variant": VLM_VARIANT})
            for ds in BENCHMARKS]


def plan(profile: Profile, seeds: list[int] | None = None, vlm: str | None = None) -> list[tuple[Cell, TrainConfig]]:
    """Every (cell, config) to train, seed-major so an early stop still covers every cell."""
    main = profile.cells + (vlm_cells(vlm) if vlm else [])
    sens = profile.sensitivity.cells()
    main_seeds = seeds or profile.seeds
    sens_seeds = seeds or profile.sensitivity.seeds or profile.seeds
    jobs = []
    for seed in sorted(set(main_seeds) | set(sens_seeds)):
        jobs += [(c, c.config(profile.run, seed)) for c in main if seed in main_seeds]
        jobs += [(c, c.config(profile.run, seed)) for c in sens if seed in sens_seeds]
    return jobs


def check_vlm(vlm: str) -> dict[str, Any]:
    """Load the weights once before any training so a missing model fails in seconds."""
    from .maps.weights import load_clip

    weights = load_clip(vlm)
    return {"source": str(vlm), "identity": weights.identity, "real_vlm": weights.is_real,
            "backend": VLM_BACKEND, "variant": VLM_VARIANT}


def map_quality_for(cfg: TrainConfig, runs_dir: Path, data_dir: Path | None) -> dict[str, Any] | None:
    """IoU / AUROC to the clean digit of the maps a run trained on, measured on its
    first training images (never the test split); kept in the runs folder."""
    from .maps import cached_maps, get_map_source, map_quality
    from .methods import get_method, resolve

    cfg = resolve(cfg)
    if not get_method(cfg.method).uses_maps:
        return None
    source = get_map_source(cfg.maps, **cfg.map_options)
    path = Path(runs_dir) / "map-quality" / f"{cfg.dataset}-{source.name}-{source.fingerprint()}-{cfg.train_subset}.json"
    if path.exists():
        return read_json(path)
    dataset = load_dataset(cfg.dataset, data_dir)
    train_split, _ = train_val(dataset)
    n = min(QUALITY_IMAGES, cfg.train_subset or len(train_split), len(train_split))
    images = train_split.subset(np.arange(n))
    maps = (cached_maps(source, cfg.dataset, dataset.train, progress=False)[images.indices] if source.cacheable
            else source.generate(images))
    quality = map_quality(maps, images) | {"split": "train"}
    atomic_write_json(path, quality)
    return quality


def reproduce(profile: Profile, *, seeds: list[int] | None = None, vlm: str | None = None, out: Path | None = None,
              runs_dir: Path | None = None, data_dir: Path | None = None, progress: bool = True,
              echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Build the data, train every planned run (reusing what is on disk), write the report."""
    from . import figures, report
    from .train import default_runs_dir, run, run_dir_for

    t0 = time.perf_counter()
    runs_dir = Path(runs_dir or default_runs_dir())
    out = Path(out or Path("reports") / profile.name)
    jobs = plan(profile, seeds, vlm)
    echo(f"profile {profile.name}: {profile.description}; {len(jobs)} runs -> {out}")
    for name in sorted({cfg.dataset for _, cfg in jobs}):
        existed = dataset_path(name, data_dir).exists()
        load_dataset(name, data_dir)
        echo(f"data {name}: {'found' if existed else 'built'} in {dataset_path(name, data_dir).parent}")
    vlm_info = check_vlm(vlm) if vlm else None
    if vlm_info:
        real = "real pretrained weights" if vlm_info["real_vlm"] else "NOT a real VLM (random-init test weights)"
        echo(f"VLM maps: {VLM_BACKEND}/{VLM_VARIANT} from {vlm_info['identity']} ({real})")
    else:
        echo(NO_VLM_LINE)
    entries, trained = [], 0
    for i, (cell, cfg) in enumerate(jobs, 1):
        cached = (run_dir_for(cfg, runs_dir) / "result.json").exists()
        result = run(cfg, runs_dir=runs_dir, data_dir=data_dir, progress=progress)
        trained += not cached
        entries.append({"cell": dataclasses.asdict(cell), "result": result,
                        "run_dir": str(run_dir_for(cfg, runs_dir)), "cached": cached})
        when = "cached" if cached else f"{result['wall_seconds']:.0f} s"
        extra = "" if cfg.input_transform == "none" else f" {cfg.input_transform}"
        echo(f"[{i}/{len(jobs)}] {cfg.dataset} {cfg.method}{extra} {report.maps_label(result['maps'])} "
             f"{cfg.backbone} seed {cfg.seed}: test acc {result['test']['accuracy']:.2f}%  ({when})")
    quality = {e["run_dir"]: map_quality_for(TrainConfig.from_dict(e["result"]["config"]), runs_dir, data_dir)
               for e in entries}
    settings = {"profile": profile.name, "description": profile.description, "seeds": seeds or profile.seeds,
                "run": profile.run, "sensitivity": dataclasses.asdict(profile.sensitivity),
                "cells": [dataclasses.asdict(c) for c in profile.cells], "vlm": vlm_info,
                "runs_dir": str(runs_dir), "data_dir": str(data_dir or ""), "paper_defaults": TrainConfig().to_dict()}
    summary = report.write_report(out, entries, quality, settings)
    figures.write_figures(out, entries, summary, data_dir=data_dir)
    echo(f"report: {out / 'report.md'} ({trained} runs trained, {len(jobs) - trained} cached, "
         f"{time.perf_counter() - t0:.0f} s)")
    return summary | {"trained": trained, "cached": len(jobs) - trained}
