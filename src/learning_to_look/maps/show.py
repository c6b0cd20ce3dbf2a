"""A picture of a map set: each image next to its map overlaid, so inverted maps,
decoy-hugging maps and artefact blobs are visible at a glance."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data.preview import check_figure_file, write_figure
from ..plotting import pyplot, to_display


def overlay_grid(images: Sequence[np.ndarray], maps: Sequence[np.ndarray], out: str | os.PathLike, title: str = "",
                 labels: Sequence[str] | None = None, cols: int = 8) -> Path:
    """Rows of (image, image with map in a heat colour map) pairs, written atomically."""
    check_figure_file(out)
    plt = pyplot()
    n = len(images)
    cols = max(1, min(cols, n))
    rows = max(1, int(np.ceil(n / cols)))
    fig, axes = plt.subplots(2 * rows, cols, figsize=(cols * 1.1, rows * 2.3 + 0.4), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i, (img, m) in enumerate(zip(images, maps)):
        r, c = 2 * (i // cols), i % cols
        shown = to_display(np.asarray(img)[None])[0]  # (H,W,3)
        axes[r, c].imshow(shown, interpolation="nearest")
        axes[r + 1, c].imshow(shown, interpolation="nearest")
        axes[r + 1, c].imshow(m, cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="nearest")
        if labels is not None:
            axes[r, c].set_title(str(labels[i])[:14], fontsize=6)
    fig.suptitle(title, fontsize=7)
    return write_figure(fig, out)
