"""Pins: prefixes whose blocks are never evicted from the lowest tier; persisted in LMDB.

A pin is a prefix a user named (``tiercache pin PATH...``, ``TieredCache.pin``): usually a few directories,
but nothing stops a user from naming a million files. So the index of record is LMDB (``pins``: "/" + prefix)
and memory holds them only while they are few (``IN_MEMORY``); past that, ``covers(key)`` looks up the key
and each directory above it in LMDB (one read per path level, whatever the number of pins), and no Python
object is held per pin.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from .blocks import is_under
from .namespace import normalize
from .tiers.meta import Meta

__all__ = ["Pins"]

IN_MEMORY = 256


def _key(prefix: str) -> bytes:
    return f"/{prefix}".encode()


class Pins:
    """The pinned prefixes (stored as "/" + prefix in the ``pins`` database; see the module docstring)."""

    def __init__(self, meta: Meta):
        self.meta = meta
        self._lock = threading.Lock()
        self._few: frozenset[str] | None = None  # every pin, while there are at most IN_MEMORY of them
        self._load()

    def _load(self) -> None:
        count = self.meta.count("pins")
        self._count = count
        self._few = frozenset(key.decode()[1:] for key, _ in self.meta.scan("pins")) if count <= IN_MEMORY else None

    def pin(self, prefix: str) -> None:
        """Pin ``prefix`` (a file or directory; "" pins everything)."""
        prefix = normalize(prefix)
        with self._lock:
            self.meta.put("pins", _key(prefix), b"1")
            if self._few is not None:
                self._few = self._few | {prefix}
                if len(self._few) > IN_MEMORY:
                    self._few = None
            self._count = self.meta.count("pins")

    def unpin(self, prefix: str) -> None:
        """Undo ``pin(prefix)``."""
        prefix = normalize(prefix)
        with self._lock:
            self.meta.delete("pins", _key(prefix))
            if self._few is not None:
                self._few = self._few - {prefix}
            elif self.meta.count("pins") <= IN_MEMORY:
                self._load()
            self._count = self.meta.count("pins")

    def covers(self, key: str) -> bool:
        """Whether ``key`` is at or below a pinned prefix."""
        few = self._few
        if few is not None:
            return any(is_under(key, p) for p in few)
        path = key
        while True:  # the key, then each directory above it, then the root
            if self.meta.get("pins", _key(path)) is not None:
                return True
            if not path:
                return False
            path = path.rpartition("/")[0]

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        """The pinned prefixes in order, read from LMDB."""
        return iter([key.decode()[1:] for key, _ in self.meta.scan("pins")])
