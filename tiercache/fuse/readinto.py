"""READ replies written straight into libfuse's reply buffer.

The binding's ``read`` asks the operations for a bytes-like reply and copies it into the buffer libfuse
passes (``char *buf``, then written to /dev/fuse). ``ReadInto`` (a mixin of the binding's FUSE class,
opened.TiercacheFUSE) hands that buffer itself to the operations' ``read_into(path, out, offset, fh)`` as a
writable memoryview instead: a block the SSD tier serves is read from its region file into the reply with
no copy in Python (``TieredCache.read_version(..., into=)``). Operations without ``read_into`` get the
binding's own ``read``.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

from . import binding

fuse = binding()

READ_BUFFER_MAX = 1 << 20  # the largest READ the kernel sends a FUSE daemon (max_pages 256 x 4 KiB)


@functools.lru_cache(maxsize=64)
def _bytes_type(size: int) -> type:
    return ctypes.c_ubyte * size


def reply_view(buf: Any, size: int) -> memoryview:
    """libfuse's reply buffer of a READ (a ctypes ``char *`` of ``size`` bytes) as a writable byte view."""
    return memoryview(_bytes_type(size).from_address(ctypes.addressof(buf.contents))).cast("B")


def copy_into(out: memoryview, data: bytes | bytearray | memoryview) -> int:
    """Copy a reply's bytes into ``out`` (at most its length); how many."""
    view = memoryview(data)
    view = view.cast("B") if view.c_contiguous else memoryview(view.tobytes())
    n = min(len(view), len(out))
    out[:n] = view[:n]
    return n


class ReadInto:
    """Mixin of the binding's FUSE class: READ fills libfuse's buffer through the operations' ``read_into``."""

    def read(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        """libfuse's read: ``operations.read_into`` writes the reply into ``buf``; returns its length."""
        into = getattr(self.operations, "read_into", None)
        if into is None:
            return fuse.FUSE.read(self, path, buf, size, offset, fip)  # type: ignore[arg-type]
        if size <= 0:
            return 0
        fh = fip.contents if self.raw_fi else fip.contents.fh
        name = None if path is None else path.decode(self.encoding, self.errors)
        return into(name, reply_view(buf, size), offset, fh)
