"""Block arithmetic and prefix matching, in one place.

An object is cached as ``block_size`` slices identified by (key, etag, index); an object smaller than a
block is one block. Prefixes name a file or a directory of keys ("" names everything).
"""

from __future__ import annotations

from collections.abc import Callable

from .store import ObjectInfo
from .tiers.base import BlockId

__all__ = ["BlockMap", "under"]


class BlockMap:
    """Which blocks hold which bytes of an object."""

    def __init__(self, block_size: int):
        self.block_size = block_size

    def ids(self, info: ObjectInfo, offset: int = 0, size: int | None = None) -> list[BlockId]:
        """The blocks covering bytes [offset, offset + size) of ``info`` (to EOF when size is None)."""
        end = info.size if size is None else min(info.size, offset + size)
        if offset >= end:
            return []
        bs = self.block_size
        return [BlockId(info.key, info.etag, i) for i in range(offset // bs, (end - 1) // bs + 1)]

    def indices(self, info: ObjectInfo, start: int, stop: int) -> list[BlockId]:
        """The blocks with index in [start, stop) that exist in ``info``."""
        last = -(-info.size // self.block_size)
        return [BlockId(info.key, info.etag, i) for i in range(max(0, start), min(stop, last))]

    def length(self, info: ObjectInfo, block: BlockId) -> int:
        """Bytes in ``block`` of ``info``."""
        return max(0, min(self.block_size, info.size - block.index * self.block_size))

    def start(self, block: BlockId) -> int:
        """Offset of the block's first byte in its object."""
        return block.index * self.block_size


def under(prefix: str) -> Callable[[str], bool]:
    """Predicate: is a key at or below path ``prefix`` ("" matches everything)?"""
    if not prefix:
        return lambda _key: True
    sub = prefix + "/"
    return lambda key: key == prefix or key.startswith(sub)


def is_under(key: str, prefix: str) -> bool:
    """Whether ``key`` is at or below ``prefix``."""
    return not prefix or key == prefix or key.startswith(prefix + "/")
