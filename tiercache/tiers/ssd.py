"""The SSD tier: blocks appended to large region files, an LMDB index, checksums on every read; survives
restarts.

Layout under ``directory``: region files (``regions.py``), append-only, about ``region_size`` each, so
millions of small blocks need few inodes; each block is a record there, its encoded id then its bytes (a
large record the write queue writes starts at a 4 KiB-aligned offset and is written past the page cache,
with O_DIRECT where the filesystem has it: ``ssd_dio.py``). The
index (``ssd_index.py``, LMDB, the index of record) maps a 12-byte digest of the block's id → a
``Location``: region, offset, record size, slot and one crc32 per 64 KiB page (``ssd_format.py``): about
34 bytes per small block. In memory a block is only its slot: a dense integer with its region, size and
digest in a numpy ``SlotTable`` (``ssd_slots.py``) and its eviction state in a slot policy
(``slot_policy.py``), no Python object per block (issue 12). ``ssd_blocks.py`` keeps index, slots, regions
and policy in step. ``contains`` asks the index only (a digest collision, 2^-64 for two keys, reports a
block resident that then reads as a miss).

Space: ``used()`` is the bytes of all region files and never exceeds ``capacity()``: the configured quota,
bounded by what the filesystem holds (``statvfs``: the region files plus the free space, less a little
headroom), so a quota larger than the disk never turns into failed writes. Past the high watermark the
policy picks victim blocks (logical eviction: index entries dropped) until live bytes fit the low
watermark; then whole regions are freed, most garbage first, after copying their remaining live blocks (the
ones the policy kept — hot or pinned) into the active region. A region is deleted as soon as nothing live
remains in it.

Integrity: a read checks the record's id against the block it looks for, and every page checksum is bound
to the block's identity (key, etag, block index), so a read whose bytes do not match — corrupt, or another
block's bytes under a damaged index — drops the entry and reports a miss, and the cache refetches; such
bytes are never returned. A record whose id has the same digest (a collision) is a miss that keeps the
entry: it is that other block's. ``get_range`` reads and checks only the
pages a read needs. Open takes constant time: region files the index does not know are deleted, and the
index is opened, not loaded; entries pointing at missing regions or past a region's end are dropped when
read, and by the background validation (``ssd_validate.py``) that rebuilds the slot table and the
policy without blocking readers. Until it is done, blocks are admitted only while they fit unevicted. The
eviction order survives a restart (``ssd_order.py``: the policy's arrays saved at close and every 10 minutes).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

from . import ssd_order
from .base import BlockId
from .budget import MemoryBudget
from .meta import Meta
from .policy import Policy, Protected
from .regions import RegionFiles
from .slot_plans import SlotPlanPolicy, make_slot_policy
from .ssd_blocks import SsdBlocks
from .ssd_dio import ALIGN, DirectIOWriter
from .ssd_format import FORMAT, Location, checksums, header, header_size
from .ssd_index import SsdIndex, block_key
from .ssd_queue import WriteQueue
from .ssd_read import SsdReads
from .ssd_slots import SlotTable
from .ssd_validate import Validator

log = logging.getLogger(__name__)


class SsdTier(SsdReads):
    """Region-file block store with an LMDB index; thread-safe; see the module docstring."""

    name = "ssd"
    IOV_MAX = 1024  # buffers per pwritev (Linux's limit)

    def __init__(
        self,
        directory: str | os.PathLike,
        capacity: int,
        meta: Meta,
        region_size: int = 64 << 20,
        policy: Policy | str = "default",
        high: float = 0.95,
        low: float = 0.85,
        protected: Protected | None = None,
        flush_interval: float = 0.005,
        queue_limit: int | None = None,
        budget: MemoryBudget | None = None,
        order_every: float = ssd_order.SAVE_EVERY,
        o_direct: bool = True,
    ):
        self._quota = int(capacity)
        self._order_every = order_every
        self.files = RegionFiles(directory, meta, region_size)
        self.dir = Path(self.files.dir)
        self.meta = meta
        self.policy = make_slot_policy(policy) if isinstance(policy, str) else policy
        self.high, self.low = high, min(low, high)
        self.protected = protected
        self._lock = threading.Lock()
        self.index = SsdIndex(meta, flush_interval)
        limit = min(256 << 20, max(self._quota // 8, 4 << 20)) if queue_limit is None else queue_limit
        self.budget = budget
        if budget is not None:
            limit = min(limit, budget.total // 2)
        self.queue = WriteQueue(
            self._lock, limit, lambda block, data, scan=False: self.put(block, data, queued=True, scan=scan), budget
        )
        self._writing: set[BlockId] = set()
        self.dio = DirectIOWriter(o_direct)
        self._touched: OrderedDict[BlockId, tuple[int, int]] = OrderedDict()  # (last part's end, run)
        self._checked: OrderedDict[bytes, bytes] = OrderedDict()  # index key → value whose record id passed
        self._named: dict[BlockId, tuple] = {}  # block → its id, index key, head, crc seed (ssd_read._names)
        self._locations: dict[bytes, Location] = {}  # index value → decoded (ssd_read._location)
        self._regions = self.files.regions
        self.hits = self.misses = self.bytes_served = self.rejected = self.write_errors = 0
        self._open()
        if self._quota > self.capacity():
            log.warning("ssd tier: %s holds %d MiB; using that instead of the configured %d MiB",
                        self.dir, self.capacity() >> 20, self._quota >> 20)

    # ------------------------------------------------------------------ open and validate

    def _open(self) -> None:
        """Constant work: the format mark, the region files, the slot high-water mark; the rest in the
        background (``ssd_validate.py``)."""
        found = self.meta.get("misc", b"ssd_format")
        if found != FORMAT:
            if self.meta.count("ssd_index") or self.files.listed():
                log.warning("ssd tier: the index in %s is of format %s, not %s; dropping the SSD tier's blocks",
                            self.dir, (found or b"unmarked").decode(errors="replace"), FORMAT.decode())
            self.index.clear()
            self.files.unlist(sorted(self.files.listed()))
            self.files.remove_files()
            ssd_order.discard(self.dir)
            self.meta.put("misc", b"ssd_format", FORMAT)
        self.files.load()
        self.region_size = self._region_size(self.files.region_size)
        self.files.region_size = self.region_size
        self.slots = SlotTable(self.index.committed_next_slot())
        self.index.next_slot = self.slots.next_slot
        self.entries = SsdBlocks(self.files, self.index, self.slots, self.policy, self.protected,
                                self.region_size)
        if isinstance(self.policy, SlotPlanPolicy):
            self.policy.key_of = self._key_of
        self.validator = Validator(self.entries, self._lock, order=(self.dir, ssd_order.claim(self.meta)))
        self.validator.start()
        self.order_saver = ssd_order.OrderSaver(self.dir, self.meta, self.policy, self._lock, self.validator.done,
                                                self._order_every)
        self.order_saver.start()

    def _region_size(self, wanted: int) -> int:
        """At most ``wanted``, and a 32nd of the capacity the disk allows (not only of the configured quota):
        a region that is a large part of the capacity cannot be compacted, so room is made by evicting live
        blocks (a 32 MiB region on a 46 MiB disk left 8 MiB of 80 MiB read twice). u32 offsets."""
        return min(wanted, max(self.capacity() // 32, 64 << 10), 1 << 31)

    def _key_of(self, slot: int) -> str | None:
        block = self.entries.block_of(slot)
        return None if block is None else block.key

    def validated(self, timeout: float | None = None) -> bool:
        """Wait until background validation is done (True), or ``timeout`` passes (False)."""
        return self.validator.done.wait(timeout)

    def contains(self, block: BlockId) -> bool:
        """Whether the block is resident (in this tier's own index) or queued (it may still fail its check
        on read); the eviction policy's bookkeeping is not asked."""
        return block in self.queue or self._indexed(block_key(block))

    def _indexed(self, key: bytes) -> bool:
        """Whether the index has ``key``; a look that does not fill the index's read cache (a warm of a
        million blocks asks it of every block)."""
        return self.index.get(key, remember=False) is not None

    def blocks(self, prefix: bytes = b"") -> list[BlockId]:
        """Resident block ids whose encoded id starts with ``prefix``: one index prefix scan for a key's
        blocks (``base.key_prefix``), else a walk of the whole index (each record's id is read)."""
        with self._lock:
            queued = {b for b in self.queue.blocks() if b.encode().startswith(prefix)}
        return sorted(queued | set(self.entries.resident_ids(prefix, self._lock)))

    # ------------------------------------------------------------------ writes and space

    def put(self, block: BlockId, data: bytes, queued: bool = False, scan: bool = False) -> bool:
        """Append a block to the active region (making room first); False if it cannot fit. ``scan``: a
        stream's one-shot block (the policy evicts it first until it is read again)."""
        ident = block.encode()
        head = header(ident)
        length = len(head) + len(data)
        if length > self._quota:
            return False
        key = block_key(block, ident)
        crcs = checksums(block, data, ident)
        with self._lock:
            if block in self._writing or (block in self.queue and not queued) or self._indexed(key):
                return True
            if queued and block not in self.queue:
                return False  # discarded while queued
            validated = self.validator.done.is_set()  # eviction needs the whole index walked: until then,
            # a block that needs room is not admitted (readers never wait; a warm waits for ``validated``)
            if not (self._fits_unevicted(length) if not validated else self._make_room(length)):
                self.rejected += 1
                return False
            # the queue's writer writes large records with O_DIRECT: aligned, padded (ssd_dio.py)
            direct = queued and self.dio.wants(length)
            reserved = self.dio.padded(length) if direct else length
            region, off = self.files.reserve(reserved, "new", ALIGN if direct else 1)
            region.inflight += 1
            self._writing.add(block)
            slot = self.slots.allocate()
        ok = None
        try:
            if direct:  # past the page cache (ssd_dio.py); None: no O_DIRECT here, written buffered
                ok = self.dio.write(region.path, (head, data), off)
            if ok is None:
                ok = os.pwritev(region.fd, [head, data], off) == length
        except OSError as exc:
            log.warning("ssd tier: write to %s failed: %s", region.path, exc)
        finally:
            with self._lock:
                region.inflight -= 1
                self._writing.discard(block)
                if ok:
                    self.entries.link(block, region, Location(region.id, off, length, crcs, slot), key, scan)
                else:
                    self.write_errors += 1
                    self.slots.release(slot)
                    self.files.unreserve(region, off, reserved)
        return bool(ok)

    def put_many(self, items: list[tuple[BlockId, bytes]]) -> int:
        """``put`` of many blocks (a bulk load: a warm's result, written faster): one lock hold to reserve,
        one write per run of blocks in the same region, one to link; returns how many were admitted."""
        todo = []
        for block, data in items:
            ident = block.encode()
            todo.append((block, header(ident), data, checksums(block, data, ident)))
        placed = []
        with self._lock:
            validated = self.validator.done.is_set()
            for block, head, data, crcs in todo:
                length = len(head) + len(data)
                if block in self._writing or block in self.queue or self._indexed(block_key(block)):
                    continue
                if length > self._quota or not (self._make_room(length) if validated else
                                                 self._fits_unevicted(length)):
                    self.rejected += 1
                    continue
                region, off = self.files.reserve(length, "new")
                region.inflight += 1
                self._writing.add(block)
                placed.append((block, (head, data), length, crcs, region, off, self.slots.allocate()))
        written = set()
        run: list = []
        for item in [*placed, None]:  # coalesce adjacent records of one region into one write
            if run and (item is None or item[4] is not run[-1][4] or item[5] != run[-1][5] + run[-1][2]
                        or 2 * len(run) >= self.IOV_MAX):
                try:
                    if os.pwritev(run[0][4].fd, [b for i in run for b in i[1]], run[0][5]) == sum(i[2] for i in run):
                        written.update(id(i) for i in run)
                except OSError as exc:
                    log.warning("ssd tier: write to %s failed: %s", run[0][4].path, exc)
                run = []
            if item is not None:
                run.append(item)
        with self._lock:
            for item in placed:
                block, _parts, length, crcs, region, off, slot = item
                region.inflight -= 1
                self._writing.discard(block)
                if id(item) in written:
                    self.entries.link(block, region, Location(region.id, off, length, crcs, slot))
                else:
                    self.write_errors += 1
                    self.slots.release(slot)
                    self.files.unreserve(region, off, length)
        return len(written)

    def _fits_unevicted(self, length: int) -> bool:
        return self.files.physical + length <= self.high * self.capacity()

    def _make_room(self, need: int) -> bool:
        return self.entries.make_room(need, self.capacity(), self.high, self.low)

    def put_async(self, block: BlockId, data: bytes, scan: bool = False) -> bool:
        """Queue a block for a background ``put`` (readable meanwhile; ``scan`` as for ``put``); False if
        the queue is full.

        For blocks another tier also holds (the cache writes RAM blocks through to SSD this way): a full
        queue costs nothing but the SSD copy, and RAM evictions still demote synchronously.
        """
        with self._lock:
            if block in self.queue or block in self._writing:
                return True
        if self._indexed(block_key(block)):
            return True
        with self._lock:
            return self.queue.add(block, data, scan)

    def drain(self) -> None:
        """Wait until every queued block is written."""
        self.queue.drain()

    def discard(self, block: BlockId) -> int:
        """Drop a block; returns its size (0 if absent)."""
        key = block_key(block)
        with self._lock:
            queued = self.queue.remove(block)
            if queued:
                return queued
            raw = self.index.get(key, remember=False)
            if raw is None:
                return 0
            return max(0, self.entries.drop(key, raw) - header_size(block.encode()))

    def flush(self) -> None:
        """Commit buffered index changes to LMDB in one transaction."""
        self.index.flush()

    def used(self) -> int:
        """Bytes of region files on disk (what counts against the quota)."""
        return self.files.physical

    def capacity(self) -> int:
        """The hard byte quota: the configured one, bounded by the region files plus the disk's free space
        (less 2 % of the filesystem, at most 256 MiB, as headroom)."""
        headroom = min(256 << 20, self.files.disk_size() // 50)
        return max(0, min(self._quota, self.files.physical + self.files.disk_free() - headroom))

    def live_bytes(self) -> int:
        """Bytes of resident blocks' records (``used()`` minus garbage awaiting compaction)."""
        return self.policy.tracked_bytes

    def stats(self) -> dict:
        """Counters and occupancy, JSON-serializable."""
        capacity = self.capacity()
        validated = self.validator.done.is_set()
        blocks = self.entries
        with self._lock:
            lookups = self.hits + self.misses
            return {
                "used": self.files.physical, "capacity": capacity, "configured_capacity": self._quota,
                "live": self.policy.tracked_bytes, "queued": self.queue.bytes,
                "blocks": self.slots.live if validated else self.index.count(),
                "regions": len(self._regions), "region_size": self.region_size,
                "hits": self.hits, "misses": self.misses, "hit_rate": self.hits / lookups if lookups else 0.0,
                "bytes_served": self.bytes_served, "evictions": blocks.evictions,
                "evicted_bytes": blocks.evicted_bytes, "relocated_bytes": blocks.relocated_bytes,
                "crc_errors": blocks.crc_errors, "rejected": self.rejected, "write_errors": self.write_errors,
                "o_direct_writes": self.dio.writes,
                "dropped_at_open": blocks.dropped, "index_reset": self.meta.reset_reason,
                "validated": validated, "policy": self.policy.name,
                "state_bytes": self.slots.nbytes + getattr(self.policy, "nbytes", 0),
            }

    def close(self) -> None:
        """Write what is queued, commit the index and close the region files."""
        self.validator.stop()
        self.order_saver.stop()
        if not self.queue.close():
            return
        self.index.close()
        if self.validator.done.is_set():
            with self._lock:
                ssd_order.save(self.dir, self.meta, ssd_order.snapshot(self.policy))
        with self._lock:
            self.files.close()
