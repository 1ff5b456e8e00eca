"""Removals in flight: a LIST or HEAD answered before a name was removed must not bring the name back.

The race it closes: a reader's LIST (or HEAD) is answered by the store while a delete is still running; the
delete then finishes (the store, the namespace and the write tier all agree the name is gone); then the
reader's answer is applied, and the deleted name is back in the namespace for a whole TTL. With this, the
namespace opens a lookup around each LIST (``start``/``end``: a listing job streams in over time) and HEAD
(``lookup``) and records each removal (``removed``); an answer is filtered by ``removed_since``: names (or
directories above them) removed after the lookup started are left out.

Tombstones are kept only while a lookup that started before them is open, so the table stays as small as the
removals that overlap listings in flight.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Removals:
    """Tombstones of recent removals, by sequence number, against the lookups open when they happened."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seq = 0
        self._removed: dict[str, int] = {}  # path (a directory: "path/") -> seq of its removal
        self._open: Counter[int] = Counter()  # start seq of each lookup in flight

    def start(self) -> int:
        """A LIST or HEAD starts: its token for ``removed_since`` (``end`` it when its answer is applied)."""
        with self._lock:
            start = self._seq
            self._open[start] += 1
            return start

    def end(self, start: int) -> None:
        """The lookup of token ``start`` is applied (or given up)."""
        with self._lock:
            self._open[start] -= 1
            if not self._open[start]:
                del self._open[start]
            self._prune()

    @contextmanager
    def lookup(self) -> Iterator[Callable[[str], bool]]:
        """Around one LIST or HEAD: yields ``removed_since(key)``, true for keys removed after it started."""
        start = self.start()
        try:
            yield lambda key: self.removed_since(key, start)
        finally:
            self.end(start)

    def removed(self, path: str, tree: bool = False) -> None:
        """``path`` (``tree``: and everything below it) is gone; call before the namespace forgets it."""
        with self._lock:
            if not self._open:  # no answer in flight can bring it back
                return
            self._seq += 1
            self._removed[f"{path}/" if tree else path] = self._seq

    def any_since(self, start: int) -> bool:
        """Whether anything was removed after the lookup of token ``start`` began (no lock: a hint that
        lets a batch skip ``removed_since`` per key; a removal racing it is met by the next batch)."""
        return self._seq > start and bool(self._removed)

    def removed_since(self, key: str, start: int) -> bool:
        """Whether ``key`` (or a directory above it) was removed after the lookup of token ``start`` began."""
        removed = self._removed
        if not removed:
            return False
        with self._lock:
            if removed.get(key, 0) > start:
                return True
            cut = key.rfind("/")
            while cut > 0:
                if removed.get(key[:cut + 1], 0) > start:
                    return True
                cut = key.rfind("/", 0, cut)
            return False

    def _prune(self) -> None:
        """Drop tombstones no open lookup predates (call holding the lock)."""
        if not self._open:
            self._removed.clear()
            return
        oldest = min(self._open)
        if len(self._removed) > 64:
            self._removed = {k: s for k, s in self._removed.items() if s > oldest}
