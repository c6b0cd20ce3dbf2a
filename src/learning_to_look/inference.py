"""Use a trained run: load its selected model, predict new images, and show where it looks.

``load_run(folder)`` gives a :class:`TrainedRun` (model, resolved config, the maps it
was trained with); ``predict`` and ``explain`` take uint8 images of any size, prepared
exactly as in training (grey where the data set is grey, resized to the network's
input, the run's input transform), so a prediction here is what the run's test
accuracy measured.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .nn.attribution import attention, minmax_normalize
from .config import TrainConfig
from .data import DATASETS, as_rgb, to_input
from .data.images import fit_array, read_fitted, read_image
from .data.pipeline import eval_batch_size
from .errors import L2LError
from .training.evaluate import to_image
from .io import atomic_write_bytes, sha256_file, torch_load
from .record import WEIGHTS_FILE, Record, has_record, read_record
from .nn.backbones import Backbone, build_backbone
from .device import pick_device


@dataclass
class TrainedRun:
    """A finished run, ready to use. ``maps`` is the recorded description of the maps it
    was trained to look at (``kind`` says whether they came from a VLM)."""

    path: Path
    model: Backbone  # the selected epoch's weights, in eval mode
    config: TrainConfig
    maps: dict[str, Any]
    record: Record
    class_names: tuple[str, ...]
    channels: int  # of the data set's images: 1 means new images are made grey first
    size: int | None  # side of the data set's stored images, to which new images are prepared; None: unknown

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prepare(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, C, H, W) images of any size as the run's data set holds its images: the
        shorter side resized to the stored size and the centre cropped, exactly as ``l2l data
        import`` prepared the files (``data/images.py``), grey where the data set is grey."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise L2LError(f"images must be uint8 (N, 1 or 3, H, W), got {images.dtype} {images.shape}")
        if self.size is not None:
            images = fit_array(images, self.size)  # (N,C,size,size)
        if self.channels == 1 and images.shape[1] == 3:
            images = np.round(images.mean(axis=1, keepdims=True)).astype(np.uint8)  # the run saw grey images
        return images

    def inputs(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (N, C, H, W) -> (N, 3, S, S) network input, as the run's data was prepared."""
        x = to_input(self.prepare(images), self.model.input_size, self.config.input_transform)  # (N,C,S,S)
        return as_rgb(x).to(self.device)

    @torch.no_grad()
    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities, float32 (N, K)."""
        self.model.eval()
        bs = eval_batch_size(self.model.input_size)
        out = [F.softmax(self.model(self.inputs(images[i:i + bs]))[0], dim=1).cpu() for i in range(0, len(images), bs)]
        return torch.cat(out).numpy() if out else np.zeros((0, self.model.num_classes), np.float32)

    def explain(self, images: np.ndarray, classes: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities (N, K), maps (N, S, S) in [0, 1] at the prepared images' size,
        :meth:`prepare`): the CAM (Grad-CAM where the network has no GAP head) of
        ``classes``, by default of each image's predicted class, min-max normalised per image."""
        self.model.eval()
        probs, maps, bs = [], [], eval_batch_size(self.model.input_size)
        for i in range(0, len(images), bs):
            x = self.inputs(images[i:i + bs]).requires_grad_(True)  # (B,3,S,S)
            with torch.no_grad():
                p = F.softmax(self.model(x)[0], dim=1)  # (B,K)
            y = p.argmax(1) if classes is None else torch.as_tensor(classes[i:i + bs], device=self.device)
            _, att = attention(self.model, x, y, create_graph=False)  # (B,h,w)
            att = to_image(minmax_normalize(att.detach()), x.shape[-2:] if self.size is None else (self.size,) * 2)
            probs.append(p.cpu())
            maps.append(att.clamp(0, 1).cpu())
        return torch.cat(probs).numpy(), torch.cat(maps).numpy()


