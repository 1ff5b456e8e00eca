"""The SSD tier's read path (``SsdTier`` is an ``SsdReads``): look the block up in the LMDB index, check the
entry against its region, read the record's id and just the pages asked for and check them against the
block and its checksums; a queued block is served from the write queue. A failed check drops the entry and
reads as a miss; a record of another block with the same digest (a collision) is a miss. A record whose id
was checked is remembered (``CHECKED_MAX`` entries, by index value), so a stream's later parts of a block
read only its pages.

``read_into`` is the direct path: the bytes of a range go from the region file straight into the caller's
buffer (a FUSE reply's), with only the pages they lie in read and checked; ``advise`` asks the kernel to read
a block into its page cache ahead of a stream (read-ahead of SSD-resident blocks, no copy in Python)."""

from __future__ import annotations

import logging
import os
from contextlib import AbstractContextManager, nullcontext

from .base import BlockId
from .ssd_format import PAGE_SIZE, Location, header, page_count, page_seed, page_span, pages_ok
from .ssd_index import block_key

log = logging.getLogger(__name__)
_AGAIN = object()  # a region freed under a read: look the block up again

ONE_READ = 64 << 10  # up to this many bytes from a block's start, its record's id comes in the same read


class SsdReads:
    """The read half of ``SsdTier``: uses its lock, index, regions, queue, entries, policy and counters."""

    TOUCHED_MAX = 8192  # blocks whose last part read is remembered (read_part)
    CHECKED_MAX = 4096  # index values whose record's id was checked (a stream's later parts skip the check)
    NAMES_MAX = 2048  # blocks whose id, index key, head and crc seed are remembered; index values decoded

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

    def read_part(self, block: BlockId, start: int, end: int, block_len: int, stream: bool = False) -> bytes | None:
        """Bytes [start, end) of a resident block for a reader, from just the pages they need, until the
        block earns a whole read (and so a place in RAM) by being read on twice in a row from where its
        last part ended (a sequential reader). Scattered reads do not pull whole blocks. None then, for
        blocks of up to two pages, or on a miss: the caller takes the whole-block path. A ``stream`` passing
        through (each block read once, with no room in RAM for it) never earns whole blocks."""
        if page_count(block_len) <= 2:
            return None
        if block not in self.queue and self.index.get(self._names(block)[1]) is None:
            return None
        if not stream and self._earns_whole(block, start, end):
            return None
        return self.get_range(block, start, end)

    def read_part_into(self, block: BlockId, start: int, out: memoryview, block_len: int, stream: bool,
                       touch: bool = True) -> bool:
        """``read_part`` into ``out`` (bytes [start, start + len(out)) of the block) with ``read_into``; False
        where ``read_part`` gives None (``out`` then holds garbage)."""
        if block_len <= 2 * PAGE_SIZE or (not stream and self._earns_whole(block, start, start + len(out))):
            return False
        return self.read_into(block, start, out, touch)

    def _earns_whole(self, block: BlockId, start: int, end: int) -> bool:
        """Whether this part read continues the block's last two (a sequential reader: the block earns a whole
        read and a place in RAM); remembers where it ended."""
        with self._lock:
            last_end, run = self._touched.pop(block, (-1, 0))
            run = run + 1 if start == last_end else 0
            if run >= 2:
                return True
            self._touched[block] = (end, run)
            if len(self._touched) > self.TOUCHED_MAX:
                self._touched.popitem(last=False)
        return False

    def read_into(self, block: BlockId, start: int, out: memoryview, touch: bool = True) -> bool:
        """Bytes [start, start + len(out)) of the block into ``out`` (a writable byte view), reading and
        checking only the pages they lie in: straight from the region file into ``out`` when the range is
        whole pages, else through a scratch buffer. A hit is counted, a miss is not (the caller's fallback
        counts it); ``touch=False`` (a stream's reads: one use) leaves the eviction policy alone. False on a
        miss, a failed check (the entry is dropped) or a range past the block's end; ``out`` may then hold
        anything: never serve it."""
        end = start + len(out)
        names = self._names(block)
        ident, key, head, seed = names
        for _attempt in (0, 1):
            if block in self.queue:
                with self._lock:
                    queued = self.queue.get(block)
                    if queued is not None:
                        if end > len(queued):
                            return False
                        out[:] = memoryview(queued)[start:end]
                        self.hits += 1
                        self.bytes_served += end - start
                        return True
            raw = self.index.get(key)
            if raw is None:
                return False
            self._remember_names(block, names)
            loc = self._location(raw)
            length = loc.size - len(head)
            if length < 0 or len(loc.crcs) != 4 * page_count(length):
                self._foreign(block, key, raw, loc)
                return False
            if start >= end or end > length:
                return False
            first = start // PAGE_SIZE
            lo, hi = first * PAGE_SIZE, min(length, max(first + 1, -(-end // PAGE_SIZE)) * PAGE_SIZE)
            region, checked = self._reading(key, raw, loc, lo != 0)
            if region is None:
                return False
            if region is _AGAIN:
                continue
            direct = lo == start and hi == end
            buf = out if direct else memoryview(bytearray(hi - lo))
            ok = foreign = False
            try:
                if lo == 0:  # the record's id and the first pages in one read
                    found = bytearray(len(head))
                    got = os.preadv(region.fd, [found, buf], loc.offset) - len(head)
                    foreign = found != head
                else:
                    foreign = not checked and os.pread(region.fd, len(head), loc.offset) != head
                    got = -1 if foreign else os.preadv(region.fd, [buf], loc.offset + len(head) + lo)
                ok = not foreign and got == hi - lo and pages_ok(seed, loc.crcs, buf, first)
            except OSError as exc:
                log.warning("ssd tier: read of %s failed: %s", region.path, exc)
            finally:
                with self._lock:  # one hold: let go of the region, count the hit, remember the id checked
                    region.readers -= 1
                    if region.dead and region.readers == 0:
                        os.close(region.fd)
                    if ok:
                        if touch:
                            self.policy.on_access(loc.slot)
                        self.hits += 1
                        self.bytes_served += end - start
                        self._remember_checked(key, raw)
            if foreign:
                self._foreign(block, key, raw, loc)
                return False
            if not ok:
                self._corrupt(block, raw)
                return False
            if not direct:
                out[:] = buf[start - lo:end - lo]
            return True
        return False

    def advise(self, block: BlockId) -> bool:
        """Whether the block lies in a region file (not just queued); if so the kernel is asked to read it into
        its page cache now (POSIX_FADV_WILLNEED), so that a stream's reads of it do not wait for the device."""
        key = self._names(block)[1]
        raw = self.index.get(key)
        if raw is None:
            return False
        loc = self._location(raw)
        region = self._reading(key, raw, loc)[0]
        if region is None or region is _AGAIN:
            return False
        try:
            os.posix_fadvise(region.fd, loc.offset, loc.size, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass  # advice only
        finally:
            self._done_reading(region)
        return True

    def _names(self, block: BlockId) -> tuple[bytes, bytes, bytes, int]:
        """The block's encoded id, index key, record head and page crc seed: a pure function of the id, so
        nothing to invalidate. Remembered (``_remember_names``, ``NAMES_MAX`` blocks) only once a read finds
        the block: a warm's misses must not fill the cache."""
        names = self._named.get(block)
        if names is None:
            ident = block.encode()
            names = (ident, block_key(block, ident), header(ident), page_seed(ident))
        return names

    def _remember_names(self, block: BlockId, names: tuple[bytes, bytes, bytes, int]) -> None:
        if block not in self._named:
            if len(self._named) >= self.NAMES_MAX:
                self._named.clear()
            self._named[block] = names

    def _location(self, raw: bytes) -> Location:
        """``Location.unpack(raw)``, remembered for ``NAMES_MAX`` index values (a pure function of the value:
        which value a key has is always asked of the index)."""
        loc = self._locations.get(raw)
        if loc is None:
            loc = Location.unpack(raw)
            if len(self._locations) >= self.NAMES_MAX:
                self._locations.clear()
            self._locations[raw] = loc
        return loc

    def _remember_checked(self, key: bytes, raw: bytes) -> None:
        """Remember that the record index value ``raw`` points at is its block's (caller holds the lock)."""
        checked = self._checked
        checked[key] = raw
        checked.move_to_end(key)
        if len(checked) > self.CHECKED_MAX:
            checked.popitem(last=False)

    def _reading(self, key: bytes, raw: bytes, loc: Location, checks: bool = False):
        """(the entry's region held open for a read (``_done_reading`` lets go), whether the record's id was
        checked before (``checks``)); region None when the entry is not valid (dropped), ``_AGAIN`` when its
        region was freed meanwhile (look the block up again)."""
        with self._lock:
            region = self._regions.get(loc.region)
            if region is not None and region.dead:
                return _AGAIN, False
            if not self.entries.valid(loc):
                if self.index.get(key) == raw:
                    self.entries.drop(key, raw)
                    self.entries.dropped += 1
                return None, False
            region.readers += 1
            return region, checks and self._checked.get(key) == raw

    def _done_reading(self, region) -> None:
        with self._lock:
            region.readers -= 1
            if region.dead and region.readers == 0:
                os.close(region.fd)

    def _read(self, block: BlockId, count: bool, out: memoryview | None, start: int, end: int | None):
        names = self._names(block)
        ident, key, head, seed = names
        hs = len(head)
        for _attempt in (0, 1):
            with self._lock:
                queued = self.queue.get(block)
                if queued is not None:
                    return self._queued_hit(queued, count, out, start, end)
            raw = self.index.get(key)
            if raw is None:
                break
            self._remember_names(block, names)
            loc = self._location(raw)
            length = loc.length(ident)
            if length < 0:  # the entry cannot be this block's: another block's (a collision) or damaged
                self._foreign(block, key, raw, loc)
                break
            if out is not None and len(out) != length:
                break
            if end is not None and start >= min(end, length):
                return b""
            first, last = (0, None) if end is None else page_span(start, min(end, length))
            lo = first * PAGE_SIZE
            n = length - lo if last is None else min(length, last * PAGE_SIZE) - lo
            region, checked = self._reading(key, raw, loc, out is None and not (lo == 0 and n <= ONE_READ))
            if region is None:
                break
            if region is _AGAIN:
                continue  # freed by a concurrent relocation: look the block up again
            found, data, got = b"", b"", -1
            try:
                if out is not None:
                    found = bytearray(hs)
                    data, got = out, os.preadv(region.fd, [found, out], loc.offset) - hs
                elif lo == 0 and n <= ONE_READ:  # a small read: the id and the bytes in one read
                    with self._holding(hs + n):
                        record = os.pread(region.fd, hs + n, loc.offset)
                    found, data = record[:hs], record[hs:]
                    got = len(data)
                else:
                    found = head if checked or os.pread(region.fd, hs, loc.offset) == head else b""
                    with self._holding(n):
                        data = os.pread(region.fd, n, loc.offset + hs + lo)
                    got = len(data)
            except OSError as exc:
                log.warning("ssd tier: read of %s failed: %s", region.path, exc)
                found, data, got = b"", b"", -1
            finally:
                ok = found == head and got == n and pages_ok(seed, loc.crcs, data, first)
                with self._lock:  # one hold: let go of the region, count the hit, remember the id checked
                    region.readers -= 1
                    if region.dead and region.readers == 0:
                        os.close(region.fd)
                    if ok:
                        self._remember_checked(key, raw)
                        self.policy.on_access(loc.slot)
                        if count:
                            self.hits += 1
                            self.bytes_served += n
            if ok:
                return data
            if found != head and got >= 0:
                self._foreign(block, key, raw, loc)
            else:
                self._corrupt(block, raw)
            break
        if count:
            with self._lock:
                self.misses += 1
        return None

    def _foreign(self, block: BlockId, key: bytes, raw: bytes, loc: Location) -> None:
        """The record at an entry of ``block``'s digest is not ``block``'s: when it is the block its own
        entry names (a digest collision), a miss; else a damaged entry, dropped as a checksum error."""
        with self._lock:
            region = self._regions.get(loc.region)
            if region is None or region.dead:
                return
            region.readers += 1
        try:
            ident = self.entries.record_id(region.fd, loc)
        finally:
            with self._lock:
                region.readers -= 1
                if region.dead and region.readers == 0:
                    os.close(region.fd)
        if self.entries.owned(key, ident):
            log.info("ssd tier: %s block %d shares its index digest with another block: a miss", block.key,
                     block.index)
            return
        self._corrupt(block, raw)

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
        key = self._names(block)[1]
        with self._lock:
            self.entries.crc_errors += 1
            if self.index.get(key) == raw:
                self.entries.drop(key, raw)

