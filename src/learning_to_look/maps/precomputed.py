"""Maps made elsewhere: a folder of PNGs, an ``.npy`` array, an ``.npz`` archive, or a
folder of the ``.pth`` files GALS's ``extract_attention.py`` writes.

This is how the reference pipeline's WeCLIP+ masks come in: its ``prediction_cmap``
PNGs are colour-mapped hard masks on black, so any non-black pixel is foreground.
GALS files hold one attention map per prompt at the patch grid; they are brought to the
image size and combined as GALS's training code combines them (``maps/gals.py``).
Keys are image indices (digits at the end of a file stem, e.g. ``train_00017.png``)
or, for image folders, file stems. Every mismatch is an error naming the first few
offenders, since a silently shifted or partial map set would train the wrong thing.
"""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import L2LError, corrupt_file
from ..io import load_npy
from .base import ImageSet, MapGenerator, check_choice, option, register_map_source
from .gals import read_gals_file

PNG_MODES = ("nonblack", "grey")
KEYS = ("index", "name")
_SHOW = 5
#: What reading one array out of an .npz can raise when the archive is damaged.
_ARRAY_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError)

#: How to fix an array file of maps that cannot be used.
ARRAY_FIX = "re-export the maps as an .npy of shape (N, H, W) or an .npz with one (H, W) map per image"


def _first(items: list, n: int = _SHOW) -> str:
    head = ", ".join(str(x) for x in items[:n])
    return head + (f" ... ({len(items)} in all)" if len(items) > n else "")


def split_keys(split: ImageSet, key: str) -> list[str]:
    """The key of each image in ``split``: its index in the full split, or its name."""
    if key == "name":
        if split.names is None:
            raise L2LError("maps keyed by file name need an image folder; use --key index for built data sets")
        return [str(Path(n).stem) for n in split.names]
    idx = split.indices if split.indices is not None else np.arange(len(split.images))  # (N,)
    return [str(int(i)) for i in idx]


def _file_key(stem: str, key: str) -> str | None:
    if key == "name":
        return stem
    m = re.search(r"(\d+)$", stem)
    return str(int(m.group(1))) if m else None


def _to_unit(a: np.ndarray, what: str) -> np.ndarray:
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    a = a.astype(np.float32)
    if a.size and (not np.isfinite(a).all() or a.min() < 0 or a.max() > 1):
        raise L2LError(f"{what} holds values outside [0, 1]; store uint8 0..255 or floats in [0, 1]")
    return a


def read_png_map(path: Path, mode: str) -> np.ndarray:
    """(H, W) float in [0, 1]: ``nonblack`` -> 1 wherever any channel is > 0, ``grey`` -> luminance / 255."""
    from PIL import Image

    with Image.open(path) as im:
        if mode == "grey":
            return np.asarray(im.convert("L"), dtype=np.float32) / 255.0
        arr = np.asarray(im.convert("RGB"))
    return (arr.max(axis=-1) > 0).astype(np.float32)


