"""`l2l data import`: a user's own images as a verified, hashed uint8 data set.

Two layouts are read (``data/items.py``):
- a folder with ``train/<class>/*``, ``test/<class>/*`` and optionally ``val/<class>/*``
  (without ``val/``, training keeps PROTOCOL 2.4's seeded 16 % cut of ``train/``);
- a CSV with columns ``path,label,split[,group]``, paths relative to the CSV, split one
  of train, val, test.

Optional object masks live in ``masks/`` beside the images (a folder layout) or beside
the CSV, at the image's relative path with a ``.png`` suffix, the same size as their
image; a mask pixel brighter than 127 belongs to the object. Masks may cover only some
images (the training split, say): they become those images' objects, so ``--maps
oracle`` guides them and the attention metrics are measured on them. Every image is
prepared as ``data/images.py`` says (RGB, shorter side resized to ``--size``, centre
crop). File names are kept in the header, so maps and predictions trace back to the
files. An imported set is described by its own header: nothing is registered in code.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import numpy as np

from ..errors import L2LError
from ..io import atomic_save_npz, folder_lock, sha256_array
from ..progress import bar
from .builders import DATASETS, DatasetSpec
from .images import MAX_PIXELS, fit, open_image
from .formats import format_items
from .items import SPLIT_NAMES, Item, classes_and_groups, clean, csv_items, folder_items, shown
from .store import FORMAT_VERSION, data_folder, dataset_path, read_header

IMPORT_PROTOCOL = "imported images"
IMPORT_VERSION = 1
DEFAULT_SIZE = 224
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
#: Names a data set cannot have: ``all`` means every built data set to ``l2l data build``.
RESERVED = ("all",)
#: A mask pixel above this (of 255) belongs to the object.
MASK_THRESHOLD = 127


def _mask_file(masks: Path, item: Item) -> Path:
    """Where ``item``'s mask must be: below ``masks/``, at the image's path with ``.png``; a
    path that leads outside (absolute, or with ``..``) is refused."""
    path = (masks / item.name).with_suffix(".png")
    if not path.resolve().is_relative_to(masks.resolve()):
        raise L2LError(f"the mask of {item.name} would lie outside {masks}; give images paths relative to the CSV "
                       "(no absolute paths, no ..) when a masks/ folder is used")
    return path


def _read_one(item: Item, size: int, masks: Path | None, max_pixels: int) -> tuple[np.ndarray, np.ndarray | None] | str:
    """(image (3,S,S), object (S,S) or None when it has no mask), or why the item is bad."""
    im = open_image(item.path, "RGB", max_pixels)
    if isinstance(im, str):
        return im
    mask_path = _mask_file(masks, item) if masks is not None else None
    if mask_path is None or not mask_path.exists():
        return fit(im, size), None
    mask = open_image(mask_path, "L", max_pixels)
    if isinstance(mask, str):
        return f"its mask is {mask}"
    if mask.size != im.size:
        return f"its mask is {mask.width}x{mask.height}, the image {im.width}x{im.height}"
    return fit(im, size), np.where(fit(mask, size, nearest=True)[0] > MASK_THRESHOLD, 255, 0).astype(np.uint8)


def _read_all(items: list[Item], size: int, masks: Path | None, skip_bad: bool, progress: bool,
              max_pixels: int) -> tuple[list[Item], np.ndarray, np.ndarray | None, np.ndarray, list[tuple[str, str]]]:
    """(good items, their images (N,3,S,S), their objects (N,S,S) or None when no image has
    a mask, which of them have one (N,), bad files): read into arrays made once, so the
    peak memory is about one copy of the data set."""
    images = np.empty((len(items), 3, size, size), np.uint8)
    objects = np.zeros((len(items), size, size), np.uint8) if masks is not None else None
    masked = np.zeros(len(items), bool)
    kept, bad = [], []
    for item in bar(items, desc="import", unit="img", show=progress):
        got = _read_one(item, size, masks, max_pixels)
        if isinstance(got, str):
            bad.append((item.name, got))
            continue
        images[len(kept)], obj = got
        if obj is not None:
            objects[len(kept)], masked[len(kept)] = obj, True
        kept.append(item)
    if bad and not skip_bad:
        listed = "; ".join(f"{n} ({why})" for n, why in bad[:3])
        raise L2LError(f"{len(bad)} bad file(s) in the import: {listed}{' ...' if len(bad) > 3 else ''}; "
                       "remove or fix them, or pass --skip-bad to leave them out")
    n = len(kept)
    has_masks = objects is not None and bool(masked[:n].any())
    return kept, images[:n], objects[:n] if has_masks else None, masked[:n], bad


def _arrays(kept: list[Item], images: np.ndarray, objects: np.ndarray | None, masked: np.ndarray,
            classes: list[str], groups: list[str], has_val: bool) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """The store's arrays, as views of the read ones (``kept`` is ordered train, val, test):
    train holds train then val, marked by ``val_train``; with masks for some images only,
    ``masked_<split>`` says which; and the file names per split."""
    label_of = {c: i for i, c in enumerate(classes)}
    group_of = {g: i for i, g in enumerate(groups)}
    n_train = sum(it.split != "test" for it in kept)
    partial = objects is not None and not masked.all()
    arrays, files = {}, {}
    for s, rows in (("train", slice(0, n_train)), ("test", slice(n_train, len(kept)))):
        members = kept[rows]
        arrays[f"x_{s}"] = images[rows]  # (N,3,S,S)
        arrays[f"y_{s}"] = np.array([label_of[it.label] for it in members], np.uint8)
        if objects is not None:
            arrays[f"digit_{s}"] = objects[rows]
        if partial:
            arrays[f"masked_{s}"] = masked[rows].astype(np.uint8)
        if groups:
            arrays[f"group_{s}"] = np.array([group_of[it.group] for it in members], np.uint8)
        files[s] = [it.name for it in members]
    if has_val:
        arrays["val_train"] = np.array([it.split == "val" for it in kept[:n_train]], np.uint8)
    return arrays, files


def is_grey(images: np.ndarray) -> bool:
    """Every image's three channels are equal (grey files, or grey saved as RGB): colour
    then carries nothing, so it cannot be the irrelevant component."""
    return bool((images[:, 0] == images[:, 1]).all() and (images[:, 1] == images[:, 2]).all())  # (N,3,S,S)


def check_name(name: str) -> None:
    """A name an imported data set may take: lower case, safe in a file name, neither
    reserved nor a built data set's."""
    built = [n for n, d in DATASETS.items() if d.imported_from is None]
    if not NAME.fullmatch(name) or name in RESERVED or name in built:
        raise L2LError(f"cannot import as {name!r}: use lower-case letters, digits, '-', '_' or '.', starting with "
                       f"a letter or digit, and not {', '.join(RESERVED)} or the name of a built data set "
                       f"({', '.join(built)})")


