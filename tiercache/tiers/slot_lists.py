"""Compact building blocks of the slot policies: doubly linked lists and a FIFO ghost, all in numpy arrays.

Items are small integers (slot ids, dense from 0). A ``Lists`` holds several disjoint lists over the same
items (an item is in at most one of them) with ``prev``/``next`` links in two int32 arrays: 8 bytes per item,
no Python object per item. ``Ghost`` remembers the last few identities (64-bit hashes) in a ring buffer with a
direct-mapped table for membership: lossy by design (a collision forgets the older one), which only makes a
heuristic slightly less sharp.
"""

from __future__ import annotations

import numpy as np

NIL = -1


def grown(array: np.ndarray, need: int, fill: int = 0) -> np.ndarray:
    """``array`` with room for index ``need - 1`` (growing by half; new items set to ``fill``)."""
    if need <= len(array):
        return array
    out = np.full(max(need, len(array) + len(array) // 2, 1024), fill, dtype=array.dtype)
    out[:len(array)] = array
    return out


class Lists:
    """``count`` disjoint doubly linked lists over integer items (see the module docstring)."""

    def __init__(self, count: int):
        self.prev = np.empty(0, np.int32)
        self.next = np.empty(0, np.int32)
        self.head = [NIL] * count
        self.tail = [NIL] * count
        self.size = [0] * count

    def reserve(self, need: int) -> None:
        """Room for items below ``need``."""
        if need > len(self.prev):
            self.prev = grown(self.prev, need, NIL)
            self.next = grown(self.next, need, NIL)

    def append(self, k: int, item: int) -> None:
        """Put ``item`` at the tail of list ``k``."""
        self.reserve(item + 1)
        tail = self.tail[k]
        self.prev[item] = tail
        self.next[item] = NIL
        if tail == NIL:
            self.head[k] = item
        else:
            self.next[tail] = item
        self.tail[k] = item
        self.size[k] += 1

    def extend(self, k: int, items: np.ndarray) -> None:
        """Append ``items`` (distinct, none in any list) at the tail of list ``k``, in order."""
        if not len(items):
            return
        self.reserve(int(items.max()) + 1)
        tail = self.tail[k]
        self.prev[items[1:]] = items[:-1]
        self.next[items[:-1]] = items[1:]
        self.prev[items[0]] = tail
        self.next[items[-1]] = NIL
        if tail == NIL:
            self.head[k] = int(items[0])
        else:
            self.next[tail] = items[0]
        self.tail[k] = int(items[-1])
        self.size[k] += len(items)

    def remove(self, k: int, item: int) -> None:
        """Unlink ``item`` from list ``k`` (it must be in it)."""
        before, after = int(self.prev[item]), int(self.next[item])
        if before == NIL:
            self.head[k] = after
        else:
            self.next[before] = after
        if after == NIL:
            self.tail[k] = before
        else:
            self.prev[after] = before
        self.size[k] -= 1

    def to_tail(self, k: int, item: int) -> None:
        """Move ``item`` (in list ``k``) to its tail."""
        if self.tail[k] != item:
            self.remove(k, item)
            self.append(k, item)

    def first(self, k: int) -> int:
        """The head of list ``k`` (NIL when empty)."""
        return self.head[k]

    def after(self, item: int) -> int:
        """The item after ``item`` in its list (NIL at the tail)."""
        return int(self.next[item])

    @property
    def nbytes(self) -> int:
        """Bytes held by the links."""
        return self.prev.nbytes + self.next.nbytes


class Ghost:
    """The identities of the last ``limit`` evicted items, FIFO (see the module docstring)."""

    def __init__(self) -> None:
        self.ring = np.zeros(1024, np.int64)
        self.start = 0
        self.count = 0
        self.table = np.zeros(4096, np.int64)

    def _at(self, ident: int) -> int:
        return ident & (len(self.table) - 1)

    def __contains__(self, ident: int) -> bool:
        return int(self.table[self._at(ident)]) == ident

    def contains_many(self, idents: np.ndarray) -> np.ndarray:
        """``ident in self`` for each of ``idents`` (int64), as a bool array."""
        idents = idents.astype(np.int64)
        return self.table[idents & (len(self.table) - 1)] == idents

    def discard(self, ident: int) -> None:
        """Forget ``ident`` (its ring entry stays and expires harmlessly)."""
        at = self._at(ident)
        if int(self.table[at]) == ident:
            self.table[at] = 0

    def add(self, ident: int, limit: int) -> None:
        """Remember ``ident``; then forget the oldest beyond ``limit``."""
        if ident in self:
            return
        if self.count == len(self.ring):
            self.ring = np.roll(self.ring, -self.start)
            self.ring = grown(self.ring, 2 * self.count)
            self.start = 0
        self.ring[(self.start + self.count) % len(self.ring)] = ident
        self.count += 1
        if 2 * limit > len(self.table):  # keep the table at least twice the ghost's size
            self._resize(4 * limit)
        self.table[self._at(ident)] = ident
        while self.count > limit:
            old = int(self.ring[self.start])
            self.start = (self.start + 1) % len(self.ring)
            self.count -= 1
            self.discard(old)

    def _resize(self, size: int) -> None:
        size = 1 << max(12, (size - 1).bit_length())
        live = np.roll(self.ring, -self.start)[:self.count]
        live = live[self.table[live & (len(self.table) - 1)] == live]
        self.table = np.zeros(size, np.int64)
        self.table[live & (size - 1)] = live

    @property
    def nbytes(self) -> int:
        """Bytes held by the ring and the table."""
        return self.ring.nbytes + self.table.nbytes
