"""Name and path lengths: a name over NAME_MAX (255) bytes is ENAMETOOLONG (not ENOENT), whatever the
operation, and so is a path whose store key would pass KEY_MAX (1,024 bytes, S3's limit on keys): such a
file could never be uploaded. The kernel itself refuses paths of PATH_MAX bytes or more."""

from __future__ import annotations

import errno
import os

NAME_MAX = 255
KEY_MAX = 1024  # S3's longest key


def check_path(path: str) -> None:
    """Raise OSError(ENAMETOOLONG) if ``path`` (a FUSE path, "/a/b") has a name over NAME_MAX bytes or its
    key (the path without its leading "/") is over KEY_MAX bytes."""
    raw = os.fsencode(path)
    if len(raw.strip(b"/")) > KEY_MAX:
        raise OSError(errno.ENAMETOOLONG, f"path of {len(raw)} bytes: a store key holds at most {KEY_MAX}")
    if len(raw) > NAME_MAX and any(len(part) > NAME_MAX for part in raw.split(b"/")):
        raise OSError(errno.ENAMETOOLONG, f"a name in {path[:64]!r}... is over {NAME_MAX} bytes")
