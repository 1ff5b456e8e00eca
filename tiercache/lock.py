"""One owner per cache dir: an flock'ed lock file naming the owning process; taking it makes the dir private."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import CacheDirLocked
from .private import FILE_MODE, private_dir


class CacheDirLock:
    """Exclusive, non-blocking ownership of a directory; released on ``release()`` or process exit."""

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / "lock"
        self._fd: int | None = None

    def acquire(self) -> CacheDirLock:
        """Take the lock or raise CacheDirLocked naming the current owner."""
        private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise CacheDirLocked(
                f"cache dir {self.path.parent} is in use by pid {owner}; stop it or use another cache dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the directory up."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
