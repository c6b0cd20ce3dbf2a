"""The training engine: one run = one config and one seed, resumable and deterministic.

Data flow: the data set's train split is cut into train/validation (PROTOCOL 2.4),
the map source gives a map per training image, the maps become attention
targets, the method's loss is optimised, a model is selected on validation data
only, and then, and only then, the test split is evaluated once.
"""

from __future__ import annotations

import os
from importlib import metadata
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__
from .config import SCHEDULES, SUBSET_VAL_DIVISOR, TrainConfig
from .data import DATASETS, Dataset, Split, load_dataset, to_input
from .data.splits import train_val_split_indices
from .data.pipeline import batch_indices, eval_batch_size, preconverts
from .evaluate import evaluate_split, examples, group_accuracy
from .errors import L2LError, corrupt_file
from .io import (atomic_save_npz, atomic_torch_save, atomic_write_json, clean_stale_tmp, folder_lock, read_json,
                 torch_load)
from .maps import MAP_SOURCES, cache_meta, get_map_source, map_quality, resolve_maps, validate_maps
from .methods import METHODS, Batch, Method, resolve
from .models import BACKBONES, Backbone, build_backbone

RUNS_DIR_ENV = "L2L_RUNS_DIR"
#: Training images on which the quality of a run's maps (IoU / AUROC to the digit) is measured.
QUALITY_IMAGES = 1000
#: Role of a run when nobody says otherwise (reproduce's profiles name theirs).
DEFAULT_ROLE = "method"


def default_runs_dir() -> Path:
    return Path(os.environ.get(RUNS_DIR_ENV) or "runs")


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise L2LError(f"device {name} requested but CUDA is not available; pass --device cpu")
    return torch.device(name)


def set_determinism(seed: int) -> None:
    """Same seed, same machine, same thread count -> the same numbers to the last digit."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def make_batch(split: Split, maps: np.ndarray | None, cfg: TrainConfig, method: Method) -> Batch:
    """A whole split ready for the network, with the per-image tensors ``method`` asks for."""
    backbone = BACKBONES.get(cfg.backbone)
    y = torch.as_tensor(split.labels, dtype=torch.long)  # (N,)
    aux = {} if maps is None else method.aux(torch.as_tensor(maps), backbone)
    groups = None if split.groups is None else torch.as_tensor(split.groups)  # (N,)
    if preconverts(len(split), split.images.shape[1], backbone.input_size):
        x = to_input(split.images, backbone.input_size, cfg.input_transform)  # (N,C,S,S)
        return Batch(x, y, aux, groups)
    return Batch(torch.as_tensor(split.images), y, aux, groups, backbone.input_size, cfg.input_transform)


def training_maps(cfg: TrainConfig, dataset_name: str, split: Split, progress: bool = True) -> tuple[np.ndarray, dict]:
    """Maps for every image of ``split`` from the configured source (a backend, or a
    cached map set by name or fingerprint), validated, with the source's description."""
    maps, info = resolve_maps(cfg.maps, dataset_name, split, progress=progress, **cfg.map_options)
    return validate_maps(maps, len(split), split.images.shape[-2:], info["name"]), info


def _validate(model: Backbone, method: Method, val: Batch, device: torch.device) -> dict[str, float]:
    """Validation metrics used for selection: accuracy and the method's own per-image
    metrics (e.g. the attention's KL to its target), nan-averaged."""
    model.eval()
    correct, per_image = [], {}
    for idx in batch_indices(len(val), eval_batch_size(model.input_size), shuffle=False):
        b = val.take(idx, device)
        logits, metrics = method.validate(model, b)
        correct.append(logits.argmax(1) == b.y)  # (B,)
        for k, v in metrics.items():
            per_image.setdefault(k, []).append(v)
    right = torch.cat(correct)  # (N,)
    groups = {} if val.groups is None else group_accuracy(right, val.groups.to(right.device))
    return ({"val_acc": 100.0 * float(right.float().mean())}
            | {f"val_{k}": v for k, v in groups.items() if k != "group_accuracy"}
            | {f"val_{k}": float(torch.nanmean(torch.cat(v))) for k, v in per_image.items()})


def selection_score(rule: str, metrics: dict[str, float], beta: float) -> float:
    acc = metrics["val_acc"] / 100.0
    if rule == "val_acc":
        return acc
    if rule == "val_worst_group":
        if "val_worst_group_accuracy" not in metrics:
            raise L2LError("selection rule val_worst_group needs group labels in the validation split and this data "
                           "set has none; use --selection val_acc")
        return metrics["val_worst_group_accuracy"] / 100.0
    if "val_kl" not in metrics:
        raise L2LError(f"selection rule {rule} needs attention maps; use --selection val_acc for this method")
    if rule == "acc_x_1mkl":
        return acc * (1.0 - metrics["val_kl"])
    return acc * float(np.exp(-beta * metrics["val_rkl"]))