def _items(source: Path, fmt: str = "auto", columns: str | None = None,
           split_values: str | None = None) -> tuple[list[Item], list[str]]:
    """The items to import, cleaned, in split order, and what was said about them."""
    if fmt != "auto":
        items, empty = format_items(fmt, source, columns, split_values), []
    elif columns or split_values:
        raise L2LError("--columns and --split-values describe a general CSV; add --format csv")
    elif source.is_file():
        items, empty = csv_items(source), []
    else:
        items, empty = folder_items(source)
    items, warnings = clean(items, source)
    if empty:
        warnings.append(f"empty class folder(s) left out: {shown(empty)}")
    items.sort(key=lambda it: SPLIT_NAMES.index(it.split))  # stable: each split keeps its order
    return items, warnings


def import_dataset(name: str, source: str | os.PathLike, data_dir: str | os.PathLike | None = None, *,
                   size: int = DEFAULT_SIZE, skip_bad: bool = False, force: bool = False, progress: bool = True,
                   max_pixels: int = MAX_PIXELS, words: tuple[str, str] = ("object", "background"),
                   fmt: str = "auto", columns: str | None = None, split_values: str | None = None
                   ) -> tuple[Path, int, list[str]]:
    """Import ``source`` (a folder or a CSV, or a published layout named by ``fmt``,
    :mod:`.formats`) as data set ``name``; returns (its file, images skipped, warnings).
    The data set's lock is held from the first look to the last write,
    so two imports of one name never both write."""
    check_name(name)
    if not 8 <= size <= 1024:
        raise L2LError(f"--size must be between 8 and 1024 pixels, got {size}; pass e.g. --size 224")
    source = Path(source).expanduser()
    if not source.exists():
        raise L2LError(f"--from {source} does not exist; pass a folder with train/ and test/, or a CSV")
    folder = data_folder(data_dir)
    path = dataset_path(name, folder)
    with folder_lock(folder, f"`l2l data import {name}`", name=f".{path.name}.lock"):
        if path.exists() and not force:
            raise L2LError(f"data set {name} already exists at {path}; pass --force to import it again")
        t0 = time.perf_counter()
        items, warnings = _items(source, fmt, columns, split_values)
        masks = (source.parent if source.is_file() else source) / "masks"
        kept, images, objects, masked, bad = _read_all(items, size, masks if masks.is_dir() else None, skip_bad,
                                                       progress, max_pixels)
        classes, groups = classes_and_groups(kept, source)
        has_val = any(it.split == "val" for it in kept)
        arrays, files = _arrays(kept, images, objects, masked, classes, groups, has_val)
        header = {
            "dataset": name, "protocol": IMPORT_PROTOCOL, "protocol_version": IMPORT_VERSION,
            "format_version": FORMAT_VERSION, "description": f"imported from {source.resolve()}", "decoy_size": 0,
            "mnist_source": None,
            "imported": {"from": str(source.resolve()), "size": size, "classes": classes, "groups": groups,
                         "has_masks": objects is not None, "masked": int(masked.sum()) if objects is not None else 0,
                         "has_val": has_val, "grey": is_grey(images), "skipped": [n for n, _ in bad],
                         "object_word": words[0],
                         "shortcut_word": words[1]},
            "files": files,
            "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype), "sha256": sha256_array(v)}
                       for k, v in arrays.items()},
            "build_seconds": round(time.perf_counter() - t0, 3),
        }
        atomic_save_npz(path, header=np.array(json.dumps(header)), **arrays)
    DATASETS.update(spec_from_header(header))
    return path, len(bad), warnings


