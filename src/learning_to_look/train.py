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
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import __version__
from .config import TrainConfig
from .data import Dataset, Split, load_dataset, to_input, train_val
from .data.pipeline import as_rgb, batch_indices
from .errors import L2LError
from .evaluate import evaluate_split, kl_per_image
from .io import atomic_torch_save, atomic_write_json, read_json
from .losses import make_target, reverse_kl
from .maps import resolve_maps, validate_maps
from .methods import Batch, Method, get_method, resolve
from .models import Backbone, build_backbone

RUNS_DIR_ENV = "L2L_RUNS_DIR"


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


@dataclass
class Tensors:
    """A split ready for the network: inputs, labels, and what the method needs."""

    x: torch.Tensor
    y: torch.Tensor
    target: torch.Tensor | None = None
    irrelevant: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.y)

    def batch(self, idx: torch.Tensor, device: torch.device) -> Batch:
        def take(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[idx].to(device, non_blocking=True)

        return Batch(as_rgb(take(self.x)), take(self.y), take(self.target), take(self.irrelevant))


def feature_size(model: Backbone) -> int:
    with torch.no_grad():
        _, feats = model(torch.zeros(1, 3, model.input_size, model.input_size))
    return feats.shape[-1]


def make_tensors(split: Split, maps: np.ndarray | None, cfg: TrainConfig, model: Backbone, method: Method) -> Tensors:
    x = to_input(split.images, model.input_size, cfg.input_transform)
    y = torch.as_tensor(split.labels, dtype=torch.long)
    target = irrelevant = None
    if maps is not None:
        m = torch.as_tensor(maps)
        kw: dict[str, Any] = {"size": feature_size(model)}
        if cfg.target == "outline":
            kw |= {"threshold": cfg.target_threshold, "upsample": model.input_size}
        target = make_target(cfg.target, m, **kw)
        if method.name == "rrr":
            relevant = F.interpolate(m[:, None], size=(model.input_size,) * 2, mode="bilinear", align_corners=False)
            irrelevant = (1 - relevant.clamp(0, 1))
    return Tensors(x, y, target, irrelevant)


def training_maps(cfg: TrainConfig, dataset_name: str, split: Split, progress: bool = True) -> tuple[np.ndarray, dict]:
    """Maps for every image of ``split`` from the configured source (a backend, or a
    cached map set by name or fingerprint), validated, with the source's description."""
    maps, info = resolve_maps(cfg.maps, dataset_name, split, progress=progress, **cfg.map_options)
    return validate_maps(maps, len(split), split.images.shape[-2:], info["name"]), info


@torch.no_grad()
def _eval_batches(model: Backbone, method: Method, t: Tensors, device: torch.device, bs: int = 1000) -> dict[str, float]:
    """Validation metrics used for selection: accuracy, and (when there is a target)
    forward and reverse KL of the method's attention map to it."""
    model.eval()
    correct, fkl, rkl = 0, [], []
    for idx in batch_indices(len(t), bs, shuffle=False):
        b = t.batch(idx, device)
        if b.target is None:
            logits, _ = model(b.x)
        else:
            logits, s = method.attention(model, b.x, b.y, create_graph=False)
            s, q = s.detach().float().cpu(), b.target.float().cpu()
            fkl.append(kl_per_image(s, q))
            rkl.append(reverse_kl(s, q, reduction="none"))
        correct += int((logits.argmax(1) == b.y).sum())
    out = {"val_acc": 100.0 * correct / len(t)}
    if fkl:
        out["val_kl"] = float(torch.nanmean(torch.cat(fkl)))
        out["val_rkl"] = float(torch.cat(rkl).mean())
    return out


def selection_score(rule: str, metrics: dict[str, float], beta: float) -> float:
    acc = metrics["val_acc"] / 100.0
    if rule == "val_acc":
        return acc
    if "val_kl" not in metrics:
        raise L2LError(f"selection rule {rule} needs attention maps; use --selection val_acc for this method")
    if rule == "acc_x_1mkl":
        return acc * (1.0 - metrics["val_kl"])
    return acc * float(np.exp(-beta * metrics["val_rkl"]))


def _optimizer(model: Backbone, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.StepLR]:
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)


