"""Data: offline MNIST, the benchmark data sets, splits and the tensor pipeline."""

from .builders import (COMPONENTS, DATASETS, DIGIT_THRESHOLD, IRRELEVANT_CHOICES, PALETTE, SPLITS, DatasetSpec,
                       colorize, decoy_corners, hsl_palette, irrelevant_component, register, square_masks)
from .mnist import MNISTArrays, load_mnist
from .pipeline import as_rgb, batch_indices, colour_invariant, to_input
from .splits import train_val, train_val_indices
from . import synthetic  # noqa: F401  (registers shapes-bg)
from .store import (Dataset, DatasetMismatch, Split, build_dataset, data_folder, dataset_path, default_data_dir,
                    load_dataset, read_header)

__all__ = [
    "COMPONENTS", "DATASETS", "DIGIT_THRESHOLD", "IRRELEVANT_CHOICES", "PALETTE", "SPLITS", "Dataset",
    "DatasetMismatch", "DatasetSpec", "MNISTArrays", "irrelevant_component", "Split", "as_rgb", "batch_indices",
    "build_dataset", "colorize", "colour_invariant", "data_folder",
    "dataset_path", "decoy_corners", "default_data_dir", "hsl_palette", "load_dataset", "load_mnist", "read_header",
    "register", "square_masks", "to_input", "train_val", "train_val_indices",
]
