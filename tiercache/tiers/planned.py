"""Plan-aware eviction: evict the block whose next use, over every live plan, is farthest away.

The policy reads the cache's one :class:`~tiercache.plans.PlanBook` (shared with the other tier's policy
and the prefetcher); it holds no plan of its own. A block's rank is the book's predicted tick of its next
read (inf when no plan reads it again: those go first; among equals, the longest unranked first).

Per-block state is a slot in numpy arrays (size, rank, KeyTable id of its key, when it was ranked) plus one
dict entry block → slot: no heap, no per-key sets. Ranks are kept honest three ways, under the owning
tier's lock and bounded per call:

* keys whose next use moved later (consumed, or passed by a reader) come from the book's event log; the
  slots holding them are found with one vectorised membership test and re-ranked;
* a change in the set of plans (one arrived, was replaced or ended) queues every slot for re-ranking,
  ``rerank_batch`` slots per call, vectorized: a new plan never stalls a read;
* a chosen victim is re-checked against the book; if its next use came nearer it is ranked again instead.

Victims are the slots of largest rank: a partition over the live slots (linear), sorted only among the
few taken. Among equal ranks (above all: no plan reads them again) scan blocks (``on_insert(..., scan=True)``,
a stream's one-shot blocks) go first, oldest first; a plan's word wins over the
scan hint. Without any plan the policy behaves exactly like its fallback (the scan-resistant default),
which it keeps in step at all times.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Hashable, Sequence

import numpy as np

from ..plans import PlanBook
from .policy import LRUPolicy, Policy, Protected, S3FIFOPolicy, never_protected, register_policy


def key_of(block: Hashable) -> str:
    """The object key of a block id (BlockId.key), or the block itself for plain traces."""
    return getattr(block, "key", block)


_POOL = 256  # slots in the victim pool when it is rebuilt
_SCAN_BIAS = 1 << 62  # taken off a scan slot's ranking time: first among its equals


class PlanAwarePolicy(Policy):
    """Farthest-next-use eviction over the live plans of ``book``; ``fallback`` (S3-FIFO) without plans."""

    name = "plan"

    def __init__(self, book: PlanBook | None = None, fallback: Callable[[], Policy] = S3FIFOPolicy,
                 rerank_batch: int = 4096, recheck: int = 64) -> None:
        super().__init__()
        self.book = book if book is not None else PlanBook()
        self.fallback = fallback()
        self.rerank_batch = rerank_batch
        self.recheck = recheck
        self._slot_of: dict[Hashable, int] = {}
        self._blocks: list[Hashable | None] = []  # slot → block (None: free)
        self._free: list[int] = []
        self._size = np.zeros(0, np.int64)  # 0: a free slot
        self._rank = np.zeros(0, np.float64)  # predicted tick of the next use (-inf: a free slot)
        self._key = np.zeros(0, np.int32)  # KeyTable id of the block's key when ranked (-1: none)
        self._ranked_at = np.zeros(0, np.int64)  # when the rank was set (ties: the oldest goes first)
        self._scan = np.zeros(0, np.bool_)  # a one-shot block of a stream (ranked as set _SCAN_BIAS earlier)
        self._seq = 0
        self._bytes = 0
        self._generation = -1
        self._event_seq = 0
        self._rerank_next = self._rerank_end = 0  # slots [next, end) still to re-rank after a plan change
        # the victim pool: a small heap of (-rank, ranked_at, slot) holding every live slot ranked above
        # ``_floor`` (None: not built); rebuilt by one partition over the slots when it runs dry
        self._pool: list[tuple[float, int, int]] = []
        self._floor: float | None = None
        # key id → slots: a sorted index, and the slots keyed since it was built
        self._index_keys = np.zeros(0, np.int32)
        self._index_slots = np.zeros(0, np.int64)
        self._recent: dict[int, list[int]] = {}

    # -- plans (offline use: traces, tests; the cache sets plans on the book itself) ------------------
    def set_plan(self, keys_in_order: Sequence[str], client: str = "default") -> None:
        """Install ``client``'s plan in the book."""
        self.book.set_plan(keys_in_order, client)

    def observe_read(self, key: str) -> None:
        """The reader read ``key`` (the book advances the plans; this policy catches up at its next call)."""
        self.book.observe(key)

    def next_use(self, key: str) -> float:
        """The predicted tick of the next read of ``key`` over the live plans (inf if none)."""
        return self.book.next_use(key)

    @property
    def nbytes(self) -> int:
        """Bytes of the per-slot arrays (the block → slot dict and the slot list come on top)."""
        return self._size.nbytes + self._rank.nbytes + self._key.nbytes + self._ranked_at.nbytes + self._scan.nbytes

    # -- slots ----------------------------------------------------------------------------------------
    def _new_slot(self) -> int:
        if self._free:
            return self._free.pop()
        slot = len(self._blocks)
        if slot == len(self._size):
            grow = max(64, slot)
            self._size = np.concatenate([self._size, np.zeros(grow, np.int64)])
            self._rank = np.concatenate([self._rank, np.full(grow, -math.inf)])  # -inf: a free slot
            self._key = np.concatenate([self._key, np.full(grow, -1, np.int32)])
            self._ranked_at = np.concatenate([self._ranked_at, np.zeros(grow, np.int64)])
            self._scan = np.concatenate([self._scan, np.zeros(grow, np.bool_)])
        self._blocks.append(None)
        return slot

    def _set_rank(self, slot: int, value: float) -> None:
        at = self._seq - (_SCAN_BIAS if self._scan[slot] else 0)
        self._rank[slot] = value
        self._ranked_at[slot] = at
        if self._floor is not None and value >= self._floor:
            heapq.heappush(self._pool, (-value, at, slot))
        self._seq += 1

    def _set_key(self, slot: int, key_id: int) -> None:
        self._key[slot] = key_id
        if key_id >= 0:
            self._recent.setdefault(key_id, []).append(slot)
            if len(self._recent) > max(1024, len(self._slot_of) // 4):
                self._build_index()

    def _build_index(self) -> None:
        used = len(self._blocks)
        slots = np.flatnonzero(self._key[:used] >= 0)
        order = np.argsort(self._key[slots], kind="stable")
        self._index_keys, self._index_slots = self._key[slots][order], slots[order]
        self._recent = {}

    def _slots_of(self, key_ids: np.ndarray) -> np.ndarray:
        """The live slots whose key is one of ``key_ids`` (unique)."""
        if len(key_ids) <= 8:  # the usual case (a read or two since the last call): no array work
            found_small: list[int] = []
            keys, index_slots, recent = self._key, self._index_slots, self._recent
            for k in key_ids.tolist():
                lo, hi = int(self._index_keys.searchsorted(k)), int(self._index_keys.searchsorted(k, "right"))
                for slot in (*index_slots[lo:hi].tolist(), *recent.get(k, ())):
                    if keys[slot] == k and slot not in found_small:
                        found_small.append(slot)
            return np.array(found_small, np.int64)
        lo = self._index_keys.searchsorted(key_ids, "left")
        hi = self._index_keys.searchsorted(key_ids, "right")
        counts = hi - lo
        total = int(counts.sum())
        found = [self._index_slots[np.repeat(lo - (np.cumsum(counts) - counts), counts) + np.arange(total)]] \
            if total else []
        if self._recent:
            found += [np.array(self._recent[k], np.int64) for k in key_ids.tolist() if k in self._recent]
        if not found:
            return np.zeros(0, np.int64)
        slots = np.unique(np.concatenate(found))
        return slots[np.isin(self._key[slots], key_ids)]  # still holding that key (not freed or re-keyed)

    def _rerank(self, slots: np.ndarray, refresh_keys: bool) -> None:
        """Rank ``slots`` again (vectorized); ``refresh_keys``: look their keys up in the table first."""
        if not len(slots):
            return
        if len(slots) <= 8 and not refresh_keys:  # a read or two: scalar work beats array set-up
            for slot in slots.tolist():
                self._set_rank(slot, self.book.next_use_id(int(self._key[slot])))
            return
        if refresh_keys:
            keys = self.book.table.lookup_many([key_of(self._blocks[s]) for s in slots.tolist()])
            changed = keys != self._key[slots]
            self._key[slots] = keys
            for slot, key_id in zip(slots[changed].tolist(), keys[changed].tolist(), strict=True):
                if key_id >= 0:
                    self._recent.setdefault(key_id, []).append(slot)
            if len(self._recent) > max(1024, len(self._slot_of) // 4):
                self._build_index()
        values = self.book.next_use_ids(self._key[slots])
        self._rank[slots] = values
        self._ranked_at[slots] = self._seq + np.arange(len(slots)) - _SCAN_BIAS * self._scan[slots]
        if self._floor is not None:
            above = np.flatnonzero(values >= self._floor)
            if len(above) > 4 * _POOL:
                self._floor, self._pool = None, []  # cheaper to rebuild than to push them all
            for i in above.tolist():
                slot = int(slots[i])
                heapq.heappush(self._pool, (-float(values[i]), int(self._ranked_at[slot]), slot))
        self._seq += len(slots)

    # -- keeping ranks in step with the book ------------------------------------------------------------
    def _sync(self) -> None:
        book = self.book
        used = len(self._blocks)
        if book.generation != self._generation:
            self._generation = book.generation
            self._event_seq = book.seq
            self._rerank_next, self._rerank_end = 0, used
        else:
            self._event_seq, moved = book.events_since(self._event_seq)
            if moved is None:
                self._rerank_next, self._rerank_end = 0, used
            elif moved:
                self._rerank(self._slots_of(np.unique(np.asarray(moved, np.int32))), refresh_keys=False)
        if self._rerank_next < self._rerank_end:
            hi = min(self._rerank_end, self._rerank_next + self.rerank_batch)
            slots = np.arange(self._rerank_next, hi)
            self._rerank_next = hi
            self._rerank(slots[self._size[slots] > 0], refresh_keys=True)

    # -- bookkeeping ---------------------------------------------------------------------------------
    def on_insert(self, block: Hashable, size: int, scan: bool = False) -> None:
        """Track a resident block (and tell the fallback); ``scan``: a stream's one-shot block."""
        slot = self._slot_of.get(block)
        if slot is None:
            slot = self._new_slot()
            self._slot_of[block] = slot
            self._blocks[slot] = block
        self._bytes += size - int(self._size[slot])
        self._size[slot] = size
        self._scan[slot] = scan
        self.fallback.on_insert(block, size, scan=scan)
        if self.book:
            self._sync()
            key_id = self.book.table.lookup(key_of(block))
            if key_id != self._key[slot]:
                self._set_key(slot, key_id)
            self._set_rank(slot, self.book.next_use_id(key_id))
        else:  # no plan: nothing to rank by (and no victim pool to keep)
            self._key[slot] = -1
            self._rank[slot] = math.inf
            self._ranked_at[slot] = self._seq - (_SCAN_BIAS if scan else 0)
            self._seq += 1
            if self._floor is not None:
                self._pool, self._floor = [], None

    def on_access(self, block: Hashable) -> None:
        """A hit: the fallback's recency (the plans already say when the block is needed); a scan block
        read again is ranked as a normal one."""
        slot = self._slot_of.get(block)
        if slot is not None and self._scan[slot]:
            self._scan[slot] = False
            self._set_rank(slot, float(self._rank[slot]))
        self.fallback.on_access(block)

    def on_remove(self, block: Hashable) -> None:
        """Forget a block."""
        self._forget(block)
        self.fallback.on_remove(block)

    def _forget(self, block: Hashable) -> None:
        slot = self._slot_of.pop(block, None)
        if slot is None:
            return
        self._bytes -= int(self._size[slot])
        self._size[slot] = 0
        self._rank[slot] = -math.inf
        self._key[slot] = -1
        self._scan[slot] = False
        self._blocks[slot] = None
        self._free.append(slot)

    def _candidates(self, count: int, skip: set[int]) -> np.ndarray:
        """The ``count`` live slots of largest rank (oldest first among equals), in eviction order, without
        those in ``skip`` (one partition over the slots: free ones rank -inf)."""
        ranks = self._rank[:len(self._blocks)]
        if skip:
            ranks = ranks.copy()
            ranks[np.fromiter(skip, np.int64, len(skip))] = -math.inf
        count = min(count, len(ranks))
        if count <= 0:
            return np.zeros(0, np.int64)
        kth = np.partition(ranks, len(ranks) - count)[len(ranks) - count]
        if kth == -math.inf:  # fewer live slots than asked for
            chosen = np.flatnonzero(ranks > -math.inf)
        else:
            above, tied = np.flatnonzero(ranks > kth), np.flatnonzero(ranks == kth)
            need = count - len(above)
            if len(tied) > need:
                tied = tied[np.argpartition(self._ranked_at[tied], need - 1)[:need]] if need > 0 else tied[:0]
            chosen = np.concatenate([above, tied])
        return chosen[np.lexsort((self._ranked_at[chosen], -self._rank[chosen]))]

    def _fill_pool(self, skip: set[int]) -> None:
        """Rebuild the victim pool: the ``_POOL`` live slots of largest rank, without those in ``skip``."""
        chosen = self._candidates(_POOL, skip)
        self._pool = [(-float(self._rank[s]), int(self._ranked_at[s]), int(s)) for s in chosen.tolist()]
        heapq.heapify(self._pool)
        live = len(self._slot_of) - len(skip)
        self._floor = -math.inf if len(chosen) >= live else (float(self._rank[chosen[-1]]) if len(chosen) else None)

    def victims(self, bytes_needed: int, protected: Protected | None = None) -> list[Hashable]:
        """Farthest next use first (keys no plan reads again before all others); fallback without plans."""
        book = self.book
        if not book:
            out = self.fallback.victims(bytes_needed, protected)
            for block in out:
                self._forget(block)
            return out
        self._sync()
        protected = protected or never_protected
        out: list[Hashable] = []
        kept: list[tuple[float, int, int]] = []
        skip: set[int] = set()
        freed = rechecks = 0
        if len(self._pool) > 8 * _POOL:
            self._floor = None
        while freed < bytes_needed:
            if self._floor is None or not self._pool:
                if len(skip) >= len(self._slot_of):
                    break
                self._fill_pool(skip)
                if not self._pool:
                    break
            entry = heapq.heappop(self._pool)
            neg, at, slot = entry
            if self._ranked_at[slot] != at or self._rank[slot] != -neg or slot in skip:
                continue  # stale: ranked again since (or freed)
            block = self._blocks[slot]
            if protected(block):
                kept.append(entry)
                skip.add(slot)
                continue
            stored = -neg
            if rechecks < self.recheck:
                rechecks += 1
                key_id = book.table.lookup(key_of(block))
                now = book.next_use_id(key_id)
                if now < stored and (stored == math.inf or now < stored - 0.05 * max(1.0, stored - book.clock)):
                    if key_id != self._key[slot]:
                        self._set_key(slot, key_id)
                    self._set_rank(slot, now)  # its next use came nearer: ranked again, not evicted
                    continue
            freed += int(self._size[slot])
            out.append(block)
            self._forget(block)
            self.fallback.on_remove(block)
        for entry in kept:
            heapq.heappush(self._pool, entry)
        return out

    def __contains__(self, block: Hashable) -> bool:
        return block in self._slot_of

    def __len__(self) -> int:
        return len(self._slot_of)

    @property
    def tracked_bytes(self) -> int:
        """Bytes of the resident blocks."""
        return self._bytes


register_policy("default", lambda book: PlanAwarePolicy(book), plans=True,
                doc="farthest next use over the live plans; scan-resistant S3-FIFO without plans")
register_policy("plan", lambda book: PlanAwarePolicy(book), plans=True, doc="the same as default")
register_policy("plan-lru", lambda book: PlanAwarePolicy(book, LRUPolicy), plans=True,
                doc="farthest next use over the live plans; LRU without plans")
