"""The FUSE mount of a TieredCache: operations (ops.py) and the daemon's lifecycle (mount.py).

The FUSE binding is mfusepy (the maintained fusepy fork) on libfuse 3; it is imported only through
``binding()`` so that the rest of tiercache works where FUSE is unavailable.
"""

from __future__ import annotations

import os
from types import ModuleType

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
    return mfusepy
