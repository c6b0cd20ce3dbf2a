"""A picture of a data set: one train and one test example per class, so the colour
flip of ColorMNIST and the decoy flip of DecoyMNIST are visible at a glance."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import L2LError, os_error
from ..plotting import figure_format, pyplot, save_figure, to_display
from .store import Dataset


def check_out_file(out: str | os.PathLike, flag: str = "--out") -> Path:
    """A file path a figure can be written to: not a folder, not below a file."""
    out = Path(out)
    if out.is_dir():
        raise L2LError(f"{flag} {out} is a folder; pass a file name such as {out / 'preview.png'}")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise L2LError(f"cannot write {flag} {out}: {parent} is a file, not a folder; pick another {flag}")
            break
    return out


def check_figure_file(out: str | os.PathLike, flag: str = "--out") -> Path:
    """:func:`check_out_file` for a figure, whose name must end in a format it can be drawn in."""
    out = check_out_file(out, flag)
    figure_format(out)
    return out


def write_figure(fig, out: str | os.PathLike) -> Path:
    """:func:`save_figure` to a path its caller checked with :func:`check_figure_file` before
    drawing; an OS failure (permissions, full disk) is one line."""
    try:
        return save_figure(fig, out)
    except OSError as e:
        raise os_error(e) from None


def _first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    return np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])


def preview_dataset(ds: Dataset, out: str | os.PathLike, per_class: int = 2) -> Path:
    check_figure_file(out)
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
    return write_figure(fig, out)
