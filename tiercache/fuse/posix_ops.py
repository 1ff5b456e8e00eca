"""The POSIX parts of the mount's operations beyond plain files: rename(2) exactly (renames.py), extended
attributes (xattrs.py), inode numbers kept across renames (inodes.py), locks left to the kernel.

``PosixOps`` is a mixin of ``ops.TiercacheOps``, before ``attr_ops.AttributeOps`` (whose chmod, chown,
utimens and symlink it extends for directories and times); it uses the host's ``_lookup``, ``readdir`` and
``_writes``.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from typing import Any

from ..errors import NotFound, StaleVersion
from .attr_ops import AttributeOps
from .calls import errno_op, fuse, store_key
from .inodes import InodeTable
from .overlay import AttrOverlay
from .renames import RenamePlan, plan_rename
from .xattrs import XattrTable

UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
HIDDEN_PREFIX = ".fuse_hidden"  # libfuse renames a file unlinked while open to .fuse_hiddenNNNN


def utimens_times(times: Any) -> tuple[int | None, int | None]:
    """(atime, mtime) in ns from utimens' ``times`` (None: both now); UTIME_NOW is now, UTIME_OMIT None."""
    now = time.time_ns()
    if times is None:
        return now, now
    atime, mtime = (now if int(t) == UTIME_NOW else None if int(t) == UTIME_OMIT else int(t) for t in times)
    return atime, mtime


