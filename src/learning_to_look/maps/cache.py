"""The map cache: each (data set split, generator fingerprint) is generated once.

Maps are stored as uint8 at the image resolution (60k x 28 x 28 is 47 MB) in chunks,
each written atomically and listed with its SHA-256 in a JSON sidecar that also
records the generator's description, the device and progress. A killed run resumes
at the first missing chunk; a chunk that fails its hash, or a sidecar that does not
match the generator, is reported and regenerated, never used.

Only generation (:func:`cached_maps`: ``l2l maps generate`` and training) writes here,
holding the entry folder's lock so that a second identical process stops with a clear
message; the readers (:func:`read_cached`, :func:`load_map_set`, :func:`list_cached`:
``l2l maps check/show/list``) never generate or repair anything, they name what is
missing or damaged and how to regenerate it.
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
from typing import Any, NamedTuple

import numpy as np

from ..errors import L2LError, corrupt_file
from ..io import (LOCK_NAME, atomic_write_bytes, atomic_write_json, clean_stale_tmp, folder_lock, folder_option,
                  read_json, sha256_array)
from ..progress import bar as progress_bar
from .base import MAP_SOURCES, ImageSet, MapGenerator, validate_maps
from .weights import loading_progress

CACHE_ENV = "L2L_MAPS_DIR"
#: Images per cache chunk (what a kill can lose); an environment override for tests and small machines.
CHUNK_ENV = "L2L_MAPS_CHUNK"
DEFAULT_CACHE_DIR = "maps_cache"
CACHE_FORMAT = 1
DEFAULT_CHUNK = 1024
META = "meta.json"
REGENERATE = "`l2l maps generate` with the same options regenerates it"


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR)


def default_chunk_size() -> int:
    raw = os.environ.get(CHUNK_ENV, "").strip()
    if not raw:
        return DEFAULT_CHUNK
    if not raw.isdigit() or int(raw) < 1:
        raise L2LError(f"{CHUNK_ENV} must be a whole number of images >= 1, got {raw!r}; unset it or use e.g. 1024")
    return int(raw)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder; a file in its place is a one-line error."""
    return folder_option(cache_dir or default_cache_dir(), "--cache-dir", "the map cache", CACHE_ENV)


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def split_key(split: ImageSet) -> str:
    """Split name, size and image hash: a subset or a rebuilt data set gets its own entry."""
    images = np.asarray(split.images)
    return f"{split.name}-{len(images)}-{sha256_array(images)[:10]}"


def cache_folder(generator: MapGenerator, dataset_name: str, split: ImageSet,
                 cache_dir: str | os.PathLike | None = None) -> Path:
    entry = f"{generator.name}-{generator.fingerprint()}"
    return cache_root(cache_dir) / dataset_name / split_key(split) / entry


def quantise(maps: np.ndarray) -> np.ndarray:
    return np.round(np.clip(maps, 0, 1) * 255).astype(np.uint8)


def _chunk_path(folder: Path, i: int) -> Path:
    return folder / f"chunk-{i:05d}.npy"


def _write_chunk(folder: Path, i: int, q: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, q, allow_pickle=False)
    atomic_write_bytes(_chunk_path(folder, i), buf.getvalue())
    return sha256_array(q)


def _chunk(folder: Path, i: int, sha: str | None, hw: tuple) -> tuple[np.ndarray | None, str | None]:
    """(the chunk, None) when it exists and passes its hash and shape, else (None, what is wrong)."""
    path = _chunk_path(folder, i)
    if not path.exists():
        return None, "missing"
    try:
        q = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        return None, f"corrupt (not a NumPy file: {type(e).__name__})"
    if not isinstance(q, np.ndarray) or q.dtype != np.uint8 or q.ndim != 3 or q.shape[1:] != tuple(hw) \
            or not sha or sha256_array(q) != sha:
        return None, "corrupt (fails its hash check)"
    return q, None


def _expected(generator: MapGenerator, dataset_name: str, split: ImageSet, chunk_size: int) -> dict:
    images = np.asarray(split.images)
    return {"format": CACHE_FORMAT, "dataset": dataset_name, "split": split_key(split), "n": len(images),
            "shape": list(images.shape[-2:]), "fingerprint": generator.fingerprint(), "chunk_size": chunk_size}


