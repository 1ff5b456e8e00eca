"""The FUSE mount of a TieredCache: operations (ops.py) and the daemon's lifecycle (mount.py).

The FUSE binding is mfusepy (the maintained fusepy fork) on libfuse 3; it is imported only through
``binding()`` so that the rest of tiercache works where FUSE is unavailable.
"""

from __future__ import annotations

import functools
import os
from types import ModuleType
from typing import Any

from ..errors import TiercacheError


class FuseUnavailable(TiercacheError):
    """The FUSE binding or libfuse cannot be loaded."""


def binding() -> ModuleType:
    """The mfusepy module on libfuse 3 (mfusepy alone would pick libfuse 2 when both are installed)."""
    if not os.environ.get("FUSE_LIBRARY_PATH") and not os.environ.get("FUSE_LIBRARY_NAME"):
        os.environ["FUSE_LIBRARY_NAME"] = "fuse3"
    try:
        import mfusepy
    except (ImportError, OSError) as exc:
        raise FuseUnavailable(
            f"cannot load FUSE ({exc}); install libfuse 3 (Debian: apt-get install fuse3) and mfusepy"
        ) from None
    _pass_rename_flags(mfusepy)
    return mfusepy


def _pass_rename_flags(mfusepy: ModuleType) -> None:
    """mfusepy drops renameat2's flags (libfuse 3 passes them), which turns RENAME_EXCHANGE into a plain
    rename that overwrites its target. Hand them to ``Operations.rename(old, new, flags)`` instead."""
    fuse_class = mfusepy.FUSE
    if getattr(fuse_class, "_tiercache_rename_flags", False) or not hasattr(fuse_class, "rename_fuse_3"):
        return

    def rename_fuse_3(self: Any, old: bytes, new: bytes, flags: int) -> int:
        decode = functools.partial(bytes.decode, encoding=self.encoding, errors=self.errors)
        return self.operations.rename(decode(old), decode(new), flags)

    fuse_class.rename_fuse_3 = rename_fuse_3
    fuse_class._tiercache_rename_flags = True
