"""Block ids and the Tier protocol shared by the RAM and SSD tiers."""

from __future__ import annotations

import struct
from typing import NamedTuple, Protocol, runtime_checkable

_INDEX = struct.Struct(">Q")


class BlockId(NamedTuple):
    """One cached block: ``index``-th ``block_size`` slice of object ``key`` at version ``etag``.

    The etag is part of the id, so a changed object maps to new ids and never serves stale bytes.
    """

    key: str
    etag: str
    index: int

    def encode(self) -> bytes:
        """Stable bytes for LMDB keys: ``key NUL etag NUL index(8 bytes, big-endian)``.

        All blocks of a key share the prefix ``key_prefix(key)``, so prefix scans find them.
        """
        return f"{self.key}\0{self.etag}\0".encode() + _INDEX.pack(self.index)

    @classmethod
    def decode(cls, raw: bytes) -> BlockId:
        """Inverse of :meth:`encode`."""
        head, index = bytes(raw[:-8]), _INDEX.unpack(raw[-8:])[0]
        key, etag, _ = head.decode().rsplit("\0", 2)
        return cls(key, etag, index)


def key_prefix(key: str) -> bytes:
    """The encoded prefix shared by every block of ``key`` (any etag)."""
    return f"{key}\0".encode()


@runtime_checkable
class Tier(Protocol):
    """A byte-budgeted store of blocks. Implementations are thread-safe and never exceed ``capacity()``."""

    name: str

    def get(self, block: BlockId) -> bytes | None:
        """The block's bytes, or None on a miss (or when the stored bytes failed their checksum)."""
        ...

    def put(self, block: BlockId, data: bytes) -> bool:
        """Admit a block, evicting others if needed; False if it cannot fit (too big, all else protected)."""
        ...

    def discard(self, block: BlockId) -> int:
        """Drop a block if present; returns the bytes it held (0 if absent)."""
        ...

    def contains(self, block: BlockId) -> bool:
        """Whether the block is resident."""
        ...

    def used(self) -> int:
        """Bytes in use (what counts against ``capacity``)."""
        ...

    def capacity(self) -> int:
        """The hard byte quota."""
        ...