_META_TYPES = {"format": int, "dataset": str, "split": str, "n": int, "shape": list, "fingerprint": str,
               "chunk_size": int, "chunks": dict, "complete": bool, "describe": dict}


def meta_problem(meta: Any) -> str | None:
    """What makes a sidecar unusable (missing keys, wrong types), or None when it is sound."""
    if not isinstance(meta, dict):
        return "not a JSON object"
    missing = [k for k in _META_TYPES if k not in meta]
    if missing:
        return f"it lacks {', '.join(missing)}"
    wrong = [k for k, t in _META_TYPES.items()
             if not isinstance(meta[k], t) or (t is int and isinstance(meta[k], bool))]
    if wrong:
        return f"{', '.join(wrong)} {'has' if len(wrong) == 1 else 'have'} the wrong type"
    if meta["chunk_size"] < 1 or meta["n"] < 0:
        return "chunk_size or n out of range"
    if len(meta["shape"]) != 2 or not all(isinstance(x, int) and x > 0 for x in meta["shape"]):
        return "shape is not two positive sizes"
    if not all(isinstance(k, str) and k.isdigit() and isinstance(v, str) for k, v in meta["chunks"].items()):
        return "chunks is not a map from chunk numbers to hashes"
    return None


def _regenerate_fix(folder: Path) -> str:
    return f"{REGENERATE}, or delete {folder}"


def _meta_state(folder: Path) -> tuple[dict | None, str | None]:
    """(sidecar, None) when it reads and is sound, else (None, what is wrong)."""
    path = folder / META
    try:
        meta = read_json(path)
    except L2LError:
        return None, "not valid JSON"
    except UnicodeError:
        return None, "not text"
    except OSError as e:
        return None, f"unreadable ({e.strerror or type(e).__name__})"
    problem = meta_problem(meta)
    return (None, f"an incomplete cache sidecar: {problem}") if problem else (meta, None)


def read_meta(folder: Path) -> dict:
    """The sidecar of a cache entry, checked; a damaged one is a one-line error naming it."""
    meta, problem = _meta_state(folder)
    if problem:
        raise corrupt_file(folder / META, problem, _regenerate_fix(folder))
    return meta


def _n_chunks(n: int, size: int) -> int:
    return max(1, math.ceil(n / size))


def _load_entry(folder: Path, split: ImageSet, expected: dict | None = None) -> tuple[np.ndarray, dict]:
    """(float32 maps, sidecar) of a complete, intact entry; anything else is a one-line
    error saying what is wrong and how to regenerate it. Never writes."""
    meta = read_meta(folder)
    images = np.asarray(split.images)
    n, hw = len(images), tuple(images.shape[-2:])
    if meta["split"] != split_key(split) or meta["n"] != n or tuple(meta["shape"]) != hw or (
            expected and any(meta.get(k) != v for k, v in expected.items() if k != "chunk_size")):
        raise L2LError(f"the map cache entry {folder} was made for other images or another generator than its "
                       f"place says ({META} disagrees); {_regenerate_fix(folder)}")
    n_chunks = _n_chunks(n, meta["chunk_size"])
    chunks = []
    for i in range(n_chunks):
        if str(i) not in meta["chunks"]:
            done = sum(str(j) in meta["chunks"] for j in range(n_chunks))
            raise L2LError(f"the cached maps in {folder} are incomplete ({done} of {n_chunks} chunks, chunk {i} not "
                           f"made yet); `l2l maps generate` with the same options finishes them")
        q, problem = _chunk(folder, i, meta["chunks"][str(i)], hw)
        if problem:
            raise L2LError(f"chunk {i} of the cached maps in {folder} ({_chunk_path(folder, i).name}) is {problem}; "
                           f"{REGENERATE}")
        chunks.append(q)
    maps = np.concatenate(chunks)[:n].astype(np.float32) / 255.0
    return validate_maps(maps, n, hw, str(folder)), meta


