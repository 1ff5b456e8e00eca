"""How the SSD tier records a block: a record in a region file, an index entry that says where it lies, and a
checksum per page bound to the block's identity.

A record is ``id length (u16) | the block's encoded id | the block's bytes``: the full identity (key, etag,
block index) lives once, next to the data, and the index never repeats it (issue 12). An index entry is
``region id, offset (of the record), size (of the record), slot`` (the block's dense integer id in the
tier's arrays) and one crc32 per ``PAGE_SIZE`` page of the bytes. A read checks the record's id against the
block it looks for (a different one is a miss: a digest collision or a damaged entry, never its bytes) and
each page's crc, seeded with the crc of the block's id and the page number, so bytes are only accepted for
the block and page they were written as. Pages let a read verify just the part it returns.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .base import BlockId

try:  # ISA-L's crc32: the same CRC-32 as zlib's, about 6x faster
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - isal is a dependency; zlib computes identical values
    from zlib import crc32

FORMAT = b"compact-v1"  # stored in misc/ssd_format; an index of another format is dropped at open
PAGE_SIZE = 64 << 10
_HEAD = struct.Struct("<IIII")  # region id, record offset, record size, slot
_ID_LEN = struct.Struct("<H")
_PAGE_NO = struct.Struct("<I")
ID_MAX = 0xFFFF


def page_count(length: int) -> int:
    """Pages a block of ``length`` bytes spans (an empty block has one, empty, page)."""
    return max(1, -(-length // PAGE_SIZE))


def page_span(start: int, end: int) -> tuple[int, int]:
    """First page and one past the last page holding bytes [start, end) of a block."""
    return start // PAGE_SIZE, max(start // PAGE_SIZE + 1, -(-end // PAGE_SIZE))


def header(ident: bytes) -> bytes:
    """A record's head for the encoded block id ``ident`` (the bytes follow it)."""
    return _ID_LEN.pack(len(ident)) + ident


def header_size(ident: bytes) -> int:
    """Bytes of ``header(ident)``."""
    return _ID_LEN.size + len(ident)


def record_size(block: BlockId, length: int) -> int:
    """Bytes a block of ``length`` bytes takes in a region file."""
    return header_size(block.encode()) + length


def id_length(head: bytes | memoryview) -> int:
    """The id length a record's first bytes announce."""
    return _ID_LEN.unpack_from(head)[0]


def _seed(ident: bytes) -> int:
    return crc32(ident)


def _page_crc(seed: int, page: int, data: bytes | memoryview) -> int:
    return crc32(data, crc32(_PAGE_NO.pack(page), seed))


class Location(NamedTuple):
    """Where a block's record is (region id, offset, size: header and bytes), its slot, and its page
    checksums (packed uint32s)."""

    region: int
    offset: int
    size: int
    crcs: bytes
    slot: int = 0

    def pack(self) -> bytes:
        """The index value."""
        return _HEAD.pack(self.region, self.offset, self.size, self.slot) + self.crcs

    @classmethod
    def unpack(cls, raw: bytes) -> Location:
        """Inverse of :meth:`pack` (a value too short to be one reads as an entry that is not well formed)."""
        if len(raw) < _HEAD.size:
            return cls(0, 0, 0, b"", -1)
        region, offset, size, slot = _HEAD.unpack_from(raw)
        return cls(region, offset, size, bytes(raw[_HEAD.size:]), slot)

    def moved(self, region: int, offset: int) -> Location:
        """The same record at another place (checksums do not depend on where it lies)."""
        return Location(region, offset, self.size, self.crcs, self.slot)

    def plausible(self) -> bool:
        """Whether the entry could hold a block (checked without knowing which: background validation)."""
        n = len(self.crcs)
        return n % 4 == 0 and 4 <= n <= 4 * page_count(self.size) and self.size >= _ID_LEN.size

    def length(self, ident: bytes) -> int:
        """The bytes of block ``ident`` in this record (-1 when the entry cannot be that block's)."""
        n = self.size - header_size(ident)
        return n if n >= 0 and len(self.crcs) == 4 * page_count(n) else -1


def checksums(block: BlockId, data: bytes | memoryview, ident: bytes | None = None) -> bytes:
    """The packed page checksums of ``data`` written as ``block`` (``ident``: its ``encode()``, if known)."""
    seed = _seed(block.encode() if ident is None else ident)
    view = memoryview(data)
    n = page_count(len(view))
    return struct.pack(
        f"<{n}I", *(_page_crc(seed, p, view[p * PAGE_SIZE:(p + 1) * PAGE_SIZE]) for p in range(n))
    )


def page_seed(ident: bytes) -> int:
    """The crc seed of the pages of block ``ident`` (its ``encode()``), for ``pages_ok``."""
    return _seed(ident)


def pages_ok(seed: int, crcs: bytes, data: bytes | memoryview, first_page: int = 0) -> bool:
    """``verify`` for a caller that has the block's ``page_seed`` and has checked the entry is its block's
    (``Location.length`` not negative): whether ``data`` (whole pages from ``first_page``, the last may be
    short) match the packed page checksums ``crcs``."""
    view = memoryview(data)
    n = page_count(len(view))
    if 4 * (first_page + n) > len(crcs):
        return False
    if n == 1:
        return crc32(view, crc32(_PAGE_NO.pack(first_page), seed)) == _PAGE_NO.unpack_from(crcs, 4 * first_page)[0]
    want = struct.unpack_from(f"<{n}I", crcs, 4 * first_page)
    return all(_page_crc(seed, first_page + i, view[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]) == want[i]
               for i in range(n))


def verify(block: BlockId, loc: Location, data: bytes | memoryview, first_page: int = 0,
           ident: bytes | None = None) -> bool:
    """Whether ``data`` (whole pages from ``first_page``; the last may end at the block's end) are the
    bytes written as ``block`` in the record at ``loc`` (``ident``: ``block.encode()``, if known)."""
    ident = block.encode() if ident is None else ident
    length = loc.length(ident)
    if length < 0:
        return False
    view = memoryview(data)
    n = page_count(len(view))
    if first_page + n > page_count(length):
        return False
    want = struct.unpack_from(f"<{n}I", loc.crcs, 4 * first_page)
    seed = _seed(ident)
    for i in range(n):
        page = view[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]
        if _page_crc(seed, first_page + i, page) != want[i]:
            return False
    return True
