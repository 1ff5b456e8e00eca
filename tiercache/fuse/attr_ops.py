"""FUSE operations on attributes and links: chmod, chown, utimens, symlink, readlink, link.

Attributes are stored with each object as s3fs and rclone store them (store/base.py: x-amz-meta-mode, -uid,
-gid, -mtime); a symlink is an object whose body is its target and whose mode has S_IFLNK, as s3fs stores
it. Changes go to the write tier (journaled for a file that is open or pending upload, a metadata copy for a
stored object). Directories keep no attributes (they have no marker objects): chmod, chown and utime of a
directory succeed and change nothing. Hard links are refused with EPERM.

``AttributeOps`` is a mixin of ``ops.TiercacheOps``; it also holds the stat fields (``_lookup``, ``_attrs``).
"""

from __future__ import annotations

import errno
import stat
import time
from typing import Any

from .calls import errno_op, fuse, store_key

BLKSIZE = 128 << 10
# A directory's st_nlink is 1, "not counted", as btrfs and many network filesystems report it: 2 + its
# subdirectories is known only once the directory itself has been listed (a lookup or a parent's listing
# cannot know it without listing every subdirectory), and a count that changed as listings came in, or a 2
# that means "no subdirectories" before the listing, would be wrong. find/fts and du take a count below 2
# as unknown and do not use it to skip stat calls (their leaf optimization); os.walk never reads it.
DIR_NLINK = 1

UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
SYMLINK_MODE = stat.S_IFLNK | 0o777
MAX_LINK = 4095


class AttributeOps:
    """stat fields (``_lookup``, ``_attrs``) and chmod/chown/utimens/symlink/readlink/link over ``self.writes``
    and ``self.cache``; uses the host's ``_writes`` (the write tier, EROFS if read-only)."""

    cache: Any
    writes: Any
    readonly: bool
    started: float
    uid: int
    gid: int
    file_mode: int
    dir_mode: int
    view: Any  # merged_view.MergedView
    _writes: Any

    def _attrs(self, is_dir: bool, size: int, mtime: float, mode: int = 0, uid: int = -1, gid: int = -1) -> dict:
        """stat fields; ``mode``/``uid``/``gid`` as stored with the object (0 / -1: the mount's defaults)."""
        ns = int(mtime * 1e9)
        if is_dir:
            st_mode = stat.S_IFDIR | self.dir_mode
        elif mode:
            st_mode = mode if stat.S_IFMT(mode) else stat.S_IFREG | mode
            if self.readonly:
                st_mode &= ~0o222
        else:
            st_mode = stat.S_IFREG | self.file_mode
        return {
            "st_mode": st_mode,
            "st_nlink": DIR_NLINK if is_dir else 1,
            "st_size": 0 if is_dir else size,
            "st_uid": uid if uid >= 0 else self.uid,
            "st_gid": gid if gid >= 0 else self.gid,
            "st_atime": ns,
            "st_mtime": ns,
            "st_ctime": ns,
            "st_blocks": (size + 511) // 512,
            "st_blksize": BLKSIZE,
        }

    def _lookup(self, key: str) -> tuple[bool, int, float, int, int, int]:
        """(is_dir, size, mtime, mode, uid, gid) of ``key`` from the engine's merged view (``view.entry``:
        pending writes first, then the cache's metadata), the same view readdir lists. On a writable mount
        a file whose user metadata is unknown (listed, not yet HEADed) gets one HEAD for its attributes;
        the answer is kept as long as its etag."""
        node = self.view.entry(key, metadata=not self.readonly)
        return node.is_dir, node.size, node.mtime, node.mode, node.uid, node.gid

    @errno_op
    def chmod(self, path: str | None, mode: int) -> int:
        """chmod(2): the permission bits are stored with the file."""
        key = store_key(path)
        is_dir, _size, _mtime, old, _uid, _gid = self._lookup(key)
        if is_dir or not key:
            return 0
        kind = stat.S_IFMT(old) or stat.S_IFREG
        self._writes().set_attrs(key, mode=kind | (mode & 0o7777))
        return 0

    @errno_op
    def chown(self, path: str | None, uid: int, gid: int) -> int:
        """chown(2): owner and group stored with the file (-1 keeps one)."""
        key = store_key(path)
        if self._lookup(key)[0] or not key:
            return 0
        if uid == -1 and gid == -1:
            return 0
        self._writes().set_attrs(key, uid=None if uid == -1 else uid, gid=None if gid == -1 else gid)
        return 0

    @errno_op
    def utimens(self, path: str | None, times: tuple[int, int] | None = None) -> int:
        """utimensat(2): the mtime is stored with the file (UTIME_NOW and UTIME_OMIT honoured; atime is not
        kept)."""
        key = store_key(path)
        if self._lookup(key)[0] or not key:
            return 0
        mtime_ns = time.time_ns() if times is None else int(times[1])
        if mtime_ns == UTIME_OMIT:
            return 0
        if mtime_ns == UTIME_NOW:
            mtime_ns = time.time_ns()
        self._writes().set_attrs(key, mtime=mtime_ns / 1e9)
        return 0

    @errno_op
    def symlink(self, target: str, source: str) -> int:
        """ln -s SOURCE TARGET: an object at TARGET whose body is SOURCE, mode S_IFLNK|0777."""
        key = store_key(target)
        body = source.encode()
        if len(body) > MAX_LINK:
            raise fuse.FuseOSError(errno.ENAMETOOLONG)
        uid, gid, _pid = fuse.fuse_get_context()
        writes = self._writes()
        fh = writes.create(key, mode=SYMLINK_MODE, uid=uid, gid=gid)
        try:
            writes.write(fh, body, 0)
        finally:
            writes.release(fh)
        return 0

    @errno_op
    def readlink(self, path: str) -> str:
        """The target of a symlink (EINVAL for anything else)."""
        key = store_key(path)
        is_dir, size, _mtime, mode, _uid, _gid = self._lookup(key)
        if is_dir or not stat.S_ISLNK(mode):
            raise fuse.FuseOSError(errno.EINVAL)
        data = self.writes.read_pending(key, 0, size) if self.writes is not None else None
        if data is None:
            data = self.cache.read(key, 0, size)
        return bytes(data).decode(errors="surrogateescape")

    @errno_op
    def link(self, target: str, source: str) -> int:
        """Hard links are not supported: EPERM, as on filesystems without them."""
        raise fuse.FuseOSError(errno.EPERM)
