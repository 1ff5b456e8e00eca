"""The SSD tier's read path (``SsdTier`` is an ``SsdReads``): look the block up in the LMDB index, check the
entry against its region, read just the pages asked for and check them against their checksums; a queued
block is served from the write queue. A failed check drops the entry and reads as a miss."""

from __future__ import annotations

import logging
import os
from contextlib import AbstractContextManager, nullcontext

from .base import BlockId
from .ssd_format import PAGE_SIZE, Location, page_count, page_span, verify

log = logging.getLogger(__name__)


class SsdReads:
    """The read half of ``SsdTier``: uses its lock, index, regions, queue, entries, policy and counters."""

    TOUCHED_MAX = 8192  # blocks whose last part read is remembered (read_part)

    def get(self, block: BlockId, count: bool = True) -> bytes | None:
        """The block's bytes, or None on a miss or a failed check (the entry is then dropped)."""
        return self._read(block, count, None, 0, None)

    def get_into(self, block: BlockId, out: memoryview, count: bool = True) -> bool:
        """Read the block straight into ``out`` (exactly the block's length); False on a miss, a failed
        check or a length that differs (``out`` then holds garbage). Saves a copy on multi-block reads."""
        return self._read(block, count, out, 0, None) is not None

    def get_range(self, block: BlockId, start: int, end: int, count: bool = True) -> bytes | None:
        """Bytes [start, end) of the block (short at its end), reading and checking only their pages."""
        data = self._read(block, count, None, start, end)
        if data is None:
            return None
        skip = start - page_span(start, end)[0] * PAGE_SIZE
        return data[skip:skip + end - start]

    def read_part(self, block: BlockId, start: int, end: int, block_len: int) -> bytes | None:
        """Bytes [start, end) of a resident block for a reader, from just the pages they need, until the
        block earns a whole read (and so a place in RAM) by being read on twice in a row from where its
        last part ended (a sequential reader). Scattered reads do not pull whole blocks. None then, for
        blocks of up to two pages, or on a miss: the caller takes the whole-block path."""
        if page_count(block_len) <= 2:
            return None
        if block not in self.queue and self.index.get(block.encode()) is None:
            return None
        with self._lock:
            last_end, run = self._touched.pop(block, (-1, 0))
            run = run + 1 if start == last_end else 0
            if run >= 2:
                return None
            self._touched[block] = (end, run)
            while len(self._touched) > self.TOUCHED_MAX:
                self._touched.popitem(last=False)
        return self.get_range(block, start, end)

    def _read(self, block: BlockId, count: bool, out: memoryview | None, start: int, end: int | None):
        key = block.encode()
        for _attempt in (0, 1):
            with self._lock:
                queued = self.queue.get(block)
                if queued is not None:
                    return self._queued_hit(queued, count, out, start, end)
            raw = self.index.get(key)
            if raw is None:
                break
            loc = Location.unpack(raw)
            if out is not None and len(out) != loc.length:
                break
            if end is not None and start >= min(end, loc.length):
                return b""
            first, last = (0, None) if end is None else page_span(start, min(end, loc.length))
            lo = first * PAGE_SIZE
            n = loc.length - lo if last is None else min(loc.length, last * PAGE_SIZE) - lo
            with self._lock:
                region = self._regions.get(loc.region)
                if region is not None and region.dead:
                    continue  # freed by a concurrent relocation: look the block up again
                if not self.entries.valid(loc):
                    if self.index.get(key) == raw:
                        self.entries.drop(key, raw)
                        self.entries.dropped += 1
                    break
                region.readers += 1
            try:
                if out is None:
                    with self._holding(n):
                        data = os.pread(region.fd, n, loc.offset + lo)
                    got = len(data)
                else:
                    data, got = out, os.preadv(region.fd, [out], loc.offset)
            except OSError as exc:
                log.warning("ssd tier: read of %s failed: %s", region.path, exc)
                data, got = b"", -1
            finally:
                with self._lock:
                    region.readers -= 1
                    if region.dead and region.readers == 0:
                        os.close(region.fd)
            if got != n or not verify(block, loc, data, first):
                self._corrupt(block, raw)
                break
            with self._lock:
                self.policy.on_access(loc.slot)
                if count:
                    self.hits += 1
                    self.bytes_served += n
            return data
        if count:
            with self._lock:
                self.misses += 1
        return None

    def _holding(self, nbytes: int) -> AbstractContextManager:
        """The memory budget held while a read buffer of ``nbytes`` is filled (nothing without a budget)."""
        return self.budget.hold(nbytes, "ssd_reads") if self.budget is not None else nullcontext()

    def _queued_hit(self, queued: bytes, count: bool, out: memoryview | None, start: int, end: int | None):
        """A hit on a block still waiting in the write queue (caller holds the lock)."""
        if out is not None:
            if len(queued) != len(out):
                return None
            out[:] = queued
        if count:
            self.hits += 1
            self.bytes_served += len(queued)
        if end is None:
            return queued
        first = page_span(start, end)[0] * PAGE_SIZE
        return queued[first:end]

    def _corrupt(self, block: BlockId, raw: bytes) -> None:
        log.warning("ssd tier: checksum mismatch for %s block %d; dropping it", block.key, block.index)
        key = block.encode()
        with self._lock:
            self.entries.crc_errors += 1
            if self.index.get(key) == raw:
                self.entries.drop(key, raw)

