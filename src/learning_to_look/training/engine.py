"""The training loop of one run: optimise the method's loss epoch by epoch, validate,
keep the selected epoch's weights, and checkpoint so that a killed run resumes exactly.

It takes no test data at all: the test split is evaluated by :mod:`.run`, after this
returns.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import CUDA_STARTED_FIRST
from ..config import SCHEDULES, TrainConfig
from ..data.pipeline import batch_indices, eval_batch_size
from ..device import pick_device
from ..errors import L2LError, corrupt_file
from ..methods import Batch, Method
from ..data.augment import augment, parse_augment
from ..nn.backbones import Backbone, build_backbone
from ..nn.pretrained import load_pretrained
from ..progress import bar
from .accel import accelerate, autocast, memory_format, prefetched
from .checkpoints import load_checkpoint, save_checkpoint
from .evaluate import balanced_accuracy, group_accuracy, group_shares
from .features import freeze
from .resolve import Resolved
from .selection import check_selection_state, chosen, keep_if_best, no_selection, scored, selection_note, unselected

log = logging.getLogger(__name__)


def set_determinism(seed: int) -> None:
    """Same seed, same machine, same thread count -> the same numbers to the last digit."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if CUDA_STARTED_FIRST and torch.cuda.is_available():
        log.warning("CUDA started before learning_to_look was imported, so CUBLAS_WORKSPACE_CONFIG could not take "
                    "effect: GPU results may differ in the last digits between runs; import learning_to_look first")


def _batches(data: Batch, order: Any, model: Backbone, device: torch.device) -> Any:
    """``(idx, batch)`` for each index batch of ``order``, the next one gathered ahead, its
    inputs in the network's memory format."""
    fmt = memory_format(model, device)

    def take(idx: torch.Tensor) -> tuple[torch.Tensor, Batch]:
        b = data.take(idx, device)
        return idx, b if fmt is torch.contiguous_format else dataclasses.replace(b, x=b.x.contiguous(
            memory_format=fmt))
    return prefetched(order, take)


def _validate(model: Backbone, method: Method, val: Batch, device: torch.device, cfg: TrainConfig,
              shares: dict[int, float] | None = None) -> dict[str, float]:
    """Validation metrics used for selection: accuracy, class-balanced accuracy, the
    group accuracies (``shares``: the training groups' shares, for their weighted
    average) and the method's own per-image metrics (e.g. the attention's KL to its
    target), nan-averaged."""
    model.eval()
    predicted, per_image = [], {}
    order = batch_indices(len(val), eval_batch_size(model.input_size), shuffle=False)
    for _, b in _batches(val, order, model, device):
        with autocast(cfg, device):
            logits, metrics = method.validate(model, b)
        predicted.append(logits.argmax(1))  # (B,)
        for k, v in metrics.items():
            per_image.setdefault(k, []).append(v)
    pred = torch.cat(predicted)  # (N,)
    y = val.y.to(pred.device)
    right = pred == y  # (N,)
    groups = {} if val.groups is None else group_accuracy(right, val.groups.to(right.device), shares)
    return ({"val_acc": 100.0 * float(right.float().mean()), "val_balanced_accuracy": balanced_accuracy(right, y)}
            | {f"val_{k}": v for k, v in groups.items() if k != "group_accuracy"}
            | {f"val_{k}": float(torch.nanmean(torch.cat(v))) for k, v in per_image.items()})


class Diverged(L2LError):
    """The training loss became NaN or infinite: the run cannot go on from here."""


def stopped_note(why: str, epoch: int) -> str:
    """What a run's record says when its loss diverged in ``epoch``: why, and which epochs it chose from."""
    return f"{why}: stopped there, the epoch is selected from epochs 0-{epoch - 1}"


