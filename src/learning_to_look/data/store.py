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
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import L2LError, corrupt_file
from ..io import TMP_SUFFIX, atomic_save_npz, folder_lock, folder_option, sha256_array, sha256_text
from .builders import DATASETS, SPLITS, DatasetSpec, square_masks
from .mnist import load_mnist

DATA_DIR_ENV = "L2L_DATA_DIR"
FORMAT_VERSION = 1
#: How long a build waits for another process building the same data set (one build takes seconds).
BUILD_WAIT_SECONDS = 300.0

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
    digits: np.ndarray | None  # None for an imported set without masks
    corners: np.ndarray | None = None
    decoy_size: int = 0
    indices: np.ndarray | None = None
    shades: np.ndarray | None = None  # DecoyMNIST-RRR: the digit whose shade the swatch has (the label in training)
    groups: np.ndarray | None = None  # (N,) group of each image in spurious-correlation data (shapes-bg)
    files: tuple[str, ...] | None = None  # an imported set's original file names, in order
    masked: np.ndarray | None = None  # (N,) bool: which images have an object mask; None when all (or none) do

    @property
    def is_test(self) -> bool:
        return self.name == "test"

    @property
    def names(self) -> tuple[str, ...] | None:
        """The original file names of an imported set; None for a built one, whose images
        are keyed by :attr:`indices`."""
        return self.files

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray, name: str | None = None) -> "Split":
        idx = np.asarray(idx)
        base = self.indices if self.indices is not None else np.arange(len(self))
        def rows(a):
            return None if a is None else a[idx]

        return Split(name or self.name, self.images[idx], self.labels[idx], rows(self.digits), rows(self.corners),
                     self.decoy_size, base[idx], rows(self.shades), rows(self.groups),
                     None if self.files is None else tuple(self.files[i] for i in idx), rows(self.masked))

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
    val_mask: np.ndarray | None = None  # (N_train,) bool: the given validation images of an imported set

    @property
    def content_hash(self) -> str:
        return content_hash(self.header)


def content_hash(header: dict) -> str:
    """What a data file holds, as one hash: of its arrays' SHA-256s (verified on every
    load), so two files with the same images, labels and masks hash alike."""
    return sha256_text(json.dumps(header.get("arrays", {}), sort_keys=True))


def data_folder(data_dir: str | os.PathLike | None = None) -> Path:
    """The data folder; a file in its place is a one-line error."""
    return folder_option(data_dir or default_data_dir(), "--data-dir", "the data sets", DATA_DIR_ENV)


