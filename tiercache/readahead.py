"""Sequential read-ahead: a stream is detected early and its next blocks are fetched in parallel, far enough
ahead to cover the backend's latency, within a byte bound on what is in flight.

- :class:`ReadAhead` is the state machine, without I/O. Per object (an LRU of ``max_streams``): where the
  reader's next read would start, how many reads in a row continued the stream, where the run started, and
  how far read-ahead has been issued. A read continues the stream when it starts where the stream has got
  to, or at most one read's length past it, or, once the run is a stream, up to ``slack`` behind it (FUSE
  worker threads deliver the kernel's concurrent read requests out of order); anything else is a seek and
  starts a new run. A run is a stream from its third read (two continuations: the kernel's own read-ahead
  turns one random read into a pair of adjacent FUSE requests), or from its first when that one starts at
  offset 0. A stream's window, the bytes wanted ahead of its reader, is four times
  what the run has read so far, at least one block and at most ``max_window``: a reader that goes on earns
  more, a short sequential burst (a header, one column chunk) fetches little past what it reads. Against a
  backend with latency the window is at once at least the link's bandwidth-delay product (``bdp``:
  measured time to first byte × per-connection rate × read-ahead's connections, tiercache/link.py), so a
  stream covers the latency from its first round trip instead of growing there over several.
- :class:`StreamReadAhead` runs it: the cache calls ``observe`` on every read (its answer, whether the read
  is part of a stream, lets the cache leave a streamed block's eviction rank alone). The window's blocks
  RAM lacks are fetched on its own pool with the ``fetch`` callable it was given (it never sees the store
  or the tiers), at most ``max_in_flight`` bytes at a time; a finished fetch tops the stream up, so a
  reader waiting on a block still keeps the pipeline full. The pool has one worker per block that fits in
  flight (at most ``threads``): a worker beyond that would only wait, and would hold a connection of the
  store's pool (store/s3.py sizes that pool for these workers); all are started when the cache
  opens (tiercache/workerpool.py), so a stream's first reads do not wait for threads to start.
  Consecutive blocks no tier holds go together, up to ``run_bytes`` (and a quarter of what may be in
  flight), as one ranged GET whose blocks are handed on as each arrives (tiercache/stagerun.py): a GET's
  fixed cost, on the client and on the server, is paid once per run.
- Fetched blocks wait in a staging area (at most ``max_staged`` bytes, oldest dropped first, on the memory
  budget) until a reader ``take``s them; only then do they enter the tiers, as one use. So blocks read
  ahead are never evicted before they are read (a RAM tier's probationary queue is smaller than a window),
  and a stream enters RAM as what it is: blocks used once.

Counters: bytes read ahead, those read since, those dropped unread, the peak in flight, the BDP and the
link it comes from.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from .blocks import BlockMap
from .link import Link
from .store import ObjectInfo
from .tiers.base import BlockId
from .tiers.budget import MemoryBudget
from .workerpool import WorkerPool

log = logging.getLogger(__name__)

__all__ = ["ReadAhead", "StreamReadAhead"]

# per stream: [next offset, reads in the run, run start, first block index not yet issued]
_NEXT, _RUN, _START, _ISSUED = range(4)
DETECT = 3  # reads in a row that make a stream (unless it started at offset 0)


class ReadAhead:
    """Per-object stream detection and windows (see the module docstring); pure bookkeeping, not locked."""

    def __init__(self, block_size: int, max_window: int, max_streams: int = 1024, slack: int = 2 << 20,
                 bdp: Callable[[], int] | None = None):
        self.block_size = block_size
        self.max_window = max(max_window, block_size)
        self.max_streams = max_streams
        self.slack = slack
        self.bdp = bdp if bdp is not None else (lambda: 0)
        self._streams: OrderedDict[str, list[int]] = OrderedDict()

    def on_read(self, key: str, size: int, offset: int, end: int) -> tuple[int, int]:
        """A read of [offset, end) of an object of ``size`` bytes: block indices [first, last) still to
        issue ahead of it (empty when the read is not part of a stream)."""
        bs = self.block_size
        stream = self._streams.pop(key, None)
        # continuing: at most one read's length past where the run is, or (once it is a stream) a straggler
        # behind it
        behind = self.slack if stream is not None and self._is_stream(stream) else 0
        if stream is not None and -behind <= offset - stream[_NEXT] <= end - offset:
            stream[_RUN] += 1
            stream[_NEXT] = max(stream[_NEXT], end)
        else:  # a new run: a first read, or a seek
            stream = [end, 1, offset, 0]
        self._streams[key] = stream
        while len(self._streams) > self.max_streams:
            self._streams.popitem(last=False)
        if not self._is_stream(stream):
            return 0, 0
        window = self._window(stream)
        first = max(-(-stream[_NEXT] // bs), stream[_ISSUED])
        return first, min(-(-size // bs), -(-(stream[_NEXT] + window) // bs))

    def streaming(self, key: str) -> bool:
        """Whether the last read of ``key`` was part of a stream."""
        stream = self._streams.get(key)
        return stream is not None and self._is_stream(stream)

    def passed(self, key: str, index: int) -> bool:
        """Whether the reader of ``key`` has already read past block ``index`` (fetching it ahead is late:
        the reader fetched it itself, and a staged copy would only hold budget until it is dropped)."""
        stream = self._streams.get(key)
        return stream is not None and (index + 1) * self.block_size <= stream[_NEXT]

    @staticmethod
    def _is_stream(stream: list[int]) -> bool:
        return stream[_RUN] >= DETECT or stream[_START] == 0

    def _window(self, stream: list[int]) -> int:
        """Four times what the run read, at least a block and the link's BDP, at most ``max_window``."""
        return min(self.max_window, max(self.block_size, 4 * (stream[_NEXT] - stream[_START]), self.bdp()))

    def issued(self, key: str, upto: int) -> None:
        """Read-ahead of ``key`` was issued up to block index ``upto`` (exclusive)."""
        stream = self._streams.get(key)
        if stream is not None:
            stream[_ISSUED] = max(stream[_ISSUED], upto)

    def window(self, key: str) -> int:
        """The current window of ``key`` in bytes (0 if it is not a stream)."""
        stream = self._streams.get(key)
        if stream is None or not self.streaming(key):
            return 0
        return self._window(stream)