class PosixOps:
    """rename, xattrs and locks for TiercacheOps (see the module docstring)."""

    inodes: InodeTable
    xattrs: XattrTable | None
    overlay: AttrOverlay | None
    readonly: bool

    def _posix_init(self, writes: Any) -> None:
        """The tables: inode numbers (memory), xattrs and the attribute overlay (in the write dir)."""
        self.inodes = InodeTable()
        write_dir = getattr(writes, "write_dir", None)
        writable = bool(write_dir) and not self.readonly
        self.xattrs = XattrTable(os.path.join(write_dir, "xattrs")) if writable else None
        self.overlay = AttrOverlay(os.path.join(write_dir, "attrs")) if writable else None

    def _posix_close(self) -> None:
        for table in (self.xattrs, self.overlay):
            if table is not None:
                table.close()

    def _posix_attrs(self, key: str, attrs: dict) -> dict:
        """getattr's dict with the inode number and the overlay's attributes."""
        attrs["st_ino"] = self.inodes.ino(key)
        if key.rpartition("/")[2].startswith(HIDDEN_PREFIX):
            attrs["st_nlink"] = 0  # libfuse's stand-in for a file unlinked while open: it has no name
        if self.overlay is not None:
            self.overlay.apply(key, attrs)
        return attrs

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
        self._keep_parent(old, new)
        self.inodes.renamed(old, new)
        for table in (self.xattrs, self.overlay):
            if table is not None:
                table.renamed(old, new)
        self._touch_parents(old, new)
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
        """After unlink/rmdir: the tables forget ``key``; its directory stays (even if now empty) and its
        mtime and ctime move."""
        self._keep_parent(key)
        self.inodes.removed(key)
        for table in (self.xattrs, self.overlay):
            if table is not None:
                table.removed(key)
        self._touch_parents(key)

    def _keep_parent(self, key: str, new: str | None = None) -> None:
        """``key`` left its directory (unlink, rmdir, or a rename to ``new`` elsewhere): the directory stays
        until rmdir even if that was its last entry (a store has no directories of its own: the write tier
        keeps it as a made directory, which costs one journal record per directory, once)."""
        parent = key.rpartition("/")[0]
        if parent and (new is None or new.rpartition("/")[0] != parent):
            self._writes().mkdir(parent)

    def _made_dir(self, key: str, mode: int) -> None:
        """After mkdir: the new directory's mode, owner and group (the caller's; the group and the setgid
        bit from a setgid parent), and its parent's times."""
        if self.overlay is None:
            return
        uid, gid, _pid = fuse.fuse_get_context()
        mode &= 0o7777
        parent = self.overlay.get(key.rpartition("/")[0])
        if parent.get("mode", 0) & stat.S_ISGID:
            gid, mode = parent.get("gid", gid), mode | stat.S_ISGID
        now = time.time_ns()
        self.overlay.record(key, mode=mode, uid=uid, gid=gid, mtime=now, atime=now)
        self._touch_parents(key)

    def _dir_attrs(self, key: str, **fields: int | None) -> bool:
        """chmod/chown/utimens of a directory: recorded in the overlay (directories have no object to
        carry them). False if ``key`` is a file (its attributes live in its object's metadata)."""
        if self.overlay is None or not self._lookup(key)[0]:
            return False
        self.overlay.record(key, **{k: v for k, v in fields.items() if v is not None})
        return True

    def _attrs_changed(self, key: str, atime: int | None = None) -> None:
        """A file's attributes changed: its ctime becomes now (and its atime, if given, is kept)."""
        if self.overlay is not None:
            self.overlay.record(key, **({} if atime is None else {"atime": atime}))

    def _touch_parents(self, *keys: str) -> None:
        """The directories holding ``keys`` changed: their mtime and ctime become now."""
        if self.overlay is None:
            return
        now = time.time_ns()
        for parent in {key.rpartition("/")[0] for key in keys}:
            self.overlay.record(parent, mtime=now)

    def _read_version(self, key: str, version: Any, offset: int, size: int, into: Any = None) -> Any:
        """A read handle's bytes: its version's (``into``: possibly their count, written there). If that
        version's object is gone because the open file was renamed — unlinked while open is a rename to
        libfuse's .fuse_hidden name — its bytes are at its new name (the rename's copy ran before the old
        name's delete): read them there."""
        try:
            return self.cache.read_version(version, offset, size, view=True, into=into)
        except (StaleVersion, NotFound):
            if not key or key == version.key:
                raise
        if self.writes is not None:
            data = self.writes.read_pending(key, offset, size)
            if data is not None:
                return data
        return self.cache.read(key, offset, size, view=True)

    # ---------------------------------------------------------------- attributes: files in their objects
    # (attr_ops.py), directories and ctime/atime in the overlay

    @errno_op
    def chmod(self, path: str | None, mode: int) -> int:
        """chmod(2)."""
        key = store_key(path)
        if not self._dir_attrs(key, mode=mode & 0o7777):
            AttributeOps.chmod(self, path, mode)
            self._attrs_changed(key)
        return 0

    @errno_op
    def chown(self, path: str | None, uid: int, gid: int) -> int:
        """chown(2) (-1 keeps one)."""
        key = store_key(path)
        if not self._dir_attrs(key, uid=None if uid == -1 else uid, gid=None if gid == -1 else gid):
            AttributeOps.chown(self, path, uid, gid)
            self._attrs_changed(key)
        return 0

    @errno_op
    def utimens(self, path: str | None, times: Any = None) -> int:
        """utimensat(2) with UTIME_NOW and UTIME_OMIT: a file's mtime in its object, its atime here."""
        key = store_key(path)
        atime, mtime = utimens_times(times)
        if not self._dir_attrs(key, atime=atime, mtime=mtime):
            AttributeOps.utimens(self, path, times)
            self._attrs_changed(key, atime)
        return 0

    @errno_op
    def symlink(self, target: str, source: str) -> int:
        """ln -s (attr_ops.py), and the parent's times."""
        AttributeOps.symlink(self, target, source)
        self._touch_parents(store_key(target))
        return 0

    # ---------------------------------------------------------------- special files

    @errno_op
    def mknod(self, path: str, mode: int, dev: int) -> int:
        """mknod(2), mkfifo(3), bind(2) of a unix socket: an empty object whose stored mode carries the file
        type, as s3fs stores special files; a device's numbers are kept in the overlay. The kernel serves
        the special file itself (a FIFO's or a socket's data never reaches the daemon)."""
        key = store_key(path)
        kind = stat.S_IFMT(mode) or stat.S_IFREG
        if kind not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK):
            raise OSError(errno.EINVAL, f"mknod {key}: file type {kind:o} is not supported")
        if self._kind_now(key) is not None:
            raise OSError(errno.EEXIST, f"mknod {key}: exists")
        uid, gid, _pid = fuse.fuse_get_context()
        writes = self._writes()
        writes.release(writes.create(key, mode=kind | (mode & 0o7777), uid=uid, gid=gid))
        if kind in (stat.S_IFCHR, stat.S_IFBLK) and self.overlay is not None:
            self.overlay.record(key, rdev=dev, touch=False)
        self._touch_parents(key)
        return 0

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
