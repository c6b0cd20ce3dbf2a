"""Map-source options from a config, checked before any data is loaded or folder made."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import L2LError
from .base import MAP_SOURCES


def check_map_options(name: str, options: dict[str, Any]) -> None:
    """Refuse options the map source ``name`` does not take, and build it once so that
    its own field checks run; a cached map set (by folder name) takes no options."""
    if name not in MAP_SOURCES:
        if options:
            raise L2LError(f"map_options apply to a map source, not to the cached map set {name!r}; drop them, "
                           f"or pass one of: {', '.join(MAP_SOURCES.names())}")
        return
    cls = MAP_SOURCES.get(name)
    known = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    unknown = sorted(set(options) - known)
    if unknown:
        raise L2LError(f"unknown map option(s) {', '.join(unknown)} for map source {name}; "
                       f"it takes: {', '.join(sorted(known)) or 'no options'}")
    try:
        cls(**options)
    except TypeError as e:
        raise L2LError(f"map options {options} do not fit map source {name}: {e}") from None
