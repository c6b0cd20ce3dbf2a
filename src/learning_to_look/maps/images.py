"""Ordinary images (any size, RGB or grey) as input to the same generators, so the
map stage is not tied to MNIST. Images of one size are batched together; each map
comes back at its own image's size."""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.images import image_files, read_image
from ..errors import L2LError
from ..io import atomic_write_bytes
from .base import MapGenerator, validate_maps
from .weights import loading_progress

@dataclass(frozen=True)
class ImageSplit:
    """An :class:`~learning_to_look.maps.base.ImageSet` of ordinary images: uint8
    (N, 3, H, W) plus file names, and nothing a built data set knows besides (no
    clean digit, no decoy), so sources that need those refuse it in one line."""

    name: str
    images: np.ndarray
    names: tuple[str, ...]
    indices: np.ndarray | None = None

    @property
    def digits(self) -> None:
        return None

    @property
    def is_test(self) -> bool:
        """Never the held-out test split: its images are the user's own."""
        return False

    def decoy_masks(self) -> None:
        return None

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx: np.ndarray, name: str | None = None) -> "ImageSplit":
        idx = np.asarray(idx)
        base = self.indices if self.indices is not None else np.arange(len(self))
        return ImageSplit(name or self.name, self.images[idx], tuple(self.names[i] for i in idx), base[idx])


def load_image_folder(folder: str | os.PathLike) -> list[ImageSplit]:
    """One :class:`ImageSplit` per image size found under ``folder``; an image is named by
    its path below ``folder`` (``cat/001.jpg``), so names stay unique across sub-folders."""
    groups: dict[tuple[int, int], list[tuple[str, np.ndarray]]] = defaultdict(list)
    for f in image_files(folder):
        img = read_image(f)
        groups[img.shape[1:]].append((f.relative_to(folder).as_posix(), img))
    return [ImageSplit(f"images-{h}x{w}", np.stack([a for _, a in items]), tuple(n for n, _ in items))
            for (h, w), items in groups.items()]


def check_out_folder(out_dir: str | os.PathLike, flag: str = "--out") -> Path:
    """A folder that maps can be written into: not a file, not below a file."""
    out_dir = Path(out_dir)
    for p in (out_dir, *out_dir.parents):
        if p.exists():
            if not p.is_dir():
                where = "is a file" if p == out_dir else f"lies below the file {p}"
                raise L2LError(f"{flag} {out_dir} {where}, not a folder; pass a folder for the map PNGs")
            break
    return out_dir


def folder_maps(generator: MapGenerator, folder: str | os.PathLike,
                out_dir: str | os.PathLike | None = None, *, progress: bool = True) -> dict[str, np.ndarray]:
    """Maps for every image under ``folder`` at its own size, keyed by its path below it;
    with ``out_dir`` each is also written there as a grey PNG (0..255) at the same path."""
    if out_dir is not None:
        check_out_folder(out_dir)
    generator.check_ready()
    result: dict[str, np.ndarray] = {}
    with loading_progress(progress):
        for split in load_image_folder(folder):
            generator.prepare(split)
            maps = validate_maps(generator.generate(split), len(split), split.images.shape[-2:], generator.name)
            result.update(zip(split.names, maps))
    if out_dir is not None:
        for name, m in result.items():
            write_png(Path(out_dir) / Path(name).with_suffix(".png"), m)  # the image's sub-folder kept
    return dict(sorted(result.items()))


def write_png(path: Path, m: np.ndarray) -> Path:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.round(np.clip(m, 0, 1) * 255).astype(np.uint8)).save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def as_split(images: Any, name: str = "images") -> ImageSplit:
    """Wrap an in-memory uint8 (N, C, H, W) array for a generator."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise L2LError(f"images must be uint8 (N, C, H, W), got {images.dtype} {images.shape}")
    return ImageSplit(name, images, tuple(str(i) for i in range(len(images))))
