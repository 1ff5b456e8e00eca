"""How the SSD tier records a block: where it lies, and a checksum per page bound to the block's identity.

An index entry is ``region id, offset, length, slot`` (the block's dense integer id in the tier's arrays)
and one crc32 per ``PAGE_SIZE`` page of the block. Each
page's crc is seeded with the crc of the block's id (key, etag, block index) and the page number, so bytes
are only accepted for the block and page they were written as: an index entry that points at another
block's bytes (a damaged or swapped index, a region reused) fails its check and reads as a miss. Pages let
a read verify just the part it returns.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .base import BlockId

try:  # ISA-L's crc32: the same CRC-32 as zlib's, about 6x faster
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - isal is a dependency; zlib computes identical values
    from zlib import crc32

FORMAT = b"pages-v3"  # stored in misc/ssd_format; an index of another format is dropped at open
PAGE_SIZE = 64 << 10
_HEAD = struct.Struct("<IQII")  # region id, offset, length, slot
_PAGE_NO = struct.Struct("<I")


def page_count(length: int) -> int:
    """Pages a block of ``length`` bytes spans (an empty block has one, empty, page)."""
    return max(1, -(-length // PAGE_SIZE))


def page_span(start: int, end: int) -> tuple[int, int]:
    """First page and one past the last page holding bytes [start, end) of a block."""
    return start // PAGE_SIZE, max(start // PAGE_SIZE + 1, -(-end // PAGE_SIZE))


def _seed(block: BlockId) -> int:
    return crc32(block.encode())


def _page_crc(seed: int, page: int, data: bytes | memoryview) -> int:
    return crc32(data, crc32(_PAGE_NO.pack(page), seed))


class Location(NamedTuple):
    """Where a block's bytes are (region id, offset, length), its slot, and its page checksums (packed
    uint32s)."""

    region: int
    offset: int
    length: int
    crcs: bytes
    slot: int = 0

    def pack(self) -> bytes:
        """The index value."""
        return _HEAD.pack(self.region, self.offset, self.length, self.slot) + self.crcs

    @classmethod
    def unpack(cls, raw: bytes) -> Location:
        """Inverse of :meth:`pack` (a value too short to be one reads as an entry that is not well formed)."""
        if len(raw) < _HEAD.size:
            return cls(0, 0, 0, b"", -1)
        region, offset, length, slot = _HEAD.unpack_from(raw)
        return cls(region, offset, length, bytes(raw[_HEAD.size:]), slot)

    def moved(self, region: int, offset: int) -> Location:
        """The same block at another place (checksums do not depend on where it lies)."""
        return Location(region, offset, self.length, self.crcs, self.slot)

    def well_formed(self) -> bool:
        """Whether the entry carries one checksum per page."""
        return len(self.crcs) == 4 * page_count(self.length)


def checksums(block: BlockId, data: bytes | memoryview) -> bytes:
    """The packed page checksums of ``data`` written as ``block``."""
    seed = _seed(block)
    view = memoryview(data)
    n = page_count(len(view))
    return struct.pack(
        f"<{n}I", *(_page_crc(seed, p, view[p * PAGE_SIZE:(p + 1) * PAGE_SIZE]) for p in range(n))
    )


def verify(block: BlockId, loc: Location, data: bytes | memoryview, first_page: int = 0) -> bool:
    """Whether ``data`` (whole pages from ``first_page``; the last may end at the block's end) are the
    bytes written as ``block`` at ``loc``."""
    if not loc.well_formed():
        return False
    view = memoryview(data)
    n = page_count(len(view))
    if first_page + n > page_count(loc.length):
        return False
    want = struct.unpack_from(f"<{n}I", loc.crcs, 4 * first_page)
    seed = _seed(block)
    for i in range(n):
        page = view[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]
        if _page_crc(seed, first_page + i, page) != want[i]:
            return False
    return True
