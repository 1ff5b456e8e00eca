"""The SSD tier: blocks appended to large region files, an LMDB index, crc32 on every read; survives restarts.

Layout under ``directory``: ``NNNNNNNN.region`` files, append-only, about ``region_size`` each, so millions
of small blocks need few inodes. The LMDB ``ssd_index`` maps ``BlockId.encode()`` → (region, offset,
length, crc32); ``regions`` lists the region files. Index writes go to an in-memory buffer (read before
LMDB) that a background thread commits every few milliseconds in one transaction.

Space: ``used()`` is the bytes of all region files and never exceeds ``capacity()``. Past the high
watermark the policy picks victim blocks (logical eviction: index entries dropped) until live bytes fit the
low watermark; then whole regions are freed, most garbage first, after copying their remaining live
blocks (the ones the policy kept — hot or pinned) into the active region. A region is deleted as soon
as nothing live remains in it.

Integrity: a read whose crc32 does not match drops the entry and reports a miss, so the cache refetches;
corrupt bytes are never returned. At open, index entries pointing at missing regions or past a region's
end are dropped, and region files the index does not know are deleted.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from .base import BlockId
from .meta import Meta
from .policy import Policy, Protected, make_policy

try:  # ISA-L's crc32: the same CRC-32 as zlib's, about 6x faster
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - isal is a dependency; zlib computes identical values
    from zlib import crc32

log = logging.getLogger(__name__)

_LOC = struct.Struct("<IQII")  # region id, offset, length, crc32
_RID = struct.Struct(">I")
_SUFFIX = ".region"


@dataclass(eq=False)
class _Region:
    id: int
    path: Path
    fd: int
    end: int = 0  # bytes appended (or reserved for writes in flight)
    live: int = 0  # bytes of blocks the index points at
    members: set[BlockId] = field(default_factory=set)
    readers: int = 0
    inflight: int = 0
    dead: bool = False


class SsdTier:
    """Region-file block store with an LMDB index; thread-safe; see the module docstring."""

    name = "ssd"

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
    ):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._capacity = int(capacity)
        self.meta = meta
        self.region_size = min(region_size, max(self._capacity // 32, 64 << 10))
        self.policy = make_policy(policy) if isinstance(policy, str) else policy
        self.high, self.low = high, min(low, high)
        self.protected = protected
        self.flush_interval = flush_interval
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._pending: dict[bytes, bytes | None] = {}  # index changes not yet committed (None: deleted)
        self._queue: OrderedDict[BlockId, bytes] = OrderedDict()  # put_async blocks not yet written
        self._queued_bytes = 0
        self.queue_limit = min(256 << 20, max(self._capacity // 8, 4 << 20))
        self._queue_cond = threading.Condition(self._lock)
        self._writer: threading.Thread | None = None
        self._writing: set[BlockId] = set()
        self._regions: dict[int, _Region] = {}
        self._active: dict[str, _Region] = {}  # write streams: "new" blocks and "old" (copied forward) ones
        self._next_id = 1
        self._physical = 0
        self.hits = self.misses = self.bytes_served = self.evictions = self.evicted_bytes = 0
        self.relocated_bytes = self.crc_errors = self.rejected = self.dropped_at_open = 0
        self._open()
        self._stop = False
        self._wake = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="tiercache-ssd-index", daemon=True)
        self._flusher.start()

    # ------------------------------------------------------------------ open and validate

    def _open(self) -> None:
        known = {_RID.unpack(k)[0] for k, _ in self.meta.scan("regions")}
        files = {}
        for path in self.dir.glob(f"*{_SUFFIX}"):
            try:
                files[int(path.name[: -len(_SUFFIX)])] = path
            except ValueError:
                continue
        for rid, path in files.items():
            if rid not in known:
                log.info("ssd tier: removing unindexed region %s", path)
                path.unlink(missing_ok=True)
                continue
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            size = os.fstat(fd).st_size
            self._regions[rid] = _Region(rid, path, fd, end=size)
            self._physical += size
        stale_regions = [_RID.pack(r) for r in known if r not in self._regions]
        self._next_id = max([*known, *files, 0]) + 1
        entries, drop = [], []
        for key, raw in self.meta.scan("ssd_index"):
            rid, off, length, _crc = _LOC.unpack(raw)
            region = self._regions.get(rid)
            if region is None or off + length > region.end:
                drop.append(key)
                continue
            entries.append((rid, off, length, key))
        entries.sort()
        for rid, _off, length, key in entries:
            block = BlockId.decode(key)
            region = self._regions[rid]
            region.members.add(block)
            region.live += length
            self.policy.on_insert(block, length)
        if drop or stale_regions:
            self.dropped_at_open = len(drop)
            log.warning("ssd tier: dropped %d index entries pointing past their region", len(drop))
            self.meta.delete_many("ssd_index", drop)
            self.meta.delete_many("regions", stale_regions)
        for region in [r for r in self._regions.values() if not r.members]:
            self._free_region(region)

    # ------------------------------------------------------------------ index

    def _loc(self, key: bytes) -> bytes | None:
        if key in self._pending:
            return self._pending[key]
        return self.meta.get("ssd_index", key)

    def _set(self, key: bytes, value: bytes | None) -> None:
        self._pending[key] = value
        if not self._wake.is_set():
            self._wake.set()

    def _flush_loop(self) -> None:
        while True:
            self._wake.wait()
            if not self._stop:
                time.sleep(self.flush_interval)  # let a batch gather
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - keep flushing; entries stay pending and readable
                log.exception("ssd tier: index flush failed")
            if self._stop:
                return

    def flush(self) -> None:
        """Commit buffered index changes to LMDB in one transaction."""
        with self._flush_lock:
            with self._lock:
                items = list(self._pending.items())
            if not items:
                return
            db = self.meta.db("ssd_index")
            with self.meta.write() as txn:
                for key, value in items:
                    if value is None:
                        txn.delete(key, db=db)
                    else:
                        txn.put(key, value, db=db)
            with self._lock:
                for key, value in items:
                    if key in self._pending and self._pending[key] is value:
                        del self._pending[key]

    # ------------------------------------------------------------------ reads

    def get(self, block: BlockId, count: bool = True) -> bytes | None:
        """The block's bytes, or None on a miss or a crc mismatch (the entry is then dropped)."""
        return self._read(block, count, None)

    def get_into(self, block: BlockId, out: memoryview, count: bool = True) -> bool:
        """Read the block straight into ``out`` (exactly the block's length); False on a miss, a crc
        mismatch or a length that differs (``out`` then holds garbage). Saves a copy on multi-block reads."""
        return self._read(block, count, out) is not None

    def _read(self, block: BlockId, count: bool, out: memoryview | None) -> bytes | memoryview | None:
        key = block.encode()
        for _attempt in (0, 1):
            with self._lock:
                queued = self._queue.get(block)
                if queued is not None:
                    if out is not None:
                        if len(queued) != len(out):
                            break
                        out[:] = queued
                    if count:
                        self.hits += 1
                        self.bytes_served += len(queued)
                    return queued
                raw = self._pending.get(key, b"") if block in self.policy else None
            if raw == b"":
                raw = self.meta.get("ssd_index", key)
            if raw is None:
                break
            rid, off, length, crc = _LOC.unpack(raw)
            if out is not None and len(out) != length:
                break
            with self._lock:
                region = self._regions.get(rid)
                if region is None or region.dead:
                    continue  # freed by a concurrent relocation: look the block up again
                region.readers += 1
            try:
                if out is None:
                    data = os.pread(region.fd, length, off)
                    got = len(data)
                else:
                    data, got = out, os.preadv(region.fd, [out], off)
            finally:
                with self._lock:
                    region.readers -= 1
                    if region.dead and region.readers == 0:
                        os.close(region.fd)
            if got != length or crc32(data) != crc:
                self._corrupt(block, raw)
                break
            with self._lock:
                self.policy.on_access(block)
                if count:
                    self.hits += 1
                    self.bytes_served += length
            return data
        if count:
            with self._lock:
                self.misses += 1
        return None

    def _corrupt(self, block: BlockId, raw: bytes) -> None:
        log.warning("ssd tier: crc mismatch for %s block %d; dropping it", block.key, block.index)
        with self._lock:
            self.crc_errors += 1
            if self._loc(block.encode()) == raw:
                self._drop(block)
                self.policy.on_remove(block)

    def contains(self, block: BlockId) -> bool:
        """Whether the block is resident or queued (it may still fail its crc check on read)."""
        return block in self.policy or block in self._queue

    def blocks(self, prefix: bytes = b"") -> list[BlockId]:
        """Resident block ids whose encoded id starts with ``prefix`` (see ``base.key_prefix``)."""
        with self._lock:
            pending = {k: v for k, v in self._pending.items() if k.startswith(prefix)}
            pending.update((k, b"") for k in (b.encode() for b in self._queue) if k.startswith(prefix))
        keys = {k for k, _ in self.meta.scan("ssd_index", prefix)}
        keys.update(k for k, v in pending.items() if v is not None)
        keys.difference_update(k for k, v in pending.items() if v is None)
        return [BlockId.decode(k) for k in sorted(keys)]

    # ------------------------------------------------------------------ writes and space

    def put(self, block: BlockId, data: bytes, queued: bool = False) -> bool:
        """Append a block to the active region (making room first); False if it cannot fit."""
        length = len(data)
        if length > self._capacity:
            return False
        crc = crc32(data)
        with self._lock:
            if block in self.policy or block in self._writing or (block in self._queue and not queued):
                return True
            if queued and block not in self._queue:
                return False  # discarded while queued
            if not self._make_room(length):
                self.rejected += 1
                return False
            region, off = self._reserve(length, "new")
            region.inflight += 1
            self._writing.add(block)
        ok = False
        try:
            ok = os.pwrite(region.fd, data, off) == length
        except OSError as exc:
            log.warning("ssd tier: write to %s failed: %s", region.path, exc)
        finally:
            with self._lock:
                region.inflight -= 1
                self._writing.discard(block)
                if ok:
                    self._link(block, region, off, length, crc)
        return ok

    def put_async(self, block: BlockId, data: bytes) -> bool:
        """Queue a block for a background ``put`` (readable meanwhile); False if the queue is full.

        For blocks another tier also holds (the cache writes RAM blocks through to SSD this way): a full
        queue costs nothing but the SSD copy, and RAM evictions still demote synchronously.
        """
        with self._lock:
            if block in self.policy or block in self._queue or block in self._writing:
                return True
            if self._stop or self._queued_bytes + len(data) > self.queue_limit:
                return False
            self._queue[block] = data
            self._queued_bytes += len(data)
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_loop, name="tiercache-ssd-writer", daemon=True
                )
                self._writer.start()
            self._queue_cond.notify()
        return True

    def _write_loop(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stop:
                    self._queue_cond.wait()
                if not self._queue:
                    return
                block, data = next(iter(self._queue.items()))
            try:
                self.put(block, data, queued=True)
            except Exception:  # noqa: BLE001 - a failed write only loses the SSD copy
                log.exception("ssd tier: background write failed")
            with self._lock:
                if self._queue.pop(block, None) is not None:
                    self._queued_bytes -= len(data)
                self._queue_cond.notify_all()

    def drain(self) -> None:
        """Wait until every queued block is written."""
        with self._lock:
            while self._queue:
                self._queue_cond.wait()

    def _link(self, block: BlockId, region: _Region, off: int, length: int, crc: int) -> None:
        self._set(block.encode(), _LOC.pack(region.id, off, length, crc))
        region.members.add(block)
        region.live += length
        self.policy.on_insert(block, length)

    def _reserve(self, length: int, stream: str) -> tuple[_Region, int]:
        region = self._active.get(stream)
        if region is None or (region.end > 0 and region.end + length > self.region_size):
            region = self._active[stream] = self._new_region()
        off = region.end
        region.end += length
        self._physical += length
        return region, off

    def _new_region(self) -> _Region:
        rid = self._next_id
        self._next_id += 1
        path = self.dir / f"{rid:08d}{_SUFFIX}"
        self.meta.put("regions", _RID.pack(rid), str(time.time()).encode())
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        region = self._regions[rid] = _Region(rid, path, fd)
        return region

    def _unset_active(self, region: _Region) -> None:
        for stream, active in list(self._active.items()):
            if active is region:
                del self._active[stream]

    def _drop(self, block: BlockId) -> int:
        """Unlink a block from the index and its region (caller holds the lock; policy handled by caller)."""
        key = block.encode()
        raw = self._loc(key)
        if raw is None:
            return 0
        rid, _off, length, _crc = _LOC.unpack(raw)
        self._set(key, None)
        region = self._regions.get(rid)
        if region is not None:
            region.members.discard(block)
            region.live -= length
            if not region.members and region not in self._active.values() and region.inflight == 0:
                self._free_region(region)
        return length

    def _free_region(self, region: _Region) -> None:
        """Delete a region file (its fd stays open for readers still inside it)."""
        self._regions.pop(region.id, None)
        self._unset_active(region)
        self._physical -= region.end
        region.dead = True
        self.meta.delete("regions", _RID.pack(region.id))
        region.path.unlink(missing_ok=True)
        if region.readers == 0:
            os.close(region.fd)

    def _make_room(self, need: int) -> bool:
        """Evict until ``need`` more bytes fit under the low watermark (at least under the hard quota).

        The policy chooses victims (index entries dropped); then regions are freed, most garbage first,
        copying their live blocks forward (into a separate "old" stream, so blocks that survive stay apart
        from new ones). Only when no region's live bytes fit under the quota does the policy evict more:
        evicting beyond the policy's choice to save copying costs far more hits than the copying costs.
        """
        cap = self._capacity
        if self._physical + need <= self.high * cap:
            return True
        goal = max(0, int(self.low * cap) - need)
        self._evict(self.policy.tracked_bytes - goal)
        chunk = max(self.region_size // 4, need)
        while self._physical > goal:
            for region in [r for r in self._regions.values() if not r.members and r.inflight == 0]:
                self._free_region(region)
            if self._physical <= goal:
                break
            candidates = [r for r in self._regions.values() if r.inflight == 0 and r.end > r.live]
            best = max(candidates, key=lambda r: (r.end - r.live, -r.id), default=None)
            fits = best is not None and self._physical + best.live <= cap
            if fits:
                self._compact(best)
            elif not self._evict(chunk):
                break
        return self._physical + need <= cap

    def _evict(self, nbytes: int) -> bool:
        """Drop the policy's victims for ``nbytes``; False if it had none to give."""
        if nbytes <= 0:
            return True
        victims = self.policy.victims(nbytes, self.protected)
        for victim in victims:
            self.evicted_bytes += self._drop(victim)
        self.evictions += len(victims)
        return bool(victims)

    def _compact(self, region: _Region) -> None:
        """Copy a region's live blocks to the active region and delete it (caller checked they fit)."""
        members = sorted(region.members, key=lambda b: _LOC.unpack(self._loc(b.encode()))[1])
        self._unset_active(region)
        data = os.pread(region.fd, region.end, 0) if members else b""
        for block in members:
            key = block.encode()
            _rid, off, length, crc = _LOC.unpack(self._loc(key))
            chunk = data[off:off + length]
            if len(chunk) != length or crc32(chunk) != crc:
                self.crc_errors += 1
                self._drop(block)
                self.policy.on_remove(block)
                continue
            target, new_off = self._reserve(length, "old")
            os.pwrite(target.fd, chunk, new_off)
            region.members.discard(block)
            region.live -= length
            target.members.add(block)
            target.live += length
            self._set(key, _LOC.pack(target.id, new_off, length, crc))
            self.relocated_bytes += length
        if region.id in self._regions:
            self._free_region(region)

    def discard(self, block: BlockId) -> int:
        """Drop a block; returns its size (0 if absent)."""
        with self._lock:
            queued = self._queue.pop(block, None)
            if queued is not None:
                self._queued_bytes -= len(queued)
                return len(queued)
            if block not in self.policy:
                return 0
            self.policy.on_remove(block)
            return self._drop(block)

    def used(self) -> int:
        """Bytes of region files on disk (what counts against the quota)."""
        return self._physical

    def capacity(self) -> int:
        """The hard byte quota."""
        return self._capacity

    def live_bytes(self) -> int:
        """Bytes of resident blocks (``used()`` minus garbage awaiting compaction)."""
        return self.policy.tracked_bytes

    def set_plan(self, keys_in_order: list[str]) -> None:
        """Hand the read plan to the policy."""
        with self._lock:
            self.policy.set_plan(keys_in_order)

    def stats(self) -> dict:
        """Counters and occupancy, JSON-serializable."""
        with self._lock:
            lookups = self.hits + self.misses
            return {
                "used": self._physical, "capacity": self._capacity, "live": self.policy.tracked_bytes,
                "blocks": len(self.policy), "regions": len(self._regions), "region_size": self.region_size,
                "hits": self.hits, "misses": self.misses, "hit_rate": self.hits / lookups if lookups else 0.0,
                "bytes_served": self.bytes_served, "evictions": self.evictions,
                "evicted_bytes": self.evicted_bytes, "relocated_bytes": self.relocated_bytes,
                "crc_errors": self.crc_errors, "rejected": self.rejected,
                "dropped_at_open": self.dropped_at_open, "policy": self.policy.name,
            }

    def close(self) -> None:
        """Commit the index and close the region files."""
        if self._stop:
            return
        self.drain()
        with self._lock:
            self._stop = True
            self._queue_cond.notify_all()
        if self._writer is not None:
            self._writer.join()
        self._wake.set()
        self._flusher.join()
        self.flush()
        with self._lock:
            for region in self._regions.values():
                os.close(region.fd)
            self._regions.clear()
            self._active.clear()
