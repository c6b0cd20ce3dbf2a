"""Training checkpoints that survive damage: each one verified by its SHA-256 on load,
the one before it kept, and a damaged one set aside instead of trusted or lost.

A run resumes from its newest good checkpoint; when the newest is damaged it resumes
from the one before and says so; when neither is good it starts again and says so.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

from ..errors import L2LError
from ..io import atomic_torch_save, checksum_path, torch_load

log = logging.getLogger(__name__)


def previous(path: Path) -> Path:
    """Where the checkpoint before ``path`` is kept."""
    return path.with_name(path.name.replace(".pt", ".prev.pt"))


def _move(src: Path, dst: Path) -> None:
    for a, b in ((src, dst), (checksum_path(src), checksum_path(dst))):
        if a.exists():
            os.replace(a, b)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` as the newest checkpoint; the current one becomes the previous."""
    if path.exists():
        _move(path, previous(path))
    atomic_torch_save(path, state)


def remove_checkpoints(path: Path) -> None:
    """A finished run keeps no checkpoint (nor a damaged one's remains)."""
    for p in (path, previous(path)):
        p.unlink(missing_ok=True)
        checksum_path(p).unlink(missing_ok=True)


def load_checkpoint(path: Path, check: Callable[[Any, Path], None], **load: Any) -> Any | None:
    """The newest good checkpoint at ``path`` (``check`` raises for one of the wrong kind),
    or None when there is none to resume from. A damaged file is renamed
    ``<name>.damaged`` and named in a warning, with what happens instead."""
    tried = []
    for candidate in (path, previous(path)):
        if not candidate.exists():
            continue
        try:
            state = torch_load(candidate, checked=True, **load)
            check(state, candidate)
        except L2LError:
            aside = candidate.with_name(candidate.name + ".damaged")
            _move(candidate, aside)
            tried.append(f"{candidate.name} is damaged or not a checkpoint: set aside as {aside.name}")
            continue
        if tried:
            log.warning("%s; resuming from %s", "; ".join(tried), candidate.name)
        return state
    if tried:
        log.warning("%s; no good checkpoint is left, so the run starts again from its first epoch", "; ".join(tried))
    return None
