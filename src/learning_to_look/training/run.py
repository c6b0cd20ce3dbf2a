"""One run from start to record: load the data, get the maps, train (:mod:`.engine`),
select on validation, evaluate the test split once, and write the run's folder.

Data flow: the data set's train split is cut into train/validation (PROTOCOL 2.4), the
map source gives a map per training image, the maps become the method's per-image
tensors, the loss is optimised, a model is selected on validation data only, and then,
and only then, the test split is evaluated once.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import __version__
from ..config import SUBSET_VAL_DIVISOR, TrainConfig
from ..data import Dataset, Split, load_dataset, to_input
from ..data.pipeline import preconverts
from ..data.splits import train_val_split_indices
from ..device import pick_device
from ..data.imported import dataset_spec
from ..data.store import data_folder
from ..io import (atomic_save_npz, atomic_torch_save, atomic_write_json, clean_stale_tmp, folder_lock, sha256_array,
                  sha256_file)
from ..maps import cache_meta, map_quality, resolve_maps, validate_maps
from ..methods import Batch, Method
from ..nn.backbones import Backbone, backbone_class
from ..scalars import scalar_log
from ..record import EXAMPLES_FILE, WEIGHTS_FILE, Record, has_record, read_record, write_record
from .checkpoints import remove_checkpoints
from .engine import FitResult, fit
from .evaluate import evaluate_split, examples, group_shares
from .features import embeddings
from .resolve import Resolved, resolve_run
from .selection import TIE_BREAK

log = logging.getLogger(__name__)

RUNS_DIR_ENV = "L2L_RUNS_DIR"
#: Training images on which the quality of a run's maps (IoU / AUROC to the digit) is measured.
QUALITY_IMAGES = 1000
#: Role of a run when nobody says otherwise (reproduce's profiles name theirs).
DEFAULT_ROLE = "method"
#: The per-epoch training state of a run still training; removed once its record is written.
CHECKPOINT_FILE = "checkpoint.pt"
#: Folder of the feature cache (:mod:`.features`) inside the data folder.
FEATURES_FOLDER = "features"


def default_runs_dir() -> Path:
    return Path(os.environ.get(RUNS_DIR_ENV) or "runs")


def make_batch(split: Split, maps: np.ndarray | None, cfg: TrainConfig, method: Method,
               known: np.ndarray | None = None, key: str = "") -> Batch:
    """A whole split ready for the network, with the per-image tensors ``method`` asks for;
    an image whose map is not ``known`` (no mask) gets all-zero tensors: no guidance term."""
    backbone = backbone_class(cfg.backbone, cfg.network_size)
    y = torch.as_tensor(split.labels, dtype=torch.long)  # (N,)
    aux = {} if maps is None else method.aux(torch.as_tensor(maps), backbone)
    if known is not None:
        has = torch.as_tensor(known)  # (N,) bool
        aux = {k: v * has.view(-1, *[1] * (v.ndim - 1)).to(v.dtype) for k, v in aux.items()}
    groups = None if split.groups is None else torch.as_tensor(split.groups)  # (N,)
    if preconverts(len(split), split.images.shape[1], backbone.input_size):
        x = to_input(split.images, backbone.input_size, cfg.input_transform)  # (N,C,S,S)
        return Batch(x, y, aux, groups, transform=cfg.input_transform, key=key)
    return Batch(torch.as_tensor(split.images), y, aux, groups, backbone.input_size, cfg.input_transform, key)


def resize_note(cfg: TrainConfig, split: Split) -> str | None:
    """One line when the network's input side differs from the images' (a resize on the
    way in, which the record also keeps), None when the images go in at their own size."""
    image, network = split.images.shape[-1], backbone_class(cfg.backbone, cfg.network_size).input_size
    if image == network:
        return None
    why = "its own input side" if cfg.network_size is None else "--network-size"
    return f"images are {image} px and {cfg.backbone} takes {network} px ({why}): each is resized on the way in"


def training_maps(run: Resolved, split: Split, progress: bool = True) -> tuple[np.ndarray, dict]:
    """Maps for every image of ``split`` from the run's source (its generator, or a cached
    map set by name or fingerprint), validated, with the source's description."""
    maps, info = resolve_maps(run.maps or run.cfg.maps, run.cfg.dataset, split, progress=progress)
    return validate_maps(maps, len(split), split.images.shape[-2:], info["name"]), info


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
    held: Batch | None = None  # training rows kept out of training for a method's second stage (AFR)


