"""`l2l data import`: a user's own images as a verified, hashed uint8 data set.

Two layouts are read:
- a folder with ``train/<class>/*``, ``test/<class>/*`` and optionally ``val/<class>/*``
  (without ``val/``, training keeps PROTOCOL 2.4's seeded 16 % cut of ``train/``);
- a CSV with columns ``path,label,split[,group]``, paths relative to the CSV, split one
  of train, val, test.

Optional object masks live in ``masks/`` beside the images (a folder layout) or beside
the CSV, at the image's relative path with a ``.png`` suffix; they become each image's
object, so ``--maps oracle`` and the attention metrics work as on the MNIST sets.
Every image is made RGB, its shorter side resized to ``--size`` and centre-cropped. The
file names are kept in the header, so maps and predictions trace back to the files.
An imported set is described by its own header: nothing is registered in code.
"""

from __future__ import annotations

import csv
import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import L2LError
from ..io import atomic_save_npz, folder_lock, sha256_array
from .builders import DATASETS, DatasetSpec
from .store import BUILD_WAIT_SECONDS, FORMAT_VERSION, data_folder, dataset_path, read_header

IMPORT_PROTOCOL = "imported images"
IMPORT_VERSION = 1
DEFAULT_SIZE = 224
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MAX_CLASSES = 256  # labels and groups are stored as uint8
SPLIT_NAMES = ("train", "val", "test")
SHOWN = 3  # bad files named in the one-line error


@dataclass(frozen=True)
class Item:
    path: Path
    name: str  # path below the source, e.g. train/cat/001.jpg: what predictions and maps are keyed by
    label: str
    split: str
    group: str | None = None


def _folder_items(src: Path) -> list[Item]:
    missing = [s for s in ("train", "test") if not (src / s).is_dir()]
    if missing:
        raise L2LError(f"{src} has no {' and no '.join(f'{m}/' for m in missing)} folder; lay it out as "
                       "train/<class>/*, test/<class>/* (val/ optional), or pass a CSV with path,label,split")
    items = []
    for split in SPLIT_NAMES:
        for f in sorted((src / split).rglob("*")) if (src / split).is_dir() else []:
            rel = f.relative_to(src / split)
            if f.is_file() and not any(p.startswith(".") for p in rel.parts):
                label = rel.parts[0] if len(rel.parts) > 1 else ""
                items.append(Item(f, f.relative_to(src).as_posix(), label, split))
    return items


def _csv_items(path: Path) -> list[Item]:
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeError, csv.Error) as e:
        raise L2LError(f"cannot read the CSV {path} ({type(e).__name__}); pass a CSV with path,label,split") from None
    need = {"path", "label", "split"}
    if not rows or not need <= set(rows[0]):
        raise L2LError(f"the CSV {path} needs the columns path,label,split[,group]; it has "
                       f"{','.join(rows[0]) if rows else 'no rows'}")
    bad = [r["split"] for r in rows if r["split"] not in SPLIT_NAMES]
    if bad:
        raise L2LError(f"the CSV {path} has split {bad[0]!r} ({len(bad)} rows); use train, val or test")
    return [Item(path.parent / r["path"], Path(r["path"]).as_posix(), r["label"], r["split"], r.get("group"))
            for r in rows]


