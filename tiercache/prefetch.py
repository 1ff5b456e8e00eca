"""Prefetch: sequential read-ahead per file, and plan-driven prefetch a bounded distance ahead of the reader.

- **Read-ahead**: for objects larger than one block, each sequential read doubles a per-file window (up
  to ``max_window`` bytes, at most a quarter of the RAM tier) and the blocks in it are fetched in
  parallel (ranged GETs); a seek resets the window to one block. Small objects are one block, one GET.
- **Plans**: given the loader's plan (files in the order it will read them), a background thread starts
  whole-file fetches in plan order (at most ``threads`` at a time), never more than ``lead_files`` files
  nor ``lead_bytes`` bytes (default half the RAM tier) ahead of the reader, whose position is learned from
  the first read of each file. Prefetched blocks land in the RAM tier, so prefetch buffers count against
  ``--ram``; plan-aware eviction keeps them because their next use is near.

Counters: prefetched bytes, those read since (and those never read), and the current lead (files and
bytes ahead of the reader).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from .store import ObjectInfo
from .tiers.base import BlockId
from .tiers.planned import PlanCursor

if TYPE_CHECKING:
    from .cache import TieredCache

log = logging.getLogger(__name__)


class Prefetcher:
    """Read-ahead and plan prefetch for one TieredCache (which calls ``observe`` on every read)."""

    MAX_TRACKED = 1 << 20  # prefetched-but-unread blocks remembered for the "never read" counter

    def __init__(
        self,
        cache: TieredCache,
        threads: int = 8,
        lead_files: int = 256,
        lead_bytes: int | None = None,
        max_window: int = 64 << 20,
        max_streams: int = 1024,
    ):
        self.cache = cache
        self.block_size = cache.config.block_size
        ram = cache.config.ram_bytes
        self.lead_files = lead_files
        self.lead_bytes = lead_bytes if lead_bytes is not None else max(ram // 2, self.block_size)
        self.max_window = max(min(max_window, ram // 4), self.block_size)
        self.parallel = max(1, threads)
        self.max_streams = max_streams
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="tiercache-readahead")
        self._lock = threading.Condition()
        self._streams: OrderedDict[str, tuple[int, int]] = OrderedDict()  # key → (next offset, window)
        self._scheduled: set[BlockId] = set()
        self._unread: dict[BlockId, int] = {}  # prefetched, not read yet (insertion order: oldest first)
        self._forgotten_unread = 0
        self._in_flight = 0
        self._generation = 0
        self._cursor = PlanCursor()
        self._next_index = 0
        self._ahead: deque[tuple[int, int]] = deque()  # (plan index, bytes) of files fetched ahead
        self._ahead_bytes = 0
        self._closed = False
        self.prefetched_bytes = self.used_bytes = self.readahead_bytes = 0
        self._thread = threading.Thread(target=self._plan_loop, name="tiercache-plan-prefetch", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ called by the cache

    def set_plan(self, keys_in_order: Sequence[str]) -> None:
        """Follow a new plan from its start."""
        with self._lock:
            self._cursor.set_plan(keys_in_order)
            self._generation += 1
            self._next_index = 0
            self._ahead.clear()
            self._ahead_bytes = 0
            self._lock.notify_all()

    def observe(self, info: ObjectInfo, offset: int, end: int) -> None:
        """A reader read [offset, end) of an object: advance the plan position (on a file's first read, at
        offset 0, so a file read in several calls counts once), extend read-ahead."""
        if offset == 0 and self._cursor.plan:
            with self._lock:
                if self._cursor.observe(info.key) is not None:
                    self._lock.notify_all()
        if info.size > self.block_size:
            self._readahead(info, offset, end)

    def mark_read(self, block: BlockId) -> None:
        """A reader was served ``block``: if it was prefetched, it was worth it."""
        if self._unread:
            with self._lock:
                size = self._unread.pop(block, None)
                if size is not None:
                    self.used_bytes += size

    # ------------------------------------------------------------------ read-ahead

    def _readahead(self, info: ObjectInfo, offset: int, end: int) -> None:
        bs = self.block_size
        with self._lock:
            next_offset, window = self._streams.pop(info.key, (-1, 0))
            window = min(window * 2, self.max_window) if offset == next_offset and window else bs
            self._streams[info.key] = (end, window)
            while len(self._streams) > self.max_streams:
                self._streams.popitem(last=False)
            first, last = -(-end // bs), min(-(-info.size // bs), -(-(end + window) // bs))
            wanted = [BlockId(info.key, info.etag, i) for i in range(first, last)]
            todo = [b for b in wanted if b not in self._scheduled and not self.cache._in_tier(b, "ram")]
            self._scheduled.update(todo)
        for block in todo:
            try:
                self._pool.submit(self._fetch_blocks, [block], info, True)
            except RuntimeError:  # closed
                return

    def _fetch_blocks(self, blocks: list[BlockId], info: ObjectInfo, readahead: bool) -> None:
        try:
            missing = [b for b in blocks if not self.cache._in_tier(b, "ram")]
            if missing:
                self.cache._get_blocks(missing, info, "ram", want=False)
                nbytes = sum(min(self.block_size, info.size - b.index * self.block_size) for b in missing)
                with self._lock:
                    self.prefetched_bytes += nbytes
                    self.readahead_bytes += nbytes if readahead else 0
                    for b in missing:
                        self._unread[b] = min(self.block_size, info.size - b.index * self.block_size)
                    while len(self._unread) > self.MAX_TRACKED:  # bounded memory: the oldest stay unread
                        self._forgotten_unread += self._unread.pop(next(iter(self._unread)))
        except Exception as exc:  # noqa: BLE001 - prefetch is best effort; the reader will fetch itself
            log.debug("prefetch of %s failed: %s", info.key, exc)
        finally:
            if readahead:
                with self._lock:
                    self._scheduled.difference_update(blocks)

    # ------------------------------------------------------------------ plan prefetch

    def _plan_loop(self) -> None:
        while True:
            with self._lock:
                while not self._closed and not self._can_advance():
                    self._lock.wait(0.5)
                if self._closed:
                    return
                index = self._next_index = max(self._next_index, self._cursor.position)
                key = self._cursor.plan[index]
                generation = self._generation
                self._next_index += 1
                self._in_flight += 1
            try:
                info = self.cache.namespace.info(key, revalidate=False)
            except Exception as exc:  # noqa: BLE001 - a planned file may be gone; skip it
                log.debug("plan prefetch: %s: %s", key, exc)
                self._done()
                continue
            with self._lock:
                if generation == self._generation:
                    self._ahead.append((index, info.size))
                    self._ahead_bytes += info.size
            try:
                self._pool.submit(self._plan_fetch, info)
            except RuntimeError:  # closed
                return

    def _plan_fetch(self, info: ObjectInfo) -> None:
        try:
            self._fetch_blocks(self.cache._block_ids(info), info, readahead=False)
        finally:
            self._done()

    def _done(self) -> None:
        with self._lock:
            self._in_flight -= 1
            self._lock.notify_all()

    def _can_advance(self) -> bool:
        plan, position = self._cursor.plan, self._cursor.position
        while self._ahead and self._ahead[0][0] < position:
            self._ahead_bytes -= self._ahead.popleft()[1]
        start = max(self._next_index, position)
        return (
            start < len(plan)
            and self._in_flight < self.parallel
            and start - position < self.lead_files
            and self._ahead_bytes < self.lead_bytes
        )

    # ------------------------------------------------------------------ reporting and lifecycle

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until nothing is in flight and the plan lead is used up (or the plan done); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._in_flight or self._scheduled or (self._cursor.plan and self._can_advance()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.05))
            return True

    def stats(self) -> dict:
        """Prefetched bytes, how many were read since, and the lead ahead of the reader."""
        with self._lock:
            position = self._cursor.position
            return {
                "prefetched_bytes": self.prefetched_bytes,
                "readahead_bytes": self.readahead_bytes,
                "prefetched_read_bytes": self.used_bytes,
                "prefetched_unread_bytes": sum(self._unread.values()) + self._forgotten_unread,
                "in_flight": self._in_flight,
                "plan_files": len(self._cursor.plan),
                "plan_position": position,
                "lead_files": max(0, self._next_index - position),
                "lead_bytes": self._ahead_bytes,
            }

    def close(self) -> None:
        """Stop the plan thread and the read-ahead pool."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=True, cancel_futures=True)
