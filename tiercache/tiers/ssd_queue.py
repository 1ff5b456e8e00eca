"""The SSD tier's write queue: blocks handed over with ``put_async``, written by ``WRITERS`` background thread(s),
readable while they wait; bounded in bytes (a full queue refuses, it never blocks the reader).

Memory: a queued block's bytes are, by ``put_async``'s contract, the same object another tier (RAM) holds,
so they are not counted against the memory budget twice: an entry is uncharged until ``charge(block)``
moves it onto the budget (the cache does so when RAM lets go of the block while it is still queued, or
queues a block RAM does not hold); a charge that does not fit drops the entry.

Under pressure (a reader faster than the writer) a full queue refuses, but a block RAM still holds is not
lost yet: ``owe`` remembers its id (a bounded FIFO of ids, no bytes), and whenever the writer has room it
asks ``refill`` (the cache: RAM's copy, queued again) for the owed blocks, oldest first, so the writer
never idles while RAM holds blocks the SSD tier lacks. A stream's blocks (``scan``) yield to other blocks:
a full queue makes room for a normal block by unqueuing the newest uncharged stream block (owed in turn).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable

from .base import BlockId
from .budget import MemoryBudget

log = logging.getLogger(__name__)

MAX_OWED = 4096  # ids of refused blocks remembered for a later write (oldest forgotten first)
WRITERS = 1  # writer threads (2 and 4 measured no faster: under pressure the writes wait on the disk)


class WriteQueue:
    """Queued blocks in arrival order. Every method but ``drain`` and ``close`` expects the caller to hold
    ``lock`` (the tier's lock, shared so that lookups see a block either queued or indexed)."""

    def __init__(self, lock: threading.Lock, limit: int, write: Callable[..., object],
                 budget: MemoryBudget | None = None):
        self.limit = limit
        self.budget = budget
        self._write = write
        self.lock = lock
        self._cond = threading.Condition(lock)
        self._queue: OrderedDict[BlockId, bytes] = OrderedDict()
        self._charged: set[BlockId] = set()  # entries counted against the budget
        self._scan: set[BlockId] = set()  # entries of a stream (one-shot blocks for the SSD tier's policy)
        self.bytes = 0
        self.dropped = 0  # charges that did not fit (the SSD copy was dropped)
        self._owed: OrderedDict[BlockId, bool] = OrderedDict()  # refused while RAM holds them → scan
        self.refill: Callable[[BlockId, bool], bool] | None = None  # queue an owed block again (no lock held)
        self.owed_written = 0  # owed blocks queued again
        self._writers: list[threading.Thread] = []
        self._busy: set[BlockId] = set()  # entries a writer is writing now
        self._stop = False

    def __contains__(self, block: BlockId) -> bool:
        return block in self._queue

    def get(self, block: BlockId) -> bytes | None:
        """The queued bytes of ``block``, or None."""
        return self._queue.get(block)

    def blocks(self) -> list[BlockId]:
        """Queued block ids, a snapshot."""
        return list(self._queue)

    def add(self, block: BlockId, data: bytes, scan: bool = False) -> bool:
        """Queue a block (uncharged: see the module docstring; ``scan``: written as a stream's one-shot
        block); False when closed or when it would pass ``limit`` bytes."""
        if self._stop:
            return False
        if block in self._queue:  # queued already (the same id is the same bytes): counting it twice
            return True  # would leave ``bytes`` above what is queued, and the writer idle while blocks are owed
        if self.bytes + len(data) > self.limit and not scan:
            self._yield_scan(len(data))
        if self.bytes + len(data) > self.limit:
            return False
        self._owed.pop(block, None)
        self._queue[block] = data
        self.bytes += len(data)
        if scan:
            self._scan.add(block)
        self._start()
        self._cond.notify()
        return True

    def _start(self) -> None:
        """Start the writers on first use (caller holds ``lock``)."""
        while len(self._writers) < WRITERS:
            writer = threading.Thread(target=self._loop, name="tiercache-ssd-writer", daemon=True)
            self._writers.append(writer)
            writer.start()

    def _next(self) -> BlockId | None:
        """The oldest entry no writer has taken (caller holds ``lock``)."""
        for block in self._queue:
            if block not in self._busy:
                return block
        return None

    def _yield_scan(self, nbytes: int) -> None:
        """Unqueue the newest uncharged stream blocks (RAM holds them: owed) until ``nbytes`` fit."""
        for block in reversed(list(self._queue)):
            if self.bytes + nbytes <= self.limit:
                return
            if block in self._scan and block not in self._charged and block not in self._busy:
                self.remove(block)
                self.owe(block, True)

    def owe(self, block: BlockId, scan: bool = False) -> None:
        """Remember a refused block another tier still holds, for a write once the queue has room (caller
        holds ``lock``)."""
        if self._stop or block in self._queue:
            return
        self._owed[block] = scan
        self._owed.move_to_end(block)
        while len(self._owed) > MAX_OWED:
            self._owed.popitem(last=False)
        self._start()
        self._cond.notify()

    @property
    def owed(self) -> int:
        """Refused blocks remembered for a later write."""
        return len(self._owed)

    def _may_refill(self) -> bool:
        """Whether owed blocks can be offered now (caller holds ``lock``)."""
        return bool(self._owed) and self.refill is not None and not self._stop and self.bytes < self.limit // 2

    def _refill(self) -> None:
        """Offer owed blocks to ``refill`` while the queue has room for another block (no lock held)."""
        while True:
            with self._cond:
                if not self._may_refill():
                    return
                block, scan = self._owed.popitem(last=False)
            queued = self.refill(block, scan)
            with self._cond:
                self.owed_written += queued
                self._cond.notify_all()

    def charge(self, block: BlockId) -> bool:
        """Count a queued block against the budget (no other tier holds its bytes now); takes the lock
        itself. When the budget is full the budget's reclaimer (RAM) is asked for room once; False when it
        still does not fit: the entry is then dropped (the SSD copy is lost, nothing else). True when the
        block is not queued (already written) or already charged."""
        for attempt in (0, 1):
            with self._cond:
                data = self._queue.get(block)
                if data is None or block in self._charged or self.budget is None:
                    return True
                if self.budget.try_reserve(len(data), "ssd_queue"):
                    self._charged.add(block)
                    return True
                if attempt:
                    self.remove(block)
                    self.dropped += 1
                    return False
            if self.budget.reclaimer is not None:  # outside the lock: RAM's evictions come back here
                self.budget.reclaimer(len(data))
        return False

    def remove(self, block: BlockId) -> int:
        """Unqueue a block (its write, if not begun, is skipped); returns its size (0 if not queued)."""
        data = self._queue.pop(block, None)
        if data is None:
            return 0
        self.bytes -= len(data)
        self._scan.discard(block)
        if block in self._charged:
            self._charged.discard(block)
            self.budget.release(len(data), "ssd_queue")
        return len(data)

    def _loop(self) -> None:
        while True:
            self._refill()
            with self._cond:
                block = self._next()
                while block is None:
                    if self._stop:
                        return
                    if self._may_refill():
                        break
                    self._cond.wait()
                    block = self._next()
                if block is None:
                    continue
                data = self._queue[block]
                scan = block in self._scan
                self._busy.add(block)
            try:
                self._write(block, data, scan=scan)
            except Exception:  # noqa: BLE001 - a failed write only loses the SSD copy
                log.exception("ssd tier: background write failed")
            with self._cond:
                self._busy.discard(block)
                if self._queue.get(block) is data:
                    self.remove(block)
                self._cond.notify_all()

    def drain(self) -> None:
        """Wait until every queued block is written (and every owed one written or gone)."""
        with self._cond:
            while self._queue or (self._owed and self.refill is not None and not self._stop):
                self._cond.wait()

    def close(self) -> bool:
        """Write what is queued and stop the writers; False if already closed."""
        if self._stop:
            return False
        self.drain()
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        for writer in self._writers:
            writer.join()
        return True
