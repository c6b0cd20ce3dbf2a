"""What ``l2l data import`` is asked to import: one :class:`Item` per file, read from a
folder layout or a CSV, cleaned and checked before a single pixel is read.

Everything that cannot be stored faithfully is refused in one line naming the files
(two splits claiming one file, control characters, a single class); what is valid but
easy to get wrong is handled and said (a byte-order mark, labels padded with spaces,
empty class folders, the same row twice in one split).
"""

from __future__ import annotations

import csv
import unicodedata
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import L2LError

SPLIT_NAMES = ("train", "val", "test")
MAX_CLASSES = 256  # labels and groups are stored as uint8
SHOWN = 3  # files named in a one-line error


@dataclass(frozen=True)
class Item:
    path: Path
    name: str  # path below the source, e.g. train/cat/001.jpg: what predictions and maps are keyed by
    label: str
    split: str
    group: str | None = None


def shown(names: list[str]) -> str:
    """The first few of ``names`` for a one-line message."""
    return ", ".join(names[:SHOWN]) + (f" (and {len(names) - SHOWN} more)" if len(names) > SHOWN else "")


def folder_items(src: Path) -> tuple[list[Item], list[str]]:
    """(items, empty class folders) of ``train/<class>/*``, ``test/<class>/*``, ``val/<class>/*``."""
    missing = [s for s in ("train", "test") if not (src / s).is_dir()]
    if missing:
        raise L2LError(f"{src} has no {' and no '.join(f'{m}/' for m in missing)} folder; lay it out as "
                       "train/<class>/*, test/<class>/* (val/ optional), or pass a CSV with path,label,split")
    items, empty = [], []
    for split in SPLIT_NAMES:
        root = src / split
        if not root.is_dir():
            continue
        empty += [f"{split}/{d.name}/" for d in sorted(root.iterdir())
                  if d.is_dir() and not d.name.startswith(".") and not any(p.is_file() for p in d.rglob("*"))]
        for f in sorted(root.rglob("*")):
            rel = f.relative_to(root)
            if f.is_file() and not any(p.startswith(".") for p in rel.parts):
                label = rel.parts[0] if len(rel.parts) > 1 else ""
                items.append(Item(f, f.relative_to(src).as_posix(), label, split))
    return items, empty


def csv_items(path: Path) -> list[Item]:
    """The rows of a ``path,label,split[,group]`` CSV (a byte-order mark, as spreadsheet
    programs write one, is fine); paths are relative to the CSV."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [{(k or "").strip(): v for k, v in row.items()} for row in csv.DictReader(fh)]
    except (OSError, UnicodeError, csv.Error) as e:
        raise L2LError(f"cannot read the CSV {path} ({type(e).__name__}); pass a CSV with path,label,split") from None
    need = {"path", "label", "split"}
    if not rows or not need <= set(rows[0]):
        raise L2LError(f"the CSV {path} needs the columns path,label,split[,group]; it has "
                       f"{','.join(rows[0]) if rows else 'no rows'}")
    if any(None in (r.get("path"), r.get("label"), r.get("split")) for r in rows):
        raise L2LError(f"the CSV {path} has rows with fewer fields than its header; give every row path,label,split")
    splits = [r["split"].strip() for r in rows]
    bad = [s for s in splits if s not in SPLIT_NAMES]
    if bad:
        raise L2LError(f"the CSV {path} has split {bad[0]!r} ({len(bad)} rows); use train, val or test")
    return [Item(path.parent / r["path"], Path(r["path"]).as_posix(), r["label"], s, r.get("group"))
            for r, s in zip(rows, splits)]


def _control(text: str) -> bool:
    return any(unicodedata.category(c) == "Cc" for c in text)


def clean(items: list[Item], source: Path) -> tuple[list[Item], list[str]]:
    """Items fit to store, and warnings: labels and groups stripped of surrounding spaces
    (said where that merges classes), a file listed twice in one split kept once (counted);
    a file in two splits, or a name or label with control characters, is refused."""
    warnings = []
    bad = [it.name for it in items if _control(it.name) or _control(it.label) or _control(it.group or "")]
    if bad:
        raise L2LError(f"{source}: names or labels with control characters (tabs, newlines, ...): {shown(bad)}; "
                       "rename those files or fix their labels")
    padded = {it.label for it in items if it.label != it.label.strip()}
    stripped = [replace(it, label=it.label.strip(), group=None if it.group is None else it.group.strip())
                for it in items]
    merged = sorted({p.strip() for p in padded} & {it.label for it in items if it.label not in padded})
    if padded:
        warnings.append(f"{len(padded)} label(s) had spaces around them and were stripped"
                        + (f", merging them into {shown(merged)}" if merged else ""))
    splits_of: dict[str, set[str]] = {}
    for it in stripped:
        splits_of.setdefault(it.name, set()).add(it.split)
    across = sorted(n for n, s in splits_of.items() if len(s) > 1)
    if across:
        raise L2LError(f"{source}: files listed in more than one split: {shown(across)}; a file may be in one "
                       "split only (a training image in the test split would inflate the test accuracy)")
    seen, kept = set(), []
    for it in stripped:
        if it.name not in seen:
            seen.add(it.name)
            kept.append(it)
    if len(kept) < len(stripped):
        warnings.append(f"{len(stripped) - len(kept)} duplicate row(s) of a file in the same split left out")
    return kept, warnings


def ids(values: list[str], what: str, source: Path) -> list[str]:
    """The sorted distinct ``values``; more than fit in a byte is an error."""
    names = sorted(set(values))
    if len(names) > MAX_CLASSES:
        raise L2LError(f"{source} has {len(names)} {what}s; at most {MAX_CLASSES} can be imported")
    return names


def classes_and_groups(items: list[Item], source: Path) -> tuple[list[str], list[str]]:
    """(classes, group names); every split needs images, at least two classes, and every
    label a class seen in training."""
    counts = Counter(it.split for it in items)
    if not counts["train"] or not counts["test"]:
        raise L2LError(f"{source} has {counts['train']} training and {counts['test']} test images; both are needed")
    unlabelled = [it.name for it in items if not it.label]
    if unlabelled:
        raise L2LError(f"{shown(unlabelled)} have no class; put images in <split>/<class>/ folders, or give every "
                       "CSV row a label")
    classes = ids([it.label for it in items if it.split == "train"], "class", source)
    if len(classes) < 2:
        raise L2LError(f"{source} has {len(classes)} class ({', '.join(classes)}) in its training images; a classifier "
                       "needs at least two (every accuracy would be 100 %)")
    unknown = sorted({it.label for it in items} - set(classes))
    if unknown:
        raise L2LError(f"class {unknown[0]!r} appears in val/test but not in train; every class needs training images")
    has_groups = any(it.group not in (None, "") for it in items)
    if has_groups and any(it.group in (None, "") for it in items):
        raise L2LError(f"the CSV {source} gives a group for some rows only; give every row a group, or none")
    return classes, ids([it.group for it in items], "group", source) if has_groups else []
