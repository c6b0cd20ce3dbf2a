"""Format-identical synthetic stand-ins for the published worst-group data sets, written by
the tests: the same files, columns and conventions as the releases, with tiny drawn images.

- Waterbirds (group_DRO's waterbird_complete95_forest2water2): ``metadata.csv`` with
  ``img_id, img_filename, y, split, place, place_filename``, images under
  ``NNN.Species/Name_NNNN.jpg``; training groups skewed 95 % towards bird == place, val
  and test balanced by place within each bird, as group_DRO built them.
- Red Meat (GALS's Food-101 subset): ``food-101/meta/all_images.csv`` with an unnamed
  index column (pandas' to_csv) and ``abs_file_path, label, split``, images under
  ``images/<class>/<id>.jpg``, including a class outside GALS's five.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

SPECIES = ("001.Black_footed_Albatross", "017.Cardinal")  # waterbird y=1, landbird y=0
REDMEAT = ("prime_rib", "pork_chop", "steak", "baby_back_ribs", "filet_mignon")


def _image(path: Path, background: tuple[int, int, int], fg: int, rng: np.random.Generator, size: int = 48) -> None:
    """A square of brightness ``fg`` on a ``background`` colour with a little noise, as JPEG."""
    a = np.empty((size, size, 3), np.uint8)
    a[:] = background
    a[size // 3:2 * size // 3, size // 3:2 * size // 3] = fg
    a = np.clip(a + rng.integers(-10, 10, a.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, quality=95)


def make_waterbirds(root: Path, n_train: int = 40, n_eval: int = 8, seed: int = 0) -> Path:
    """group_DRO's Waterbirds layout in ``root``: ``n_train`` training images (95 % bird ==
    place), ``n_eval`` per group in val and in test."""
    rng = np.random.default_rng(seed)
    rows, k = [], 0
    # every training group present: each bird's first image is on the other place
    plan = [(0, y, 1 - y if i == 0 or rng.random() >= 0.95 else y) for y in (0, 1) for i in range(n_train // 2)]
    plan += [(s, y, p) for s in (1, 2) for y in (0, 1) for p in (0, 1) for _ in range(n_eval)]
    for split, y, place in plan:
        k += 1
        name = f"{SPECIES[1 - y]}/{SPECIES[1 - y].split('.')[1]}_{k:04d}_{1000 + k}.jpg"
        _image(root / name, (40, 90, 200) if place else (60, 140, 40), 250 if y else 120, rng)
        rows.append({"img_id": k, "img_filename": name, "y": y, "split": split, "place": place,
                     "place_filename": f"/{'o/ocean' if place else 'b/bamboo_forest'}/{k:08d}.jpg"})
    with open(root / "metadata.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["img_id", "img_filename", "y", "split", "place", "place_filename"])
        w.writeheader()
        w.writerows(rows)
    return root


def make_redmeat(root: Path, per_class: int = 6, seed: int = 0) -> Path:
    """GALS's Red Meat layout: ``root/food-101`` with ``meta/all_images.csv``; returns the
    food-101 folder (what --from takes)."""
    rng = np.random.default_rng(seed)
    food = root / "food-101"
    rows = []
    for c, label in enumerate((*REDMEAT, "apple_pie")):
        for i in range(per_class):
            split = ("train", "train", "train", "train", "val", "test")[i % 6]
            path = f"images/{label}/{100 * c + i}.jpg"
            _image(food / path, (120, 60 + 30 * c, 60), 200, rng)
            rows.append([len(rows), path, label, split])
    (food / "meta").mkdir(parents=True, exist_ok=True)
    with open(food / "meta" / "all_images.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["", "abs_file_path", "label", "split"])
        w.writerows(rows)
    return food
