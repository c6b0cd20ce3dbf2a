"""The reference train/validation split (PROTOCOL 2.4), index for index."""

from __future__ import annotations

import numpy as np
import torch

from .store import Dataset, Split

N_TRAIN_FULL = 60_000
VAL_FRACTION = 0.16  # 9,600 of the 60,000 training images
SPLIT_SEED = 37


def train_val_indices(n: int = N_TRAIN_FULL, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """``random_split(range(n), [n - n_val, n_val], generator=manual_seed(seed))`` as index arrays.

    ``random_split`` is a ``randperm`` cut in two; computing it directly avoids
    materialising Subset objects.
    """
    n_val = round(n * VAL_FRACTION)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    return perm[: n - n_val], perm[n - n_val:]


def train_val_split_indices(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Positions in ``dataset.train`` of the training and the validation images (PROTOCOL
    2.4's seeded cut, or the val/ folder an imported set came with)."""
    if dataset.val_mask is not None:
        return np.flatnonzero(~dataset.val_mask), np.flatnonzero(dataset.val_mask)
    return train_val_indices(len(dataset.train))


def train_val(dataset: Dataset) -> tuple[Split, Split]:
    """The training and the in-distribution validation split (PROTOCOL 2.4's seeded cut, or
    the val/ folder an imported set came with). The test split is not touched here: it stays
    on ``dataset.test`` for the one final evaluation."""
    tr, va = train_val_split_indices(dataset)
    return dataset.train.subset(tr, "train"), dataset.train.subset(va, "val")