def read_cached(generator: MapGenerator, dataset_name: str, split: ImageSet,
                cache_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, dict]:
    """(maps, sidecar) from the cache only, for commands that must never generate (an
    hour of generation is never triggered by a check): a missing, incomplete or damaged
    entry is a one-line error with the command that makes it."""
    generator.check_ready()
    folder = cache_folder(generator, dataset_name, split, cache_dir)
    if not (folder / META).exists():
        raise L2LError(f"no cached {generator.name} maps for {dataset_name}/{split.name} with these options; "
                       f"run `l2l maps generate` with the same options first")
    return _load_entry(folder, split, _expected(generator, dataset_name, split, 0))


# ---- generation (the only writer) -------------------------------------------------------

def _clear(folder: Path) -> None:
    """Empty an entry folder we hold the lock of, keeping the lock itself."""
    for p in folder.iterdir():
        if p.name == LOCK_NAME:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _resume_meta(folder: Path, expected: dict) -> dict | None:
    """The sidecar to resume from when it is sound and matches this generator and split;
    otherwise the entry is reported and emptied (we hold its lock)."""
    if not (folder / META).exists():
        return None
    meta, problem = _meta_state(folder)
    ok = problem is None and all(meta.get(k) == v for k, v in expected.items() if k != "chunk_size")
    if ok:
        return meta
    _warn(f"map cache {folder} does not match this generator and split (or is unreadable); regenerating it")
    _clear(folder)
    return None


def _merge_stats(per_chunk: dict) -> dict:
    total: dict[str, float] = {}
    for stats in per_chunk.values():
        for k, v in stats.items():
            total[k] = total.get(k, 0) + v
    return total


def cached_maps(generator: MapGenerator, dataset_name: str, split: ImageSet, *,
                cache_dir: str | os.PathLike | None = None, progress: bool = True,
                chunk_size: int | None = None) -> np.ndarray:
    """float32 (N, H, W) maps in [0, 1] for ``split``, generated once and cached.

    Sources with ``cacheable = False`` (oracle, intensity) are computed directly.
    The sidecar of the cache entry holds ``generator.describe()``; read it with
    :func:`cache_meta`. Generation holds the entry's lock; ``progress=False`` also
    silences the progress bars of loading the model.
    """
    images = np.asarray(split.images)
    n, hw = len(images), tuple(images.shape[-2:])
    if not generator.cacheable:
        return validate_maps(generator.generate(split), n, hw, generator.name)
    chunk_size = default_chunk_size() if chunk_size is None else chunk_size
    generator.check_ready()
    with loading_progress(progress):
        folder = cache_folder(generator, dataset_name, split, cache_dir)
        expected = _expected(generator, dataset_name, split, chunk_size)
        try:
            maps, _ = _load_entry(folder, split, expected)
            return maps
        except L2LError:
            pass  # missing, unfinished or damaged: generate what is not there
        with folder_lock(folder, f"`l2l maps generate` for {generator.name} maps ({folder.name})"):
            for tmp_dir in (folder, folder / "work"):
                if tmp_dir.is_dir():
                    clean_stale_tmp(tmp_dir, older_than=-1)  # we hold the lock: any temporary file is a dead write's
            maps = _fill(generator, split, folder, expected, progress)
    return validate_maps(maps, n, hw, f"{generator.name} cache {folder}")


def _fill(generator: MapGenerator, split: ImageSet, folder: Path, expected: dict, progress: bool) -> np.ndarray:
    images = np.asarray(split.images)
    n, hw = len(images), tuple(images.shape[-2:])
    meta = _resume_meta(folder, expected) or {**expected, "describe": generator.describe(), "chunks": {},
                                              "chunk_stats": {}, "complete": False, "device": None,
                                              "seconds": 0.0}
    meta.setdefault("chunk_stats", {})
    meta.setdefault("seconds", 0.0)
    n_chunks = _n_chunks(n, meta["chunk_size"])
    done: dict[int, np.ndarray] = {}
    for i in range(n_chunks):
        q, problem = _chunk(folder, i, meta["chunks"].get(str(i)), hw)
        if q is not None:
            done[i] = q
        elif str(i) in meta["chunks"]:
            _warn(f"cached maps {_chunk_path(folder, i)} are {problem}; regenerating that chunk")
            meta["chunks"].pop(str(i))
    todo = [i for i in range(n_chunks) if i not in done]
    if todo:
        _generate_chunks(generator, split, folder, meta, todo, done, progress)
    elif not meta["complete"]:
        meta["complete"] = True
        atomic_write_json(folder / META, meta)
    return np.concatenate([done[i] for i in range(n_chunks)])[:n].astype(np.float32) / 255.0


