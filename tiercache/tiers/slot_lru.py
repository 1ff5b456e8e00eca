"""Least recently used over the SSD tier's integer slots, its state in numpy arrays (see ``slot_policy.py``):
13 bytes per slot, with a separate list for a stream's one-shot (scan) slots, evicted first."""

from __future__ import annotations

import numpy as np

from .policy import Protected, never_protected
from .slot_lists import NIL, Lists, grown
from .slot_policy import SlotPolicy


class SlotLRU(SlotPolicy):
    """Least recently used over slots."""

    name = "lru"

    def __init__(self) -> None:
        super().__init__()
        self._lists = Lists(2)  # 0: least recent first; SCAN (1): one-shot slots, oldest first
        self._in = np.zeros(0, np.uint8)  # 0: out, 1: in list 0, 2: in the scan list

    def _reserve(self, need: int) -> None:
        super()._reserve(need)
        self._in = grown(self._in, need)
        self._lists.reserve(need)

    def on_insert(self, block: int, size: int, ident: int | None = None, scan: bool = False) -> None:
        """Insert at the most-recent end (a scan slot: at the end of the scan list)."""
        slot = int(block)
        self._reserve(slot + 1)
        if self._in[slot]:
            self.on_remove(slot)
        self._in[slot] = 1 + bool(scan)
        self._size[slot] = size
        self._lists.append(int(bool(scan)), slot)
        self._count += 1
        self._bytes += size

    def insert_many(self, slots: np.ndarray, sizes: np.ndarray, idents: np.ndarray) -> None:
        """Insert slots not yet resident at the most-recent end, in order (vectorized)."""
        slots = np.asarray(slots, np.int64)
        if not len(slots):
            return
        self._reserve(int(slots.max()) + 1)
        new = self._in[slots] == 0
        slots, sizes = slots[new], np.asarray(sizes)[new]
        self._in[slots] = 1
        self._size[slots] = sizes
        self._lists.extend(0, slots)
        self._count += len(slots)
        self._bytes += int(sizes.sum())

    def on_access(self, block: int) -> None:
        """Move to the most-recent end (a scan slot read again becomes a normal one)."""
        slot = int(block)
        if slot < len(self._in) and self._in[slot]:
            self._lists.remove(self._in[slot] - 1, slot)
            self._lists.append(0, slot)
            self._in[slot] = 1

    def on_remove(self, block: int) -> None:
        """Forget a slot."""
        slot = int(block)
        if slot < len(self._in) and self._in[slot]:
            self._forget(slot)

    def _forget(self, slot: int) -> None:
        self._lists.remove(self._in[slot] - 1, slot)
        self._in[slot] = 0
        self._count -= 1
        self._bytes -= int(self._size[slot])

    def victims(self, bytes_needed: int, protected: Protected | None = None) -> list[int]:
        """Scan slots first, then least recent first, skipping protected slots."""
        protected = protected or never_protected
        out, freed = [], 0
        for k in (1, 0):
            slot = self._lists.first(k)
            while slot != NIL and freed < bytes_needed:
                nxt = self._lists.after(slot)
                if not protected(slot):
                    freed += int(self._size[slot])
                    self._forget(slot)
                    out.append(slot)
                slot = nxt
        return out

    def __contains__(self, block: object) -> bool:
        return isinstance(block, (int, np.integer)) and 0 <= block < len(self._in) and bool(self._in[block])

    def scanned(self, slot: int) -> bool:
        """Whether ``slot`` waits in the scan list."""
        return slot < len(self._in) and self._in[slot] == 2

    def resident(self) -> np.ndarray:
        """The resident slots."""
        return np.flatnonzero(self._in)