class Diverged(L2LError):
    """The training loss became NaN or infinite: the run cannot go on from here."""


def stopped_note(why: str, epoch: int) -> str:
    """What a run's record says when its loss diverged in ``epoch``: why, and which epochs it chose from."""
    return f"{why}: stopped there, the epoch is selected from epochs 0-{epoch - 1}"


def scored(cfg: TrainConfig, row: dict[str, Any], eligible: bool) -> dict[str, Any]:
    """``row`` with whether its epoch may be selected and, if so, its validation score."""
    return row | {"eligible": eligible,
                  "score": selection_score(cfg.selection, row, cfg.selection_beta) if eligible else None}


def unselected() -> dict[str, Any]:
    """The selection before any epoch: no weights kept yet."""
    return {"epoch": -1, "score": -float("inf"), "state": None}


def keep_if_best(best: dict[str, Any], row: dict[str, Any], state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The selection after ``row``'s epoch: a copy of its weights ``state`` when the epoch is
    eligible and scores higher on validation than every one before, else ``best`` unchanged."""
    if not row["eligible"] or not row["score"] > best["score"]:
        return best
    return {"epoch": row["epoch"], "score": row["score"], "state": {k: v.detach().clone() for k, v in state.items()}}


def no_selection(cfg: TrainConfig, history: list[dict[str, Any]]) -> str:
    """Why no epoch could be selected: none was eligible, or every eligible score was NaN."""
    if any(r["eligible"] for r in history):
        return (f"selection rule {cfg.selection} scored every eligible epoch NaN (its validation metrics are "
                "undefined for these targets); use --selection val_acc")
    return "no epoch was eligible for selection; make --epochs larger than --e-att"


def _optimizer(model: Backbone, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The schedule's optimiser and learning-rate scheduler, fresh (momentum buffers empty)."""
    if SCHEDULES.get(cfg.schedule).optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return opt, torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)


@dataclass
class FitResult:
    model: Backbone
    history: list[dict[str, Any]]
    selected_epoch: int
    selected_score: float
    prior_seconds: float = 0.0  # wall seconds spent by earlier processes of a resumed run
    #: Why training ended before its last epoch (the loss diverged), None when it ran them all.
    stopped: str | None = None


def _train_epoch(model: Backbone, method: Method, train: Batch, opt: torch.optim.Optimizer,
                 shuffle: torch.Generator, epoch: int, batch_size: int, device: torch.device,
                 progress: bool) -> dict[str, float]:
    """One pass over ``train``; returns the epoch's mean loss terms and accuracy."""
    model.train()
    sums: dict[str, float] = {}
    seen = 0
    batches = tqdm(batch_indices(len(train), batch_size, shuffle), total=-(-len(train) // batch_size),
                   desc=f"epoch {epoch}", disable=not progress, leave=False, dynamic_ncols=True, mininterval=0.5)
    for step, idx in enumerate(batches):
        loss, stats = method.loss(model, train.take(idx, device), epoch)
        if not torch.isfinite(loss):
            raise Diverged(f"loss became {loss.item()} at epoch {epoch}; lower --lr or --lambda0")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n = len(idx)
        seen += n
        sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) * n
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + (float(v) if k == "correct" else float(v) * n)
        if step % 50 == 0:
            batches.set_postfix(loss=f"{sums['loss'] / seen:.3f}", acc=f"{100 * sums['correct'] / seen:.1f}")
    return {"train_acc": 100.0 * sums.pop("correct") / seen} | {f"train_{k}": v / seen for k, v in sums.items()}


def _resume(checkpoint: Path, cfg: TrainConfig, model: Backbone, device: torch.device,
            shuffle: torch.Generator) -> tuple[Any, Any, list[dict[str, Any]], dict[str, Any], int, float]:
    """The state saved after the last finished epoch, loaded into ``model`` and ``shuffle``:
    (optimizer, scheduler, history, best, next epoch, wall seconds spent so far)."""
    fix = f"delete {checkpoint} to restart this run from its first epoch"
    state = torch_load(checkpoint, fix, map_location=device, weights_only=False)
    if not isinstance(state, dict) or not {"config", "model", "optimizer", "scheduler", "shuffle"} <= set(state):
        raise corrupt_file(checkpoint, "not a training checkpoint", fix)
    if not isinstance(state["config"], dict) or not cfg.matches(state["config"]):
        raise L2LError(f"checkpoint {checkpoint} belongs to another config; delete it or use another --runs-dir")
    model.load_state_dict(state["model"])
    opt, sched = _optimizer(model, cfg)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    # Random-number states are CPU byte tensors whatever the device; map_location moved them.
    shuffle.set_state(state["shuffle"].cpu())
    if "rng" in state:  # the global streams that methods draw from (eg's references, cdep's pixels)
        torch.set_rng_state(state["rng"].cpu())
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
    return opt, sched, state["history"], state["best"], state["epoch"] + 1, state.get("wall_seconds", 0.0)


