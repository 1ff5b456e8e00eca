"""A file open for writing: its staging file, copy-on-write from the current content, a running sha256."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from ..errors import NoSpace, StoreError
from .journal import file_sha256

_CHUNK = 8 << 20
_BLOCK = 4096


class StagingHost(Protocol):
    """What a StagedFile needs from the write tier."""

    def reserve(self, nbytes: int) -> None:
        """Account new bytes in the write dir (may wait for uploads, may raise NoSpace)."""

    def unreserve(self, nbytes: int) -> None:
        """Give bytes back."""

    def new_staging(self) -> tuple[str, Path]:
        """A fresh staging file id and path."""

    def base_fd(self, path: str) -> int | None:
        """An fd on the local staging file holding ``path``'s current content, if there is one."""

    def base_read(self, path: str, offset: int, size: int) -> bytes:
        """Bytes of ``path``'s current content (pending change, cache or store)."""


class StagedFile:
    """Write state shared by every handle open on one path (the inode of a file being written).

    Lazy until first changed (``fd`` None: reads go to the current content); then private (its own staging
    file); after a commit sealed (the staging file belongs to the journal record: the next change copies it).
    Callers hold ``lock`` around every method.
    """

    def __init__(self, path: str, size: int, created: bool):
        self.path = path
        self.lock = threading.Lock()
        self.refs = 0
        self.fd: int | None = None
        self.staging_id = ""
        self.size = size
        self.mtime = time.time()
        self.mode, self.uid, self.gid = 0, -1, -1  # attributes to store (0 / -1: none)
        self.created = created  # made by create(): there was no content to copy
        self.dirty = False
        self.sealed = False
        self.unlinked = False
        self.hasher: Any = None  # sha256 of bytes [0, hashed), while writes come in order
        self.hashed = 0
        self.charged = 0  # bytes of the write dir's budget the private staging file holds (see settle)
        self.held: Any = None  # the journal record (state HELD) of the last version its writer closed
        self.failed: Exception | None = None  # a write failed: no version of this open file is published

    @property
    def private(self) -> bool:
        """Holds a staging file of its own (bytes not yet owned by a journal record)."""
        return self.fd is not None and not self.sealed

    def make_private(self, host: StagingHost, keep: int | None = None) -> None:
        """Give the file its own staging file holding its current content (at most ``keep`` bytes of it).

        Holes stay holes: a local source (our sealed staging file, or a pending upload's) is copied by its
        data segments and charged its bytes on disk; content read from the cache or store is charged as it
        arrives, all-zero chunks left as holes."""
        if self.private:
            return
        rid, path = host.new_staging()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        size = self.size if keep is None else min(keep, self.size)
        src = self.fd if self.fd is not None else host.base_fd(self.path) if size else None
        charged = 0
        try:
            if src is not None:
                need = min(size, _held(src))
                host.reserve(need)
                charged = need
                copy_fd(src, fd, size)
                hasher = None
            else:
                hasher = hashlib.sha256()
                charged = self._fill_remote(host, fd, size, hasher)
        except BaseException:
            host.unreserve(charged)
            os.close(fd)
            os.unlink(path)
            raise
        finally:
            if src is not None and src != self.fd:
                os.close(src)
        if hasher is not None:
            self.hasher, self.hashed = hasher, size
        elif self.fd is None or self.hashed > size:
            self.hasher = None
        if self.fd is not None:
            os.close(self.fd)
        self.fd, self.staging_id, self.sealed, self.size, self.charged = fd, rid, False, size, charged
        self.settle(host, 0)

    def _fill_remote(self, host: StagingHost, fd: int, size: int, hasher: Any) -> int:
        """Copy the current content from the cache or store into ``fd``; returns the bytes charged (each
        chunk is reserved before it is written, all-zero chunks are left as holes). On failure, what was
        charged so far is given back."""
        os.ftruncate(fd, size)
        offset = charged = 0
        try:
            while offset < size:
                chunk = host.base_read(self.path, offset, min(_CHUNK, size - offset))
                if not chunk:
                    raise StoreError(f"{self.path}: shorter than its size {size} (changed while opening?)")
                if chunk.count(0) != len(chunk):
                    host.reserve(len(chunk))
                    charged += len(chunk)
                    os.pwrite(fd, chunk, offset)
                hasher.update(chunk)
                offset += len(chunk)
        except BaseException:
            host.unreserve(charged)
            raise
        return charged

    def write(self, host: StagingHost, data: bytes, offset: int) -> int:
        """Write at ``offset`` (copy-on-write first); NoSpace leaves the file as it was."""
        self.make_private(host)
        view = memoryview(data)
        end = offset + len(view)
        growth = max(0, end - self.size)
        if self.charged < self.size:  # sparse: the write may fill a hole (and its two partial blocks)
            growth = max(growth, len(view) + 2 * _BLOCK)
        host.reserve(growth)
        try:
            done = 0
            while done < len(view):
                done += os.pwrite(self.fd, view[done:], offset + done)
        except OSError as exc:
            if growth:
                try:
                    os.ftruncate(self.fd, self.size)
                except OSError:
                    pass
            host.unreserve(growth)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpace(f"{self.path}: the write dir's filesystem is full") from None
            raise
        if self.hasher is not None and offset == self.hashed:
            self.hasher.update(view)
            self.hashed = end
        elif offset < self.hashed:
            self.hasher = None
        self.size = max(self.size, end)
        self.dirty, self.mtime = True, time.time()
        self.settle(host, growth)
        return len(view)

    def truncate(self, host: StagingHost, length: int) -> None:
        """Set the length (copying only what is kept). Growing makes a hole: nothing is charged for it."""
        self.make_private(host, keep=length)
        os.ftruncate(self.fd, length)
        if length == 0:
            self.hasher, self.hashed = hashlib.sha256(), 0
        elif length < self.hashed:
            self.hasher = None
        self.size, self.dirty, self.mtime = length, True, time.time()
        self.settle(host, 0)

    def settle(self, host: StagingHost, reserved: int) -> None:
        """Charge the staging file for what it holds: its bytes on disk, at most its length (a dense file
        is charged its length, a sparse one its written bytes); ``reserved`` was reserved ahead for this."""
        held = min(self.size, _held(self.fd))
        host.unreserve(reserved - (held - self.charged))
        self.charged = held

    def read(self, offset: int, size: int) -> bytes | None:
        """Bytes through this file, or None while it is lazy (read the current content instead)."""
        if self.fd is None:
            return None
        return os.pread(self.fd, max(0, min(size, self.size - offset)), offset)

    def prepare_commit(self) -> str | None:
        """fsync the staging file and return its sha256, or None if there is nothing new to commit."""
        if not self.dirty or self.unlinked or not self.private:
            return None
        os.fsync(self.fd)
        if self.hasher is not None and self.hashed == self.size:
            return self.hasher.hexdigest()
        return file_sha256(self.fd, self.size)


