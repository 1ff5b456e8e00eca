"""Sequential read-ahead: a per-file window that grows while a reader streams, fetched in parallel.

- :class:`ReadAhead` is the state machine, without I/O: for objects larger than one block, each sequential
  read doubles a per-file window (up to ``max_window`` bytes, at most a quarter of the RAM tier); a seek
  resets it; a scattered read earns none.
- :class:`StreamReadAhead` runs it: the cache calls ``observe`` on every read and ``mark_read`` on every
  block served; the blocks of the window that RAM lacks are loaded on its own pool with the ``load``
  callable it was given (it never sees the store or the tiers).

Counters: bytes read ahead, those read since, those never read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .blocks import BlockMap
from .store import ObjectInfo
from .tiers.base import BlockId

log = logging.getLogger(__name__)

__all__ = ["ReadAhead", "StreamReadAhead"]


class ReadAhead:
    """Per-object read-ahead windows (LRU over ``max_streams`` objects); pure bookkeeping."""

    def __init__(self, block_size: int, max_window: int, max_streams: int = 1024):
        self.block_size = block_size
        self.max_window = max(max_window, block_size)
        self.max_streams = max_streams
        self._streams: OrderedDict[str, tuple[int, int]] = OrderedDict()  # key → (next offset, window)

    def on_read(self, key: str, size: int, offset: int, end: int) -> tuple[int, int]:
        """A read of [offset, end) of an object of ``size`` bytes: block indices [first, last) to fetch ahead."""
        bs = self.block_size
        next_offset, window = self._streams.pop(key, (-1, 0))
        # a stream reads ahead, doubling its window; a scattered read earns none (it would fetch whole
        # blocks nobody reads)
        streaming = offset == next_offset or offset == 0
        window = (min(window * 2, self.max_window) if window else bs) if streaming else 0
        self._streams[key] = (end, window)
        while len(self._streams) > self.max_streams:
            self._streams.popitem(last=False)
        first = -(-end // bs)
        return first, (min(-(-size // bs), -(-(end + window) // bs)) if window else first)

    def window(self, key: str) -> int:
        """The current window of ``key`` in bytes (0 if not followed)."""
        return self._streams.get(key, (0, 0))[1]


class StreamReadAhead:
    """Runs :class:`ReadAhead`: loads the window's blocks RAM lacks on its own pool (best effort)."""

    MAX_TRACKED = 1 << 20  # read-ahead blocks not read yet, remembered for the "never read" counter

    def __init__(
        self,
        blocks: BlockMap,
        ram_bytes: int,
        resident: Callable[[BlockId], bool],
        load: Callable[[ObjectInfo, list[BlockId]], None],
        threads: int = 8,
        max_window: int = 64 << 20,
        max_streams: int = 1024,
    ):
        self.blocks = blocks
        self.resident, self.load = resident, load
        self.state = ReadAhead(blocks.block_size, min(max_window, ram_bytes // 4), max_streams)
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="tiercache-readahead")
        self._lock = threading.Condition()
        self._scheduled: set[BlockId] = set()
        self._unread: dict[BlockId, int] = {}  # read ahead, not read yet (insertion order: oldest first)
        self._forgotten_unread = 0
        self.fetched_bytes = self.used_bytes = 0

    def observe(self, info: ObjectInfo, offset: int, end: int) -> None:
        """A reader read [offset, end) of an object: extend its window and fetch what it now covers."""
        if info.size <= self.blocks.block_size:
            return
        with self._lock:
            first, last = self.state.on_read(info.key, info.size, offset, end)
            todo = [b for b in self.blocks.indices(info, first, last)
                    if b not in self._scheduled and not self.resident(b)]
            self._scheduled.update(todo)
        for block in todo:
            try:
                self._pool.submit(self._fetch, block, info)
            except RuntimeError:  # closed
                return

    def mark_read(self, block: BlockId) -> None:
        """A reader was served ``block``: if it was read ahead, it was worth it."""
        if self._unread:
            with self._lock:
                size = self._unread.pop(block, None)
                if size is not None:
                    self.used_bytes += size

    def window(self, key: str) -> int:
        """The current window of ``key`` in bytes (0 if not followed)."""
        with self._lock:
            return self.state.window(key)

    def _fetch(self, block: BlockId, info: ObjectInfo) -> None:
        try:
            if not self.resident(block):
                self.load(info, [block])
                size = self.blocks.length(info, block)
                with self._lock:
                    self.fetched_bytes += size
                    self._unread[block] = size
                    while len(self._unread) > self.MAX_TRACKED:  # bounded memory: the oldest stay unread
                        self._forgotten_unread += self._unread.pop(next(iter(self._unread)))
        except Exception as exc:  # noqa: BLE001 - read-ahead is best effort; the reader will fetch itself
            log.debug("read-ahead of %s failed: %s", info.key, exc)
        finally:
            with self._lock:
                self._scheduled.discard(block)
                self._lock.notify_all()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until no read-ahead is scheduled or in flight; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._scheduled:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.05))
            return True

    def stats(self) -> dict:
        """Bytes read ahead, those read since, those never read (yet), blocks scheduled or in flight."""
        with self._lock:
            return {
                "readahead_bytes": self.fetched_bytes,
                "readahead_read_bytes": self.used_bytes,
                "readahead_unread_bytes": sum(self._unread.values()) + self._forgotten_unread,
                "readahead_in_flight": len(self._scheduled),
            }

    def close(self) -> None:
        """Drop what has not started; wait for what has."""
        self._pool.shutdown(wait=True, cancel_futures=True)
