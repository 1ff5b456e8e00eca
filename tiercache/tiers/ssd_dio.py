"""The SSD tier's large writes past the page cache: a record of ``DIRECT_MIN`` bytes or more, written by
the write queue's writer, goes to its region file with O_DIRECT.

Why: a buffered ``pwrite`` of a 4 MiB block copies it into new page-cache pages in the kernel (about a
third of a cold stream's CPU on these cores, measured), makes them dirty for the kernel's writeback to
write later, and under memory pressure first reclaims page cache for them, all on the cores the reader
needs. With O_DIRECT the device reads the bytes from a buffer of ours: the only copy is one
``numpy.copyto`` (the GIL released) into a page-aligned scratch buffer (a record's header and bytes are
not aligned in memory), and no page cache is dirtied or reclaimed. Reads stay buffered (Linux keeps the
two coherent: a direct write drops cached pages of its range).

O_DIRECT needs the file offset, the length and the buffer aligned (``ALIGN``, 4 KiB, covers 512-byte and
4 KiB devices): the tier reserves such a record at an aligned offset of its region with its length
rounded up (``padded``; the padding is garbage, compaction reclaims it), and the scratch buffer is written
whole, zeros after the record. A filesystem without O_DIRECT (tmpfs: EINVAL) turns the writer off for
good and the record is written buffered where it was reserved; any other failure is the caller's failed
write, as for a buffered one. One scratch buffer per writing thread (the queue's one writer), grown to the
largest record: a block's size, outside the memory budget.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from collections.abc import Sequence

import numpy as np

__all__ = ["ALIGN", "DIRECT_MIN", "DirectIOWriter"]

ALIGN = 4096
DIRECT_MIN = 256 << 10  # smaller records (small files) are written buffered: padding would be a large share


class DirectIOWriter:
    """Aligned O_DIRECT writes of records (see the module docstring); thread-safe."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and hasattr(os, "O_DIRECT")
        self._local = threading.local()
        self.writes = 0  # records written with O_DIRECT
        self.unsupported = ""  # why O_DIRECT was turned off ("" while on)

    def wants(self, length: int) -> bool:
        """Whether a record of ``length`` bytes should be written with O_DIRECT."""
        return self.enabled and length >= DIRECT_MIN

    @staticmethod
    def padded(length: int) -> int:
        """``length`` rounded up to ``ALIGN``: the bytes a direct write of the record covers."""
        return -(-length // ALIGN) * ALIGN

    def write(self, path: str | os.PathLike, parts: Sequence[bytes | memoryview], offset: int) -> bool | None:
        """Write ``parts`` (one record) at ``offset`` (a multiple of ``ALIGN``) of the file at ``path``,
        zero-padded to ``padded``. True when written; False when the write failed; None when this
        filesystem has no O_DIRECT (the writer is off from now on: write the record buffered instead)."""
        if offset % ALIGN:
            raise ValueError(f"direct write at {offset}: not a multiple of {ALIGN}")
        length = sum(len(part) for part in parts)
        padded = self.padded(length)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
        except OSError as exc:
            return self._unsupported(exc)
        try:
            buf = self._scratch(padded)
            pos = 0
            for part in parts:
                n = len(part)
                np.copyto(buf[pos:pos + n], np.frombuffer(part, np.uint8))
                pos += n
            buf[pos:padded] = 0
            written = os.pwrite(fd, memoryview(buf[:padded]), offset)
        except OSError as exc:
            return self._unsupported(exc)
        finally:
            os.close(fd)
        if written != padded:
            return False
        self.writes += 1
        return True

    def _unsupported(self, exc: OSError) -> bool | None:
        """EINVAL: no O_DIRECT here (None, turned off); another error: a failed write (False)."""
        if exc.errno != errno.EINVAL:
            return False
        self.enabled = False
        self.unsupported = str(exc)
        return None

    def _scratch(self, nbytes: int) -> np.ndarray:
        """This thread's page-aligned scratch buffer, at least ``nbytes`` long."""
        buf = getattr(self._local, "buf", None)
        if buf is None or len(buf) < nbytes:
            self._local.buf = buf = np.frombuffer(mmap.mmap(-1, self.padded(nbytes)), np.uint8)
        return buf
