"""A compact map of 64-bit integers to 64-bit integers: 16 bytes per entry in two sorted numpy arrays, plus
a small dict of recent changes merged into them in batches (so an insert is O(1) amortized over a batch and a
lookup is a dict probe and a binary search). For state that can grow to millions of entries (inodes.py)."""

from __future__ import annotations

import numpy as np

MERGE_AT = 4096  # pending changes merged into the arrays once there are this many
_GONE = None  # a pending change that removes a key


class U64Map:
    """uint64 -> uint64; not thread-safe (callers lock)."""

    def __init__(self, merge_at: int = MERGE_AT):
        self._keys = np.empty(0, dtype=np.uint64)
        self._values = np.empty(0, dtype=np.uint64)
        self._recent: dict[int, int | None] = {}
        self._merge_at = merge_at
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def get(self, key: int, default: int | None = None) -> int | None:
        """The value of ``key``, or ``default``."""
        if key in self._recent:
            value = self._recent[key]
            return default if value is _GONE else value
        at = self._find(key)
        return default if at < 0 else int(self._values[at])

    def __contains__(self, key: int) -> bool:
        return self.get(key) is not None

    def set(self, key: int, value: int) -> None:
        """Map ``key`` to ``value``."""
        if self._recent.get(key, _GONE) is _GONE and (key in self._recent or self._find(key) < 0):
            self._size += 1
        self._recent[key] = value
        if len(self._recent) >= self._merge_at:
            self._merge()

    def pop(self, key: int) -> int | None:
        """Remove ``key``; its value, or None if it had none."""
        value = self.get(key)
        if value is not None:
            self._size -= 1
            self._recent[key] = _GONE
            if len(self._recent) >= self._merge_at:
                self._merge()
        return value

    def nbytes(self) -> int:
        """Bytes held by the arrays (the pending dict is bounded by ``merge_at``)."""
        return int(self._keys.nbytes + self._values.nbytes)

    def _find(self, key: int) -> int:
        keys = self._keys
        if not keys.size:
            return -1
        at = int(keys.searchsorted(np.uint64(key)))
        return at if at < keys.size and keys[at] == key else -1

    def _merge(self) -> None:
        recent, self._recent = self._recent, {}
        changed = np.fromiter(recent, dtype=np.uint64, count=len(recent))
        keep = ~np.isin(self._keys, changed)
        added = [(k, v) for k, v in recent.items() if v is not _GONE]
        keys = np.concatenate([self._keys[keep], np.fromiter((k for k, _ in added), np.uint64, len(added))])
        values = np.concatenate([self._values[keep], np.fromiter((v for _, v in added), np.uint64, len(added))])
        order = np.argsort(keys, kind="stable")
        self._keys, self._values = keys[order], values[order]
