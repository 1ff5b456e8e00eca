"""The SSD tier's per-block state in numpy arrays: each resident block has a slot (a dense integer id, stored
in its index entry) and the table holds the slot's region, record size and index key (the block's digest,
``ssd_index.block_key``): 20 bytes per slot, no Python object. The keys are not stored on disk: a block
linked since open records its own, the background validation records the others as it walks the index.

Slot states, in ``region``: ``FREE`` (no block), ``GONE`` (a block of the index on disk that was dropped
before background validation reached it: never to be registered from the index again), or a region id.
Until validation has walked the whole index (``complete``), slots are handed out above the committed
high-water mark only; then the free ones below it are reused (lowest first).
"""

from __future__ import annotations

import numpy as np

from .slot_lists import grown
from .ssd_index import KEY_LEN

FREE, GONE = -1, -2


class SlotTable:
    """Slot → (region, length); not thread-safe (the tier serializes calls under its lock)."""

    def __init__(self, next_slot: int = 0):
        self.region = np.full(max(1024, next_slot), FREE, np.int32)
        self.length = np.zeros(len(self.region), np.uint32)  # the record's size in its region file
        self.key = np.zeros(len(self.region), np.dtype((np.void, KEY_LEN)))
        self.next_slot = next_slot  # every slot in use is below it
        self.live = 0
        self.complete = False
        self._free = np.empty(0, np.int64)  # reusable slots, once complete (a stack: lowest on top)
        self._free_top = 0

    def allocate(self) -> int:
        """A free slot."""
        if self._free_top:
            self._free_top -= 1
            return int(self._free[self._free_top])
        slot = self.next_slot
        self.next_slot += 1
        self._grow(slot + 1)
        return slot

    def _grow(self, need: int) -> None:
        if need > len(self.region):
            self.region = grown(self.region, need, FREE)
            self.length = grown(self.length, need)
            self.key = grown(self.key, need)

    def claim(self, slot: int, region: int, length: int, key: bytes) -> None:
        """Record a block (index key ``key``, record of ``length`` bytes) in ``slot`` (allocated, or found in
        the index by validation)."""
        self._grow(slot + 1)
        if self.region[slot] < 0:
            self.live += 1
        self.region[slot] = region
        self.length[slot] = length
        self.key[slot] = key

    def key_of(self, slot: int) -> bytes | None:
        """The index key of the block in ``slot`` (None when the slot holds none)."""
        return self.key[slot].tobytes() if 0 <= slot < len(self.region) and self.region[slot] >= 0 else None

    def state(self, slot: int) -> int:
        """The slot's region id, FREE or GONE."""
        return int(self.region[slot]) if 0 <= slot < len(self.region) else FREE

    def release(self, slot: int) -> None:
        """The slot's block is gone: the slot is free (GONE until validation is complete)."""
        if not 0 <= slot < len(self.region):
            return
        current = int(self.region[slot])
        if current >= 0:
            self.live -= 1
        if not self.complete:
            self.region[slot] = GONE
            return
        if current == FREE:
            return  # already free
        self.region[slot] = FREE
        if self._free_top == len(self._free):
            self._free = grown(self._free, self._free_top + 1)
        self._free[self._free_top] = slot
        self._free_top += 1

    def finish(self) -> None:
        """Validation has seen every entry: free the slots nothing claimed and allow their reuse."""
        used = self.region[:self.next_slot]
        used[used == GONE] = FREE
        free = np.flatnonzero(used == FREE)[::-1]
        self._free = free.astype(np.int64)
        self._free_top = len(free)
        self.complete = True

    def in_region(self, region: int) -> np.ndarray:
        """The slots whose block lies in ``region``."""
        return np.flatnonzero(self.region[:self.next_slot] == region)

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays."""
        return self.region.nbytes + self.length.nbytes + self.key.nbytes + self._free.nbytes
