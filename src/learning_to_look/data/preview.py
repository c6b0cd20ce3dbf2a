"""A picture of a data set: one train and one test example per class, so the colour
flip of ColorMNIST and the decoy flip of DecoyMNIST are visible at a glance."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from ..io import atomic_write_bytes
from .store import Dataset


def _first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    return np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])


def to_display(images: np.ndarray) -> np.ndarray:
    """uint8 (N, C, H, W) -> (N, H, W, 3) for imshow."""
    images = np.asarray(images)
    return np.repeat(images, 3, axis=1).transpose(0, 2, 3, 1) if images.shape[1] == 1 else images.transpose(0, 2, 3, 1)


def save_figure(fig, out: str | os.PathLike) -> Path:
    """Render a matplotlib figure to PNG and write it atomically."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(out, buf.getvalue())


def preview_dataset(ds: Dataset, out: str | os.PathLike, per_class: int = 2) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for split in (ds.train, ds.test):
        idx = _first_per_class(split.labels, per_class)
        rows.append((split.name, to_display(split.images[idx]), split.labels[idx]))
    n_cols = 10 * per_class // 2 if per_class > 1 else 10
    n_rows = sum(int(np.ceil(len(lab) / n_cols)) for _, _, lab in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(n_cols * 0.9, n_rows * 1.05 + 0.4), dpi=100, squeeze=False)
    r = 0
    for name, imgs, labels in rows:
        for i, (img, y) in enumerate(zip(imgs, labels)):
            ax = axes[r + i // n_cols, i % n_cols]
            ax.imshow(img, interpolation="nearest")
            ax.set_title(f"{name} y={y}", fontsize=7)
        r += int(np.ceil(len(labels) / n_cols))
    for ax in axes.flat:
        ax.set_axis_off()
    fig.suptitle(f"{ds.name}: {ds.header.get('protocol', '')}", fontsize=9)
    return save_figure(fig, out)