@dataclass
class FitResult:
    model: Backbone
    history: list[dict[str, Any]]
    selected_epoch: int
    selected_score: float


def _train_epoch(model: Backbone, method: Method, train: Tensors, opt: torch.optim.Optimizer,
                 shuffle: torch.Generator, epoch: int, batch_size: int, device: torch.device,
                 progress: bool) -> dict[str, float]:
    """One pass over ``train``; returns the epoch's mean loss terms and accuracy."""
    model.train()
    sums: dict[str, float] = {}
    seen = 0
    batches = tqdm(batch_indices(len(train), batch_size, shuffle), total=-(-len(train) // batch_size),
                   desc=f"epoch {epoch}", disable=not progress, leave=False, dynamic_ncols=True, mininterval=0.5)
    for step, idx in enumerate(batches):
        loss, stats = method.loss(model, train.batch(idx, device), epoch)
        if not torch.isfinite(loss):
            raise L2LError(f"loss became {loss.item()} at epoch {epoch}; lower --lr or --lambda0")
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


def fit(cfg: TrainConfig, train: Tensors, val: Tensors, *, checkpoint: Path | None = None,
        progress: bool = True, on_epoch: Callable[[int], None] | None = None) -> FitResult:
    """Train per ``cfg`` and select an epoch on ``val``; takes no test data at all.

    With ``checkpoint`` the full state is written atomically after every epoch and a
    run found there is resumed, ending exactly where an uninterrupted run would.
    """
    cfg = resolve(cfg)
    method = get_method(cfg.method)(cfg)
    device = pick_device(cfg.device)
    set_determinism(cfg.seed)
    model = build_backbone(cfg.backbone).to(device)
    if method.needs_gap and not model.has_gap_classifier:
        raise L2LError(f"method {cfg.method} needs CAM, which needs a global-average-pooling backbone; "
                       f"use --method gradcam-kl with {cfg.backbone}, or --backbone lenet-gap")
    opt, sched = _optimizer(model, cfg)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": -1, "score": -float("inf"), "state": None}
    start = 0
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        if state["config"] != cfg.to_dict():
            raise L2LError(f"checkpoint {checkpoint} belongs to another config; delete it or use another --runs-dir")
        model.load_state_dict(state["model"])
        opt, sched = _optimizer(model, cfg)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        shuffle.set_state(state["shuffle"])
        history, best, start = state["history"], state["best"], state["epoch"] + 1

    epochs = tqdm(range(start, cfg.epochs), initial=start, total=cfg.epochs, desc=f"{cfg.method} seed {cfg.seed}",
                  disable=not progress, leave=False, dynamic_ncols=True)
    for epoch in epochs:
        t0 = time.perf_counter()
        if method.resets_optimizer(epoch):
            opt, sched = _optimizer(model, cfg)
        row = {"epoch": epoch, "phase": method.phase(epoch), "lambda": method.lam(epoch), "lr": opt.param_groups[0]["lr"]}
        row |= _train_epoch(model, method, train, opt, shuffle, epoch, cfg.batch_size, device, progress)
        sched.step()
        row |= _eval_batches(model, method, val, device)
        row["eligible"] = method.eligible(epoch)
        row["score"] = selection_score(cfg.selection, row, cfg.selection_beta) if row["eligible"] else None
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        if row["eligible"] and row["score"] > best["score"]:
            best = {"epoch": epoch, "score": row["score"], "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        epochs.set_postfix(val_acc=f"{row['val_acc']:.1f}", **({"val_kl": f"{row['val_kl']:.3f}"} if "val_kl" in row else {}))
        if checkpoint is not None:
            atomic_torch_save(checkpoint, {"config": cfg.to_dict(), "epoch": epoch, "model": model.state_dict(),
                                           "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                           "shuffle": shuffle.get_state(), "history": history, "best": best})
        if on_epoch is not None:
            on_epoch(epoch)
    if best["state"] is None:
        raise L2LError("no epoch was eligible for selection; make --epochs larger than --e-att")
    model.load_state_dict(best["state"])
    return FitResult(model, history, best["epoch"], best["score"])


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    return {"learning_to_look": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "transformers": metadata.version("transformers"), "python": platform.python_version(),
            "platform": platform.platform(), "threads": torch.get_num_threads(), "git_commit": _git_commit()}


def run_dir_for(cfg: TrainConfig, runs_dir: Path | None = None) -> Path:
    cfg = resolve(cfg)
    return Path(runs_dir or default_runs_dir()) / cfg.dataset / f"{cfg.method}-{cfg.maps}-{cfg.backbone}-{cfg.fingerprint()}" / f"seed{cfg.seed}"


@dataclass
class Prepared:
    """Everything a run trains on; the test split rides along untouched for the end."""

    dataset: Dataset
    train_split: Split
    val_split: Split
    train: Tensors
    val: Tensors
    maps_info: dict[str, Any]


def prepare(cfg: TrainConfig, data_dir: Path | None = None, progress: bool = True) -> Prepared:
    """Load the data set, cut train/validation, get the maps and build the tensors."""
    cfg = resolve(cfg)
    dataset = load_dataset(cfg.dataset, data_dir)
    train_split, val_split = train_val(dataset)
    if cfg.train_subset:
        train_split = train_split.subset(np.arange(min(cfg.train_subset, len(train_split))))
        val_split = val_split.subset(np.arange(min(max(cfg.train_subset // 5, 2), len(val_split))))
    method_cls = get_method(cfg.method)
    maps_info: dict[str, Any] = {"name": "none", "kind": "none"}
    maps_train = maps_val = None
    if method_cls.uses_maps:
        all_maps, maps_info = training_maps(cfg, cfg.dataset, dataset.train, progress)
        maps_train, maps_val = all_maps[train_split.indices], all_maps[val_split.indices]
    probe = build_backbone(cfg.backbone)
    method = method_cls(cfg)
    return Prepared(dataset, train_split, val_split, make_tensors(train_split, maps_train, cfg, probe, method),
                    make_tensors(val_split, maps_val, cfg, probe, method), maps_info)


def run(cfg: TrainConfig, *, runs_dir: Path | None = None, data_dir: Path | None = None,
        progress: bool = True, on_epoch: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train, select on validation, then evaluate the test split once; returns (and
    writes) the result. A finished run found on disk is returned as it is."""
    cfg = resolve(cfg)
    out = run_dir_for(cfg, runs_dir)
    result_file = out / "result.json"
    if result_file.exists():
        return read_json(result_file)
    t0 = time.perf_counter()
    prep = prepare(cfg, data_dir, progress)
    dataset, train_split, val_split, maps_info = prep.dataset, prep.train_split, prep.val_split, prep.maps_info
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", cfg.to_dict())
    fitted = fit(cfg, prep.train, prep.val, checkpoint=out / "checkpoint.pt", progress=progress, on_epoch=on_epoch)
    atomic_torch_save(out / "model.pt", fitted.model.state_dict())
    # The test split is read here for the first and only time, after selection.
    test = evaluate_split(fitted.model, dataset.test, cfg.input_transform, device=pick_device(cfg.device))
    train_seconds = sum(r["seconds"] for r in fitted.history)
    result = {
        "config": cfg.to_dict(), "maps": maps_info, "dataset": {"name": dataset.name, "protocol": dataset.header.get("protocol"),
                                                              "n_train": len(train_split), "n_val": len(val_split), "n_test": len(dataset.test)},
        "selection": {"rule": cfg.selection, "epoch": fitted.selected_epoch, "score": fitted.selected_score,
                      "val": {k: v for k, v in fitted.history[fitted.selected_epoch].items() if k.startswith("val_")}},
        "test": test, "history": fitted.history,
        "seconds_per_epoch": train_seconds / len(fitted.history), "wall_seconds": time.perf_counter() - t0,
        "device": str(pick_device(cfg.device)), "environment": environment(),
    }
    atomic_write_json(result_file, result)
    (out / "checkpoint.pt").unlink(missing_ok=True)
    return result