class StreamReadAhead:
    """Runs :class:`ReadAhead` (see the module docstring); thread-safe."""

    def __init__(
        self,
        blocks: BlockMap,
        resident: Callable[[BlockId], bool],
        fetch: Callable[[ObjectInfo, list[BlockId], Callable[[BlockId, bytes], None]], object],
        budget: MemoryBudget | None = None,
        threads: int = 16,
        max_window: int = 64 << 20,
        max_in_flight: int = 64 << 20,
        max_staged: int | None = None,
        max_streams: int = 1024,
        link: Link | None = None,
        run_bytes: int = 0,
        cold: Callable[[BlockId], bool] | None = None,
    ):
        self.blocks = blocks
        self.resident, self.fetch = resident, fetch
        self.budget = budget
        self.link = link
        self.max_in_flight = max(max_in_flight, blocks.block_size)
        # one worker per block that fits in flight: more would wait for room (holding a store connection)
        self.workers = max(1, min(threads, self.max_in_flight // blocks.block_size))
        self.state = ReadAhead(blocks.block_size, max_window, max_streams, bdp=self.bdp)
        # consecutive blocks no tier holds (``cold``) share one ranged GET of up to ``run_bytes``, at most a
        # quarter of what may be in flight (at least four GETs overlap to cover the latency; at 64 MiB in
        # flight: 8 GETs of 8 MiB, raw boto3's shape): per-request costs, the client's and the server's, are
        # paid once per run
        self.cold = cold if cold is not None else (lambda block: False)
        self.run_blocks = max(1, min(run_bytes, self.max_in_flight // 4) // blocks.block_size) if cold else 1
        self.max_staged = max(max_window if max_staged is None else max_staged, blocks.block_size)
        self._pool = WorkerPool(self.workers, "tiercache-readahead")  # all started now, off the read path
        self._lock = threading.Condition()
        self._scheduled: set[BlockId] = set()
        self._wanted: dict[str, list] = {}  # key → [info, next block index to issue, last index wanted]
        self._in_flight = 0  # bytes
        self._staged: OrderedDict[BlockId, bytes] = OrderedDict()  # fetched, not taken yet (oldest first)
        self._staged_bytes = 0
        self.fetched_bytes = self.used_bytes = self.dropped_bytes = self.peak_in_flight = 0
        self._closed = False

    def bdp(self) -> int:
        """The link's bandwidth-delay product for this pool's workers (0 without a measured link)."""
        return self.link.bdp(self.workers) if self.link is not None else 0

    # ------------------------------------------------------------------ called by the read path

    def observe(self, info: ObjectInfo, offset: int, end: int) -> bool:
        """A reader read [offset, end) of ``info``: extend its stream's window and fetch what it now covers.
        True when the read is part of a stream."""
        if info.size <= self.blocks.block_size:
            return False
        with self._lock:
            first, last = self.state.on_read(info.key, info.size, offset, end)
            streaming = self.state.streaming(info.key)
            if first >= last:
                return streaming
            self._wanted[info.key] = [info, first, last]
            todo = self._schedule(info.key)
        self._submit(todo)
        return streaming

    def holds(self, block: BlockId) -> bool:
        """Whether ``block`` waits in the staging area."""
        return block in self._staged

    def take(self, block: BlockId) -> bytes | None:
        """The staged bytes of ``block`` (leaving the staging area: the caller admits them), or None."""
        if block not in self._staged:
            return None
        with self._lock:
            data = self._staged.pop(block, None)
            if data is None:
                return None
            self._unstage(len(data))
            self.used_bytes += len(data)
            return data

    def window(self, key: str) -> int:
        """The current window of ``key`` in bytes (0 if it is not a stream)."""
        with self._lock:
            return self.state.window(key)

    def discard(self, matches: Callable[[str], bool]) -> int:
        """Drop the staged blocks of the keys ``matches`` accepts (an evict); bytes let go."""
        with self._lock:
            gone = [block for block in self._staged if matches(block.key)]
            freed = 0
            for block in gone:
                freed += len(self._staged.pop(block))
            self._unstage(freed)
            self.dropped_bytes += freed
            return freed

    # ------------------------------------------------------------------ fetching

    def _ahead(self, block: BlockId) -> bool:
        return block in self._scheduled or block in self._staged or self.resident(block)

    def _schedule(self, key: str) -> list[tuple[list[BlockId], ObjectInfo]]:
        """The wanted blocks of ``key`` not issued yet that fit in flight now, as runs of consecutive blocks
        no tier holds (one ranged GET each, at most ``run_blocks``) or single blocks (caller holds the lock)."""
        wanted = self._wanted[key]
        info, first, last = wanted
        todo: list[tuple[list[BlockId], ObjectInfo]] = []
        run: list[BlockId] = []
        index = first
        for block in self.blocks.indices(info, first, last):
            if self._ahead(block):
                run = []
            else:
                size = self.blocks.length(info, block)
                if self._in_flight + size > self.max_in_flight:
                    break
                self._scheduled.add(block)
                self._in_flight += size
                joins = self.run_blocks > 1 and self.cold(block)
                if joins and run and len(run) < self.run_blocks:
                    run.append(block)
                else:
                    run = [block] if joins else []
                    todo.append((run if joins else [block], info))
            index = block.index + 1
        if run and len(run) < self.run_blocks and index < -(-info.size // self.blocks.block_size) \
                and self._in_flight > sum(self.blocks.length(info, b) for b in run):
            # a run cut short by the window's end or by room in flight waits to be whole while other GETs
            # are out (the next read or the next finished fetch issues it): in steady state the window
            # grows a block at a time, and one GET per block would pay the fixed cost per block again
            todo.pop()
            self._release(run, info)
            index = run[0].index
        self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
        self.state.issued(key, index)
        wanted[1] = index
        if index >= last:
            self._wanted.pop(key, None)
        return todo

    def _submit(self, todo: list[tuple[list[BlockId], ObjectInfo]]) -> None:
        for n, (run, info) in enumerate(todo):
            try:
                self._pool.submit(self._fetch, run, info)
            except RuntimeError:  # closed: nothing will fetch the rest
                with self._lock:
                    for rest, rest_info in todo[n:]:
                        self._release(rest, rest_info)
                    self._lock.notify_all()
                return

    def _release(self, run: list[BlockId], info: ObjectInfo) -> None:
        for block in run:
            self._scheduled.discard(block)
            self._in_flight -= self.blocks.length(info, block)

    def _fetch(self, run: list[BlockId], info: ObjectInfo) -> None:
        try:
            with self._lock:  # blocks the reader has read past are late (a prefix of the run)
                todo = [] if self._closed else [b for b in run if not self.state.passed(info.key, b.index)]
            todo = [block for block in todo if not self.resident(block)]
            if todo:
                self.fetch(info, todo, lambda b, data: self._keep(b, data, info.key))
        except Exception as exc:  # noqa: BLE001 - read-ahead is best effort; the reader will fetch itself
            log.debug("read-ahead of %s failed: %s", info.key, exc)
        todo = []
        with self._lock:
            self._release(run, info)
            if not self._closed:
                for key in list(self._wanted):  # top up the streams that wait for room in flight
                    todo += self._schedule(key)
                    if self._in_flight >= self.max_in_flight:
                        break
            self._lock.notify_all()
        self._submit(todo)

    def _keep(self, block: BlockId, data: bytes, key: str) -> None:
        """Stage fetched bytes (called by the fetch, before a reader waiting on it wakes up); not once the
        reader has passed the block (it admits the bytes itself if it waits on this fetch)."""
        with self._lock:
            late = self.state.passed(key, block.index)
        if not late and not self.resident(block) and self._reserve(len(data)):
            with self._lock:
                self._stage(block, data)

    def _reserve(self, nbytes: int) -> bool:
        """Room on the memory budget for a staged block (RAM gives some back when it is full)."""
        budget = self.budget
        if budget is None or budget.try_reserve(nbytes, "readahead"):
            return True
        if budget.reclaimer is not None:
            budget.reclaimer(nbytes)
        return budget.try_reserve(nbytes, "readahead")

    def _stage(self, block: BlockId, data: bytes) -> None:
        """Hold fetched bytes for a reader, dropping the oldest staged past ``max_staged`` (lock held)."""
        self._staged[block] = data
        self._staged_bytes += len(data)
        self.fetched_bytes += len(data)
        while self._staged_bytes > self.max_staged:
            _old, dropped = self._staged.popitem(last=False)
            self._unstage(len(dropped))
            self.dropped_bytes += len(dropped)

    def _unstage(self, nbytes: int) -> None:
        self._staged_bytes -= nbytes
        if self.budget is not None:
            self.budget.release(nbytes, "readahead")

    # ------------------------------------------------------------------ reporting and lifecycle

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
        """Bytes read ahead, those read since, those dropped unread; staged and in flight (now, at most)."""
        with self._lock:
            return {
                "readahead_bytes": self.fetched_bytes,
                "readahead_read_bytes": self.used_bytes,
                "readahead_unread_bytes": self.dropped_bytes + self._staged_bytes,
                "readahead_staged_bytes": self._staged_bytes,
                "readahead_in_flight_bytes": self._in_flight,
                "readahead_peak_in_flight_bytes": self.peak_in_flight,
                "readahead_max_in_flight_bytes": self.max_in_flight,
                "readahead_max_window_bytes": self.state.max_window,
                "readahead_workers": self.workers,
                "readahead_run_blocks": self.run_blocks,
                "readahead_bdp_bytes": self.bdp(),
                **{f"readahead_link_{k}": v for k, v in (self.link.stats() if self.link is not None else {}).items()},
            }

    def close(self) -> None:
        """Drop what has not started, wait for what has, and let go of what is staged."""
        with self._lock:
            self._closed = True
            self._wanted.clear()
        self._pool.shutdown()
        with self._lock:
            while self._staged:
                self._unstage(len(self._staged.popitem()[1]))
