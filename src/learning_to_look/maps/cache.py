"""The map cache: each (data set split, generator fingerprint) is generated once.

Maps are stored as uint8 at the image resolution (60k x 28 x 28 is 47 MB) in chunks,
each written atomically and listed with its SHA-256 in a JSON sidecar that also
records the generator's description, the device and progress. A killed run resumes
at the first missing chunk; a chunk that fails its hash, or a sidecar that does not
match the generator, is reported and regenerated, never used.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import L2LError
from ..io import atomic_write_bytes, atomic_write_json, read_json, sha256_array
from .base import MAP_SOURCES, ImageSet, MapGenerator, get_map_source, validate_maps

CACHE_ENV = "L2L_MAPS_DIR"
DEFAULT_CACHE_DIR = "maps_cache"
CACHE_FORMAT = 1
DEFAULT_CHUNK = 1024


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR)


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def split_key(split: ImageSet) -> str:
    """Split name, size and image hash: a subset or a rebuilt data set gets its own entry."""
    images = np.asarray(split.images)
    return f"{split.name}-{len(images)}-{sha256_array(images)[:10]}"


def cache_folder(generator: MapGenerator, dataset_name: str, split: ImageSet,
                 cache_dir: str | os.PathLike | None = None) -> Path:
    entry = f"{generator.name}-{generator.fingerprint()}"
    return Path(cache_dir or default_cache_dir()) / dataset_name / split_key(split) / entry


def quantise(maps: np.ndarray) -> np.ndarray:
    return np.round(np.clip(maps, 0, 1) * 255).astype(np.uint8)


def _chunk_path(folder: Path, i: int) -> Path:
    return folder / f"chunk-{i:05d}.npy"


def _write_chunk(folder: Path, i: int, q: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, q, allow_pickle=False)
    atomic_write_bytes(_chunk_path(folder, i), buf.getvalue())
    return sha256_array(q)


def _read_chunk(folder: Path, i: int, sha: str, shape: tuple) -> np.ndarray | None:
    """The chunk if it exists and passes its hash and shape, else None (with a warning
    when it exists but is bad)."""
    path = _chunk_path(folder, i)
    if not path.exists():
        return None
    try:
        q = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        q = None
    if q is None or q.dtype != np.uint8 or q.shape[1:] != shape or sha256_array(q) != sha:
        _warn(f"cached maps {path} fail their hash check; regenerating that chunk")
        return None
    return q


def _expected(generator: MapGenerator, dataset_name: str, split: ImageSet, chunk_size: int) -> dict:
    images = np.asarray(split.images)
    return {"format": CACHE_FORMAT, "dataset": dataset_name, "split": split_key(split), "n": len(images),
            "shape": list(images.shape[-2:]), "fingerprint": generator.fingerprint(), "chunk_size": chunk_size}


def _read_meta(folder: Path, expected: dict) -> dict | None:
    """The sidecar when it matches this generator and split; a mismatched or
    unreadable one is reported and the folder wiped."""
    path = folder / "meta.json"
    if not path.exists():
        return None
    try:
        meta = read_json(path)
        ok = all(meta.get(k) == v for k, v in expected.items() if k != "chunk_size")
    except (OSError, ValueError):
        ok, meta = False, None
    if ok:
        return meta
    _warn(f"map cache {folder} does not match this generator and split (or is unreadable); regenerating it")
    shutil.rmtree(folder, ignore_errors=True)
    return None


def _merge_stats(per_chunk: dict) -> dict:
    total: dict[str, float] = {}
    for stats in per_chunk.values():
        for k, v in stats.items():
            total[k] = total.get(k, 0) + v
    return total


def cached_maps(generator: MapGenerator, dataset_name: str, split: ImageSet, *,
                cache_dir: str | os.PathLike | None = None, progress: bool = True,
                chunk_size: int = DEFAULT_CHUNK) -> np.ndarray:
    """float32 (N, H, W) maps in [0, 1] for ``split``, generated once and cached.

    Sources with ``cacheable = False`` (oracle, intensity) are computed directly.
    The sidecar of the cache entry holds ``generator.describe()``; read it with
    :func:`cache_meta`.
    """
    images = np.asarray(split.images)
    n, hw = len(images), tuple(images.shape[-2:])
    if not generator.cacheable:
        return validate_maps(generator.generate(split), n, hw, generator.name)
    folder = cache_folder(generator, dataset_name, split, cache_dir)
    expected = _expected(generator, dataset_name, split, chunk_size)
    meta = _read_meta(folder, expected) or {**expected, "describe": generator.describe(), "chunks": {},
                                            "chunk_stats": {}, "complete": False, "device": None, "seconds": 0.0}
    size = meta["chunk_size"]
    n_chunks = max(1, math.ceil(n / size))
    chunks = {i: _read_chunk(folder, i, meta["chunks"].get(str(i), ""), hw) for i in range(n_chunks)}
    done = {i: q for i, q in chunks.items() if q is not None}
    todo = [i for i in range(n_chunks) if i not in done]
    if todo:
        _generate_chunks(generator, split, folder, meta, todo, done, progress)
    elif not meta["complete"]:
        meta["complete"] = True
        atomic_write_json(folder / "meta.json", meta)
    maps = np.concatenate([done[i] for i in range(n_chunks)])[:n].astype(np.float32) / 255.0
    return validate_maps(maps, n, hw, f"{generator.name} cache {folder}")


def _generate_chunks(generator: MapGenerator, split: ImageSet, folder: Path, meta: dict, todo: list[int],
                     done: dict, progress: bool) -> None:
    from tqdm import tqdm

    images = np.asarray(split.images)
    n, hw, size = len(images), tuple(images.shape[-2:]), meta["chunk_size"]
    meta["complete"] = False
    folder.mkdir(parents=True, exist_ok=True)
    generator.prepare(split, folder / "work")
    remaining = sum(min(size, n - i * size) for i in todo)
    bar = tqdm(total=remaining, desc=f"maps {generator.name} {meta['dataset']}/{split.name}", unit="img",
               disable=not progress, file=sys.stderr)
    for i in todo:
        t0 = time.perf_counter()
        idx = np.arange(i * size, min(n, (i + 1) * size))
        maps = validate_maps(generator.generate(split.subset(idx)), len(idx), hw, generator.name)
        q = quantise(maps)
        meta["chunks"][str(i)] = _write_chunk(folder, i, q)
        meta["chunk_stats"][str(i)] = dict(generator.last_stats)
        meta["stats"] = _merge_stats(meta["chunk_stats"])
        meta["device"] = generator.device_used
        meta["seconds"] = round(meta["seconds"] + time.perf_counter() - t0, 3)
        meta["complete"] = len(meta["chunks"]) == math.ceil(n / size)
        atomic_write_json(folder / "meta.json", meta)
        done[i] = q
        bar.update(len(idx))
    bar.close()


def cache_meta(generator: MapGenerator, dataset_name: str, split: ImageSet,
               cache_dir: str | os.PathLike | None = None) -> dict | None:
    """The sidecar of a cache entry, or None when nothing was generated yet."""
    path = cache_folder(generator, dataset_name, split, cache_dir) / "meta.json"
    return read_json(path) if path.exists() else None


def list_cached(cache_dir: str | os.PathLike | None = None) -> list[tuple[Path, dict]]:
    """Every cache entry under ``cache_dir`` with its sidecar."""
    root = Path(cache_dir or default_cache_dir())
    out = []
    for path in sorted(root.glob("*/*/*/meta.json")):
        try:
            out.append((path.parent, read_json(path)))
        except (OSError, ValueError):
            continue
    return out


def load_map_set(ref: str, dataset_name: str, split: ImageSet,
                 cache_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, dict]:
    """A complete cached map set named by its folder name (``clip-<fingerprint>``), a
    fingerprint prefix, or its source name when only one such set is cached, for this
    data set split; returns (maps, describe)."""
    root = Path(cache_dir or default_cache_dir()) / dataset_name / split_key(split)

    def matches(name: str) -> bool:
        source, _, fp = name.rpartition("-")
        return ref in (name, source) or fp.startswith(ref)

    hits = [p for p in sorted(root.glob("*/meta.json")) if matches(p.parent.name)]
    if len(hits) != 1:
        found = ", ".join(p.parent.name for p in sorted(root.glob("*/meta.json"))) or "none"
        what = "no" if not hits else "more than one"
        raise L2LError(f"{what} cached map set matches {ref!r} for {dataset_name}/{split.name} (cached: {found}); "
                       f"pass a backend ({', '.join(sorted(MAP_SOURCES))}) or a longer fingerprint")
    folder, meta = hits[0].parent, read_json(hits[0])
    images = np.asarray(split.images)
    hw = tuple(images.shape[-2:])
    n_chunks = max(1, math.ceil(len(images) / meta["chunk_size"]))
    chunks = [_read_chunk(folder, i, meta["chunks"].get(str(i), ""), hw) for i in range(n_chunks)]
    if not meta.get("complete") or any(c is None for c in chunks):
        raise L2LError(f"cached map set {folder} is incomplete or corrupt; "
                       "rerun `l2l maps generate` with its options to finish it")
    maps = np.concatenate(chunks).astype(np.float32) / 255.0
    return validate_maps(maps, len(images), hw, str(folder)), meta["describe"]


def resolve_maps(name: str, dataset_name: str, split: ImageSet, *, cache_dir: str | os.PathLike | None = None,
                 progress: bool = True, **options: Any) -> tuple[np.ndarray, dict]:
    """``--maps NAME``: a backend (generated or read from the cache) or a cached map
    set's folder name / fingerprint. Returns (maps, describe) for the result record."""
    if name in MAP_SOURCES:
        generator = get_map_source(name, **options)
        return cached_maps(generator, dataset_name, split, cache_dir=cache_dir, progress=progress), generator.describe()
    return load_map_set(name, dataset_name, split, cache_dir)
