"""`l2l sweep`: a grid of hyper-parameters over seeds, trained as stacks (PROTOCOL 3.7, 3.8).

Each seed's grid points share one stack, its batch stream shuffled by that seed, so
each model is the run ``l2l train`` would give for its config up to float rounding.
Every (grid point, seed) gets an ordinary run record (``learning_to_look.record``)
under the sweep's own folder: ``l2l report`` reads a sweep like any runs
folder, and a sweep's records never stand in for single-engine runs. The choice of
grid point looks at validation scores only.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..config import DEFAULT_MAX_STACK, TrainConfig
from ..data import load_dataset
from ..data.pipeline import to_input
from ..errors import L2LError
from ..io import atomic_write_json, folder_lock, read_json, sha256_text, torch_load
from ..record import Record, has_record, read_record
from .resolve import resolve, resolve_run
from .selection import RULES
from .checkpoints import remove_checkpoints
from .launchers import Launcher, Local
from .parallel import run_tasks, workers
from .stacked import (BYTES_FIXED, BYTES_PER_MODEL, PER_MODEL_FIELDS, NoModel, StackedLeNetGAP, check_stack,
                      fit_stacked)
from .engine import FitResult
from .run import default_runs_dir, prepare, record_run, run_dir_for
from ..device import pick_device

#: Fields a grid may vary: what a model of a stack may set for itself, except the seed
#: (seeds are the sweep's other axis).
GRID_FIELDS = tuple(f for f in PER_MODEL_FIELDS if f != "seed")
#: Where a sweep keeps every epoch's weights, apart from its records (PROTOCOL 3.8).
WEIGHTS_DIR = "epoch_weights"
#: The optimistic bound's file, apart from ``selection.json`` and the records.
BOUND_FILE = "optimistic_bound.json"
#: The sweep's validation choice (PROTOCOL 3.8).
SELECTION_FILE = "selection.json"
#: What a (grid point, seed) writes instead of ``result.json`` when its loss diverged before any selectable epoch.
FAILED_FILE = "failed.json"
#: The role of a sweep's records: grid points, never compared methods or the paper's row.
SWEEP_ROLE = "sweep"
BOUND_LABEL = ("OPTIMISTIC BOUND, NOT A RESULT: each model's epoch and the grid point chosen by test accuracy, "
               "which no honest selection can do (PROTOCOL 3.8)")
#: The most grid points one sweep may ask for (a typo should not plan a million models).
MAX_POINTS = 10_000
GRID_HELP = "give FIELD=START:STOP:STEP (STOP included) or FIELD=V1,V2,... with FIELD one of " + ", ".join(GRID_FIELDS)


def parse_grid(text: str) -> tuple[str, list[Any]]:
    """'lambda0=100:300:20' or 'phase1=attention,ce' -> (field, values); a bad one is a one-line error."""
    name, sep, spec = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or name not in GRID_FIELDS:
        raise L2LError(f"malformed --grid {text!r}; {GRID_HELP}")
    kind = {f.name: f.type for f in dataclasses.fields(TrainConfig)}[name]
    cast = int if "int" in str(kind) else float if "float" in str(kind) else str
    span = re.fullmatch(r"\s*([-+.\deE]+)\s*:\s*([-+.\deE]+)\s*:\s*([-+.\deE]+)\s*", spec)
    if span and cast is str:
        raise L2LError(f"malformed --grid {text!r}: {name} takes values, not a range; give them as "
                       f"{name}=V1,V2 (e.g. phase1=attention,ce)")
    try:
        if span:
            start, stop, step = (cast(v) for v in span.groups())
            if step <= 0 or stop < start:
                raise ValueError("empty range or step not above 0")
            count = int(np.floor((stop - start) / step + 1e-9)) + 1
            if count > MAX_POINTS:  # named at its true size, before a value is made
                raise L2LError(f"--grid {text!r} has {count:,} values, more than {MAX_POINTS:,} points; "
                               "use a larger step or a shorter range")
            values = [cast(round(start + i * step, 12)) for i in range(count)]
        else:
            values = [cast(v.strip()) for v in spec.split(",") if v.strip()]
    except ValueError as e:
        raise L2LError(f"malformed --grid {text!r} ({e}); {GRID_HELP}") from None
    if not values or len(set(values)) != len(values):
        raise L2LError(f"malformed --grid {text!r}: no values or repeated values; {GRID_HELP}")
    return name, values


def grid_points(axes: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The cartesian product of the axes, in order, one dict per point; its size is checked
    before a single point is built."""
    size = math.prod(len(v) for v in axes.values())
    if size > MAX_POINTS:
        raise L2LError(f"the grid has {size:,} points, more than {MAX_POINTS:,}; use fewer values")
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