@dataclass
class PrecomputedMaps(MapGenerator):
    """Maps read from ``path`` (PNG folder, .npy or .npz), keyed by ``key``."""

    name: ClassVar[str] = "precomputed"
    kind: ClassVar[str] = "external"
    summary: ClassVar[str] = "maps made elsewhere and read from files; what made them is not known here"
    path: str = option("", "Folder of PNGs or of GALS .pth files, or an .npy/.npz file, with one map per image.")
    key: str = option("index", f"How files are matched to images: {' | '.join(KEYS)}.")
    png_mode: str = option("nonblack", f"How a PNG reads as a map: {' | '.join(PNG_MODES)} (nonblack reads WeCLIP+ "
                                       "prediction_cmap).")

    def __post_init__(self) -> None:
        if isinstance(self.path, os.PathLike):
            self.path = os.fspath(self.path)
        if not isinstance(self.path, str) or not self.path:
            raise L2LError("the precomputed backend needs --path to a folder of PNGs or an .npy/.npz file")
        check_choice("key", self.key, KEYS)
        check_choice("png_mode", self.png_mode, PNG_MODES)
        if not Path(self.path).exists():
            raise L2LError(f"no precomputed maps at {self.path}; pass --path to a folder of PNGs or an .npy/.npz file")
        self.kind_of_source = _folder_kind(Path(self.path)) if Path(self.path).is_dir() else \
            Path(self.path).suffix.lower().lstrip(".")
        if self.kind_of_source not in ("png", "gals", "npy", "npz"):
            raise L2LError(f"precomputed maps must be a folder of PNGs or an .npy/.npz file, got {self.path}")
        self._check_array_file()

    def _check_array_file(self) -> None:
        """An .npy must hold (N, H, W) maps; an .npz must open and hold either one (N, H, W)
        array or one (H, W) map per key. Only headers are read here."""
        fix = ARRAY_FIX
        if self.kind_of_source == "npy":
            self._npy_maps()
        elif self.kind_of_source == "npz":
            with load_npy(self.path, fix) as z:
                names = list(z.files)
            if not names:
                raise corrupt_file(self.path, "an .npz archive with no arrays", fix)
            if len(names) == 1:
                shape = _npz_member_shape(self.path, names[0], fix)
                if len(shape) not in (2, 3):
                    raise L2LError(f"precomputed maps {self.path} hold one array of shape {shape}; expected "
                                   f"(N, H, W) maps, or one (H, W) map per key; {fix}")

    def _npy_maps(self) -> np.ndarray:
        """The .npy source, memory-mapped, refused unless it holds (N, H, W) maps."""
        arr = load_npy(self.path, ARRAY_FIX, mmap_mode="r")
        if arr.ndim != 3:
            raise L2LError(f"precomputed maps {self.path} hold an array of shape {arr.shape}; expected "
                           f"(N, H, W), one map per image; {ARRAY_FIX}")
        return arr

    def config(self) -> dict:
        """Content identity, not the path: the same maps moved keep their cache."""
        return {"source": self.kind_of_source, "key": self.key, "png_mode": self.png_mode,
                "content": self._content_hash()}

    def _content_hash(self) -> str:
        p = Path(self.path)
        h = hashlib.sha256()
        files = sorted(p.rglob("*.pth") if self.kind_of_source == "gals" else p.glob("*.png")) if p.is_dir() else [p]
        for f in files:
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]

    def _png_index(self) -> dict[str, Path]:
        index: dict[str, Path] = {}
        for f in sorted(Path(self.path).glob("*.png")):
            k = _file_key(f.stem, self.key)
            if k is not None:
                index[k] = f
        return index

    def _array_index(self) -> dict[str, Any]:
        """key -> loader; an .npy (or a single-array .npz) is keyed by row."""
        fix = ARRAY_FIX
        if self.kind_of_source == "npy":
            arr = self._npy_maps()
            return {str(i): (lambda i=i: arr[i]) for i in range(len(arr))}
        z = load_npy(self.path, fix)
        if len(z.files) == 1:
            try:
                arr = z[z.files[0]]
            except _ARRAY_ERRORS as e:
                raise corrupt_file(self.path, f"{type(e).__name__}: {str(e)[:80]}", fix) from None
            if arr.ndim == 3:
                return {str(i): (lambda i=i: arr[i]) for i in range(len(arr))}
        return {_file_key(Path(f).stem, self.key) or f: (lambda f=f: z[f]) for f in z.files}

    def _gals_index(self) -> dict[str, Path]:
        """key -> GALS file, found in sub-folders too (GALS mirrors the image folders)."""
        index: dict[str, Path] = {}
        for f in sorted(Path(self.path).rglob("*.pth")):
            k = _file_key(f.stem, self.key)
            if k in index:
                raise L2LError(f"GALS maps {index[k]} and {f} have the same key {k}; keep one map per image "
                               "under --path")
            if k is not None:
                index[k] = f
        return index

    def _index(self) -> dict[str, Any]:
        if self.kind_of_source == "gals":
            return self._gals_index()
        return self._png_index() if self.kind_of_source == "png" else self._array_index()

    def prepare(self, split: ImageSet, workdir: Path | None = None) -> None:
        """Check the key set against the whole split: missing and extra keys both fail."""
        wanted = split_keys(split, self.key)
        have = self._index()
        missing = [k for k in wanted if k not in have]
        if missing:
            keys = "image indices" if self.key == "index" else "file names"
            raise L2LError(f"precomputed maps {self.path} lack {len(missing)} of {len(wanted)} images: "
                           f"{_first(missing)}; regenerate them for this split (keys are {keys})")
        extra = sorted(set(have) - set(wanted), key=lambda k: (len(k), k))
        if extra:
            raise L2LError(f"precomputed maps {self.path} have {len(extra)} keys not in split {split.name}: "
                           f"{_first(extra)}; point --path at the maps of this split only")

    def generate(self, split: ImageSet) -> np.ndarray:
        if split.indices is None:  # the whole split, not a chunk: check its key set first
            self.prepare(split)
        hw = tuple(np.asarray(split.images).shape[-2:])
        have = self._index()
        keys = split_keys(split, self.key)
        missing = [k for k in keys if k not in have]
        if missing:
            raise L2LError(f"precomputed maps {self.path} lack {len(missing)} images: {_first(missing)}; "
                           "regenerate them for this split")
        out, unreadable, wrong = np.zeros((len(keys), *hw), np.float32), [], []  # out: (N, H, W)
        for j, k in enumerate(keys):
            try:
                m = self._read(have[k], hw)
            except (*_ARRAY_ERRORS, SyntaxError):
                unreadable.append(k)
                continue
            if m.shape != hw:
                wrong.append(f"{k} {m.shape}")
                continue
            out[j] = m
        if unreadable:
            raise L2LError(f"{len(unreadable)} precomputed maps in {self.path} cannot be read: {_first(unreadable)}; "
                           "re-export them")
        if wrong:
            raise L2LError(f"{len(wrong)} precomputed maps in {self.path} are not {hw[0]}x{hw[1]}: {_first(wrong)}; "
                           "resize them to the image size")
        return out

    def _read(self, entry: Any, hw: tuple[int, int]) -> np.ndarray:
        """(H, W) float map in [0, 1] from an index entry: a PNG path, a GALS file (made ``hw``
        here, as GALS resizes its maps to the image) or an array loader."""
        if self.kind_of_source == "gals":
            return _to_unit(read_gals_file(entry, hw), str(entry))
        if self.kind_of_source == "png":
            return read_png_map(entry, self.png_mode)
        return _to_unit(np.asarray(entry()), self.path)


def _folder_kind(folder: Path) -> str:
    """``gals`` for a folder of GALS ``.pth`` files (and no PNGs), else ``png``."""
    if not any(folder.glob("*.png")) and any(folder.rglob("*.pth")):
        return "gals"
    return "png"


def _npz_member_shape(path: str, member: str, fix: str) -> tuple[int, ...]:
    """The shape in the .npy header of one member of an .npz, without reading its data."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open(member + ".npy" if member + ".npy" in zf.namelist()
                                                  else member) as f:
            version = np.lib.format.read_magic(f)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, _ = reader(f)
            return tuple(shape)
    except (*_ARRAY_ERRORS, RuntimeError) as e:
        raise corrupt_file(path, f"{type(e).__name__}: {str(e)[:80]}", fix) from None


register_map_source(PrecomputedMaps)
