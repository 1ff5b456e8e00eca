"""The POSIX parts of the mount's operations beyond plain files: rename(2) exactly (renames.py), extended
attributes (xattrs.py), inode numbers kept across renames (inodes.py), locks left to the kernel.

``PosixOps`` is a mixin of ``ops.TiercacheOps``: it uses that class's ``_lookup``, ``readdir`` and
``_writes``, and the ``inodes`` / ``xattrs`` tables its constructor makes.
"""

from __future__ import annotations

import errno
from typing import Any

from ..errors import NotFound
from .calls import errno_op, fuse, store_key
from .renames import RenamePlan, plan_rename
from .xattrs import XattrTable


class PosixOps:
    """rename, xattrs and locks for TiercacheOps (see the module docstring)."""

    inodes: Any
    xattrs: XattrTable | None

    # ---------------------------------------------------------------- rename

    @errno_op
    def rename(self, old: str, new: str, flags: int = 0) -> int:
        """rename(2) exactly (see renames.py): never a merge of directories."""
        old, new = store_key(old), store_key(new)
        writes = self._writes()
        plan = plan_rename(old, new, flags, self._kind_now, self._has_entries)
        if plan is RenamePlan.NOTHING:
            return 0
        if plan is RenamePlan.REPLACE_EMPTY_DIR:
            writes.rmdir(new)
        writes.rename(old, new)
        self.inodes.renamed(old, new)
        if self.xattrs is not None:
            self.xattrs.renamed(old, new)
        return 0

    def _kind_now(self, key: str) -> bool | None:
        """True (a directory), False (a file) or None (nothing) at ``key``, pending changes first."""
        try:
            return self._lookup(key)[0]
        except NotFound:
            return None

    def _has_entries(self, key: str) -> bool:
        return len(self.readdir("/" + key, 0)) > 2

    def _forget(self, key: str) -> None:
        self.inodes.removed(key)
        if self.xattrs is not None:
            self.xattrs.removed(key)

    # ---------------------------------------------------------------- extended attributes (xattrs.py)

    def _xattrs(self, path: str) -> tuple[str, XattrTable]:
        key = store_key(path)
        self._lookup(key)
        if self.xattrs is None:
            raise fuse.FuseOSError(errno.ENOTSUP)
        return key, self.xattrs

    @errno_op
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        """getxattr(2)."""
        if self.xattrs is not None and self.xattrs.never_set(name):
            raise OSError(errno.ENODATA, name)
        key, table = self._xattrs(path)
        return table.get(key, name)

    @errno_op
    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int:
        """setxattr(2)."""
        key, table = self._xattrs(path)
        table.set(key, name, value, options)
        return 0

    @errno_op
    def listxattr(self, path: str) -> list[str]:
        """listxattr(2)."""
        key, table = self._xattrs(path)
        return table.names(key)

    @errno_op
    def removexattr(self, path: str, name: str) -> int:
        """removexattr(2)."""
        key, table = self._xattrs(path)
        table.remove(key, name)
        return 0

    # BSD flock and POSIX fcntl locks: left to the kernel, which keeps them local to the mount (no lock or
    # flock callback: libfuse then does not claim the FUSE_POSIX_LOCKS / FUSE_FLOCK_LOCKS capabilities).
    lock = None
    flock = None
