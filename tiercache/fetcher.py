"""The fetcher: the only caller of ``store.get_range``, and the one place that retries a changed object.

A block is fetched with a ranged, conditional GET (If-Match the cached etag). If the object changed or
vanished, :class:`Stale` is raised; :meth:`Fetcher.fresh` runs an operation over an object and, on Stale,
refreshes the object's info (a HEAD) and runs it once more with the new etag — new block ids, so stale
bytes are never served. :meth:`Fetcher.get_run` fetches consecutive blocks with one ranged GET where the
store can stream a GET's body in parts (``get_range_parts``), each block's bytes handed on as they arrive,
read into a buffer of the fetcher's pool no one holds any more (tiercache/bufpool.py) where the store can.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from typing import TypeVar

from .blocks import BlockMap
from .bufpool import BufferPool
from .counters import Counters, Rate
from .errors import NotFound, StoreError
from .store import ObjectInfo, ObjectStore
from .tiers.base import BlockId
from .tiers.budget import MemoryBudget

__all__ = ["Fetcher", "Stale"]

T = TypeVar("T")


class Stale(Exception):
    """The object changed (or vanished) under a conditional GET."""


class Fetcher:
    """Ranged GETs of blocks, counted (GETs, bytes, errors, a recent rate), inside the memory budget."""

    def __init__(self, store: ObjectStore, blocks: BlockMap, memory: MemoryBudget, counters: Counters,
                 confirm: Callable[[str], None], refresh: Callable[[str], ObjectInfo]):
        self.store, self.blocks, self.memory, self.counters = store, blocks, memory, counters
        self.confirm, self.refresh = confirm, refresh
        self.rate = Rate()
        # whole blocks land in reused buffers (bufpool.py): as many as the budget holds blocks; a few kept
        # while unused (an 8th of the budget, 2 to 4 blocks: outside the budget, as a block a reader holds)
        bs = blocks.block_size
        self.buffers = BufferPool(bs, memory.total // bs, max(2, min(4, memory.total // (8 * bs))))

    def _buffered(self, method: Callable) -> dict:
        """``buffer=`` the pool's for a store method that reads into buffers (S3Store's), else nothing."""
        return {"buffer": self._buffer} if _takes_buffer(getattr(method, "__func__", method)) else {}

    def _buffer(self, nbytes: int):
        """A pooled buffer for a body part: an unused one, or a new one while the memory budget is three
        quarters full (blocks are let go as others come: their buffers come back soon)."""
        return self.buffers.acquire(nbytes, 4 * (self.memory.used() + nbytes) > 3 * self.memory.total)

    def get(self, block: BlockId, info: ObjectInfo) -> bytes:
        """The bytes of ``block`` from the store; Stale if the object is not ``info`` any more."""
        start = self.blocks.start(block)
        end = start + self.blocks.length(info, block)
        try:
            with self.memory.hold(end - start, "fetches"):
                get = self.store.get_range
                data = get(info.key, start, end, etag=info.etag, **self._buffered(get))
        except NotFound:
            raise Stale(info.key) from None
        except StoreError:
            self.counters.add("backend_errors")
            raise
        self.counters.add("backend_gets")
        self.counters.add("backend_bytes", len(data))
        self.rate.add(len(data))
        if len(data) != end - start:
            raise Stale(info.key)
        self.confirm(info.key)
        return data

    def get_run(self, run: list[BlockId], info: ObjectInfo) -> Iterator[tuple[BlockId, bytes]]:
        """Consecutive blocks of ``info`` as (block, bytes) in order, with one ranged GET of them all where
        the store streams parts (else one GET each); each block is checked as ``get`` checks one."""
        parts = getattr(self.store, "get_range_parts", None)
        if parts is None or len(run) == 1:
            for block in run:
                yield block, self.get(block, info)
            return
        lengths = [self.blocks.length(info, block) for block in run]
        body = parts(info.key, self.blocks.start(run[0]), lengths, etag=info.etag, **self._buffered(parts))
        delivered = 0
        try:
            for block, length in zip(run, lengths, strict=True):
                with self.memory.hold(length, "fetches"):  # while this part's bytes come in
                    data = next(body, None)
                if data is None or len(data) != length:
                    raise Stale(info.key)
                self.counters.add("backend_bytes", length)
                delivered += length
                yield block, data
        except NotFound:
            raise Stale(info.key) from None
        except StoreError:
            self.counters.add("backend_errors")
            raise
        finally:
            body.close()
            if delivered:
                self.counters.add("backend_gets")
                self.rate.add(delivered)
        self.confirm(info.key)

    def fresh(self, info: ObjectInfo, operation: Callable[[ObjectInfo], T]) -> T:
        """``operation(info)``; if the object changed meanwhile, once more with its refreshed info."""
        try:
            return operation(info)
        except Stale:
            self.counters.add("stale_retries")
        try:
            return operation(self.refresh(info.key))
        except Stale:
            raise StoreError(f"{info.key}: the object keeps changing while being read") from None


@functools.lru_cache(maxsize=64)
def _takes_buffer(function: Callable) -> bool:
    return "buffer" in inspect.signature(function).parameters
