"""The tier stack: RAM over SSD as one cache (lookup with promotion, admission, demotion, residency).

The SSD tier is optional. Admission "ram" places a block in RAM and writes it through to the SSD tier off
the read path (the SSD write queue); "ssd" places it in the SSD tier only, synchronously (warm jobs; in RAM
when there is no SSD tier). RAM evictions are demoted to the SSD tier, through the same queue, when it lacks
them. Under pressure (the queue full, or the memory budget) the SSD copy is dropped and counted
(``ssd_admission_dropped``): a reader never waits for an SSD write. Residency questions go to each tier's own
index.
"""

from __future__ import annotations

from collections.abc import Callable

from .blocks import under
from .counters import Counters
from .tiers.base import BlockId, key_prefix
from .tiers.ram import RamTier

__all__ = ["TIERS", "TierStack"]

TIERS = ("ram", "ssd")


class TierStack:
    """RAM (``ram``) over an optional SSD tier (``ssd``); thread-safe as its tiers are."""

    def __init__(self, ssd: object | None, counters: Counters):
        self.ssd = ssd
        self.ram: RamTier | None = None  # attached once built (it demotes into this stack)
        self.counters = counters

    def attach(self, ram: RamTier) -> None:
        """The RAM tier, built with ``on_evict=stack.demote``."""
        self.ram = ram
        if self.ssd is not None:  # blocks the full write queue refused are written from RAM when it frees
            self.ssd.queue.refill = self._requeue

    def _requeue(self, block: BlockId, scan: bool) -> bool:
        """Queue RAM's copy of a block the SSD write queue once refused; False when RAM let go of it."""
        data = self.ram.get(block, count=False, touch=False)
        return data is not None and not self.ssd.contains(block) and self.ssd.put_async(block, data, scan)

    def get(self, block: BlockId, count: bool = True) -> bytes | None:
        """RAM, then SSD (promoting a hit to RAM); None on a miss."""
        data = self.ram.get(block, count)
        if data is None and self.ssd is not None:
            data = self.ssd.get(block, count)
            if data is not None:
                self.ram.put(block, data)
        return data

    def below_ram(self, block: BlockId, scan: bool = False) -> bytes | None:
        """A RAM miss: the SSD tier's copy, promoted to RAM (``scan``: as a stream's one-shot block); None
        when it has none."""
        if self.ssd is None:
            return None
        data = self.ssd.get(block)
        if data is not None:
            self.ram.put(block, data, scan)
        return data

    def peek_below_ram(self, block: BlockId) -> bytes | None:
        """The SSD tier's copy of ``block`` without promoting it or counting a lookup; None without one."""
        return self.ssd.get(block, count=False) if self.ssd is not None else None

    def contains(self, block: BlockId, tier: str = "any") -> bool:
        """Whether ``block`` is resident in ``tier`` ("ram", "ssd": the lowest tier there is, "any")."""
        if tier == "ram":
            return self.ram.contains(block)
        if tier == "ssd":
            return self.ssd.contains(block) if self.ssd is not None else self.ram.contains(block)
        return self.ram.contains(block) or (self.ssd is not None and self.ssd.contains(block))

    def admit(self, block: BlockId, data: bytes, into: str, scan: bool = False) -> None:
        """Place fetched bytes: "ram" = RAM and SSD through the write queue (dropped under pressure);
        "ssd" = SSD only, written before this returns (RAM without an SSD tier). ``scan``: a block of a
        detected stream, one-shot for the eviction policies (evicted first, see tiers/policy.py)."""
        in_ram = (into == "ram" or self.ssd is None) and self.ram.put(block, data, scan)
        if self.ssd is None or self.ssd.contains(block):
            return
        if into == "ssd":
            self.ssd.put(block, data)
        elif not self._queue(block, data, charge=not in_ram, scan=scan):
            if in_ram:  # not lost yet: written from RAM once the queue has room (dropped if RAM lets go first)
                with self.ssd.queue.lock:
                    self.ssd.queue.owe(block, scan)
            else:
                self.counters.add("ssd_admission_dropped")

    def _queue(self, block: BlockId, data: bytes, charge: bool, scan: bool = False) -> bool:
        """Hand a block to the SSD write queue; ``charge``: RAM does not hold it, so the queue's copy counts
        against the memory budget; ``scan``: a stream's. False when it was dropped."""
        if not self.ssd.put_async(block, data, scan):
            return False
        return not charge or self.ssd.queue.charge(block)

    def demote(self, evicted: list[tuple[BlockId, bytes]]) -> None:
        """RAM evictions go to the SSD tier (queued) when it lacks them; a block RAM let go of while still
        queued now counts against the budget in the queue."""
        if self.ssd is None:
            return
        for block, data in evicted:
            if block in self.ssd.queue:
                if not self.ssd.queue.charge(block):
                    self.counters.add("ssd_admission_dropped")
            elif not self.ssd.contains(block):
                if self._queue(block, data, charge=True):
                    self.counters.add("demotions")
                else:
                    self.counters.add("ssd_admission_dropped")

    def keep_ram(self) -> int:
        """Write the RAM blocks the SSD tier lacks (dropped under pressure on their way) to it, now; for
        close, off every read path. Returns the blocks written."""
        if self.ssd is None:
            return 0
        written = 0
        for block in self.ram.blocks(lambda b: not self.ssd.contains(b)):
            data = self.ram.get(block, count=False, touch=False)
            if data is not None and self.ssd.put(block, data):
                written += 1
        return written

    def ssd_blocks_under(self, prefix: str) -> list[BlockId]:
        """The SSD tier's blocks at or below ``prefix``."""
        if self.ssd is None:
            return []
        if not prefix:
            return self.ssd.blocks()
        return self.ssd.blocks(key_prefix(prefix)) + self.ssd.blocks(f"{prefix}/".encode())

    def evict(self, prefix: str, tier: str, protected: Callable[[BlockId], bool]) -> int:
        """Drop unprotected blocks at or below ``prefix`` from ``tier`` (ram, ssd, all); bytes freed."""
        matches = under(prefix)
        freed = 0
        if tier in ("ram", "all"):
            freed += self.ram.discard_where(lambda b: matches(b.key), protected=protected)
        if tier in ("ssd", "all") and self.ssd is not None:
            for block in self.ssd_blocks_under(prefix):
                if matches(block.key) and not protected(block):
                    freed += self.ssd.discard(block)
        return freed

    def drop_key(self, key: str, keep_etag: str | None = None) -> None:
        """Forget every cached block of ``key`` except those of ``keep_etag``."""
        self.ram.discard_where(lambda b: b.key == key and b.etag != keep_etag)
        if self.ssd is not None:
            for block in self.ssd.blocks(key_prefix(key)):
                if block.etag != keep_etag:
                    self.ssd.discard(block)

    def reader_lookups(self) -> tuple[int, int]:
        """(block lookups by readers, those that needed the store): warm and prefetch do not count."""
        ram = self.ram.stats()
        lookups = ram["hits"] + ram["misses"]
        if self.ssd is None:
            return lookups, ram["misses"]
        return lookups, self.ssd.stats()["misses"]