def _param_groups(model: Backbone, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The trainable parameters (a frozen part has none), the head in its own group at
    ``head_lr`` where the schedule gives the head its own rate (GALS's two rates)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.head_lr is None:
        return [{"params": [p for _, p in named]}]
    head = model.head_prefix
    return [{"params": [p for n, p in named if not n.startswith(head)]},
            {"params": [p for n, p in named if n.startswith(head)], "lr": cfg.head_lr}]


def _optimizer(model: Backbone, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The schedule's optimiser and learning-rate scheduler, fresh (momentum buffers empty);
    SGD without a step size keeps its rate constant (GALS)."""
    groups = _param_groups(model, cfg)
    if SCHEDULES.get(cfg.schedule).optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        if cfg.step_size is not None:
            return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
        return opt, torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    opt = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
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
    #: The selection rule that chose the epoch: the run's own, or its fallback (``selection_note`` says why).
    rule: str | None = None
    selection_note: str | None = None


def _train_epoch(model: Backbone, method: Method, train: Batch, opt: torch.optim.Optimizer,
                 shuffle: torch.Generator, epoch: int, cfg: TrainConfig, device: torch.device,
                 progress: bool) -> dict[str, float]:
    """One pass over ``train``; returns the epoch's mean loss terms and accuracy. The
    augmentations draw from ``shuffle``, whose state a checkpoint keeps, so a resumed
    run sees the same batches."""
    model.train()
    sums: dict[str, float] = {}
    seen = 0
    augmentation = parse_augment(cfg.augment)
    rows = method.rows(epoch, len(train))  # (M,) rows with repeats, or None: each row once
    order = batch_indices(len(train), cfg.batch_size, shuffle) if rows is None else \
        rows[torch.randperm(len(rows), generator=shuffle)].split(cfg.batch_size)
    total = len(train) if rows is None else len(rows)
    batches = bar(_batches(train, order, model, device), show=progress, total=-(-total // cfg.batch_size),
                  desc=f"epoch {epoch}", leave=False)
    for step, (idx, batch) in enumerate(batches):
        if augmentation:
            batch.x, batch.aux = augment(batch.x, batch.aux, augmentation, shuffle)
        with autocast(cfg, device):
            loss, stats = method.loss(model, batch, epoch)
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


def _is_training_state(state: Any, path: Path) -> None:
    keys = {"config", "model", "optimizer", "scheduler", "shuffle", "best"}
    if not isinstance(state, dict) or not keys <= set(state):
        raise corrupt_file(path, "not a training checkpoint")
    check_selection_state(state["best"], path)


def _resume(checkpoint: Path, cfg: TrainConfig, model: Backbone, device: torch.device,
            shuffle: torch.Generator) -> tuple[Any, Any, list[dict[str, Any]], dict[str, Any], int, float,
                                               dict[str, Any]] | None:
    """The state saved after the last good epoch, loaded into ``model`` and ``shuffle``:
    (optimizer, scheduler, history, best, next epoch, wall seconds spent so far, the
    method's own state); None
    when there is no good checkpoint to resume from."""
    state = load_checkpoint(checkpoint, _is_training_state, map_location=device, weights_only=False)
    if state is None:
        return None
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
    return opt, sched, state["history"], state["best"], state["epoch"] + 1, state.get("wall_seconds", 0.0), \
        state.get("method", {})


def _save(checkpoint: Path, cfg: TrainConfig, epoch: int, model: Backbone, opt: Any, sched: Any,
          shuffle: torch.Generator, history: list[dict[str, Any]], best: dict[str, Any], wall_seconds: float,
          method: dict[str, Any]) -> None:
    """Everything :func:`_resume` needs to go on after ``epoch`` as if never stopped, written atomically."""
    save_checkpoint(checkpoint, {"config": cfg.to_dict(), "epoch": epoch, "model": model.state_dict(),
                                 "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                 "shuffle": shuffle.get_state(), "rng": torch.get_rng_state(),
                                 "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                                 "history": history, "best": best, "wall_seconds": wall_seconds, "method": method})


def _model(cfg: TrainConfig, num_classes: int, device: torch.device) -> Backbone:
    """The backbone of ``cfg``, seeded, with its pretrained weights if any, on ``device``."""
    set_determinism(cfg.seed)
    model = build_backbone(cfg.backbone, num_classes, size=cfg.network_size)
    if cfg.pretrained:
        load_pretrained(model, cfg.pretrained)
    return accelerate(model.to(device), cfg, device)


def fit(run: Resolved, train: Batch, val: Batch, *, checkpoint: Path | None = None, progress: bool = True,
        on_epoch: Callable[[dict[str, Any]], None] | None = None, started: float | None = None,
        features: Path | None = None) -> FitResult:
    """Train the resolved ``run`` and select an epoch on ``val``; takes no test data at all.

    With ``checkpoint`` the full state is written atomically after every epoch and a
    run found there is resumed, ending exactly where an uninterrupted run would. The
    checkpoint also keeps the wall seconds spent so far (since ``started`` in this
    process, plus what earlier processes spent), so a resumed run's time counts them all.

    A loss that becomes NaN ends training: the epochs before it are whole, so the
    epoch is selected from them as usual and the result says where it stopped
    (``stopped``). Diverging before any eligible epoch leaves no model and is an error.

    With ``freeze_until`` the frozen part's outputs are cached in the folder ``features``
    (:mod:`.features`), computed once for every run that shares that part.
    """
    started = time.perf_counter() if started is None else started
    cfg, method = run.cfg, run.method
    device = pick_device(cfg.device)
    model = _model(cfg, run.spec.num_classes, device)
    method.check_backbone(model)
    if cfg.freeze_until:  # the frozen part runs once here; training sees its cached output
        train, val = freeze(model, cfg.freeze_until, train, val, features, device)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()} if method.restarts else None
    train, val = train.to(device), val.to(device)
    method.prepare(train)
    shares = None if train.groups is None else group_shares(train.groups)
    opt, sched = _optimizer(model, cfg)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, Any]] = []
    best = unselected(cfg.selection)
    stopped = None
    start, prior = 0, 0.0
    if checkpoint is not None and (resumed := _resume(checkpoint, cfg, model, device, shuffle)) is not None:
        opt, sched, history, best, start, prior, kept_state = resumed
        method.load_state_dict(kept_state)

    epochs = bar(range(start, cfg.epochs), show=progress, initial=start, total=cfg.epochs,
                 desc=f"{cfg.method} seed {cfg.seed}", leave=False)
    for epoch in epochs:
        t0 = time.perf_counter()
        method.before_epoch(epoch, model, train, device)  # may read the model before it restarts (JTT)
        if method.restarts_model(epoch):
            model.load_state_dict(initial)
        if method.resets_optimizer(epoch):
            opt, sched = _optimizer(model, cfg)
        row = {"epoch": epoch, "phase": method.phase(epoch), "lambda": method.lam(epoch),
               "lr": opt.param_groups[0]["lr"]}
        try:
            row |= _train_epoch(model, method, train, opt, shuffle, epoch, cfg, device, progress)
        except Diverged as err:
            if chosen(best)[1]["state"] is None:  # nothing to select: the run has no model
                raise
            stopped = stopped_note(str(err), epoch)
            break
        sched.step()
        row = scored(cfg, row | _validate(model, method, val, device, cfg, shares), method.eligible(epoch))
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        best = keep_if_best(best, row, model.state_dict())
        epochs.set_postfix(val_acc=f"{row['val_acc']:.1f}",
                           **({"val_kl": f"{row['val_kl']:.3f}"} if "val_kl" in row else {}))
        if checkpoint is not None:
            _save(checkpoint, cfg, epoch, model, opt, sched, shuffle, history, best,
                  prior + time.perf_counter() - started, method.state_dict())
        if on_epoch is not None:
            on_epoch(row)
    rule, kept = chosen(best)
    if kept["state"] is None:
        raise L2LError(no_selection(cfg, history))
    model.load_state_dict(kept["state"])
    if cfg.freeze_until:
        model.start_after = None  # the selected network takes images again, for the test split
    return FitResult(model, history, kept["epoch"], kept["score"], prior, stopped, rule,
                     selection_note(best, cfg.selection_beta))