@dataclass
class Sweep:
    """A planned sweep: the base config, the grid, the seeds and where its records go."""

    base: TrainConfig
    axes: dict[str, list[Any]]
    seeds: list[int]
    folder: Path
    data_dir: Path | None = None  # where an imported data set's file (and so its identity) lies

    @property
    def points(self) -> list[dict[str, Any]]:
        return grid_points(self.axes)

    def configs(self, seed: int) -> list[TrainConfig]:
        """Each grid point's resolved config for ``seed`` (a value the config rejects is an error here)."""
        return [resolve(dataclasses.replace(self.base, seed=seed, **point), self.data_dir) for point in self.points]


def plan_sweep(base: TrainConfig, axes: dict[str, list[Any]], seeds: Sequence[int],
               runs_dir: Path | None = None, data_dir: Path | None = None) -> Sweep:
    """Validate everything (every point resolves, the stack is buildable) before any training."""
    if not axes:
        raise L2LError(f"a sweep needs at least one --grid; {GRID_HELP}")
    key = json.dumps({"base": base.to_dict() | {"seed": None}, "axes": axes}, sort_keys=True, default=str)
    folder = Path(runs_dir or default_runs_dir()) / "sweeps" / f"{base.dataset}-{base.method}-{sha256_text(key)[:10]}"
    sweep = Sweep(base, dict(axes), list(seeds), folder, data_dir)
    cfgs = sweep.configs(sweep.seeds[0])
    check_stack(cfgs)
    if len({c.fingerprint() for c in cfgs}) < len(cfgs):  # e.g. a lambda0 grid for a method without a lambda
        idle = [k for k in axes if len({getattr(c, k) for c in cfgs}) < len(axes[k])]
        raise L2LError(f"grid points of {', '.join(idle) or 'this grid'} resolve to the same run for method "
                       f"{base.method} (it takes no such setting); drop that --grid")
    return sweep


