"""Private by default: the directories and files that hold cached or written bytes are the owner's alone.

Directories are made 0700 and files 0600 whatever the umask (the umask can only take bits away, and these
modes are set explicitly after creation too), so no other local user reads cached object bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: str | os.PathLike) -> Path:
    """Make ``path`` (and missing parents) a directory, and make ``path`` itself 0700; returns it."""
    path = Path(path)
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != DIR_MODE:
        os.chmod(path, DIR_MODE)
    return path


def open_private(path: str | os.PathLike, flags: int) -> int:
    """``os.open`` creating a 0600 file (``flags`` should include O_CREAT); returns the fd."""
    fd = os.open(path, flags | os.O_CLOEXEC, FILE_MODE)
    if os.fstat(fd).st_mode & 0o777 != FILE_MODE:
        os.fchmod(fd, FILE_MODE)
    return fd