def _generate_chunks(generator: MapGenerator, split: ImageSet, folder: Path, meta: dict, todo: list[int],
                     done: dict, progress: bool) -> None:
    images = np.asarray(split.images)
    n, hw, size = len(images), tuple(images.shape[-2:]), meta["chunk_size"]
    meta["complete"] = False
    folder.mkdir(parents=True, exist_ok=True)
    generator.prepare(split, folder / "work")
    remaining = sum(min(size, n - i * size) for i in todo)
    bar = progress_bar(total=remaining, desc=f"maps {generator.name} {meta['dataset']}/{split.name}", unit="img",
                       show=progress)
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
        meta["complete"] = len(meta["chunks"]) == _n_chunks(n, size)
        atomic_write_json(folder / META, meta)
        done[i] = q
        bar.update(len(idx))
    bar.close()


# ---- readers ------------------------------------------------------------------------------

def cache_meta(generator: MapGenerator, dataset_name: str, split: ImageSet,
               cache_dir: str | os.PathLike | None = None) -> dict | None:
    """The sidecar of a cache entry (checked), or None when nothing was generated yet."""
    folder = cache_folder(generator, dataset_name, split, cache_dir)
    return read_meta(folder) if (folder / META).exists() else None


class CacheEntry(NamedTuple):
    """One entry of the cache: its folder, its sidecar (None when unreadable) and what
    is wrong with it (None when nothing is)."""

    folder: Path
    meta: dict | None
    problem: str | None


def list_cached(cache_dir: str | os.PathLike | None = None) -> list[CacheEntry]:
    """Every cache entry under ``cache_dir``, damaged ones included with what is wrong
    (a sidecar that cannot be read, a chunk file it lists that is gone)."""
    root = cache_root(cache_dir)
    out = []
    for path in sorted(root.glob(f"*/*/*/{META}")):
        folder = path.parent
        meta, problem = _meta_state(folder)
        if problem:
            out.append(CacheEntry(folder, None, f"{META} is {problem}"))
            continue
        lost = [i for i in sorted(meta["chunks"], key=int) if not _chunk_path(folder, int(i)).is_file()]
        out.append(CacheEntry(folder, meta, f"chunk {lost[0]} ({_chunk_path(folder, int(lost[0])).name}) is missing"
                              if lost else None))
    return out


def load_map_set(ref: str, dataset_name: str, split: ImageSet,
                 cache_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, dict]:
    """A complete cached map set named by its folder name (``clip-<fingerprint>``), a
    fingerprint prefix, or its source name when only one such set is cached, for this
    data set split; returns (maps, describe). Never generates: a damaged set is an error."""
    root = cache_root(cache_dir) / dataset_name / split_key(split)

    def matches(name: str) -> bool:
        source, _, fp = name.rpartition("-")
        return ref in (name, source) or (bool(ref) and fp.startswith(ref))

    hits = [p for p in sorted(root.glob(f"*/{META}")) if matches(p.parent.name)]
    if len(hits) != 1:
        found = ", ".join(p.parent.name for p in sorted(root.glob(f"*/{META}"))) or "none"
        what = "no" if not hits else "more than one"
        raise L2LError(f"{what} cached map set matches {ref!r} for {dataset_name}/{split.name} (cached: {found}); "
                       f"pass a backend ({', '.join(sorted(MAP_SOURCES))}) or a longer fingerprint")
    maps, meta = _load_entry(hits[0].parent, split)
    return maps, meta["describe"]


def resolve_maps(source: MapGenerator | str, dataset_name: str, split: ImageSet, *,
                 cache_dir: str | os.PathLike | None = None, progress: bool = True) -> tuple[np.ndarray, dict]:
    """``--maps``: a built generator (its maps generated or read from the cache) or a
    cached map set's folder name / fingerprint. Returns (maps, describe) for the record."""
    if isinstance(source, MapGenerator):
        return cached_maps(source, dataset_name, split, cache_dir=cache_dir, progress=progress), source.describe()
    return load_map_set(source, dataset_name, split, cache_dir)
