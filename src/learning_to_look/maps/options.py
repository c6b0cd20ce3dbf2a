"""Map-source options from a config, checked before any data is loaded or folder made."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import L2LError
from .base import MAP_SOURCES, MapGenerator


def build_map_source(name: str, options: dict[str, Any]) -> MapGenerator | None:
    """The map source ``name`` built with ``options``, its own field checks run; options it
    does not take are refused. A cached map set (by folder name) takes no options and
    gives None: it is read by name."""
    if name not in MAP_SOURCES:
        if options:
            raise L2LError(f"map_options apply to a map source, not to the cached map set {name!r}; drop them, "
                           f"or pass one of: {', '.join(MAP_SOURCES.names())}")
        return None
    cls = MAP_SOURCES.get(name)
    known = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    unknown = sorted(set(options) - known)
    if unknown:
        raise L2LError(f"unknown map option(s) {', '.join(unknown)} for map source {name}; "
                       f"it takes: {', '.join(sorted(known)) or 'no options'}")
    try:
        return cls(**options)
    except TypeError as e:
        raise L2LError(f"map options {options} do not fit map source {name}: {e}") from None
