"""Read handles of open files: the version (etag) each open reads, and whether the kernel may keep the file's
pages from an earlier open; and the binding's FUSE class the mount runs (``TiercacheFUSE``).

An open for reading pins the object's version it found (the ObjectInfo, etag included): its reads get bytes
of that version or ESTALE (``TieredCache.read_version``), never a mix of two. The kernel keeps a file's
page cache across opens (FOPEN_KEEP_CACHE) only while the etag is the one its pages were filled from; any
other open (a new etag, a write open, a file with unpublished writes) makes the kernel drop them. That
replaces libfuse's ``auto_cache``, which compares size and mtime and so misses an object overwritten with
the same size within the same second. ``TiercacheFUSE`` is the binding's FUSE class with an ``open`` that
passes this decision to the kernel.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from typing import Any

from ..store.base import ObjectInfo
from . import binding
from .dirplus import ReaddirPlus
from .readinto import ReadInto

fuse = binding()

READ_HANDLE_BASE = 1 << 62  # read handles live above the write tier's (small positive ints)
REMEMBERED_FILES = 32_768  # files whose page-cache etag is remembered; a forgotten one just drops its pages


class OpenFiles:
    """The mount's read handles (ints from READ_HANDLE_BASE up); thread-safe."""

    def __init__(self, remembered: int = REMEMBERED_FILES):
        self._lock = threading.Lock()
        self._versions: dict[int, ObjectInfo | None] = {}
        self._keep: dict[int, bool] = {}
        self._page_etags: OrderedDict[str, str] = OrderedDict()  # key -> etag its kernel pages hold
        self._remembered = remembered
        self._ids = itertools.count(READ_HANDLE_BASE)

    @staticmethod
    def is_read_handle(fh: Any) -> bool:
        """Whether ``fh`` is a read handle made here (and not the write tier's)."""
        return isinstance(fh, int) and fh >= READ_HANDLE_BASE

    def open(self, key: str, version: ObjectInfo | None) -> int:
        """A read handle of ``key`` reading ``version`` (None: read by path, e.g. unpublished writes)."""
        with self._lock:
            fh = next(self._ids)
            self._versions[fh] = version
            self._keep[fh] = self._note_pages(key, version.etag if version is not None else None)
        return fh

    def opened_for_write(self, key: str) -> None:
        """A write open: the kernel's pages of ``key`` will not be kept (they may hold other bytes)."""
        with self._lock:
            self._page_etags.pop(key, None)

    def version(self, fh: int) -> ObjectInfo | None:
        """The version a read handle reads (None: by path)."""
        return self._versions.get(fh)

    def keep_cache(self, fh: Any) -> bool:
        """Whether the kernel may keep the file's cached pages for this open."""
        return self._keep.get(fh, False) if self.is_read_handle(fh) else False

    def release(self, fh: int) -> None:
        """Forget a read handle."""
        with self._lock:
            self._versions.pop(fh, None)
            self._keep.pop(fh, None)

    def _note_pages(self, key: str, etag: str | None) -> bool:
        """Record that ``key``'s pages now belong to ``etag``; True if they already did (keep them)."""
        keep = etag is not None and self._page_etags.get(key) == etag
        if etag is None:
            self._page_etags.pop(key, None)
            return False
        self._page_etags[key] = etag
        self._page_etags.move_to_end(key)
        while len(self._page_etags) > self._remembered:
            self._page_etags.popitem(last=False)
        return keep


class TiercacheFUSE(ReaddirPlus, ReadInto, fuse.FUSE):
    """The binding's FUSE class, with an ``open`` that also sets keep_cache from the operations'
    ``keep_cache(fh)`` (the binding alone offers that only with raw_fi, which changes every handle op),
    READDIRPLUS answered with each entry's attributes (dirplus.py), and READ replies written into libfuse's
    buffer (readinto.py)."""

    def open(self, path: bytes, fip: Any) -> int:
        """libfuse's open: the operations' open gives the handle, then ``keep_cache`` decides the pages."""
        fi = fip.contents
        fi.fh = self.operations.open(path.decode(self.encoding, self.errors), fi.flags)
        decide = getattr(self.operations, "keep_cache", None)
        fi.keep_cache = 1 if decide is not None and decide(fi.fh) else 0
        return 0
