"""Space accounting of the write dir: bytes held by open files and pending uploads against the limit, and
backpressure (writers wait past the high watermark while uploads drain)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError, NoSpace
from .changes import Changes


class WriteSpace:
    """The write dir's byte budget. ``limit_bytes`` 0: the free space of the write dir's filesystem minus
    ``reserve_bytes``. Call every method but ``reserve``/``unreserve`` with ``cond`` held."""

    def __init__(self, cond: threading.Condition, staging: Path, changes: Changes, *, limit_bytes: int,
                 high_watermark: float, reserve_bytes: int, backpressure_timeout: float):
        self.cond, self.staging, self.changes = cond, staging, changes
        self.limit_bytes, self.high_watermark, self.reserve_bytes = limit_bytes, high_watermark, reserve_bytes
        self.backpressure_timeout = backpressure_timeout
        self.uploader: Any = None  # set once the uploader runs: ``draining()`` says whether waiting helps
        self.open_bytes = 0  # bytes of staging files not yet owned by a journal record
        self.waits = 0

    def used(self) -> int:
        """Bytes of staging files: open files' and pending uploads'."""
        return self.open_bytes + self.changes.put_bytes

    def hard_limit(self) -> int:
        """The most bytes staging may hold now."""
        st = os.statvfs(self.staging)
        fs_limit = self.used() + st.f_bavail * st.f_frsize - self.reserve_bytes
        return max(0, min(self.limit_bytes, fs_limit) if self.limit_bytes else fs_limit)

    def reserve(self, nbytes: int) -> None:
        """Account ``nbytes`` new bytes: past the high watermark wait for uploads, at most
        ``backpressure_timeout`` seconds in all (then NoSpace: the write fails); past the limit NoSpace."""
        if nbytes <= 0:
            return
        with self.cond:
            hard = self.hard_limit()
            if self.used() + nbytes > hard * self.high_watermark and self._draining():
                self.waits += 1
                deadline = time.monotonic() + self.backpressure_timeout
                while self.used() + nbytes > hard * self.high_watermark and self._draining():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise NoSpace(f"{self.staging.parent}: write dir over its high watermark "
                                      f"({self.used()} of {hard} bytes in use) and uploads did not drain it "
                                      f"within {self.backpressure_timeout:g} s")
                    self.cond.wait(min(left, 1.0))
                    hard = self.hard_limit()
            if self.used() + nbytes > hard:
                raise NoSpace(f"{self.staging.parent}: write dir full ({self.used()} of {hard} bytes in use)")
            self.open_bytes += nbytes

    def check_room(self) -> None:
        """ConfigError if the write dir's filesystem cannot hold anything past its reserve (checked at start:
        otherwise every write would fail ENOSPC)."""
        st = os.statvfs(self.staging)
        total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
        if total <= self.reserve_bytes or free + self.used() <= self.reserve_bytes:
            raise ConfigError(
                f"write dir {self.staging.parent}: its filesystem has {free >> 20} MiB free of {total >> 20} MiB, "
                f"not more than the {self.reserve_bytes >> 20} MiB kept free (the reserve); use a bigger write dir "
                f"(--write-dir) or free some space")

    def unreserve(self, nbytes: int) -> None:
        """Give back bytes accounted by ``reserve``."""
        with self.cond:
            self.open_bytes -= nbytes
            self.cond.notify_all()

    def _draining(self) -> bool:
        return self.uploader is not None and self.uploader.draining()
