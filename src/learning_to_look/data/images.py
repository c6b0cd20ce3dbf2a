"""How an image file becomes pixels, the one way everywhere: import, predict, explain and
``load_run(...).predict`` prepare images with these functions, so a prediction is made
on what the run's test accuracy measured.

An image is decoded to 8 bits per channel (16-bit files scaled, not clipped), its
shorter side resized to the data set's size and the centre cropped (bilinear for
images, nearest for masks).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import L2LError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: Images above this many pixels are refused (``--max-pixels`` raises it): a decoded image
#: of 10^8 pixels takes 300 MB before it is shrunk, and PIL's own guard stops at 1.8 * 10^8.
MAX_PIXELS = 40_000_000
#: PIL modes of more than 8 bits per sample, and the value their full scale reaches.
WIDE_MODES = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}


def _to_8bit(im):
    """An 8-bit image with the same picture: 16-bit (and float) samples scaled to 0..255,
    where PIL's own conversion would clip everything above 255 to white."""
    from PIL import Image

    if im.mode not in WIDE_MODES:
        return im
    a = np.asarray(im, dtype=np.float64)
    return Image.fromarray(np.clip(np.round(a / WIDE_MODES[im.mode] * 255), 0, 255).astype(np.uint8), "L")


def open_image(path: Path, mode: str = "RGB", max_pixels: int = MAX_PIXELS):
    """The file as a PIL image in ``mode``, or the reason it cannot be (a string): missing,
    empty, not an image, damaged, or larger than ``max_pixels``."""
    from PIL import Image, UnidentifiedImageError

    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return "not an image file"
    if not path.is_file():
        return "missing"
    try:
        if path.stat().st_size == 0:
            return "empty file"
        with Image.open(path) as im:
            if im.width * im.height > max_pixels:
                return f"{im.width}x{im.height} is more than {max_pixels:,} pixels (raise --max-pixels)"
            im.load()
            return _to_8bit(im).convert(mode)
    except (OSError, EOFError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return f"unreadable ({type(e).__name__})"


def fit(im, size: int, nearest: bool = False) -> np.ndarray:
    """A PIL image as uint8 (C, size, size): its shorter side resized to ``size`` and the centre cropped."""
    from PIL import Image, ImageOps

    fitted = ImageOps.fit(im, (size, size), Image.NEAREST if nearest else Image.BILINEAR)
    a = np.asarray(fitted)
    return a.transpose(2, 0, 1).copy() if a.ndim == 3 else a[None].copy()


def read_fitted(path: Path, size: int, mode: str = "RGB", max_pixels: int = MAX_PIXELS) -> np.ndarray | str:
    """The image at ``path`` prepared as the data set stores it, or why it cannot be read."""
    im = open_image(path, mode, max_pixels)
    return im if isinstance(im, str) else fit(im, size, nearest=mode != "RGB")


def fit_array(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, C, H, W) images of any size prepared as :func:`read_fitted` prepares their
    files: (N, C, size, size). Images already of that size pass unchanged."""
    from PIL import Image

    if images.shape[-2:] == (size, size):
        return images
    modes = {1: "L", 3: "RGB"}
    return np.stack([fit(Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0), modes[a.shape[0]]),
                         size) for a in images])


def read_image(path: Path) -> np.ndarray:
    """uint8 (3, H, W) RGB at the file's own size (16-bit files scaled)."""
    im = open_image(path)
    if isinstance(im, str):
        raise L2LError(f"cannot read image {path}: {im}; remove it or convert it to PNG/JPEG")
    return np.asarray(im).transpose(2, 0, 1).copy()


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Every image under ``folder``, sub-folders (such as one per class) included, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise L2LError(f"no image folder at {folder}; pass --images DIR with PNG/JPEG files")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise L2LError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder} or its sub-folders; "
                       "pass --images DIR with PNG/JPEG files")
    return files
