"""The SSD tier's write queue: blocks handed over with ``put_async``, written by one background thread,
readable while they wait; bounded in bytes, and its bytes count against the memory budget when there is one
(a full queue refuses, it never blocks the reader)."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable

from .base import BlockId
from .budget import MemoryBudget

log = logging.getLogger(__name__)


class WriteQueue:
    """Queued blocks in arrival order. Every method but ``drain`` and ``close`` expects the caller to hold
    ``lock`` (the tier's lock, shared so that lookups see a block either queued or indexed)."""

    def __init__(self, lock: threading.Lock, limit: int, write: Callable[[BlockId, bytes], object],
                 budget: MemoryBudget | None = None):
        self.limit = limit
        self.budget = budget
        self._write = write
        self._cond = threading.Condition(lock)
        self._queue: OrderedDict[BlockId, bytes] = OrderedDict()
        self.bytes = 0
        self._writer: threading.Thread | None = None
        self._stop = False

    def __contains__(self, block: BlockId) -> bool:
        return block in self._queue

    def get(self, block: BlockId) -> bytes | None:
        """The queued bytes of ``block``, or None."""
        return self._queue.get(block)

    def blocks(self) -> list[BlockId]:
        """Queued block ids, a snapshot."""
        return list(self._queue)

    def add(self, block: BlockId, data: bytes) -> bool:
        """Queue a block; False when closed or when it would pass ``limit`` bytes."""
        if self._stop or self.bytes + len(data) > self.limit:
            return False
        if self.budget is not None and not self.budget.try_reserve(len(data), "ssd_queue"):
            return False
        self._queue[block] = data
        self.bytes += len(data)
        if self._writer is None:
            self._writer = threading.Thread(target=self._loop, name="tiercache-ssd-writer", daemon=True)
            self._writer.start()
        self._cond.notify()
        return True

    def remove(self, block: BlockId) -> int:
        """Unqueue a block (its write, if not begun, is skipped); returns its size (0 if not queued)."""
        data = self._queue.pop(block, None)
        if data is None:
            return 0
        self.bytes -= len(data)
        if self.budget is not None:
            self.budget.release(len(data), "ssd_queue")
        return len(data)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._cond.wait()
                if not self._queue:
                    return
                block, data = next(iter(self._queue.items()))
            try:
                self._write(block, data)
            except Exception:  # noqa: BLE001 - a failed write only loses the SSD copy
                log.exception("ssd tier: background write failed")
            with self._cond:
                if self._queue.get(block) is data:
                    self.remove(block)
                self._cond.notify_all()

    def drain(self) -> None:
        """Wait until every queued block is written."""
        with self._cond:
            while self._queue:
                self._cond.wait()

    def close(self) -> bool:
        """Write what is queued and stop the writer; False if already closed."""
        if self._stop:
            return False
        self.drain()
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._writer is not None:
            self._writer.join()
        return True