def _save(checkpoint: Path, cfg: TrainConfig, epoch: int, model: Backbone, opt: Any, sched: Any,
          shuffle: torch.Generator, history: list[dict[str, Any]], best: dict[str, Any], wall_seconds: float) -> None:
    """Everything :func:`_resume` needs to go on after ``epoch`` as if never stopped, written atomically."""
    atomic_torch_save(checkpoint, {"config": cfg.to_dict(), "epoch": epoch, "model": model.state_dict(),
                                   "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                   "shuffle": shuffle.get_state(), "rng": torch.get_rng_state(),
                                   "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                                   "history": history, "best": best, "wall_seconds": wall_seconds})


def _model(cfg: TrainConfig, device: torch.device) -> Backbone:
    """The backbone of ``cfg``, seeded, with its pretrained weights if any, on ``device``."""
    set_determinism(cfg.seed)
    model = build_backbone(cfg.backbone, DATASETS.get(cfg.dataset).num_classes)
    if cfg.pretrained:
        from .pretrained import load_pretrained

        load_pretrained(model, cfg.pretrained)
    return model.to(device)


def fit(cfg: TrainConfig, train: Batch, val: Batch, *, checkpoint: Path | None = None, progress: bool = True,
        on_epoch: Callable[[int], None] | None = None, started: float | None = None) -> FitResult:
    """Train per the resolved ``cfg`` and select an epoch on ``val``; takes no test data at all.

    With ``checkpoint`` the full state is written atomically after every epoch and a
    run found there is resumed, ending exactly where an uninterrupted run would. The
    checkpoint also keeps the wall seconds spent so far (since ``started`` in this
    process, plus what earlier processes spent), so a resumed run's time counts them all.

    A loss that becomes NaN ends training: the epochs before it are whole, so the
    epoch is selected from them as usual and the result says where it stopped
    (``stopped``). Diverging before any eligible epoch leaves no model and is an error.
    """
    started = time.perf_counter() if started is None else started
    method = METHODS.get(cfg.method)(cfg)
    device = pick_device(cfg.device)
    model = _model(cfg, device)
    method.check_backbone(model)
    train, val = train.to(device), val.to(device)
    opt, sched = _optimizer(model, cfg)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, Any]] = []
    best = unselected()
    stopped = None
    start, prior = 0, 0.0
    if checkpoint is not None and checkpoint.exists():
        opt, sched, history, best, start, prior = _resume(checkpoint, cfg, model, device, shuffle)

    epochs = tqdm(range(start, cfg.epochs), initial=start, total=cfg.epochs, desc=f"{cfg.method} seed {cfg.seed}",
                  disable=not progress, leave=False, dynamic_ncols=True)
    for epoch in epochs:
        t0 = time.perf_counter()
        if method.resets_optimizer(epoch):
            opt, sched = _optimizer(model, cfg)
        row = {"epoch": epoch, "phase": method.phase(epoch), "lambda": method.lam(epoch),
               "lr": opt.param_groups[0]["lr"]}
        try:
            row |= _train_epoch(model, method, train, opt, shuffle, epoch, cfg.batch_size, device, progress)
        except Diverged as err:
            if best["state"] is None:  # nothing to select: the run has no model
                raise
            stopped = stopped_note(str(err), epoch)
            break
        sched.step()
        row = scored(cfg, row | _validate(model, method, val, device), method.eligible(epoch))
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        best = keep_if_best(best, row, model.state_dict())
        epochs.set_postfix(val_acc=f"{row['val_acc']:.1f}",
                           **({"val_kl": f"{row['val_kl']:.3f}"} if "val_kl" in row else {}))
        if checkpoint is not None:
            _save(checkpoint, cfg, epoch, model, opt, sched, shuffle, history, best,
                  prior + time.perf_counter() - started)
        if on_epoch is not None:
            on_epoch(epoch)
    if best["state"] is None:
        raise L2LError(no_selection(cfg, history))
    model.load_state_dict(best["state"])
    return FitResult(model, history, best["epoch"], best["score"], prior, stopped)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _version_of(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    return {"learning_to_look": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "transformers": _version_of("transformers"), "python": platform.python_version(),
            "platform": platform.platform(), "threads": torch.get_num_threads(), "git_commit": _git_commit()}


def run_dir_for(cfg: TrainConfig, runs_dir: Path | None = None) -> Path:
    """The folder of the resolved ``cfg``'s run: data set / method-maps-backbone-hash / seed."""
    group = f"{cfg.method}-{cfg.maps}-{cfg.backbone}-{cfg.fingerprint()}"
    return Path(runs_dir or default_runs_dir()) / cfg.dataset / group / f"seed{cfg.seed}"


@dataclass
class Prepared:
    """Everything a run trains on; the test split rides along untouched for the end."""

    dataset: Dataset
    train_split: Split
    val_split: Split
    train: Batch
    val: Batch
    maps_info: dict[str, Any]
    train_maps: np.ndarray | None  # (N_train, 28, 28) in [0, 1], None for methods without maps


def _maps_split(cfg: TrainConfig, dataset: Dataset, used: np.ndarray) -> Split:
    """The images to get maps for: with ``--train-subset``, only those ``used`` (train then
    validation) when a generator would have to make them (a VLM is slow); the whole
    training split when the maps are cheap to compute, already cached for it, or a cached
    map set made for it."""
    if not cfg.train_subset or cfg.maps not in MAP_SOURCES:
        return dataset.train
    generator = get_map_source(cfg.maps, **cfg.map_options)
    if not generator.cacheable or (cache_meta(generator, cfg.dataset, dataset.train) or {}).get("complete"):
        return dataset.train
    return dataset.train.subset(used, "train")


def prepare(cfg: TrainConfig, data_dir: Path | None = None, progress: bool = True) -> Prepared:
    """Load the data set, cut train/validation, get the maps and build the batches (resolved ``cfg``)."""
    dataset = load_dataset(cfg.dataset, data_dir)
    tr, va = train_val_split_indices(dataset)
    if cfg.train_subset:  # cut the indices first: only the images used are copied
        tr, va = tr[:cfg.train_subset], va[:max(cfg.train_subset // SUBSET_VAL_DIVISOR, 2)]
    train_split, val_split = dataset.train.subset(tr, "train"), dataset.train.subset(va, "val")
    method = METHODS.get(cfg.method)(cfg)
    maps_info: dict[str, Any] = {"name": "none", "kind": "none"}
    maps_train = maps_val = None
    if method.uses_maps:
        mapped = _maps_split(cfg, dataset, np.concatenate([tr, va]))
        maps, maps_info = training_maps(cfg, cfg.dataset, mapped, progress)  # (N_mapped, H, W)
        maps_train, maps_val = (maps[tr], maps[va]) if mapped is dataset.train else (maps[:len(tr)], maps[len(tr):])
    return Prepared(dataset, train_split, val_split, make_batch(train_split, maps_train, cfg, method),
                    make_batch(val_split, maps_val, cfg, method), maps_info, maps_train)


def quality_of(prep: Prepared) -> dict[str, Any] | None:
    """IoU / AUROC to the clean digit of the maps a run trains on, on its first training
    images (never the test split); None without maps or without a known digit."""
    if prep.train_maps is None or prep.train_split.digits is None:
        return None
    n = min(QUALITY_IMAGES, len(prep.train_split))
    return map_quality(prep.train_maps[:n], prep.train_split.subset(np.arange(n))) | {"split": "train"}


def write_examples(path: Path, model: Backbone, prep: Prepared, cfg: TrainConfig) -> None:
    """What the report's figures show of this run, so that they never reload models or
    maps: the selected model's CAMs on fixed test images (the test split's only other
    use, after selection, shown and never chosen from), and the first training images
    with the maps the run was told to look at."""
    test = examples(model, prep.dataset.test, cfg.input_transform, device=pick_device(cfg.device))
    arrays = {f"test_{k}": v for k, v in test.items()}
    n = min(len(test["index"]), len(prep.train_split))
    arrays |= {"train_images": prep.train_split.images[:n], "train_labels": prep.train_split.labels[:n]}
    if prep.train_maps is not None:
        arrays["train_maps"] = prep.train_maps[:n]
    atomic_save_npz(path, **arrays)


def run(cfg: TrainConfig, *, runs_dir: Path | None = None, data_dir: Path | None = None, progress: bool = True,
        on_epoch: Callable[[int], None] | None = None, role: str | None = None) -> dict[str, Any]:
    """Train, select on validation, then evaluate the test split once; returns (and
    writes) the result. A finished run found on disk is returned as it is. ``role``
    says how a report reads the run (``method``, ``upper-bound``, ``control``, ...)."""
    return run_resolved(resolve(cfg), runs_dir=runs_dir, data_dir=data_dir, progress=progress, on_epoch=on_epoch,
                        role=role)


def run_resolved(cfg: TrainConfig, *, runs_dir: Path | None = None, data_dir: Path | None = None,
                 progress: bool = True, on_epoch: Callable[[int], None] | None = None,
                 role: str | None = None) -> dict[str, Any]:
    """:func:`run` for a config already passed through :func:`~learning_to_look.methods.resolve`."""
    out = run_dir_for(cfg, runs_dir)
    if (out / "result.json").exists():
        return _with_role(out / "result.json", role)
    created = [p for p in (out, *out.parents) if not p.exists()]
    try:
        with folder_lock(out, "this training run"):
            return _train_and_test(cfg, out, data_dir, progress, on_epoch, role)
    finally:
        for folder in created:  # a run refused before training leaves no folder behind
            if folder.exists() and not any(folder.iterdir()):
                folder.rmdir()


def run_task(cfg: TrainConfig, runs_dir: Path | None, data_dir: Path | None, progress: bool,
             role: str | None = None) -> dict[str, Any]:
    """:func:`run_resolved` with positional arguments: one task of ``--jobs`` workers."""
    return run_resolved(cfg, runs_dir=runs_dir, data_dir=data_dir, progress=progress, role=role)


def _train_and_test(cfg: TrainConfig, out: Path, data_dir: Path | None, progress: bool,
                    on_epoch: Callable[[int], None] | None, role: str | None) -> dict[str, Any]:
    """The body of a run, inside its folder's lock (so no other writer is there: the
    temporary files of a killed earlier attempt can all go)."""
    clean_stale_tmp(out, older_than=0)
    result_file = out / "result.json"
    if result_file.exists():  # another process finished it while we waited
        return _with_role(result_file, role)
    t0 = time.perf_counter()
    prep = prepare(cfg, data_dir, progress)
    atomic_write_json(out / "config.json", cfg.to_dict())
    fitted = fit(cfg, prep.train, prep.val, checkpoint=out / "checkpoint.pt", progress=progress, on_epoch=on_epoch,
                 started=t0)
    result = record_run(cfg, out, prep, fitted, role, fitted.prior_seconds + time.perf_counter() - t0)
    (out / "checkpoint.pt").unlink(missing_ok=True)
    return result


def record_run(cfg: TrainConfig, out: Path, prep: Prepared, fitted: FitResult, role: str | None,
               wall_seconds: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Save the selected model, evaluate it on the test split, write its examples and its
    ``result.json`` (plus ``extra`` keys): the end of every run, whichever engine trained it."""
    atomic_write_json(out / "config.json", cfg.to_dict())
    atomic_torch_save(out / "model.pt", fitted.model.state_dict())
    # The test split is read here for the first and only time, after selection.
    test = evaluate_split(fitted.model, prep.dataset.test, cfg.input_transform, device=pick_device(cfg.device))
    write_examples(out / "examples.npz", fitted.model, prep, cfg)
    train_seconds = sum(r["seconds"] for r in fitted.history)
    dataset, spec = prep.dataset, DATASETS.get(cfg.dataset)
    result = {
        "config": cfg.to_dict(), "role": role or DEFAULT_ROLE, "maps": prep.maps_info | {"quality": quality_of(prep)},
        "dataset": {"name": dataset.name, "protocol": dataset.header.get("protocol"), "n_train": len(prep.train_split),
                    "n_val": len(prep.val_split), "n_test": len(dataset.test), "channels": spec.channels,
                    "classes": list(spec.classes)},
        "selection": {"rule": cfg.selection, "epoch": fitted.selected_epoch, "score": fitted.selected_score,
                      "val": {k: v for k, v in fitted.history[fitted.selected_epoch].items() if k.startswith("val_")}},
        "test": test, "history": fitted.history, "seconds_per_epoch": train_seconds / len(fitted.history),
        "wall_seconds": wall_seconds, "device": str(pick_device(cfg.device)), "environment": environment(),
        "stopped": fitted.stopped,
    } | (extra or {})
    atomic_write_json(out / "result.json", result)
    return result


def _with_role(result_file: Path, role: str | None) -> dict[str, Any]:
    """A finished run's result; a role given now replaces the recorded one (it is how
    the run is read, not what it measured), so a run reused by a profile reads right."""
    result = read_json(result_file, f"delete the run folder {result_file.parent} to train it again")
    if role is not None and result.get("role") != role:
        result["role"] = role
        atomic_write_json(result_file, result)
    return result