def run_sweep(sweep: Sweep, *, max_stack: int = DEFAULT_MAX_STACK, data_dir: Path | None = None,
              progress: bool = True, jobs: int | None = None, echo: Callable[[str], None] = print,
              launcher: Launcher | None = None) -> dict[str, Any]:
    """Train every unfinished stack of at most ``max_stack`` models (``jobs`` stacks at a
    time, each in its own process, or one job each through ``launcher``), write their
    records, then choose the grid point on validation alone (:func:`choose`) and, after
    that, the optimistic bound."""
    if max_stack < 1:
        raise L2LError(f"--max-stack must be at least 1, got {max_stack}")
    launcher = launcher or Local()
    m = min(max_stack, len(sweep.points))
    at_once = workers(jobs, len(sweep.seeds) * -(-len(sweep.points) // m))  # a bad --jobs fails here
    if not launcher.remote:  # a job's node has its own memory, unknown here
        check_memory(m, at_once, pick_device(sweep.base.device))
    n = len(sweep.points) * len(sweep.seeds)  # said only once the sweep is known to be able to run
    echo(f"sweep {sweep.folder}: {len(sweep.points)} grid points x {len(sweep.seeds)} seeds = {n} models")
    with folder_lock(sweep.folder, "this sweep"):
        atomic_write_json(sweep.folder / "sweep.json", {"base": sweep.base.to_dict(), "axes": sweep.axes,
                                                        "seeds": sweep.seeds})
        chunks = [(part, seed) for seed in sweep.seeds for part in stacks_of(sweep.configs(seed), max_stack)
                  if not all(finished(c, sweep.folder) for c in part)]
        if chunks:  # an answer from fewer runs must not stand beside the new ones if this call is killed
            for name in (SELECTION_FILE, BOUND_FILE):
                (sweep.folder / name).unlink(missing_ok=True)
        bars = progress and launcher.in_process(jobs, len(chunks))  # bars only where stacks run here, one by one
        stacks = [(cfgs, sweep.folder, seed, data_dir, bars) for cfgs, seed in chunks]
        sizes = [len(cfgs) * cfgs[0].epochs for cfgs, _ in chunks]  # model-epochs per stack
        for _, line in launcher.map(_train_stack, stacks, jobs, runs_dir=sweep.folder,
                                    unit="model-epoch" if progress else None, sizes=sizes):
            echo(line)
        summary = choose(sweep)
        atomic_write_json(sweep.folder / SELECTION_FILE, summary)
        bound = optimistic_bound(sweep, data_dir, jobs)  # only now: every choice above is final
        if bound:
            atomic_write_json(sweep.folder / BOUND_FILE, bound)
    return summary


def stacks_of(cfgs: list[TrainConfig], max_stack: int) -> list[list[TrainConfig]]:
    """A seed's grid points cut into stacks at fixed places (every ``max_stack`` points of
    the whole grid), so a rerun after a kill forms the same stacks and finds their
    checkpoints, whichever records were written before the kill."""
    return [cfgs[k:k + max_stack] for k in range(0, len(cfgs), max_stack)]


def finished(cfg: TrainConfig, folder: Path) -> bool:
    """Whether a (grid point, seed) has its record, or its note that it ended with no model."""
    out = run_dir_for(cfg, folder)
    return has_record(out) or (out / FAILED_FILE).exists()


def free_bytes(device: torch.device) -> int:
    """Memory free for one stack on ``device`` (the GPU's free memory, or the machine's available RAM)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(m: int, at_once: int, device: torch.device) -> None:
    """``at_once`` stacks of ``m`` models that would not fit are a one-line error before any training."""
    need, free = at_once * (BYTES_FIXED + m * BYTES_PER_MODEL), free_bytes(device)
    if need > free:
        fits = max(1, (free // at_once - BYTES_FIXED) // BYTES_PER_MODEL)
        raise L2LError(f"{at_once} stack(s) of {m} models need about {need / 2**30:.1f} GiB, but only "
                       f"{free / 2**30:.1f} GiB is free on {device}; pass --max-stack {fits} or fewer --jobs")


def _train_stack(cfgs: list[TrainConfig], folder: Path, seed: int, data_dir: Path | None, progress: bool) -> str:
    t0 = time.perf_counter()
    prep = prepare(resolve_run(cfgs[0], data_dir), data_dir, progress)
    name = f"seed{seed}-{sha256_text(json.dumps([c.to_dict() for c in cfgs], sort_keys=True, default=str))[:10]}"
    checkpoint = folder / "stacks" / f"{name}.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS_DIR / name
    atomic_write_json(weights / "runs.json", [str(run_dir_for(c, folder).relative_to(folder)) for c in cfgs])
    fitted = fit_stacked(cfgs, prep.train, prep.val, checkpoint=checkpoint, epoch_weights=weights, progress=progress)
    wall = (next((f.prior_seconds for f in fitted if isinstance(f, FitResult)), 0.0)
            + time.perf_counter() - t0) / len(cfgs)
    engine = {"engine": {"name": "stacked", "stack_size": len(cfgs), "data_seed": seed, "stack": name}}
    for cfg, fit in zip(cfgs, fitted):
        out = run_dir_for(cfg, folder)
        if finished(cfg, folder):  # written before a kill: the same model, from the same checkpoint
            continue
        out.mkdir(parents=True, exist_ok=True)
        if isinstance(fit, NoModel):
            atomic_write_json(out / FAILED_FILE, {"config": cfg.to_dict(), "failed": fit.reason,
                                                  "history": fit.history} | engine)
        else:
            record_run(cfg, out, prep, fit, SWEEP_ROLE, wall, engine)
    remove_checkpoints(checkpoint)
    lost = sum(isinstance(f, NoModel) for f in fitted)
    return (f"seed {seed}: {len(cfgs)} models trained as one stack in {time.perf_counter() - t0:.0f} s"
            + (f"; {lost} diverged before an epoch they could select" if lost else ""))


def common_rule(records: list[Record]) -> str | None:
    """The rule the grid points are compared by: the one that selected every run's epoch,
    or, where some runs fell back (their rule broke down), the fallback for all of them,
    so that no two scores of different rules are compared."""
    used = {r.selection.get("rule_used", r.config.selection) for r in records}
    return used.pop() if len(used) == 1 else RULES.get(records[0].config.selection).fallback


def _score(record: Record, rule: str | None) -> float:
    """A run's validation score of its selected epoch under ``rule``."""
    row = next(h for h in record.history if h["epoch"] == record.selected_epoch)
    return row["score"] if rule == record.config.selection else row[f"score_{rule}"]


def choose(sweep: Sweep) -> dict[str, Any]:
    """PROTOCOL 3.8: the grid point with the best mean validation selection score over the
    seeds; its test accuracy over those seeds is the sweep's result. A point with a seed
    that ended with no model is left out, and said so. The test numbers of the other
    points are read only to report them beside the choice, after it is made."""
    per_seed = [sweep.configs(s) for s in sweep.seeds]  # [seed][point]
    found, left_out = [], []
    for i, point in enumerate(sweep.points):
        outs = [run_dir_for(cfgs[i], sweep.folder) for cfgs in per_seed]
        failed = [read_json(o / FAILED_FILE)["failed"] for o in outs if (o / FAILED_FILE).exists()]
        if failed:
            left_out.append({"point": point, "why": failed})
            continue
        found.append((point, [read_record(o, "delete the sweep folder and rerun the sweep") for o in outs]))
    rule = common_rule([r for _, records in found for r in records])
    points = [{"point": point, "val_score_mean": float(np.mean([_score(r, rule) for r in records])),
               "test_acc": [r.test.accuracy for r in records]} for point, records in found]
    if not points:
        raise L2LError(f"every grid point of {sweep.folder} has a seed whose loss diverged before it had a model "
                       f"(first: {left_out[0]['why'][0]}); lower --lr or the lambda0 values")
    best = max(points, key=lambda p: p["val_score_mean"])  # validation only
    acc = np.asarray(best["test_acc"])
    return {"dataset": sweep.base.dataset, "method": sweep.base.method, "axes": sweep.axes, "rule": rule,
            "chosen": best["point"], "val_score_mean": best["val_score_mean"], "seeds": sweep.seeds,
            "test_acc_mean": float(acc.mean()), "test_acc_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
            "points": points, "left_out": left_out}


def optimistic_bound(sweep: Sweep, data_dir: Path | None = None, jobs: int | None = None) -> dict[str, Any] | None:
    """PROTOCOL 3.8's test-peeking bound, from the epoch weights the stacks saved: each
    model's best test accuracy over its eligible epochs, then the grid point whose mean
    over seeds is best. Call it only after ``selection.json`` is written; None when no
    stack saved weights (a sweep from before they were kept). Each stack's share is
    computed in a worker (``jobs``) and kept beside its weights, so a rerun reads it."""
    folders = sorted(p.parent for p in (sweep.folder / WEIGHTS_DIR).glob("*/runs.json"))
    if not folders:
        return None
    tasks = [(f, sweep.base.dataset, sweep.base.input_transform, sweep.base.device, data_dir) for f in folders]
    per_stack = {folders[i].name: best for i, best in run_tasks(_stack_bound, tasks, jobs)}
    points = []
    for point, cfgs in zip(sweep.points, zip(*(sweep.configs(s) for s in sweep.seeds))):
        found = [b for b in (_run_bound(run_dir_for(c, sweep.folder), sweep.folder, per_stack) for c in cfgs) if b]
        points.append({"point": point, "best_test_acc": [b["acc"] for b in found],
                       "epochs": [b["epoch"] for b in found],
                       "mean": float(np.mean([b["acc"] for b in found])) if found else None})
    top = max((p for p in points if p["mean"] is not None), key=lambda p: p["mean"])
    return {"label": BOUND_LABEL, "bound_test_acc_mean": top["mean"], "bound_point": top["point"],
            "runs_with_saved_weights": sum(len(p["best_test_acc"]) for p in points), "points": points}


def _run_bound(out: Path, folder: Path, per_stack: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """A run's best eligible epoch on test, from the stack that made its record (a stack
    cut differently before a rerun left weights of an earlier training too)."""
    if not has_record(out):
        return None  # no model (its loss diverged): nothing to bound
    run, stack = str(out.relative_to(folder)), read_record(out).raw.get("engine", {}).get("stack")
    found = [per_stack[stack].get(run)] if stack in per_stack else [b.get(run) for b in per_stack.values()]
    return max((b for b in found if b), key=lambda b: b["acc"], default=None)


def _stack_bound(weights: Path, dataset: str, input_transform: str, device: str,
                 data_dir: Path | None) -> dict[str, dict[str, Any]]:
    """One stack's models' best test accuracy over their eligible epochs, {run: {acc, epoch}};
    cached in ``bound.json`` beside the weights, valid while the epoch files are the same."""
    epochs = sorted(p.name for p in weights.glob("epoch*.pt"))
    cache = weights / "bound.json"
    if cache.exists() and (saved := read_json(cache)).get("epochs") == epochs:
        return saved["best"]
    test = load_dataset(dataset, data_dir).test
    x = to_input(test.images, StackedLeNetGAP.backbone.input_size, input_transform)  # (N,C,H,W)
    y = torch.as_tensor(test.labels)  # (N,)
    runs, best = read_json(weights / "runs.json"), {}
    for name in epochs:
        saved = torch_load(weights / name, "rerun the sweep to write it again", weights_only=False)
        keep = [i for i, ok in enumerate(saved["eligible"]) if ok]
        if not keep:
            continue  # no model could be selected at this epoch: nothing to bound
        # Only the models selectable at this epoch run: the test pass costs more than a training epoch.
        state = {k: v[keep] for k, v in saved["stack"].items()}  # every tensor leads with the model axis
        acc = StackedLeNetGAP.from_state(state).to(pick_device(device)).accuracy(x, y)  # (len(keep),)
        for i, a in zip(keep, acc.tolist()):
            if a > best.get(runs[i], {"acc": -1.0})["acc"]:
                best[runs[i]] = {"acc": a, "epoch": int(name[5:-3])}
    atomic_write_json(cache, {"epochs": epochs, "best": best})
    return best
