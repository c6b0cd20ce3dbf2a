"""Atomic file writes, safe reads, locks and content hashes.

Every file the project writes goes through a temporary file and ``os.replace``,
so a killed process never leaves a half-written file that later loads; the
temporary files such a kill leaves behind are removed by the next write in that
folder. Every read of a file a user or a cache provides goes through a function
here that names a corrupt file as corrupt, with the fix.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

from .errors import L2LError, corrupt_file

#: Temporary files of atomic writes: ``.<name>.<random>.tmp`` beside the target.
TMP_SUFFIX = ".tmp"
#: A temporary file this old belongs to a write that was killed, not to one in progress.
STALE_TMP_SECONDS = 3600
LOCK_NAME = ".lock"
#: How often a process waiting for a lock looks again.
LOCK_POLL_SECONDS = 0.5
#: A held lock's time stamp is refreshed this often; a lock taken on another machine is
#: stale once it has not been refreshed for LOCK_STALE_SECONDS.
LOCK_REFRESH_SECONDS = 60.0
LOCK_STALE_SECONDS = 600.0


def sha256_array(a: np.ndarray) -> str:
    """SHA-256 of the array's bytes in C order, read in place (no copy of a large array)."""
    return hashlib.sha256(np.ascontiguousarray(a).reshape(-1).view(np.uint8)).hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def folder_option(path: str | os.PathLike, flag: str, what: str, env: str) -> Path:
    """A folder named by an option; a file in its place is a one-line error."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise L2LError(f"{flag} {folder} is a file, not a folder; pass a folder for {what} (or set {env})")
    return folder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def clean_stale_tmp(folder: Path, older_than: float = STALE_TMP_SECONDS) -> None:
    """Remove temporary files left in ``folder`` by atomic writes that were killed."""
    now = time.time()
    for tmp in folder.glob(f".*{TMP_SUFFIX}"):
        try:
            if now - tmp.stat().st_mtime > older_than:
                tmp.unlink()
        except OSError:
            continue


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename; the file gets
    the permissions the umask gives (0644 by default), not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` through :func:`atomic_write_bytes`, with the SHA-256 of the bytes in a
    ``<name>.sha256`` file beside it, which :func:`torch_load` checks: torch's zip reader
    does not check its members' CRCs, so damaged weights would otherwise load."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    out = atomic_write_bytes(path, data)
    atomic_write_text(checksum_path(out), hashlib.sha256(data).hexdigest() + "\n")
    return out


def checksum_path(path: str | os.PathLike) -> Path:
    """Where :func:`atomic_torch_save` keeps a file's SHA-256."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def read_json(path: str | os.PathLike, fix: str = "delete it and rerun the command") -> Any:
    """The JSON in ``path``; a file that is not valid JSON is named as corrupt, with ``fix``."""
    try:
        return json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise corrupt_file(path, f"not valid JSON: {e}", fix) from None


#: The largest settings file read (a config is a few hundred bytes; this keeps a wrong file out of memory).
MAX_CONFIG_BYTES = 1 << 20


def read_settings(path: str | os.PathLike, what: str = "config file") -> Any:
    """A YAML or JSON file of settings: at most ``MAX_CONFIG_BYTES``, and without YAML
    aliases, whose nested expansion can fill any memory from a few lines."""
    import yaml

    class NoAliases(yaml.SafeLoader):
        def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
            if self.check_event(yaml.AliasEvent):
                raise yaml.YAMLError("aliases (*name) are not allowed in a settings file")
            return super().compose_node(parent, index)

    path = Path(path)
    with open(path, "rb") as f:
        data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise L2LError(f"{what} {path} is over {MAX_CONFIG_BYTES // 1024} KiB, too large for settings; pass the "
                       "YAML or JSON file of a run's settings")
    try:
        return yaml.load(data.decode("utf-8-sig"), Loader=NoAliases)  # noqa: S506 (a SafeLoader)
    except (yaml.YAMLError, UnicodeError) as e:
        reason = "it uses YAML aliases" if "aliases" in str(e) else type(e).__name__
        raise L2LError(f"{what} {path} is not valid YAML/JSON ({reason}); fix its syntax") from None


