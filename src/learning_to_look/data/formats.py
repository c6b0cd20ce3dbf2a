"""The published layouts of worst-group benchmarks, read as import items (``l2l data
import --format``), and a general column map for any other CSV.

- ``waterbirds``: group_DRO's release (also WILDS's): ``metadata.csv`` beside the images,
  columns ``img_filename, y, split, place``; split 0/1/2 is train/val/test, y 0/1
  landbird/waterbird, place 0/1 land/water, and the group is (y, place), numbered
  2 y + place as group_DRO numbers it.
- ``redmeat``: GALS's Food-101 subset: ``meta/all_images.csv`` in the ``food-101`` folder,
  columns ``abs_file_path, label, split`` (train/val/test), paths relative to that folder;
  only GALS's five red-meat classes are kept; no groups.
- ``csv``: any CSV, its columns named by ``--columns path=...,label=...,split=...[,group=...]``
  and its split values by ``--split-values 0=train,1=val,2=test``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ..errors import L2LError
from .items import SPLIT_NAMES, Item

FORMATS = ("auto", "waterbirds", "redmeat", "csv")
WATERBIRDS_FILE = "metadata.csv"
WATERBIRDS_CLASSES = ("landbird", "waterbird")  # y = 0, 1
WATERBIRDS_PLACES = ("land", "water")  # place = 0, 1
REDMEAT_FILE = "meta/all_images.csv"
#: GALS's configs/food_*.yaml DATA.CLASSES.
REDMEAT_CLASSES = ("prime_rib", "pork_chop", "steak", "baby_back_ribs", "filet_mignon")
NUMBERED_SPLITS = {"0": "train", "1": "val", "2": "test"}  # group_DRO's split column


def parse_map(text: str, what: str, example: str) -> dict[str, str]:
    """'a=b,c=d' -> {a: b, c: d}; anything else is a one-line error."""
    pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
    if not pairs or any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
        raise L2LError(f"malformed {what} {text!r}; write it as {example}")
    return {k.strip(): v.strip() for k, v in pairs}


def _rows(path: Path, need: list[str], fix: str) -> list[dict[str, str]]:
    """The rows of CSV ``path``, which must have the columns ``need``."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows, header = list(reader), [h.strip() for h in reader.fieldnames or []]
    except (OSError, UnicodeError, csv.Error) as e:
        raise L2LError(f"cannot read the CSV {path} ({type(e).__name__}); {fix}") from None
    missing = [c for c in need if c not in header]
    if missing:
        raise L2LError(f"the CSV {path} has no column {missing[0]!r} (its columns: {', '.join(header)}); {fix}")
    return [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in rows]


def _split(value: str, splits: dict[str, str], path: Path) -> str:
    split = splits.get(value)
    if split not in SPLIT_NAMES:
        raise L2LError(f"the CSV {path} has split value {value!r}, which --split-values does not map to train, val "
                       f"or test; map every value, e.g. --split-values 0=train,1=val,2=test")
    return split


def waterbirds_items(source: Path) -> list[Item]:
    """group_DRO's Waterbirds folder as items, labelled by bird and grouped by (bird, place)."""
    path = source / WATERBIRDS_FILE
    if not path.is_file():
        raise L2LError(f"--format waterbirds reads {WATERBIRDS_FILE} in --from, and {source} has none; pass the "
                       "unpacked waterbird_complete95_forest2water2 folder")
    rows = _rows(path, ["img_filename", "y", "split", "place"], "pass group_DRO's Waterbirds metadata.csv")
    items = []
    for r in rows:
        y, place = r["y"], r["place"]
        if y not in ("0", "1") or place not in ("0", "1"):
            raise L2LError(f"{path}: y and place must be 0 or 1, got y={y!r} place={place!r} for {r['img_filename']}")
        label = WATERBIRDS_CLASSES[int(y)]
        group = f"{label}-on-{WATERBIRDS_PLACES[int(place)]}"  # sorted names number the groups 2y + place
        items.append(Item(source / r["img_filename"], r["img_filename"], label, _split(r["split"], NUMBERED_SPLITS,
                                                                                      path), group))
    return items


def redmeat_items(source: Path) -> list[Item]:
    """GALS's Red Meat subset of Food-101 as items: its five classes, its train/val/test column."""
    path = source / REDMEAT_FILE
    if not path.is_file():
        raise L2LError(f"--format redmeat reads {REDMEAT_FILE} in --from, and {source} has none; pass the food-101 "
                       "folder with GALS's meta/all_images.csv")
    rows = _rows(path, ["abs_file_path", "label", "split"], "pass GALS's meta/all_images.csv")
    identity = {s: s for s in SPLIT_NAMES}
    return [Item(source / r["abs_file_path"], r["abs_file_path"], r["label"], _split(r["split"], identity, path))
            for r in rows if r["label"] in REDMEAT_CLASSES]


def mapped_items(path: Path, columns: dict[str, str], splits: dict[str, str]) -> list[Item]:
    """Any CSV whose columns ``columns`` names (path, label, split, optionally group), its
    split values mapped by ``splits`` (unmapped: the names train, val, test themselves)."""
    unknown = sorted(set(columns) - {"path", "label", "split", "group"})
    if unknown or not {"path", "label", "split"} <= set(columns):
        raise L2LError(f"--columns must name path, label and split (and optionally group), got "
                       f"{', '.join(columns)}; e.g. --columns path=img_filename,label=y,split=split,group=place")
    if not path.is_file():
        raise L2LError(f"--format csv reads a CSV file, and {path} is not one; pass --from FILE.csv")
    rows = _rows(path, list(columns.values()), "name existing columns in --columns")
    splits = splits or {s: s for s in SPLIT_NAMES}
    group = columns.get("group")
    return [Item(path.parent / r[columns["path"]], Path(r[columns["path"]]).as_posix(), r[columns["label"]],
                 _split(r[columns["split"]], splits, path), r[group] if group else None) for r in rows]


def format_items(fmt: str, source: Path, columns: str | None, split_values: str | None) -> list[Item]:
    """The items of ``source`` read as format ``fmt`` (not ``auto``)."""
    if fmt != "csv" and (columns or split_values):
        raise L2LError(f"--columns and --split-values describe a general CSV; use them with --format csv, "
                       f"not --format {fmt}")
    if fmt == "waterbirds":
        return waterbirds_items(source)
    if fmt == "redmeat":
        return redmeat_items(source)
    if not columns:
        raise L2LError("--format csv needs --columns, e.g. --columns path=img_filename,label=y,split=split,group=place")
    example = "0=train,1=val,2=test"
    return mapped_items(source, parse_map(columns, "--columns", "path=COL,label=COL,split=COL[,group=COL]"),
                        parse_map(split_values, "--split-values", example) if split_values else {})
