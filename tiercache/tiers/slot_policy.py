"""Eviction policies over integer slot ids with their state in numpy arrays (the SSD tier's, issue 12).

Same contract and the same decisions as ``policy.py``'s LRU and S3-FIFO, but a block is a small integer
(the SSD tier's slot, dense from 0) and every per-block field lives in a numpy array: no Python object per
block. S3-FIFO keeps 34 bytes per slot (size, counter, queue, last access tick, identity, two pairs of
links), LRU (``slot_lru.py``) 13, plus up to half again while an array has room to grow. ``on_insert`` takes an optional
``ident`` (a hash of the block's identity) that the ghost remembers after an eviction, since a slot is
reused by other blocks, and ``scan`` (a one-shot block of a stream: its own FIFO, victims first; see
``policy.py``).
"""

from __future__ import annotations

import numpy as np

from .policy import Policy, Protected, never_protected
from .slot_lists import Ghost, Lists, grown
from .slot_state import assign, flatten

SMALL, MAIN, SCAN = 0, 1, 2
_OUT, _IN_SMALL, _IN_MAIN, _IN_SCAN = 0, 1, 2, 3


class SlotPolicy(Policy):
    """Base of the slot policies: sizes per slot, resident count and bytes."""

    name = "slots"

    def __init__(self) -> None:
        super().__init__()
        self._size = np.zeros(0, np.uint32)
        self._count = 0
        self._bytes = 0

    def _reserve(self, need: int) -> None:
        self._size = grown(self._size, need)

    def __len__(self) -> int:
        return self._count

    @property
    def tracked_bytes(self) -> int:
        """Bytes of the resident slots."""
        return self._bytes

    def resident(self) -> np.ndarray:
        """The resident slots (int64), in no particular order."""
        raise NotImplementedError

    def insert_many(self, slots: np.ndarray, sizes: np.ndarray, idents: np.ndarray) -> None:
        """``on_insert`` of each slot in order (vectorized where it can be: a restart hands over millions)."""
        for slot, size, ident in zip(slots.tolist(), sizes.tolist(), idents.tolist(), strict=True):
            self.on_insert(slot, size, ident)

    def reserve(self, slots: int) -> None:
        """Room for slots below ``slots`` at once (no growth headroom when the count is known)."""
        self._reserve(slots)

    def size_of(self, slot: int) -> int:
        """The size a resident slot was inserted with."""
        return int(self._size[slot])

    def scanned(self, slot: int) -> bool:
        """Whether a resident slot is a one-shot (scan) slot not read again since."""
        return False

    @property
    def nbytes(self) -> int:
        """Bytes held by the policy's arrays."""
        return sum(v.nbytes for v in vars(self).values() if isinstance(v, np.ndarray))

    def state(self) -> dict[str, np.ndarray]:
        """Everything the policy holds, as named numpy arrays (its own, not copies: the SSD tier writes them
        to a file at close to keep its eviction order across restarts, ``ssd_order.py``); ``load_state``
        puts it back."""
        out = {"class": np.array(type(self).__name__)}
        flatten(self, "", out)
        return out

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Become the policy ``state`` (from ``state()`` of the same class and fields) describes, taking its
        arrays over (no copy); ValueError (and no change) when it does not fit."""
        mine = {name[2:]: (name[:2], value) for name, value in self.state().items() if name != "class"}
        theirs = {name[2:]: (name[:2], value) for name, value in state.items() if name != "class"}
        if str(state.get("class")) != type(self).__name__ or set(theirs) != set(mine):
            raise ValueError("policy state of another class or version")
        for path, (kind, value) in theirs.items():
            own_kind, own = mine[path]
            if kind == "a:" and (own_kind != "a:" or value.dtype != own.dtype or value.ndim != own.ndim):
                raise ValueError(f"policy state field {path} does not fit")
        for path, (kind, value) in theirs.items():
            assign(self, kind + path, value)


class SlotS3FIFO(SlotPolicy):
    """S3-FIFO over slots: ``policy.S3FIFOPolicy``'s algorithm (see there), state in numpy arrays."""

    name = "s3fifo"

    def __init__(self, small_ratio: float = 0.1, ghost_ratio: float = 0.1, stale_factor: float = 1.5,
                 max_freq: int = 3) -> None:
        super().__init__()
        self.small_ratio, self.ghost_ratio = small_ratio, ghost_ratio
        self.stale_factor, self.max_freq = stale_factor, max_freq
        self._where = np.zeros(0, np.uint8)  # _OUT, _IN_SMALL, _IN_MAIN, _IN_SCAN
        self._freq = np.zeros(0, np.uint8)
        self._last = np.zeros(0, np.int64)
        self._ident = np.zeros(0, np.uint32)  # 32 bits of identity: enough for a lossy ghost
        self._queues = Lists(3)  # SMALL, MAIN and SCAN FIFOs
        self._recency = Lists(1)  # main slots, least recently used first
        self._ghost = Ghost()
        self._small_bytes = self._main_bytes = self._scan_bytes = 0
        self._tick = 0
        self._reuse: float | None = None

    def _reserve(self, need: int) -> None:
        if need > len(self._where):
            super()._reserve(need)
            self._where = grown(self._where, need)
            self._freq = grown(self._freq, need)
            self._last = grown(self._last, need)
            self._ident = grown(self._ident, need)
            self._queues.reserve(need)
            self._recency.reserve(need)

    def on_insert(self, block: int, size: int, ident: int | None = None, scan: bool = False) -> None:
        """Into main if the ghost remembers its identity, else into the small queue; a scan slot into the
        scan FIFO (the ghost not asked, the clock not moved)."""
        slot = int(block)
        self._reserve(slot + 1)
        if self._where[slot]:
            self.on_remove(slot)
        ident = (int(ident if ident is not None else slot + 1) & 0xFFFFFFFF) or 1
        self._freq[slot] = 0
        self._ident[slot] = ident
        self._size[slot] = size
        self._count += 1
        self._bytes += size
        if scan:
            self._last[slot] = self._tick
            self._where[slot] = _IN_SCAN
            self._queues.append(SCAN, slot)
            self._scan_bytes += size
            return
        self._tick += 1
        self._last[slot] = self._tick
        if ident in self._ghost:
            self._ghost.discard(ident)
            self._to_main(slot)
        else:
            self._where[slot] = _IN_SMALL
            self._queues.append(SMALL, slot)
            self._small_bytes += size

    def insert_many(self, slots: np.ndarray, sizes: np.ndarray, idents: np.ndarray) -> None:
        """``on_insert`` of each slot not yet resident, in order: those the ghost remembers one by one, the
        rest into the small queue at once (vectorized)."""
        slots = np.asarray(slots, np.int64)
        if not len(slots):
            return
        self._reserve(int(slots.max()) + 1)
        keep = self._where[slots] == _OUT
        slots, sizes = slots[keep], np.asarray(sizes, np.int64)[keep]
        idents = (np.asarray(idents, np.int64)[keep] & 0xFFFFFFFF)
        idents[idents == 0] = 1
        ghosts = self._ghost.contains_many(idents)
        for slot, size, ident in zip(slots[ghosts].tolist(), sizes[ghosts].tolist(), idents[ghosts].tolist(),
                                     strict=True):
            self.on_insert(slot, size, ident)
        slots, sizes, idents = slots[~ghosts], sizes[~ghosts], idents[~ghosts]
        if not len(slots):
            return
        total = int(sizes.sum())
        self._last[slots] = self._tick + np.arange(1, len(slots) + 1)
        self._tick += len(slots)
        self._freq[slots] = 0
        self._ident[slots] = idents
        self._size[slots] = sizes
        self._where[slots] = _IN_SMALL
        self._queues.extend(SMALL, slots)
        self._count += len(slots)
        self._bytes += total
        self._small_bytes += total

    def on_access(self, block: int) -> None:
        """Bump the slot's counter; main hits also feed the reuse-interval estimate."""
        slot = int(block)
        if slot >= len(self._where) or not self._where[slot]:
            return
        if self._where[slot] == _IN_SCAN:  # a one-shot slot read again: a normal one, used twice
            size = int(self._size[slot])
            self._queues.remove(SCAN, slot)
            self._scan_bytes -= size
            self._where[slot] = _IN_SMALL
            self._queues.append(SMALL, slot)
            self._small_bytes += size
        self._tick += 1
        freq = int(self._freq[slot])
        if freq < self.max_freq:
            self._freq[slot] = freq + 1
        if self._where[slot] == _IN_MAIN:
            interval = self._tick - int(self._last[slot])
            decay = 1.0 - 1.0 / max(1, self._queues.size[MAIN])
            self._reuse = interval if self._reuse is None else max(interval, self._reuse * decay)
            self._recency.to_tail(0, slot)
        self._last[slot] = self._tick

    def on_remove(self, block: int) -> None:
        """Forget a slot (not remembered as a ghost)."""
        slot = int(block)
        if slot >= len(self._where) or not self._where[slot]:
            return
        if self._where[slot] == _IN_SMALL:
            self._queues.remove(SMALL, slot)
            self._small_bytes -= int(self._size[slot])
        elif self._where[slot] == _IN_SCAN:
            self._queues.remove(SCAN, slot)
            self._scan_bytes -= int(self._size[slot])
        else:
            self._drop_main(slot)
        self._forget(slot)

    def _to_main(self, slot: int) -> None:
        self._where[slot] = _IN_MAIN
        self._queues.append(MAIN, slot)
        self._recency.append(0, slot)
        self._main_bytes += int(self._size[slot])

    def _drop_main(self, slot: int) -> int:
        size = int(self._size[slot])
        self._queues.remove(MAIN, slot)
        self._recency.remove(0, slot)
        self._main_bytes -= size
        return size

    def _forget(self, slot: int) -> None:
        self._where[slot] = _OUT
        self._count -= 1
        self._bytes -= int(self._size[slot])

    def _remember(self, slot: int) -> None:
        normal = self._count - self._queues.size[SCAN]
        self._ghost.add(int(self._ident[slot]), max(16, int(self.ghost_ratio * normal)))

    def _scans(self, bytes_needed: int, protected: Protected, out: list[int]) -> int:
        """Evict scan slots, oldest first (a protected one joins main instead)."""
        freed = 0
        queues = self._queues
        while freed < bytes_needed and queues.size[SCAN]:
            slot = queues.first(SCAN)
            size = int(self._size[slot])
            queues.remove(SCAN, slot)
            self._scan_bytes -= size
            if protected(slot):
                self._to_main(slot)
                continue
            self._forget(slot)
            out.append(slot)
            freed += size
        return freed

    def _stale(self, bytes_needed: int, protected: Protected, out: list[int]) -> int:
        """Evict main slots idle far longer than main slots are normally reused."""
        if self._reuse is None:
            return 0
        limit = self.stale_factor * self._reuse
        freed = 0
        for _ in range(self._recency.size[0]):
            if freed >= bytes_needed:
                break
            slot = self._recency.first(0)
            if self._tick - int(self._last[slot]) <= limit:
                break
            if protected(slot):
                self._recency.to_tail(0, slot)
                continue
            freed += self._drop_main(slot)
            self._forget(slot)
            out.append(slot)
        return freed

    def victims(self, bytes_needed: int, protected: Protected | None = None) -> list[int]:
        """Scan slots first, stale main slots next; then from the small queue while it is over its share,
        else from main."""
        protected = protected or never_protected
        out: list[int] = []
        freed = self._scans(bytes_needed, protected, out)
        freed += self._stale(bytes_needed - freed, protected, out)
        after = max(0, self._small_bytes + self._main_bytes - (bytes_needed - freed))
        queues = self._queues
        while queues.size[SMALL]:  # main under its share: fill it from the small queue
            slot = queues.first(SMALL)
            size = int(self._size[slot])
            if self._main_bytes + size > (1.0 - self.small_ratio) * after:
                break
            queues.remove(SMALL, slot)
            self._small_bytes -= size
            self._to_main(slot)
        small_target = self.small_ratio * after
        main_skips = 0
        while freed < bytes_needed and (queues.size[SMALL] or queues.size[MAIN]):
            main_stuck = main_skips > queues.size[MAIN]
            if queues.size[SMALL] and (self._small_bytes > small_target or not queues.size[MAIN] or main_stuck):
                slot = queues.first(SMALL)
                size = int(self._size[slot])
                queues.remove(SMALL, slot)
                self._small_bytes -= size
                if self._freq[slot] > 0 or protected(slot):
                    self._freq[slot] = 0
                    self._to_main(slot)  # read again (or pinned): promote
                    main_skips = 0
                    continue
                self._forget(slot)
                self._remember(slot)
            elif main_stuck:
                break
            else:
                slot = queues.first(MAIN)
                size = int(self._size[slot])
                if protected(slot):
                    queues.to_tail(MAIN, slot)
                    main_skips += 1
                    continue
                freq = int(self._freq[slot])
                if freq > 0:
                    queues.to_tail(MAIN, slot)
                    self._freq[slot] = freq - 1
                    continue
                self._drop_main(slot)
                self._forget(slot)
                main_skips = 0
            out.append(slot)
            freed += size
        return out

    def __contains__(self, block: object) -> bool:
        return (isinstance(block, (int, np.integer)) and 0 <= block < len(self._where)
                and bool(self._where[block]))

    def resident(self) -> np.ndarray:
        """The resident slots."""
        return np.flatnonzero(self._where)

    def scanned(self, slot: int) -> bool:
        """Whether ``slot`` waits in the scan FIFO."""
        return slot < len(self._where) and self._where[slot] == _IN_SCAN

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays, the links and the ghost."""
        return (super().nbytes + self._queues.nbytes + self._recency.nbytes + self._ghost.nbytes)
