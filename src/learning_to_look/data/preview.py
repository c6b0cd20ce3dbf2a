"""A picture of a data set: one train and one test example per class, so the colour
flip of ColorMNIST and the decoy flip of DecoyMNIST are visible at a glance."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..plotting import pyplot, save_figure, to_display
from .store import Dataset


def _first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    return np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])


def preview_dataset(ds: Dataset, out: str | os.PathLike, per_class: int = 2) -> Path:
    plt = pyplot()
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
