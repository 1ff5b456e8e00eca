"""FUSE operations (fusepy ``Operations`` API via mfusepy) over a TieredCache and a WriteTier.

Reads of stored objects go to ``cache.read``; files written through the mount and not yet uploaded are served
from the write tier (``pending_entry`` / ``read_pending``), so they are visible and readable at once. Every
namespace change (create, write, truncate, unlink, rename, mkdir, rmdir) goes to the write tier, which makes
it durable locally before the call returns. Errors become errno: a TiercacheError's own ``errno``, an
OSError's, or EIO (logged with its traceback) for anything unexpected: one bad request never kills the
daemon.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import numpy

from ..errors import IsADirectory, ReadOnly, StaleVersion
from ..merged_view import MergedView
from . import binding
from .attr_ops import AttributeOps
from .callers import caller, caller_killed
from .calls import errno_op as _errno_op
from .calls import op_counts
from .calls import store_key as _key
from .dirhandles import DirHandles
from .dirplus import want_readdirplus
from .dirs import DirectoryOps
from .opened import OpenFiles
from .posix_ops import PosixOps
from .readinto import copy_into

fuse = binding()

log = logging.getLogger(__name__)

# READ requests the kernel may have in flight asynchronously (read-ahead). The kernel's default, 12, keeps a
# sequential reader to one or two cache blocks being fetched at a time; more lets the read-ahead window's
# blocks be fetched in parallel (the FUSE worker threads each fetch one).
MAX_BACKGROUND = 64
class _Reply:
    """A READ reply as the binding takes it (``len(reply)``, then ``ctypes.memmove(buf, reply, len)``
    into libfuse's reply buffer): the address of bytes held elsewhere, kept alive with their owner."""

    __slots__ = ("_as_parameter_", "_length", "_owner")

    def __init__(self, owner: object, address: int, length: int):
        self._owner, self._as_parameter_, self._length = owner, address, length

    def __len__(self) -> int:
        return self._length


def _handoff(data: bytes | bytearray | memoryview) -> bytes | _Reply:
    """The bytes of a READ reply without a copy here (the binding's copy into libfuse's buffer is the only
    one): bytes (a cached block) as they are; any contiguous buffer, read-only views of cached blocks
    included, by its address; only a non-contiguous view is copied."""
    if isinstance(data, bytes):
        return data
    view = memoryview(data)
    if not view.c_contiguous:
        return view.tobytes()
    if not view.nbytes:
        return b""
    return _Reply(view, numpy.frombuffer(view.cast("B"), numpy.uint8).ctypes.data, view.nbytes)


class TiercacheOps(PosixOps, AttributeOps, DirectoryOps, fuse.Operations):
    """The mount's file operations: a thin client of ``cache`` (TieredCache) and ``writes`` (WriteTier)."""

    use_ns = True

    def __init__(self, cache: Any, writes: Any | None, *, readonly: bool = False,
                 on_init: Callable[[], None] | None = None, statfs_dir: str | None = None):
        self.cache = cache
        self.writes = writes
        self.readonly = readonly or writes is None
        self.on_init = on_init
        self.statfs_dir = statfs_dir
        self.uid, self.gid = os.getuid(), os.getgid()
        self.started = time.time()
        self.file_mode = 0o444 if self.readonly else 0o644
        self.dir_mode = 0o555 if self.readonly else 0o755
        self.opened = OpenFiles()
        self.view = MergedView(cache, writes, self.started)  # listings: the engine's merged view
        self.dir_handles = DirHandles()
        self.op_counts = op_counts()  # calls per operation (``tiercache stats``: mount.fuse_ops)
        self._posix_init(writes)

    # ---------------------------------------------------------------- lifecycle

    def init_with_config(self, conn: Any, config: Any) -> None:
        """libfuse's init with the connection's parameters: raise the limit on background (read-ahead)
        requests in flight, READDIRPLUS for every READDIR (dirplus.py), then ``init``."""
        if conn is not None:
            conn.max_background = max(int(conn.max_background), MAX_BACKGROUND)
            conn.congestion_threshold = max(int(conn.congestion_threshold), MAX_BACKGROUND * 3 // 4)
            want_readdirplus(conn)
        self.init("/")

    def init(self, path: str) -> None:
        """Called by libfuse once the kernel connection is up."""
        if self.on_init is not None:
            self.on_init()

    def destroy(self, path: str) -> None:
        """Called by libfuse at unmount."""
        self._posix_close()

    # ---------------------------------------------------------------- metadata

    @_errno_op
    def getattr(self, path: str, fh: Any = None) -> dict:
        """stat(2); fstat(2) of a file open for reading shows the version it reads."""
        key = _key(path)
        version = self.opened.version(fh) if self.opened.is_read_handle(fh) else None
        if version is not None:
            attrs = self._attrs(False, version.size, version.mtime, version.mode, version.uid, version.gid)
        else:
            attrs = self._attrs(*self._lookup(key))
        return self._posix_attrs(key, attrs)

    @_errno_op
    def access(self, path: str, amode: int) -> int:
        """access(2): existence, and EROFS for W_OK on a read-only mount."""
        self._lookup(_key(path))
        if amode & os.W_OK and self.readonly:
            raise fuse.FuseOSError(errno.EROFS)
        return 0

    @_errno_op
    def statfs(self, path: str) -> dict:
        """df: the write dir's filesystem (what writes can use), capped by the write limit."""
        st = os.statvfs(self.statfs_dir or "/")
        out = {
            "f_bsize": st.f_bsize, "f_frsize": st.f_frsize, "f_blocks": st.f_blocks, "f_bfree": st.f_bfree,
            "f_bavail": st.f_bavail, "f_files": st.f_files, "f_ffree": st.f_ffree, "f_favail": st.f_favail,
            "f_namemax": 255,
        }
        if self.writes is not None:
            stats = self.writes.stats()
            limit = int(stats.get("limit") or 0)
            if limit:
                used = int(stats.get("write_dir_used") or 0)
                frsize = st.f_frsize or 4096
                out["f_blocks"] = min(st.f_blocks, (limit + frsize - 1) // frsize)
                free = max(0, limit - used) // frsize
                out["f_bfree"] = min(st.f_bfree, free)
                out["f_bavail"] = min(st.f_bavail, free)
        return out

    # ---------------------------------------------------------------- files

    def _writes(self) -> Any:
        if self.readonly:
            raise ReadOnly("read-only mount")
        return self.writes

    @staticmethod
    def _write_handle(wfh: int) -> int:
        if not isinstance(wfh, int) or wfh <= 0:
            raise RuntimeError(f"write tier handle {wfh!r}: positive ints expected (0 means read-only)")
        return wfh

    @_errno_op
    def open(self, path: str, flags: int) -> int:
        """open(2): write opens (and O_TRUNC) get the write tier's handle; read opens a read handle pinned to
        the object's current version (or reading by path while the file has unpublished writes)."""
        key = _key(path)
        if (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC:
            self.opened.opened_for_write(key)
            return self._write_handle(self._writes().open(key, truncate=bool(flags & os.O_TRUNC), owner=caller()))
        return self.opened.open(key, self._version(key))

    def _version(self, key: str) -> Any:
        """The ObjectInfo a read open of ``key`` pins; None for unpublished writes (read by path)."""
        if self._lookup(key)[0]:
            raise IsADirectory(f"{key}: is a directory")
        namespace = getattr(self.cache, "namespace", None)
        if namespace is None or (self.writes is not None and self.writes.pending_entry(key) is not None):
            return None
        return namespace.info(key, revalidate=False)  # just revalidated by _lookup

    def keep_cache(self, fh: Any) -> bool:
        """Whether the kernel may keep the file's pages from earlier opens (same etag): see fuse/opened.py."""
        return self.opened.keep_cache(fh)

    def _is_write(self, fh: Any) -> bool:
        return bool(fh) and not self.opened.is_read_handle(fh)

    @_errno_op
    def create(self, path: str, mode: int, flags: int | None = None) -> int:
        """open(2) with O_CREAT of a new file (its mode and the caller's uid/gid are stored with it)."""
        uid, gid, _pid = fuse.fuse_get_context()
        key = _key(path)
        fh = self._write_handle(self._writes().create(key, owner=caller(), mode=mode, uid=uid, gid=gid))
        self._touch_parents(key)
        return fh

    @_errno_op
    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes | _Reply:
        """pread(2): short at end of file. A read handle reads its version; otherwise written-but-not-uploaded
        bytes first, then the cache."""
        return _handoff(self._read(path, size, offset, fh))

    @_errno_op
    def read_into(self, path: str | None, out: memoryview, offset: int, fh: int) -> int:
        """``read`` with the reply written into ``out`` (libfuse's buffer: fuse/readinto.py); its length. Blocks
        the SSD tier serves go from their region file straight into it; other replies are copied in."""
        got = self._read(path, len(out), offset, fh, out)
        return got if isinstance(got, int) else copy_into(out, got)

    def _read(self, path: str | None, size: int, offset: int, fh: int, into: memoryview | None = None) -> Any:
        """The bytes of ``read``, or with ``into`` possibly their count (written there)."""
        if self._is_write(fh):
            return self.writes.read(fh, offset, size)
        version = self.opened.version(fh) if fh else None
        key = _key(path)
        if version is not None:
            return self._read_version(key, version, offset, size, into)
        if self.writes is not None:
            data = self.writes.read_pending(key, offset, size)
            if data is not None:
                return data
        return self.cache.read(key, offset, size, view=True)

    @_errno_op
    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        """pwrite(2) into the file's staging copy."""
        if not fh:
            raise fuse.FuseOSError(errno.EBADF)
        return self.writes.write(fh, data, offset)

    @_errno_op
    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        """truncate(2) / ftruncate(2)."""
        writes = self._writes()
        writes.truncate(fh if self._is_write(fh) else _key(path), length)
        return 0

    @_errno_op
    def flush(self, path: str | None, fh: int) -> int:
        """Each close(2): durable before close returns; the writer's own close also journals the version so
        a crash replays it, a child's close (another process) publishes nothing. A failed write's errno."""
        if self._is_write(fh):
            self.writes.flush(fh, owner=caller(), abandoned=caller_killed())
        return 0

    @_errno_op
    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        """fsync(2): as the caller's close (see ``flush``), without closing: published at the last close."""
        if self._is_write(fh):
            self.writes.fsync(fh)
            self.writes.flush(fh, owner=caller())
        return 0

    @_errno_op
    def release(self, path: str | None, fh: int) -> int:
        """Last close of an open file: its newest version is published (queued for upload)."""
        if self.opened.is_read_handle(fh):
            self.opened.release(fh)
        elif fh:
            self.writes.release(fh)
        return 0

    # ---------------------------------------------------------------- namespace

    @_errno_op
    def unlink(self, path: str) -> int:
        """rm."""
        key = _key(path)
        self._writes().unlink(key)
        self._forget(key)
        return 0

    @_errno_op
    def mkdir(self, path: str, mode: int) -> int:
        """mkdir."""
        key = _key(path)
        self._writes().mkdir(key)
        self._made_dir(key, mode)
        return 0

    @_errno_op
    def rmdir(self, path: str) -> int:
        """rmdir of an empty directory."""
        key = _key(path)
        self._writes().rmdir(key)
        self._forget(key)
        return 0


class ReadOnlyOps(TiercacheOps):
    """Read-only mounts (``-o ro``: the kernel itself refuses writes with EROFS). open, flush and release are
    left to libfuse's C defaults, so reading a file enters Python only for its READ requests."""

    create = write = truncate = flush = fsync = release = None
    unlink = rename = mkdir = rmdir = chmod = chown = utimens = symlink = link = mknod = None
    getxattr = setxattr = listxattr = removexattr = None

    INFOS = 4096  # object infos remembered for READ (immutable data: an info stays right)

    def __init__(self, cache: Any, writes: Any | None, **kwargs: Any):
        super().__init__(cache, writes, readonly=True, **kwargs)
        self._infos: dict[str, Any] = {}

    def open(self, path: str, flags: int) -> int:
        """ENOSYS: the kernel then opens files without asking again (no OPEN, no RELEASE requests)."""
        raise fuse.FuseOSError(errno.ENOSYS)

    def _read(self, path: str | None, size: int, offset: int, fh: int, into: memoryview | None = None) -> Any:
        """pread(2) of immutable data: the object's info is looked up once (not per READ); a version the
        store no longer holds is forgotten and the read goes through the namespace again. Infos are kept
        by FUSE path, so a READ of a remembered file does not make its key again."""
        if self.writes is not None:
            data = self.writes.read_pending(_key(path), offset, size)
            if data is not None:
                return data
        info = self._infos.get(path)
        if info is None:
            key = _key(path)
            namespace = getattr(self.cache, "namespace", None)
            if namespace is None:
                return self.cache.read(key, offset, size, view=True)
            info = namespace.info(key, revalidate=False)
            if len(self._infos) >= self.INFOS:
                self._infos.clear()
            self._infos[path] = info
        try:
            return self.cache.read_version(info, offset, size, view=True, into=into)
        except StaleVersion:
            self._infos.pop(path, None)
        return self.cache.read(_key(path), offset, size, view=True)


def make_ops(cache: Any, writes: Any | None, *, readonly: bool, immutable: bool = True,
             **kwargs: Any) -> TiercacheOps:
    """The operations object for a mount: ReadOnlyOps (no OPEN requests) only for immutable data
    (``--metadata-ttl inf``); otherwise every open pins a version and decides the kernel's page cache."""
    if readonly and immutable:
        return ReadOnlyOps(cache, writes, **kwargs)
    return TiercacheOps(cache, writes, readonly=readonly, **kwargs)
