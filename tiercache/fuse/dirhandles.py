"""Open directories of a mount: each opendir's handle keeps the listing its READDIRPLUS requests page through.

A directory is read in many requests (a few KiB of entries each, at the offset the kernel names), so the
merged listing is made once, at offset 0 (the first request, or rewinddir), and later requests take the
next entries from it: a listing that changes meanwhile never makes an entry appear twice or be skipped.
The snapshot (dirs.Listed: the directory's DirTable, a name and a few numbers per entry) lives until
releasedir (closedir).
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

DIR_HANDLE_BASE = 1  # 0 is "no handle" (libfuse's default opendir)


class DirHandles:
    """Handle -> the listing (dirs.Listed) its reads page through; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listings: dict[int, Any] = {}
        self._ids = itertools.count(DIR_HANDLE_BASE)

    def open(self) -> int:
        """A new handle, without a listing yet."""
        with self._lock:
            fh = next(self._ids)
            self._listings[fh] = None
        return fh

    def listing(self, fh: int) -> Any:
        """The listing kept for ``fh`` (None: none yet, or an unknown handle)."""
        return self._listings.get(fh)

    def keep(self, fh: int, listing: Any) -> None:
        """Keep ``listing`` for ``fh`` (only while the handle is open)."""
        with self._lock:
            if fh in self._listings:
                self._listings[fh] = listing

    def close(self, fh: int) -> None:
        """Forget a handle and its listing."""
        with self._lock:
            self._listings.pop(fh, None)

    def __len__(self) -> int:
        return len(self._listings)
