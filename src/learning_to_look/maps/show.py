"""A picture of a map set: each image next to its map overlaid, so inverted maps,
decoy-hugging maps and artefact blobs are visible at a glance."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data.preview import save_figure


def _rgb(image: np.ndarray) -> np.ndarray:
    """uint8 (C, H, W) -> (H, W, 3)."""
    image = np.asarray(image)
    return np.repeat(image, 3, 0).transpose(1, 2, 0) if image.shape[0] == 1 else image[:3].transpose(1, 2, 0)


def overlay_grid(images: Sequence[np.ndarray], maps: Sequence[np.ndarray], out: str | os.PathLike, title: str = "",
                 labels: Sequence[str] | None = None, cols: int = 8) -> Path:
    """Rows of (image, image with map in a heat colour map) pairs, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    cols = max(1, min(cols, n))
    rows = max(1, int(np.ceil(n / cols)))
    fig, axes = plt.subplots(2 * rows, cols, figsize=(cols * 1.1, rows * 2.3 + 0.4), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i, (img, m) in enumerate(zip(images, maps)):
        r, c = 2 * (i // cols), i % cols
        axes[r, c].imshow(_rgb(img), interpolation="nearest")
        axes[r + 1, c].imshow(_rgb(img), interpolation="nearest")
        axes[r + 1, c].imshow(m, cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="nearest")
        if labels is not None:
            axes[r, c].set_title(str(labels[i])[:14], fontsize=6)
    fig.suptitle(title, fontsize=7)
    return save_figure(fig, out)