def read_fitted(path: Path, size: int, mode: str = "RGB") -> np.ndarray | str:
    """The image at ``path`` as uint8 (C, size, size), shorter side resized and centre-cropped,
    or the reason it cannot be read (an empty file, not an image, a damaged one)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if path.suffix.lower() not in SUFFIXES:
        return "not an image file"
    if not path.is_file():
        return "missing"
    try:
        if path.stat().st_size == 0:
            return "empty file"
        with Image.open(path) as im:
            im.load()
            resample = Image.BILINEAR if mode == "RGB" else Image.NEAREST
            fitted = ImageOps.fit(im.convert(mode), (size, size), resample)
    except (OSError, EOFError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return f"unreadable ({type(e).__name__})"
    a = np.asarray(fitted)
    return a.transpose(2, 0, 1).copy() if a.ndim == 3 else a[None].copy()


def _mask_path(masks: Path, item: Item) -> Path:
    return (masks / item.name).with_suffix(".png")


def _ids(values: list[str], what: str, source: Path) -> tuple[list[str], np.ndarray]:
    names = sorted(set(values))
    if len(names) > MAX_CLASSES:
        raise L2LError(f"{source} has {len(names)} {what}s; at most {MAX_CLASSES} can be imported")
    index = {n: i for i, n in enumerate(names)}
    return names, np.array([index[v] for v in values], np.uint8)


def _read_all(items: list[Item], size: int, masks: Path | None, skip_bad: bool, progress: bool
              ) -> tuple[list[Item], np.ndarray, np.ndarray | None, list[tuple[str, str]]]:
    """(good items, their images (N,3,S,S), their objects (N,S,S) or None, bad files): read
    into arrays made once, so the peak memory is about one copy of the data set."""
    from tqdm.auto import tqdm

    images = np.empty((len(items), 3, size, size), np.uint8)
    objects = np.empty((len(items), size, size), np.uint8) if masks is not None else None
    kept, bad = [], []
    for item in tqdm(items, desc="import", unit="img", disable=not progress, dynamic_ncols=True):
        img = read_fitted(item.path, size)
        mask = read_fitted(_mask_path(masks, item), size, "L") if masks is not None else None
        if isinstance(img, str) or isinstance(mask, str):
            bad.append((item.name, img if isinstance(img, str) else f"its mask is {mask}"))
            continue
        images[len(kept)] = img
        if objects is not None:
            objects[len(kept)] = np.where(mask[0] > 127, 255, 0)
        kept.append(item)
    if bad and not skip_bad:
        shown = "; ".join(f"{n} ({why})" for n, why in bad[:SHOWN])
        raise L2LError(f"{len(bad)} bad file(s) in the import: {shown}{' ...' if len(bad) > SHOWN else ''}; "
                       "remove or fix them, or pass --skip-bad to leave them out")
    return kept, images[:len(kept)], None if objects is None else objects[:len(kept)], bad


def _arrays(kept: list[Item], images: np.ndarray, objects: np.ndarray | None, classes: list[str],
            groups: list[str], has_val: bool) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """The store's arrays, as views of the read ones (``kept`` is ordered train, val, test):
    train holds train then val, marked by ``val_train``; and the file names per split."""
    label_of = {c: i for i, c in enumerate(classes)}
    group_of = {g: i for i, g in enumerate(groups)}
    n_train = sum(it.split != "test" for it in kept)
    arrays, files = {}, {}
    for s, rows in (("train", slice(0, n_train)), ("test", slice(n_train, len(kept)))):
        members = kept[rows]
        arrays[f"x_{s}"] = images[rows]  # (N,3,S,S)
        arrays[f"y_{s}"] = np.array([label_of[it.label] for it in members], np.uint8)
        if objects is not None:
            arrays[f"digit_{s}"] = objects[rows]
        if groups:
            arrays[f"group_{s}"] = np.array([group_of[it.group] for it in members], np.uint8)
        files[s] = [it.name for it in members]
    if has_val:
        arrays["val_train"] = np.array([it.split == "val" for it in kept[:n_train]], np.uint8)
    return arrays, files


def _check_items(items: list[Item], source: Path) -> tuple[list[str], list[str]]:
    """(classes, group names); every split needs images and every label a class seen in training."""
    counts = Counter(it.split for it in items)
    if not counts["train"] or not counts["test"]:
        raise L2LError(f"{source} has {counts['train']} training and {counts['test']} test images; both are needed")
    unlabelled = [it.name for it in items if not it.label]
    if unlabelled:
        raise L2LError(f"{unlabelled[0]} has no class ({len(unlabelled)} such files); put images in "
                       "<split>/<class>/ folders, or give every CSV row a label")
    classes, _ = _ids([it.label for it in items if it.split == "train"], "class", source)
    unknown = sorted({it.label for it in items} - set(classes))
    if unknown:
        raise L2LError(f"class {unknown[0]!r} appears in val/test but not in train; every class needs training images")
    has_groups = any(it.group not in (None, "") for it in items)
    if has_groups and any(it.group in (None, "") for it in items):
        raise L2LError(f"the CSV {source} gives a group for some rows only; give every row a group, or none")
    groups, _ = _ids([it.group for it in items], "group", source) if has_groups else ([], None)
    return classes, groups


def import_dataset(name: str, source: str | os.PathLike, data_dir: str | os.PathLike | None = None, *,
                   size: int = DEFAULT_SIZE, skip_bad: bool = False, force: bool = False,
                   progress: bool = True) -> tuple[Path, int]:
    """Import ``source`` (a folder or a CSV) as data set ``name``; returns (its file, images skipped)."""
    if not NAME.match(name) or name in DATASETS and DATASETS[name].imported_from is None:
        raise L2LError(f"cannot import as {name!r}: use lower-case letters, digits, '-', '_' or '.', and not the name "
                       f"of a built data set ({', '.join(n for n, d in DATASETS.items() if d.imported_from is None)})")
    if not 8 <= size <= 1024:
        raise L2LError(f"--size must be between 8 and 1024 pixels, got {size}; pass e.g. --size 224")
    source = Path(source).expanduser()
    if not source.exists():
        raise L2LError(f"--from {source} does not exist; pass a folder with train/ and test/, or a CSV")
    folder = data_folder(data_dir)
    path = dataset_path(name, folder)
    if path.exists() and not force:
        raise L2LError(f"data set {name} already exists at {path}; pass --force to import it again")
    t0 = time.perf_counter()
    items = _csv_items(source) if source.is_file() else _folder_items(source)
    items.sort(key=lambda it: SPLIT_NAMES.index(it.split))  # stable: each split keeps its order
    masks = (source.parent if source.is_file() else source) / "masks"
    masks = masks if masks.is_dir() else None
    kept, images, objects, bad = _read_all(items, size, masks, skip_bad, progress)
    classes, groups = _check_items(kept, source)
    has_val = any(it.split == "val" for it in kept)
    arrays, files = _arrays(kept, images, objects, classes, groups, has_val)
    header = {
        "dataset": name, "protocol": IMPORT_PROTOCOL, "protocol_version": IMPORT_VERSION,
        "format_version": FORMAT_VERSION, "description": f"imported from {source.resolve()}", "decoy_size": 0,
        "mnist_source": None,
        "imported": {"from": str(source.resolve()), "size": size, "classes": classes, "groups": groups,
                     "has_masks": objects is not None, "has_val": has_val, "skipped": [n for n, _ in bad]},
        "files": files,
        "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype), "sha256": sha256_array(v)}
                   for k, v in arrays.items()},
        "build_seconds": round(time.perf_counter() - t0, 3),
    }
    with folder_lock(folder, f"`l2l data import {name}`", name=f".{path.name}.lock", wait=BUILD_WAIT_SECONDS):
        atomic_save_npz(path, header=np.array(json.dumps(header)), **arrays)
    DATASETS.update(spec_from_header(header))
    return path, len(bad)


def spec_from_header(header: dict) -> DatasetSpec:
    """The data-set description an imported file carries in its header."""
    meta = header["imported"]
    return DatasetSpec(header["dataset"], None, IMPORT_PROTOCOL, header.get("description", ""), channels=3,
                       version=IMPORT_VERSION, num_classes=len(meta["classes"]), group_names=tuple(meta["groups"]),
                       uses_mnist=False, class_names=tuple(meta["classes"]), size=meta["size"],
                       has_objects=meta["has_masks"], has_val=meta["has_val"], imported_from=meta["from"])


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
