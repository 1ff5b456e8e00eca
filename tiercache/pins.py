"""Pins: prefixes whose blocks are never evicted from the lowest tier; persisted in LMDB."""

from __future__ import annotations

from .blocks import is_under
from .namespace import normalize
from .tiers.meta import Meta

__all__ = ["Pins"]


class Pins:
    """The pinned prefixes (stored as "/" + prefix in the ``pins`` database)."""

    def __init__(self, meta: Meta):
        self.meta = meta
        self._pins = frozenset(key.decode()[1:] for key, _ in meta.scan("pins"))

    def pin(self, prefix: str) -> None:
        """Pin ``prefix`` (a file or directory; "" pins everything)."""
        prefix = normalize(prefix)
        self.meta.put("pins", f"/{prefix}".encode(), b"1")
        self._pins = self._pins | {prefix}

    def unpin(self, prefix: str) -> None:
        """Undo ``pin(prefix)``."""
        prefix = normalize(prefix)
        self.meta.delete("pins", f"/{prefix}".encode())
        self._pins = self._pins - {prefix}

    def covers(self, key: str) -> bool:
        """Whether ``key`` is at or below a pinned prefix."""
        return any(is_under(key, p) for p in self._pins)

    def __iter__(self):
        return iter(sorted(self._pins))