def load_npy(path: str | os.PathLike, fix: str = "delete it and rerun the command", **kw: Any) -> Any:
    """``np.load(path)`` without pickles; an empty, truncated or foreign file is named as corrupt."""
    try:
        return np.load(path, allow_pickle=False, **kw)
    except (ValueError, EOFError, zipfile.BadZipFile, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise corrupt_file(path, f"not a NumPy file: {type(e).__name__}: {e}", fix) from None


def torch_load(path: str | os.PathLike, fix: str = "delete it and rerun the command", checked: bool = False,
               **kw: Any) -> Any:
    """``torch.load(path)`` after checking its bytes against the SHA-256 saved beside it
    (files saved before checksums were kept load unchecked, unless ``checked``: a file this
    version writes, whose missing checksum means its write never finished); an empty,
    truncated, damaged or random file is named as corrupt. Random bytes can fail inside the unpickler in
    almost any way (even MemoryError, from a length read out of garbage), so every
    ordinary exception means "unreadable"."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "No such file", str(path))
    data = path.read_bytes()
    expected = checksum_path(path)
    if checked and not expected.is_file():
        raise corrupt_file(path, "no SHA-256 was saved with it, so its write did not finish", fix)
    if expected.is_file() and hashlib.sha256(data).hexdigest() != expected.read_text().strip():
        raise corrupt_file(path, "its SHA-256 differs from the one saved with it: the file is damaged", fix)
    try:
        return torch.load(io.BytesIO(data), **kw)
    except Exception as e:  # noqa: BLE001  (see the docstring)
        raise corrupt_file(path, f"not a PyTorch file: {type(e).__name__}", fix) from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(lock: Path) -> tuple[int, str] | None:
    """The (pid, host) a lock file names, host "" in a lock from before hosts were recorded;
    None when it is gone or holds no pid (an empty lock made by hand): a lock is only ever
    created whole (:func:`_take`), and one without an owner is never judged stale."""
    try:
        pid, _, host = lock.read_text().strip().partition(" ")
    except OSError:
        return None
    return (int(pid), host) if pid.isdigit() else None


def _stale(lock: Path, owner: tuple[int, str]) -> bool:
    """Whether ``owner`` no longer holds ``lock``: on this machine, its process is gone (or
    it is this one, left by an aborted attempt); on another (a SLURM job's node, whose
    processes this one cannot see), it stopped refreshing the lock's time stamp."""
    pid, host = owner
    if host in ("", socket.gethostname()):
        return pid == os.getpid() or not _pid_alive(pid)
    try:
        return time.time() - lock.stat().st_mtime > LOCK_STALE_SECONDS
    except OSError:
        return False


def _refresh(lock: Path, stop: threading.Event) -> None:
    """Touch ``lock`` every ``LOCK_REFRESH_SECONDS`` while it is held, so that other machines see it alive."""
    while not stop.wait(LOCK_REFRESH_SECONDS):
        try:
            os.utime(lock)
        except OSError:
            return


def _take(lock: Path) -> bool:
    """Create ``lock`` holding this process's pid, atomically: the owner record is written to
    a temporary file and hard-linked into place, which fails if the lock exists. No process
    ever sees the lock without its owner."""
    fd, tmp = tempfile.mkstemp(prefix=f".{lock.name}.", suffix=TMP_SUFFIX, dir=lock.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {socket.gethostname()}\n")
        os.link(tmp, lock)
        return True
    except FileExistsError:
        return False
    finally:
        Path(tmp).unlink(missing_ok=True)


def _clear_stale(lock: Path, owner: tuple[int, str]) -> None:
    """Remove ``lock`` if it still names the stale ``owner``: renamed aside first, so a
    contender that took the lock in between never loses it."""
    aside = lock.with_name(f"{lock.name}.stale-{owner[0]}-{os.getpid()}")
    try:
        os.rename(lock, aside)
    except OSError:
        return
    if _owner(aside) == owner:
        aside.unlink(missing_ok=True)
    else:  # someone else's live lock moved by mistake: put it back if the place is still free
        try:
            os.link(aside, lock)
        except OSError:
            pass
        aside.unlink(missing_ok=True)


@contextmanager
def folder_lock(folder: str | os.PathLike, what: str, *, name: str = LOCK_NAME, wait: float = 0.0) -> Iterator[Path]:
    """Hold ``folder/name`` while working there, so that a second identical command
    stops with a clear message instead of duplicating (or corrupting) the work, or,
    with ``wait`` seconds, waits for the first to finish (parallel workers that all
    need the same data set). A lock whose owner record names a process that no longer
    runs (killed with -9), or one taken on another machine and not refreshed for
    ``LOCK_STALE_SECONDS`` (a SLURM job killed at its time limit), is taken over; one
    without a complete record is never judged stale."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / name
    deadline = time.monotonic() + wait
    while not _take(lock):
        owner = _owner(lock)
        if owner is not None and _stale(lock, owner):
            _clear_stale(lock, owner)
            continue
        if time.monotonic() < deadline:
            time.sleep(LOCK_POLL_SECONDS)
            continue
        who = "another process" if owner is None else f"pid {owner[0]}" + (f" on {owner[1]}" if owner[1] else "")
        raise L2LError(f"another l2l process ({who}) is already running {what} in {folder}; wait for it "
                       f"to finish, or delete {lock} if that process is gone")
    stop = threading.Event()
    threading.Thread(target=_refresh, args=(lock, stop), daemon=True).start()
    try:
        yield lock
    finally:
        stop.set()
        lock.unlink(missing_ok=True)
