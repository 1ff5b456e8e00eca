"""The read path over the tier stack: blocks from RAM, else read-ahead's staging area, else SSD, else one
single-flight fetch; ranges.

:class:`BlockReader` turns a byte range of an object into blocks, loads the RAM misses in parallel (on the
fetch pool, the first on the calling thread), fetches each missing block once however many threads want
it (read-ahead's fetches included: ``stage``), and copies a multi-block range once into one buffer.
``read_into`` fills a caller's buffer (a FUSE reply's): a block RAM lacks and the SSD tier holds goes from
its region file straight into it, only the pages read checked, none promoted for a stream. It
raises :class:`~tiercache.fetcher.Stale` when the object changed; the caller retries through
``Fetcher.fresh``.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy

from .blocks import BlockMap
from .errors import ConfigError
from .fetcher import Fetcher
from .flight import SingleFlight
from .store import ObjectInfo
from .tiers.base import BlockId
from .tierstack import TierStack

__all__ = ["BlockReader", "writable"]

# (info, block ids, offset, end) before each read; True: the read is part of a sequential stream
OnRead = Callable[[ObjectInfo, list[BlockId], int, int], bool]


def writable(into: memoryview | bytearray, size: int | None, what: str) -> tuple[memoryview, int]:
    """A caller's buffer to read into as a flat writable byte view, and the bytes to read: at most its
    length (and ``size``); ConfigError if it is read-only, TypeError if it is not contiguous."""
    view = memoryview(into).cast("B")
    if view.readonly:
        raise ConfigError(f"read {what!r}: the buffer to read into is read-only")
    return view, len(view) if size is None else min(size, len(view))


class Staging(Protocol):
    """Blocks fetched ahead of their readers, admitted to no tier yet (``readahead.StreamReadAhead``)."""

    def holds(self, block: BlockId) -> bool: ...

    def take(self, block: BlockId) -> bytes | None: ...


class BlockReader:
    """Ranges and whole objects through ``tiers``, misses fetched by ``fetcher`` (single-flight)."""

    def __init__(self, tiers: TierStack, fetcher: Fetcher, blocks: BlockMap, pool: ThreadPoolExecutor,
                 on_read: OnRead | None = None, on_served: Callable[[BlockId], None] | None = None,
                 staging: Staging | None = None):
        self.tiers, self.fetcher, self.blocks, self.pool = tiers, fetcher, blocks, pool
        self.flights = SingleFlight()
        self.on_read = on_read
        self.on_served = on_served
        self.staging = staging

    def read(self, info: ObjectInfo, offset: int, size: int | None, view: bool = False,
             into: memoryview | None = None) -> bytes | memoryview | int:
        """Bytes [offset, offset+size) of ``info`` (short at EOF). One block: the cached bytes object
        itself (no copy), a part of it sliced (``view``: a read-only memoryview of that part, no copy);
        several: a memoryview of one buffer filled with a single copy. ``into``: ``read_into`` that buffer
        (its first ``size`` bytes), the count returned."""
        if into is not None:
            return self.read_into(info, offset, into if len(into) == size else into[:size])
        ids = self.blocks.ids(info, offset, size)
        if not ids:
            return b""
        end = info.size if size is None else min(info.size, offset + size)
        # a stream reads each block once, however many reads it takes: its hits do not make a block hot
        touch = not (self.on_read is not None and self.on_read(info, ids, offset, end))
        if len(ids) > 1:
            out = self._assemble(ids, info, offset, end, touch)
        else:
            start = offset - self.blocks.start(ids[0])
            out = self._ssd_part(ids[0], info, start, end - offset, self._passing(info, ids[0], not touch))
            if out is None:
                data = self.get_blocks(ids, info, "ram", touch=touch)[0]
                if start == 0 and len(data) == end - offset:
                    out = data
                else:
                    out = (memoryview(data) if view else data)[start:start + end - offset]
                if not view and not isinstance(out, bytes):  # a read-ahead block's pooled buffer (bufpool.py)
                    out = bytes(out)
        if self.on_served is not None:
            for block in ids:
                self.on_served(block)
        return out

    def _ssd_part(self, block: BlockId, info: ObjectInfo, start: int, length: int, stream: bool) -> bytes | None:
        """Part of a block RAM lacks, from just the SSD pages it needs, while the block has not earned a
        whole read and a place in RAM (``SsdTier.read_part``); None: take the whole-block path."""
        ssd, ram = self.tiers.ssd, self.tiers.ram
        if ssd is None or ram.contains(block) or (self.staging is not None and self.staging.holds(block)):
            return None
        part = ssd.read_part(block, start, start + length, self.blocks.length(info, block), stream)
        if part is not None:
            ram.count_miss()
        return part

    def read_into(self, info: ObjectInfo, offset: int, out: memoryview) -> int:
        """Bytes [offset, offset + len(out)) of ``info`` written into ``out`` (a writable byte view); returns
        how many (short at EOF). RAM hits are copied; a block RAM lacks and the SSD tier holds is read from
        its region file into ``out`` itself, checking only the pages read (``SsdTier.read_part_into``: not
        promoted while a stream or scattered reads use it); the rest is loaded as ``read`` loads it."""
        bs = self.blocks.block_size
        end = min(info.size, offset + len(out))
        if offset >= end:
            return 0
        first, last = offset // bs, (end - 1) // bs
        ids = [BlockId(info.key, info.etag, first)] if first == last else self.blocks.ids(info, offset, end - offset)
        stream = self.on_read is not None and self.on_read(info, ids, offset, end)
        rest = []
        for block in ids:
            start = block.index * bs
            lo, hi = max(offset, start), min(end, start + bs)
            dest = out[lo - offset:hi - offset] if len(ids) > 1 or lo != offset or hi - lo != len(out) else out
            length = min(bs, info.size - start)
            if not self._into(block, lo - start, dest, length, stream, stream and self._passing(info, block, stream)):
                rest.append((block, lo - start, dest))
        if rest:
            loaded = self.parallel(lambda item: self._load(item[0], info, "ram", stream), rest)
            for (_block, start, dest), data in zip(rest, loaded, strict=True):
                dest[:] = memoryview(data)[start:start + len(dest)]
        if self.on_served is not None:
            for block in ids:
                self.on_served(block)
        return end - offset

    def _into(self, block: BlockId, start: int, dest: memoryview, length: int, stream: bool, passing: bool) -> bool:
        """``dest`` filled from RAM or straight from the SSD tier (``length``: the block's); False: load the
        block (nothing served)."""
        data = self.tiers.ram.get(block, True, not stream)
        if data is not None:
            dest[:] = memoryview(data)[start:start + len(dest)]
            return True
        ssd = self.tiers.ssd
        if ssd is None or (self.staging is not None and self.staging.holds(block)):
            return False
        return ssd.read_part_into(block, start, dest, length, passing, not stream)

    def _passing(self, info: ObjectInfo, block: BlockId, stream: bool) -> bool:
        """A stream passing through: RAM has no room for its block without evicting, so reading on does not
        earn the block a whole read and a place in RAM (it is read once; its SSD pages serve it)."""
        return stream and not self.tiers.ram.has_room(self.blocks.length(info, block))

    def _assemble(self, ids: list[BlockId], info: ObjectInfo, offset: int, end: int, touch: bool) -> memoryview:
        """A multi-block range copied once into one buffer. Without a RAM tier to promote into, whole
        blocks on the SSD are read straight into that buffer (no intermediate bytes object)."""
        bs = self.blocks.block_size
        view = memoryview(numpy.empty(end - offset, numpy.uint8))  # unlike bytearray(n), not zero-filled

        def target(block: BlockId) -> memoryview:
            lo = block.index * bs - offset
            return view[lo:lo + self.blocks.length(info, block)]

        rest = ids
        ssd = self.tiers.ssd
        if ssd is not None and self.tiers.ram.capacity() < bs:
            whole = [b for b in ids if b.index * bs >= offset and min((b.index + 1) * bs, info.size) <= end]
            landed = self.parallel(lambda b: ssd.get_into(b, target(b)), whole)
            done = {b for b, ok in zip(whole, landed, strict=True) if ok}
            rest = [b for b in ids if b not in done]
        for block, data in zip(rest, self.get_blocks(rest, info, "ram", touch=touch) if rest else [], strict=True):
            first = block.index * bs
            lo, hi = max(offset, first), min(end, first + len(data))
            view[lo - offset:hi - offset] = memoryview(data)[lo - first:hi - first]
        return view

    def parallel(self, fn: Callable, items: list) -> list:
        """``fn`` over ``items`` on the fetch pool (the first on this thread); the first error is raised
        once every call has settled, so no call outlives the request."""
        if len(items) <= 1:
            return [fn(item) for item in items]
        futures = [self.pool.submit(fn, item) for item in items[1:]]
        results: list = [None] * len(items)
        error: BaseException | None = None
        try:
            results[0] = fn(items[0])
        except BaseException as exc:  # noqa: BLE001 - re-raised once the other calls settled
            error = exc
        for i, future in enumerate(futures, 1):
            try:
                results[i] = future.result()
            except BaseException as exc:  # noqa: BLE001
                error = error or exc
        if error is not None:
            raise error
        return results

    def get_blocks(self, ids: list[BlockId], info: ObjectInfo, into: str, want: bool = True,
                   touch: bool = True) -> list[bytes]:
        """The blocks' bytes; RAM misses are loaded (SSD or store) in parallel.

        With ``want=False`` the blocks are only made resident in ``into`` (warm, prefetch) and the list
        holds what was loaded. ``touch=False``: RAM hits leave the blocks' eviction rank alone (a stream).
        """
        out: list[bytes | None] = [None] * len(ids)
        if want:
            for i, block in enumerate(ids):
                out[i] = self.tiers.ram.get(block, touch=touch)
            todo = [i for i, data in enumerate(out) if data is None]
        else:
            todo = [i for i, block in enumerate(ids) if not self.tiers.contains(block, into)]
        scan = not touch  # a stream's misses are one-shot blocks for the eviction policies
        load = self._load if want else self.fetch
        for i, data in zip(todo, self.parallel(lambda i: load(ids[i], info, into, scan), todo), strict=True):
            out[i] = data
        return out  # type: ignore[return-value]

    def _load(self, block: BlockId, info: ObjectInfo, into: str, scan: bool = False) -> bytes:
        """A RAM miss: read-ahead's staged copy (a stream's: one-shot) or the SSD tier's (admitted to RAM
        now), else a single-flight fetch; ``scan``: a stream's miss."""
        data = self.staging.take(block) if self.staging is not None else None
        if data is not None:
            self.tiers.admit(block, data, into, scan=True)
            return data
        data = self.tiers.below_ram(block, scan)
        return data if data is not None else self.fetch(block, info, into, scan)

    def stage(self, block: BlockId, info: ObjectInfo, keep: Callable[[BlockId, bytes], None]) -> None:
        """For read-ahead: a block in an SSD region file is only advised into the kernel's page cache (its
        readers read it from there, nothing staged); otherwise its bytes from the SSD write queue or one
        single-flight GET, admitted to no tier but handed to ``keep`` (the staging area) before any reader
        waiting on the same fetch wakes up; nothing when a reader's own fetch of the block was already under
        way (that reader admits it)."""

        ssd = self.tiers.ssd
        if ssd is not None and ssd.advise(block):
            return  # in a region file: the kernel reads it ahead, readers read it from there (read_into)

        def once() -> bytes:
            data = self.tiers.peek_below_ram(block)
            data = data if data is not None else self.fetcher.get(block, info)
            keep(block, data)
            return data

        self.flights.execute(block, once)

    def fetch(self, block: BlockId, info: ObjectInfo, into: str, scan: bool = False) -> bytes:
        """Single-flight: the first caller GETs the block (unless a tier got it meanwhile), the others
        wait for its bytes; ``scan``: admitted as a stream's one-shot block."""

        def once() -> bytes:
            data = self.tiers.get(block, count=False)
            if data is None:
                data = self.fetcher.get(block, info)
            self.tiers.admit(block, data, into, scan)
            return data

        data, shared = self.flights.execute(block, once)
        if shared:
            if self.staging is not None:  # read-ahead's fetch: this reader takes the block from staging
                self.staging.take(block)
            if not self.tiers.contains(block, into):
                self.tiers.admit(block, data, into, scan)
        return data
