"""Matplotlib plumbing shared by every figure: a headless pyplot, images made ready
for ``imshow``, and atomic writes (a killed process never leaves half a file)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from .errors import L2LError
from .io import atomic_write_bytes


#: What a figure's file name may end in: a raster image, or vector graphics for a paper.
FIGURE_FORMATS = ("png", "pdf", "svg")


def figure_format(out: str | os.PathLike) -> str:
    """The format ``out``'s suffix names; another suffix is refused rather than given a PNG
    under a name that says otherwise."""
    fmt = Path(out).suffix.lower().lstrip(".")
    if fmt not in FIGURE_FORMATS:
        raise L2LError(f"cannot write a figure to {Path(out).name}: end its name in "
                       f"{', '.join('.' + f for f in FIGURE_FORMATS)}, e.g. {Path(out).with_suffix('.png').name}")
    return fmt


def pyplot():
    """matplotlib.pyplot on the Agg backend: figures render without a display."""
    try:
        import matplotlib
    except ImportError:
        raise L2LError("figures need matplotlib, which is not installed; pip install 'learning-to-look[report]'") \
            from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_display(images: np.ndarray) -> np.ndarray:
    """uint8 (N, C, H, W) -> (N, H, W, 3) for imshow."""
    images = np.asarray(images)
    return np.repeat(images, 3, axis=1).transpose(0, 2, 3, 1) if images.shape[1] == 1 else images.transpose(0, 2, 3, 1)


def save_figure(fig, out: str | os.PathLike) -> Path:
    """Render a matplotlib figure in the format its name ends in, write it atomically and close it."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format=figure_format(out), dpi=fig.dpi, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(out, buf.getvalue())
