"""Built data sets on disk: one compressed ``.npz`` per data set, hashed and atomic.

The file carries a JSON header with the protocol, its version and the SHA-256 of
every array; loading re-hashes, so a corrupt or stale file is never used silently.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import L2LError
from ..io import atomic_save_npz, sha256_array
from .builders import DATASETS, DatasetSpec, square_masks
from .mnist import load_mnist

DATA_DIR_ENV = "L2L_DATA_DIR"
FORMAT_VERSION = 1

log = logging.getLogger(__name__)


def default_data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV) or "data")


@dataclass(frozen=True)
class Split:
    """One split held in memory as uint8 arrays.

    ``digits`` is the clean grey digit under any colour or decoy, the ground truth
    for the oracle map and for attention evaluation; ``corners`` locates the decoy.
    It is a :class:`~learning_to_look.maps.base.ImageSet`, what map generators read.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    digits: np.ndarray
    corners: np.ndarray | None = None
    decoy_size: int = 0
    indices: np.ndarray | None = None

    @property
    def is_test(self) -> bool:
        return self.name == "test"

    @property
    def names(self) -> None:
        """No file names: images of a built data set are keyed by :attr:`indices`."""
        return None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray, name: str | None = None) -> "Split":
        idx = np.asarray(idx)
        base = self.indices if self.indices is not None else np.arange(len(self))
        return Split(name or self.name, self.images[idx], self.labels[idx], self.digits[idx],
                     None if self.corners is None else self.corners[idx], self.decoy_size, base[idx])

    def decoy_masks(self) -> np.ndarray | None:
        """Boolean (N, 28, 28) decoy squares, or None for data sets without a decoy."""
        if self.corners is None:
            return None
        return square_masks(self.corners, self.decoy_size, self.images.shape[-1])


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    test: Split
    header: dict = field(default_factory=dict)


def dataset_path(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    return Path(data_dir or default_data_dir()) / f"{name}.npz"


def build_dataset(name: str, data_dir: str | os.PathLike | None = None, mnist_dir: str | None = None) -> Path:
    """Build ``name`` from verified MNIST and write it atomically; returns the file."""
    spec = DATASETS.get(name)
    t0 = time.perf_counter()
    mnist = load_mnist(mnist_dir)
    arrays = spec.build(mnist)
    header = {
        "dataset": spec.name,
        "protocol": spec.protocol,
        "protocol_version": spec.version,
        "format_version": FORMAT_VERSION,
        "description": spec.description,
        "decoy_size": spec.decoy_size,
        "mnist_source": mnist.source,
        "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype), "sha256": sha256_array(v)}
                   for k, v in arrays.items()},
        "build_seconds": round(time.perf_counter() - t0, 3),
    }
    path = dataset_path(name, data_dir)
    atomic_save_npz(path, header=np.array(json.dumps(header)), **arrays)
    return path


def read_header(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            return json.loads(str(z["header"]))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise L2LError(f"data file {path} is corrupt ({type(e).__name__}); "
                       "rebuild it with `l2l data build --force`") from None


def _read_verified(path: Path, spec: DatasetSpec) -> tuple[dict, dict[str, np.ndarray]]:
    header = read_header(path)
    fix = f"rebuild it with `l2l data build {spec.name} --force`"
    if header.get("protocol_version") != spec.version or header.get("format_version") != FORMAT_VERSION:
        raise L2LError(f"data file {path} was built by another protocol version; {fix}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in header["arrays"]}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise L2LError(f"data file {path} is corrupt ({type(e).__name__}); {fix}") from None
    for k, meta in header["arrays"].items():
        if sha256_array(arrays[k]) != meta["sha256"]:
            raise L2LError(f"data file {path}: array {k} fails its SHA-256 check; {fix}")
    return header, arrays


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, build: bool = True,
                 mnist_dir: str | None = None) -> Dataset:
    """Load a built data set, building it first when missing (``build=True``).

    A file that fails verification is reported, never used; with ``build=True`` a
    stale or corrupt file is rebuilt from MNIST once.
    """
    spec = DATASETS.get(name)
    path = dataset_path(name, data_dir)
    if not path.exists():
        if not build:
            raise L2LError(f"data set {name} is not built in {path.parent}; run `l2l data build {name}`")
        build_dataset(name, data_dir, mnist_dir)
    try:
        header, arrays = _read_verified(path, spec)
    except L2LError as e:
        if not build:
            raise
        log.warning("%s; rebuilding it now", e)
        build_dataset(name, data_dir, mnist_dir)
        header, arrays = _read_verified(path, spec)

    def split(s: str) -> Split:
        return Split(s, arrays[f"x_{s}"], arrays[f"y_{s}"].astype(np.int64), arrays[f"digit_{s}"],
                     arrays.get(f"corner_{s}"), spec.decoy_size)

    return Dataset(name, split("train"), split("test"), header)