def _maps_split(run: Resolved, dataset: Dataset, used: np.ndarray) -> Split:
    """The images to get maps for: with ``--train-subset``, only those ``used`` (train then
    validation) when a generator would have to make them (a VLM is slow); the whole
    training split when the maps are cheap to compute, already cached for it, or a cached
    map set made for it."""
    generator = run.maps
    if not run.cfg.train_subset or generator is None:
        return dataset.train
    if not generator.cacheable or (cache_meta(generator, run.cfg.dataset, dataset.train) or {}).get("complete"):
        return dataset.train
    return dataset.train.subset(used, "train")


def prepare(run: Resolved, data_dir: Path | None = None, progress: bool = True) -> Prepared:
    """Load the data set, cut train/validation, get the maps and build the batches."""
    cfg, method = run.cfg, run.method
    dataset = load_dataset(cfg.dataset, data_dir)
    tr, va = train_val_split_indices(dataset)
    if cfg.train_subset:  # cut the indices first: only the images used are copied
        tr, va = tr[:cfg.train_subset], va[:max(cfg.train_subset // SUBSET_VAL_DIVISOR, 2)]
    tr, held = (tr, None) if not method.holdout else (tr[:len(tr) - int(len(tr) * method.holdout)],
                                                       tr[len(tr) - int(len(tr) * method.holdout):])
    train_split, val_split = dataset.train.subset(tr, "train"), dataset.train.subset(va, "val")
    maps_info: dict[str, Any] = {"name": "none", "kind": "none"}
    maps_train = maps_val = None
    partial = run.maps is not None and run.maps.reads_objects and train_split.masked is not None
    known_train, known_val = (train_split.masked, val_split.masked) if partial else (None, None)
    if method.uses_maps:
        mapped = _maps_split(run, dataset, np.concatenate([tr, va]))
        maps, maps_info = training_maps(run, mapped, progress)  # (N_mapped, H, W)
        maps_train, maps_val = (maps[tr], maps[va]) if mapped is dataset.train else (maps[:len(tr)], maps[len(tr):])
        maps_info["images_with_maps"] = int(known_train.sum()) if partial else len(train_split)
    key = dataset.content_hash[:16]
    return Prepared(dataset, train_split, val_split,
                    make_batch(train_split, maps_train, cfg, method, known_train, key=_rows(key, tr)),
                    make_batch(val_split, maps_val, cfg, method, known_val, key=_rows(key, va)), maps_info, maps_train,
                    None if held is None else make_batch(dataset.train.subset(held, "held"), None, cfg, method,
                                                         key=_rows(key, held)))


def _rows(data_hash: str, idx: np.ndarray) -> str:
    """The identity of rows ``idx`` of a data set: what names their cached features."""
    return f"{data_hash}-{sha256_array(np.asarray(idx, dtype=np.int64))[:16]}"


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
        on_epoch: Callable[[dict[str, Any]], None] | None = None, role: str | None = None) -> Record:
    """Train, select on validation, then evaluate the test split once; returns (and
    writes) the run's record. A finished run found on disk is returned as it is. ``role``
    says how a report reads the run (``method``, ``upper-bound``, ``control``, ...)."""
    return run_resolved(resolve_run(cfg, data_dir), runs_dir=runs_dir, data_dir=data_dir, progress=progress,
                        on_epoch=on_epoch, role=role)


def run_resolved(run: Resolved, *, runs_dir: Path | None = None, data_dir: Path | None = None,
                 progress: bool = True, on_epoch: Callable[[dict[str, Any]], None] | None = None,
                 role: str | None = None) -> Record:
    """:func:`run` for a run already passed through :func:`~.resolve.resolve_run`."""
    out = run_dir_for(run.cfg, runs_dir)
    if has_record(out):
        return read_record(out)
    created = [p for p in (out, *out.parents) if not p.exists()]
    try:
        with folder_lock(out, "this training run"):
            return _train_and_test(run, out, data_dir, progress, on_epoch, role)
    finally:
        for folder in created:  # a run refused before training leaves no folder behind
            if folder.exists() and not any(folder.iterdir()):
                folder.rmdir()


def run_task(run: Resolved, runs_dir: Path | None, data_dir: Path | None, progress: bool,
             role: str | None = None) -> Record:
    """:func:`run_resolved` with positional arguments: one task of ``--jobs`` workers."""
    return run_resolved(run, runs_dir=runs_dir, data_dir=data_dir, progress=progress, role=role)


def _train_and_test(run: Resolved, out: Path, data_dir: Path | None, progress: bool,
                    on_epoch: Callable[[dict[str, Any]], None] | None, role: str | None) -> Record:
    """The body of a run, inside its folder's lock (so no other writer is there: the
    temporary files of a killed earlier attempt can all go)."""
    clean_stale_tmp(out, older_than=0)
    if has_record(out):  # another process finished it while we waited
        return read_record(out)
    t0 = time.perf_counter()
    prep = prepare(run, data_dir, progress)
    if (note := resize_note(run.cfg, prep.train_split)) is not None:
        log.info(note)
    atomic_write_json(out / "config.json", run.cfg.to_dict())
    features = data_folder(data_dir) / FEATURES_FOLDER
    with scalar_log(run.cfg.log, out) as log_row:
        fitted = fit(run, prep.train, prep.val, checkpoint=out / CHECKPOINT_FILE, progress=progress,
                     on_epoch=_both(on_epoch, log_row), started=t0, features=features)
    device = pick_device(run.cfg.device)
    retrained = run.method.after_fit(fitted.model, {"train": prep.train, "val": prep.val, "held": prep.held},
                                     lambda b: embeddings(fitted.model, b, features, device))
    record = record_run(run.cfg, out, prep, fitted, role, fitted.prior_seconds + time.perf_counter() - t0,
                        None if retrained is None else {"last_layer": retrained}, progress=progress)
    remove_checkpoints(out / CHECKPOINT_FILE)
    return record


def _both(*hooks: Callable[[dict[str, Any]], None] | None) -> Callable[[dict[str, Any]], None] | None:
    """One per-epoch hook calling each of ``hooks`` that is set."""
    live = [h for h in hooks if h is not None]
    if not live:
        return None

    def each(row: dict[str, Any]) -> None:
        for hook in live:
            hook(row)
    return each


def record_run(cfg: TrainConfig, out: Path, prep: Prepared, fitted: FitResult, role: str | None,
               wall_seconds: float, extra: dict[str, Any] | None = None, progress: bool = False) -> Record:
    """Save the selected model, evaluate it on the test split, write its examples and its
    record (plus ``extra`` keys): the end of every run, whichever engine trained it."""
    atomic_write_json(out / "config.json", cfg.to_dict())
    atomic_torch_save(out / WEIGHTS_FILE, fitted.model.state_dict())
    # The test split is read here for the first and only time, after selection.
    shares = None if prep.train_split.groups is None else group_shares(torch.as_tensor(prep.train_split.groups))
    test = evaluate_split(fitted.model, prep.dataset.test, cfg.input_transform, device=pick_device(cfg.device),
                          progress=progress, shares=shares, classes=dataset_spec(cfg.dataset).classes)
    write_examples(out / EXAMPLES_FILE, fitted.model, prep, cfg)
    train_seconds = sum(r["seconds"] for r in fitted.history)
    dataset, spec = prep.dataset, dataset_spec(cfg.dataset)
    return write_record(out, {
        "config": cfg.to_dict(), "role": role or DEFAULT_ROLE, "maps": prep.maps_info | {"quality": quality_of(prep)},
        "dataset": {"name": dataset.name, "protocol": dataset.header.get("protocol"), "n_train": len(prep.train_split),
                    "n_val": len(prep.val_split), "n_test": len(dataset.test), "channels": spec.channels,
                    "classes": list(spec.classes), "size": spec.size, "sha256": dataset.content_hash,
                    "network_size": backbone_class(cfg.backbone, cfg.network_size).input_size,
                    "resize": resize_note(cfg, prep.train_split),
                    "words": {"object": spec.object_word, "shortcut": spec.shortcut_word}},
        "selection": {"rule": cfg.selection, "rule_used": fitted.rule or cfg.selection, "tie_break": TIE_BREAK,
                      "note": fitted.selection_note, "epoch": fitted.selected_epoch, "score": fitted.selected_score,
                      "val": {k: v for k, v in fitted.history[fitted.selected_epoch].items() if k.startswith("val_")}},
        "test": test, "history": fitted.history, "seconds_per_epoch": train_seconds / len(fitted.history),
        "wall_seconds": wall_seconds, "device": str(pick_device(cfg.device)), "environment": environment(),
        "stopped": fitted.stopped, "weights": {"file": WEIGHTS_FILE, "sha256": sha256_file(out / WEIGHTS_FILE)},
    } | (extra or {}))