def dataset_path(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    return Path(data_dir or default_data_dir()) / f"{name}.npz"


def build_command(name: str, path: Path, force: bool = False) -> str:
    """The command that (re)builds ``name`` where ``path`` lives (imports it, for an imported
    set; a name no built set has is an import whose header, and so its source, is unknown)."""
    spec = DATASETS[name] if name in DATASETS else None
    again = " --force" if force else ""
    if spec is None or spec.imported_from is not None:
        source = spec.imported_from if spec is not None else "YOUR_IMAGES"
        return f"`l2l data import {name} --from {source}{again} --data-dir {path.parent}`"
    return f"`l2l data build {name}{again} --data-dir {path.parent}`"


def build_dataset(name: str, data_dir: str | os.PathLike | None = None, mnist_dir: str | None = None) -> Path:
    """Build ``name`` from verified MNIST and write it atomically; returns the file.

    The data set's lock is held while building: a second build of the same data set
    waits for the first and then uses its file (parallel workers need the same data),
    other data sets build beside it, and the temporary files a killed build left are
    removed first."""
    spec = DATASETS.get(name)
    folder = data_folder(data_dir)
    path = dataset_path(name, folder)
    if spec.build is None:
        raise L2LError(f"data set {name} is imported, not built; run {build_command(name, path, force=True)}")
    t0 = time.perf_counter()
    mnist = load_mnist(mnist_dir) if spec.uses_mnist else None  # first: a bad --mnist-dir fails before anything
    existed = path.exists()
    with folder_lock(folder, f"`l2l data build {spec.name}`", name=f".{path.name}.lock", wait=BUILD_WAIT_SECONDS):
        if path.exists() and not existed:
            return path  # another process built it while we waited for its lock
        for tmp in folder.glob(f".{path.name}.*{TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)  # we hold the lock: a dead build's half-written file
        arrays = spec.build(mnist)
        header = {
            "dataset": spec.name,
            "protocol": spec.protocol,
            "protocol_version": spec.version,
            "format_version": FORMAT_VERSION,
            "description": spec.description,
            "decoy_size": spec.decoy_size,
            "mnist_source": mnist.source if mnist else "none (synthetic, seeded)",
            "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype), "sha256": sha256_array(v)}
                       for k, v in arrays.items()},
            "build_seconds": round(time.perf_counter() - t0, 3),
        }
        atomic_save_npz(path, header=np.array(json.dumps(header)), **arrays)
    return path


class DatasetMismatch(L2LError):
    """A sound file that holds another data set (or another protocol) than the one asked
    for: never rebuilt over silently, since the user put it there."""


_FILE_ERRORS = (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError, zlib.error)


def read_header(path: Path, name: str | None = None) -> dict:
    """The JSON header of a data file; an unreadable file or header is named as corrupt."""
    fix = f"rebuild it with {build_command(name or Path(path).stem, Path(path), force=True)}"
    try:
        with np.load(path, allow_pickle=False) as z:
            if "header" not in z.files:
                raise corrupt_file(path, "no header: not a file written by `l2l data build`", fix)
            header = json.loads(str(z["header"]))
    except _FILE_ERRORS as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise corrupt_file(path, f"{type(e).__name__}", fix) from None
    if not isinstance(header, dict) or not isinstance(header.get("arrays"), dict) or not all(
            isinstance(m, dict) and isinstance(m.get("sha256"), str) and isinstance(m.get("shape"), list)
            for m in header["arrays"].values()):
        raise corrupt_file(path, "its header is not a data-set header", fix)
    return header


def expected_shapes(spec: DatasetSpec) -> dict[str, tuple]:
    """key -> expected shape, with -1 for the image count N, per split."""
    shapes = {}
    for s in SPLITS:
        shapes |= {f"x_{s}": (-1, spec.channels, spec.size, spec.size), f"y_{s}": (-1,)}
        if spec.has_objects:
            shapes[f"digit_{s}"] = (-1, spec.size, spec.size)
        if spec.decoy_size:
            shapes[f"corner_{s}"] = (-1, 2)
        if spec.group_names:
            shapes[f"group_{s}"] = (-1,)
        if spec.partial_masks:
            shapes[f"masked_{s}"] = (-1,)
    if spec.has_val:
        shapes["val_train"] = (-1,)
    return shapes


def _shape_problem(spec: DatasetSpec, shapes: dict[str, tuple]) -> str | None:
    """What in ``shapes`` (key -> shape) does not fit ``spec``, or None."""
    for s in SPLITS:
        n = None
        for key, want in expected_shapes(spec).items():
            if not key.endswith(f"_{s}"):
                continue
            got = shapes.get(key)
            if got is None:
                return f"it has no array {key}"
            got = tuple(got)
            if len(got) != len(want) or any(w not in (-1, g) for w, g in zip(want, got)):
                dims = ["N" if w == -1 else str(w) for w in want]
                pretty = f"({dims[0]},)" if len(dims) == 1 else f"({', '.join(dims)})"
                return f"array {key} has shape {got}, expected {pretty} for {spec.name}"
            if n is None:
                n = got[0]
            elif got[0] != n:
                return f"array {key} has {got[0]} rows but the other {s} arrays have {n}"
    return None


def _check_header(path: Path, header: dict, spec: DatasetSpec) -> None:
    """The header must describe ``spec``: its name, protocol, versions and array shapes. A
    file of another data set is a :class:`DatasetMismatch`; one of an older protocol
    version of the same data set is stale (rebuilt when building is allowed)."""
    fix = f"delete {path} so that it is rebuilt, or run {build_command(spec.name, path, force=True)}"
    named = header.get("dataset")
    if named != spec.name:
        raise DatasetMismatch(f"data file {path} holds the {named or 'unnamed'} data set, not {spec.name}; {fix}")
    if header.get("protocol") != spec.protocol or header.get("protocol_version") != spec.version \
            or header.get("format_version") != FORMAT_VERSION or header.get("decoy_size") != spec.decoy_size:
        raise L2LError(f"data file {path} was built by another protocol version of {spec.name} "
                              f"(protocol v{header.get('protocol_version')}, format v{header.get('format_version')}; "
                              f"this code builds v{spec.version}, format v{FORMAT_VERSION}); {fix}")
    problem = _shape_problem(spec, {k: m["shape"] for k, m in header["arrays"].items()})
    if problem:
        raise DatasetMismatch(f"data file {path} does not hold {spec.name}: {problem}; {fix}")


def _read_verified(path: Path, spec: DatasetSpec) -> tuple[dict, dict[str, np.ndarray]]:
    header = read_header(path, spec.name)
    _check_header(path, header, spec)
    fix = f"rebuild it with {build_command(spec.name, path, force=True)}"
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in header["arrays"]}
    except _FILE_ERRORS as e:
        raise corrupt_file(path, f"{type(e).__name__}", fix) from None
    for k, meta in header["arrays"].items():
        if arrays[k].dtype != np.uint8 or sha256_array(arrays[k]) != meta["sha256"]:
            raise L2LError(f"data file {path}: array {k} fails its SHA-256 check; {fix}")
    problem = _shape_problem(spec, {k: a.shape for k, a in arrays.items()})
    if problem:
        raise DatasetMismatch(f"data file {path} does not hold {spec.name}: {problem}; {fix}")
    return header, arrays


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, build: bool = True,
                 mnist_dir: str | None = None) -> Dataset:
    """Load a built data set, building it first when missing (``build=True``).

    A file that fails verification is reported, never used; with ``build=True`` a
    corrupt file is rebuilt from MNIST once. A sound file holding another data set (a
    copy under the wrong name) or another protocol is an error in both modes: it is the
    user's file, so the fix (delete it, or ``l2l data build NAME --force``) is theirs.
    Read-only callers (``l2l data info``, ``l2l maps check``) pass ``build=False``.
    """
    from .imported import dataset_spec

    spec = dataset_spec(name, data_dir)
    path = dataset_path(name, data_folder(data_dir))
    if not path.exists():
        if not build:
            raise L2LError(f"data set {name} is not built in {path.parent}; run {build_command(name, path)}")
        build_dataset(name, data_dir, mnist_dir)
    if path.is_dir():
        raise L2LError(f"{path} is a folder, not a data file; move it away and run {build_command(name, path)}")
    try:
        header, arrays = _read_verified(path, spec)
    except DatasetMismatch:
        raise
    except L2LError as e:
        if not build or spec.imported_from is not None:  # an import is rebuilt from its source by the user
            raise
        log.warning("%s; rebuilding it now", e)
        build_dataset(name, data_dir, mnist_dir)
        header, arrays = _read_verified(path, spec)

    def split(s: str) -> Split:
        files = header.get("files", {}).get(s)
        return Split(s, arrays[f"x_{s}"], arrays[f"y_{s}"].astype(np.int64), arrays.get(f"digit_{s}"),
                     arrays.get(f"corner_{s}"), spec.decoy_size, shades=arrays.get(f"shade_{s}"),
                     groups=None if f"group_{s}" not in arrays else arrays[f"group_{s}"].astype(np.int64),
                     files=None if files is None else tuple(files),
                     masked=None if f"masked_{s}" not in arrays else arrays[f"masked_{s}"].astype(bool))

    val = arrays.get("val_train")
    return Dataset(name, split("train"), split("test"), header, None if val is None else val.astype(bool))