def load_run(path: str | os.PathLike, device: str = "cpu") -> TrainedRun:
    """The finished run in folder ``path`` (the one holding its record). Its weights are
    checked against the SHA-256 the record keeps, so damaged weights never predict."""
    path = Path(path)
    if not has_record(path):
        raise L2LError(_not_a_run(path))
    fix = f"delete the run folder {path} and train it again"
    record = read_record(path, fix)
    cfg = record.config.validate()
    spec = DATASETS[cfg.dataset] if cfg.dataset in DATASETS else None
    if record.classes:  # also for a data set imported elsewhere
        names, channels = record.classes, record.dataset.get("channels", 3)
    else:  # a run recorded before records named their classes
        spec = DATASETS.get(cfg.dataset)
        names, channels = spec.classes, spec.channels
    size = record.dataset.get("size") or (spec.size if spec else None)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise L2LError(f"run {path} has its record but no {WEIGHTS_FILE}; {fix}")
    if record.weights_sha256 is not None and sha256_file(weights) != record.weights_sha256:
        raise L2LError(f"{weights} is damaged: its SHA-256 differs from the one its run recorded; {fix}")
    model = build_backbone(cfg.backbone, len(names), size=cfg.network_size)
    state = torch_load(weights, fix, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise L2LError(f"{weights} does not fit a {cfg.backbone} for {cfg.dataset} "
                       f"({str(e).splitlines()[0]}); {fix}") from None
    return TrainedRun(path, model.to(pick_device(device)).eval(), cfg, record.raw.get("maps", {}), record, names,
                      channels, size)


def _not_a_run(path: Path) -> str:
    """Why ``path`` holds no finished run, and the folder to pass instead."""
    seeds = sorted(p.name for p in path.glob("seed*") if p.is_dir()) if path.is_dir() else []
    if seeds:
        return (f"{path} is a run group, one folder per seed ({', '.join(seeds)}); "
                f"pass one of them, e.g. {path / seeds[0]}")
    what = "has not finished (no run record); rerun its training command to finish it" if path.is_dir() \
        else "does not exist"
    return f"run folder {path} {what}; pass a folder like runs/DATASET/GROUP/seedN"


def read_images(trained: TrainedRun, files: Sequence[Path]) -> np.ndarray:
    """The files prepared as the run's data set was imported (``data.images.read_fitted``),
    uint8 (N, C, S, S): the same pixels the run's test accuracy was measured on."""
    prepared = []
    for f in files:
        a = read_image(f) if trained.size is None else read_fitted(f, trained.size)
        if isinstance(a, str):
            raise L2LError(f"cannot read image {f}: {a}; remove it or convert it to PNG/JPEG")
        prepared.append(a)
    if len({a.shape for a in prepared}) > 1:  # no stored size known (an old record): one size per batch
        raise L2LError("the images differ in size and this run's record does not say its data set's size; "
                       "resize them to one size first")
    return trained.prepare(np.stack(prepared))


def labels_from_folders(names: Sequence[str], classes: Sequence[str]) -> np.ndarray | None:
    """Each image's class from its sub-folder (``dog/001.png``), when every image sits in a
    folder named after a class of the run; else None."""
    folders = [Path(n).parts[0] if len(Path(n).parts) > 1 else None for n in names]
    if not names or any(f not in classes for f in folders):
        return None
    return np.array([list(classes).index(f) for f in folders])


def confusion(labels: np.ndarray, predicted: np.ndarray, k: int) -> np.ndarray:
    """(K, K) counts: row = true class, column = predicted class."""
    return np.bincount(labels * k + predicted, minlength=k * k).reshape(k, k)


def scores_text(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> list[str]:
    """Accuracy, per-class accuracy and the confusion matrix, as lines to print."""
    m = confusion(labels, probs.argmax(1), len(classes))
    per_class = [f"{c} {100 * m[i, i] / m[i].sum():.2f}" for i, c in enumerate(classes) if m[i].sum()]
    width = max(len(c) for c in classes)
    rows = [" " * width + " " + " ".join(f"{c[:8]:>8}" for c in classes)]
    rows += [f"{c:>{width}} " + " ".join(f"{v:>8d}" for v in m[i]) for i, c in enumerate(classes)]
    return [f"accuracy {100 * np.trace(m) / m.sum():.2f} % on {int(m.sum())} images from class folders",
            f"per class: {', '.join(per_class)}", "confusion (rows: true class, columns: predicted):", *rows]


def predictions_csv(names: Sequence[str], probs: np.ndarray, class_names: Sequence[str]) -> bytes:
    """One row per image: file, predicted class, its probability, then every class's probability."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "prediction", "probability", *[f"p_{c}" for c in class_names]])
    for name, p in zip(names, probs):
        k = int(p.argmax())
        w.writerow([name, class_names[k], f"{p[k]:.6f}", *[f"{v:.6f}" for v in p]])
    return buf.getvalue().encode()


def write_predictions(out: str | os.PathLike, names: Sequence[str], probs: np.ndarray,
                      class_names: Sequence[str]) -> Path:
    return atomic_write_bytes(out, predictions_csv(names, probs, class_names))


def write_overlay(out: str | os.PathLike, image: np.ndarray, cam: np.ndarray, title: str) -> Path:
    """Three panels as one PNG: the image as the network saw it, the CAM over a grey copy
    (so no colour of the image reads as a CAM value) and the CAM alone, with a colour bar."""
    from .plotting import pyplot, save_figure, to_display

    plt = pyplot()
    shown = to_display(np.asarray(image)[None])[0]  # (H,W,3)
    grey = shown.mean(axis=2)  # (H,W)
    fig, axes = plt.subplots(1, 3, figsize=(7.6, 2.6), dpi=120)
    axes[0].imshow(shown, interpolation="nearest")
    axes[1].imshow(grey, cmap="gray", interpolation="nearest")
    axes[1].imshow(cam, cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
    heat = axes[2].imshow(cam, cmap="jet", vmin=0, vmax=1, interpolation="bilinear")
    for ax, label in zip(axes, ("image", "CAM over grey", "CAM")):
        ax.set_axis_off()
        ax.set_title(label, fontsize=7)
    fig.colorbar(heat, ax=axes[2], fraction=0.046, pad=0.04, label="CAM (min-max per image)")
    fig.suptitle(title, fontsize=8)
    return save_figure(fig, out)
