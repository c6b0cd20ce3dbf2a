"""One registry type for every kind of pluggable thing (methods, backbones, map
sources, data sets, targets, profiles), so that "unknown name" errors, duplicate
checks and the CLI's choices and help are written once.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from .errors import L2LError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> entry. ``kind`` names the thing in messages ("method", "backbone")."""

    def __init__(self, kind: str, key: Callable[[T], str] = lambda entry: entry.name) -> None:
        self.kind = kind
        self._key = key
        self._entries: dict[str, T] = {}

    def register(self, entry: T) -> T:
        """Add ``entry`` under its name; usable as a class decorator."""
        name = self._key(entry)
        if name in self._entries:
            raise ValueError(f"{self.kind} name {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def update(self, entry: T) -> T:
        """Add or replace ``entry``: for entries described by files, not code (an imported
        data set, imported again)."""
        self._entries[self._key(entry)] = entry
        return entry

    def add(self, name: str, entry: T) -> T:
        """Add an entry under an explicit name (functions, plain values)."""
        if name in self._entries:
            raise ValueError(f"{self.kind} name {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        """The entry called ``name``, or a one-line error listing the choices."""
        if name not in self._entries:
            raise L2LError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        return list(self._entries)

    def help(self, default: str | None = None) -> str:
        """CLI help text: the choices, and the default when there is one."""
        text = " | ".join(self.names())
        return f"{text}  [default: {default}]" if default is not None else text

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def items(self):
        return self._entries.items()

    def values(self):
        return self._entries.values()

    def __getitem__(self, name: str) -> T:
        return self._entries[name]
