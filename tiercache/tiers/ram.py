"""The RAM tier: blocks in a dict under a hard byte budget, evicted by a policy between watermarks."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from .base import BlockId
from .budget import MemoryBudget
from .policy import Policy, Protected, make_policy

Evicted = Callable[[list[tuple[BlockId, bytes]]], None]


class RamTier:
    """In-memory blocks. Thread-safe; ``used()`` never exceeds ``capacity()``.

    When an insert would pass ``high`` × capacity, the policy evicts down to ``low`` × capacity; the evicted
    blocks are handed to ``on_evict`` (outside the lock) so the cache can demote them to the SSD tier.
    Blocks for which ``protected`` is true are never evicted (they can still be discarded explicitly).
    With a ``budget`` (shared with reads in flight and the SSD write queue), blocks are admitted only while
    it has room, the tier evicts to make some, and ``reclaim`` gives bytes back to the budget on demand.
    """

    name = "ram"

    def __init__(
        self,
        capacity: int,
        policy: Policy | str = "default",
        high: float = 0.95,
        low: float = 0.85,
        protected: Protected | None = None,
        on_evict: Evicted | None = None,
        budget: MemoryBudget | None = None,
    ):
        self._capacity = max(0, int(capacity))
        self.policy = make_policy(policy) if isinstance(policy, str) else policy
        self.high, self.low = high, min(low, high)
        self.protected = protected
        self.on_evict = on_evict
        self.budget = budget
        if budget is not None:
            budget.reclaimer = self.reclaim
        self._blocks: dict[BlockId, bytes] = {}
        self._used = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.bytes_served = self.evictions = self.evicted_bytes = self.rejected = 0

    def get(self, block: BlockId, count: bool = True, touch: bool = True) -> bytes | None:
        """The block's bytes or None; ``count=False`` leaves the hit/miss counters alone (re-checks),
        ``touch=False`` the policy (a sequential stream's reads of a block are one use, not many)."""
        with self._lock:
            data = self._blocks.get(block)
            if data is None:
                self.misses += count
                return None
            if count:
                self.hits += 1
                self.bytes_served += len(data)
            if touch:
                self.policy.on_access(block)
            return data

    def has_room(self, nbytes: int) -> bool:
        """Whether ``nbytes`` more would fit under the low watermark, evicting nothing (a hint: not locked)."""
        return self._used + nbytes <= self.low * self._capacity

    def count_miss(self) -> None:
        """Count a lookup that another tier answered without asking this one."""
        with self._lock:
            self.misses += 1

    def put(self, block: BlockId, data: bytes, scan: bool = False) -> bool:
        """Admit a block, evicting by policy first; False if it cannot fit. ``scan``: a stream's one-shot
        block (the policy evicts it first; a resident block is left as it is)."""
        size = len(data)
        if size > self._capacity:
            return False
        evicted: list[tuple[BlockId, bytes]] = []
        with self._lock:
            if block in self._blocks:
                if not scan:
                    self.policy.on_access(block)
                return True
            if self._used + size > self.high * self._capacity:
                self._evict(self._used + size - int(self.low * self._capacity), evicted)
            if self.budget is not None:
                short = self.budget.used() + size - self.budget.total
                if short > 0:
                    self._evict(short, evicted)
            admitted = self._used + size <= self._capacity and (
                self.budget is None or self.budget.try_reserve(size, "ram")
            )
            if admitted:
                self._blocks[block] = data
                self._used += size
                self.policy.on_insert(block, size, scan=scan)
            else:
                self.rejected += 1
        if evicted and self.on_evict is not None:
            self.on_evict(evicted)
        return admitted

    def _evict(self, need: int, evicted: list[tuple[BlockId, bytes]]) -> int:
        """Drop the policy's victims for ``need`` bytes into ``evicted`` (caller holds the lock)."""
        freed = 0
        victims = self.policy.victims(need, self.protected)
        for victim in victims:
            old = self._blocks.pop(victim)
            self._used -= len(old)
            evicted.append((victim, old))
            freed += len(old)
        if self.budget is not None:
            self.budget.release(freed, "ram")
        self.evictions += len(victims)
        self.evicted_bytes += freed
        return freed

    def reclaim(self, nbytes: int) -> int:
        """Evict (and demote) about ``nbytes`` for the budget's other users; returns the bytes freed."""
        evicted: list[tuple[BlockId, bytes]] = []
        with self._lock:
            freed = self._evict(nbytes, evicted)
        if evicted and self.on_evict is not None:
            self.on_evict(evicted)
        return freed

    def _forget(self, nbytes: int) -> None:
        self._used -= nbytes
        if self.budget is not None:
            self.budget.release(nbytes, "ram")

    def discard(self, block: BlockId) -> int:
        """Drop a block; returns the bytes freed."""
        with self._lock:
            data = self._blocks.pop(block, None)
            if data is None:
                return 0
            self._forget(len(data))
            self.policy.on_remove(block)
            return len(data)

    def discard_where(self, predicate: Callable[[BlockId], bool], protected: Protected | None = None) -> int:
        """Drop every block matching ``predicate`` except ``protected`` ones; returns bytes freed."""
        freed = 0
        with self._lock:
            doomed = [b for b in self._blocks if predicate(b)]
            for block in doomed:
                if protected is not None and protected(block):
                    continue
                data = self._blocks.pop(block)
                self._forget(len(data))
                self.policy.on_remove(block)
                freed += len(data)
        return freed

    def blocks(self, predicate: Callable[[BlockId], bool] | None = None) -> list[BlockId]:
        """Resident block ids (matching ``predicate``), a snapshot."""
        with self._lock:
            return [b for b in self._blocks if predicate is None or predicate(b)]

    def contains(self, block: BlockId) -> bool:
        """Whether the block is resident."""
        return block in self._blocks

    def contains_all(self, blocks: Iterable[BlockId]) -> bool:
        """Whether every one of ``blocks`` is resident."""
        return all(b in self._blocks for b in blocks)

    def used(self) -> int:
        """Bytes held."""
        return self._used

    def capacity(self) -> int:
        """The byte budget."""
        return self._capacity

    def clear(self) -> None:
        """Drop everything (on close)."""
        with self._lock:
            for block in list(self._blocks):
                self.policy.on_remove(block)
            self._blocks.clear()
            self._forget(self._used)

    def stats(self) -> dict:
        """Counters and occupancy, JSON-serializable."""
        with self._lock:
            lookups = self.hits + self.misses
            return {
                "used": self._used, "capacity": self._capacity, "blocks": len(self._blocks),
                "hits": self.hits, "misses": self.misses, "hit_rate": self.hits / lookups if lookups else 0.0,
                "bytes_served": self.bytes_served, "evictions": self.evictions,
                "evicted_bytes": self.evicted_bytes, "rejected": self.rejected, "policy": self.policy.name,
            }
