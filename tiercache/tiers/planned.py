"""Plan-aware eviction: evict the block whose next use, over every live plan, is farthest away.

The policy reads the cache's one :class:`~tiercache.plans.PlanBook` (shared with the other tier's policy
and the prefetcher); it holds no plan of its own. A block's rank is the book's predicted tick of its next
read (inf when no plan reads it again: those go first). Ranks live in a max-heap and are kept honest three
ways, all under the owning tier's lock and bounded per call:

* keys whose next use moved later (consumed, or passed by a reader) come from the book's event log and
  are re-ranked;
* a change in the set of plans (one arrived, was replaced or ended) queues every resident block for
  re-ranking, ``rerank_batch`` blocks per call, vectorized: a new plan never stalls a read;
* a popped victim is re-checked against the book; if its next use came nearer it goes back in the heap.

Without any plan the policy behaves exactly like its fallback (the scan-resistant default), which it keeps
in step at all times.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Hashable, Sequence

from ..plans import PlanBook
from .policy import LRUPolicy, Policy, Protected, S3FIFOPolicy, never_protected, register_policy


def key_of(block: Hashable) -> str:
    """The object key of a block id (BlockId.key), or the block itself for plain traces."""
    return getattr(block, "key", block)


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
        self._sizes: dict[Hashable, int] = {}
        # key → its one resident block, or a set of them (most objects are one block: no set per key)
        self._by_key: dict[str, Hashable | set[Hashable]] = {}
        self._next: dict[Hashable, float] = {}
        self._heap: list[tuple[float, int, Hashable]] = []
        self._seq = itertools.count()
        self._bytes = 0
        self._generation = -1
        self._event_seq = 0
        self._rerank: list[Hashable] = []

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

    # -- keeping ranks in step with the book ------------------------------------------------------------
    def _sync(self) -> None:
        book = self.book
        if book.generation != self._generation:
            self._generation = book.generation
            self._event_seq = book.seq
            self._rerank = list(self._sizes)
        else:
            self._event_seq, moved = book.events_since(self._event_seq)
            if moved is None:
                self._rerank = list(self._sizes)
            elif moved:
                table = book.table
                for key_id in set(moved):
                    for block in self._blocks_of(table.key(key_id)):
                        self._push(block, book.next_use(key_of(block)))
        if self._rerank:
            batch = self._rerank[-self.rerank_batch:]
            del self._rerank[-self.rerank_batch:]
            batch = [b for b in batch if b in self._sizes]
            for block, value in zip(batch, book.next_use_many([key_of(b) for b in batch]), strict=True):
                self._push(block, value)
            if len(self._heap) > 4 * len(self._sizes) + 1024:
                self._compact_heap()

    def _blocks_of(self, key: str) -> tuple[Hashable, ...] | set[Hashable]:
        held = self._by_key.get(key)
        if held is None:
            return ()
        return set(held) if isinstance(held, set) else (held,)

    def _push(self, block: Hashable, value: float) -> None:
        self._next[block] = value
        heapq.heappush(self._heap, (-value, next(self._seq), block))

    def _compact_heap(self) -> None:
        """Drop stale heap entries (one heapify over the live ones)."""
        live = [(-self._next.get(b, math.inf), next(self._seq), b) for b in self._sizes]
        heapq.heapify(live)
        self._heap = live

    # -- bookkeeping ---------------------------------------------------------------------------------
    def on_insert(self, block: Hashable, size: int) -> None:
        """Track a resident block (and tell the fallback)."""
        old = self._sizes.get(block)
        self._bytes += size - (old or 0)
        self._sizes[block] = size
        key = key_of(block)
        held = self._by_key.get(key)
        if held is None or held == block:
            self._by_key[key] = block
        elif isinstance(held, set):
            held.add(block)
        else:
            self._by_key[key] = {held, block}
        self.fallback.on_insert(block, size)
        if self.book:
            self._sync()
            self._push(block, self.book.next_use(key))
        else:
            self._next[block] = math.inf

    def on_access(self, block: Hashable) -> None:
        """A hit: only the fallback cares (the plans already say when the block is needed)."""
        self.fallback.on_access(block)

    def on_remove(self, block: Hashable) -> None:
        """Forget a block."""
        self._forget(block)
        self.fallback.on_remove(block)

    def _forget(self, block: Hashable) -> None:
        size = self._sizes.pop(block, None)
        if size is None:
            return
        self._bytes -= size
        self._next.pop(block, None)
        key = key_of(block)
        held = self._by_key.get(key)
        if isinstance(held, set):
            held.discard(block)
            if len(held) == 1:
                self._by_key[key] = next(iter(held))
        elif held == block:
            del self._by_key[key]

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
        out, kept, freed, rechecks = [], [], 0, 0
        while freed < bytes_needed and self._heap:
            entry = heapq.heappop(self._heap)
            neg_next, _, block = entry
            if block not in self._sizes or self._next.get(block) != -neg_next:
                continue  # stale entry
            if protected(block):
                kept.append(entry)
                continue
            if rechecks < self.recheck:
                rechecks += 1
                now = book.next_use(key_of(block))
                stored = -neg_next
                if now < stored and (stored == math.inf or now < stored - 0.05 * max(1.0, stored - book.clock)):
                    self._push(block, now)  # its next use came nearer: rank it again
                    continue
            freed += self._sizes[block]
            out.append(block)
            self._forget(block)
            self.fallback.on_remove(block)
        for entry in kept:
            heapq.heappush(self._heap, entry)
        return out

    def __contains__(self, block: Hashable) -> bool:
        return block in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    @property
    def tracked_bytes(self) -> int:
        """Bytes of the resident blocks."""
        return self._bytes


register_policy("default", lambda book: PlanAwarePolicy(book), plans=True,
                doc="farthest next use over the live plans; scan-resistant S3-FIFO without plans")
register_policy("plan", lambda book: PlanAwarePolicy(book), plans=True, doc="the same as default")
register_policy("plan-lru", lambda book: PlanAwarePolicy(book, LRUPolicy), plans=True,
                doc="farthest next use over the live plans; LRU without plans")