def _held(fd: int) -> int:
    """Bytes a file holds on disk."""
    return os.fstat(fd).st_blocks * 512


def copy_fd(src: int, dst: int, size: int) -> None:
    """Copy ``size`` bytes from offset 0 of ``src`` to ``dst``, keeping holes (only data segments are copied,
    in the kernel when the filesystem allows)."""
    os.ftruncate(dst, size)
    offset = 0
    try:
        while offset < size:
            start = os.lseek(src, offset, os.SEEK_DATA)
            if start >= size:
                return
            end = min(size, os.lseek(src, start, os.SEEK_HOLE))
            _copy_range(src, dst, start, end)
            offset = end
        return
    except OSError as exc:  # ENXIO: no data past offset; EINVAL: no SEEK_DATA here (copy everything)
        if exc.errno == errno.ENXIO:
            return
    _copy_range(src, dst, offset, size)


def _copy_range(src: int, dst: int, offset: int, end: int) -> None:
    try:
        while offset < end:
            n = os.copy_file_range(src, dst, end - offset, offset, offset)
            if n == 0:
                break
            offset += n
    except (OSError, AttributeError):  # another filesystem, or no copy_file_range here
        pass
    while offset < end:
        chunk = os.pread(src, min(_CHUNK, end - offset), offset)
        if not chunk:
            break
        os.pwrite(dst, chunk, offset)
        offset += len(chunk)