def spec_from_header(header: dict) -> DatasetSpec:
    """The data-set description an imported file carries in its header."""
    meta = header["imported"]
    return DatasetSpec(header["dataset"], None, IMPORT_PROTOCOL, header.get("description", ""), channels=3,
                       version=IMPORT_VERSION, num_classes=len(meta["classes"]), group_names=tuple(meta["groups"]),
                       uses_mnist=False, class_names=tuple(meta["classes"]), size=meta["size"],
                       has_objects=meta["has_masks"], has_val=meta["has_val"], imported_from=meta["from"],
                       partial_masks=meta["has_masks"] and meta.get("masked", 0) < _n_images(header),
                       grey=meta.get("grey", False), object_word=meta.get("object_word", "object"),
                       shortcut_word=meta.get("shortcut_word", "background"))


def _n_images(header: dict) -> int:
    return sum(header["arrays"][f"y_{s}"]["shape"][0] for s in ("train", "test"))


def dataset_spec(name: str, data_dir: str | os.PathLike | None = None) -> DatasetSpec:
    """A built data set by name, or one imported into the data folder (registered on first sight)."""
    if name in DATASETS:
        return DATASETS[name]
    path = dataset_path(name, data_folder(data_dir))
    if path.is_file():
        header = read_header(path, name)
        if isinstance(header.get("imported"), dict):
            return DATASETS.update(spec_from_header(header))
    raise L2LError(f"unknown data set {name!r}; choose one of: {', '.join(DATASETS.names())}, or import your own "
                   f"images with `l2l data import {name} --from DIR`")
