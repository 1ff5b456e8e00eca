"""Exception hierarchy. Every error a user can cause carries one clear message and an errno.

The CLI prints ``str(error)`` on one line and exits non-zero; the FUSE layer returns ``error.errno``.
"""

from __future__ import annotations

import errno as _errno


class TiercacheError(Exception):
    """Base class: a failure with a one-line, user-facing message and the errno FUSE should return."""

    errno: int = _errno.EIO


class ConfigError(TiercacheError, ValueError):
    """Bad user input: a size string, a URL, an option combination."""

    errno = _errno.EINVAL


class NotFound(TiercacheError, FileNotFoundError):
    """No object or directory at that path."""

    errno = _errno.ENOENT


class IsADirectory(TiercacheError, IsADirectoryError):
    """A file operation was asked of a directory."""

    errno = _errno.EISDIR


class NotADirectory(TiercacheError, NotADirectoryError):
    """A directory operation was asked of a file."""

    errno = _errno.ENOTDIR


class DirectoryNotEmpty(TiercacheError):
    """rmdir of a directory that still holds files."""

    errno = _errno.ENOTEMPTY


class AlreadyExists(TiercacheError):
    """mkdir where a file is."""

    errno = _errno.EEXIST


class BadHandle(TiercacheError):
    """A write handle that is not open."""

    errno = _errno.EBADF


class StaleVersion(TiercacheError):
    """The version (etag) an open file reads changed in the store and its bytes are no longer cached."""

    errno = _errno.ESTALE


class StoreError(TiercacheError):
    """The object store failed after retries (network, 5xx, throttling)."""

    errno = _errno.EIO


class BucketNotFound(StoreError):
    """The bucket named in the source URL does not exist."""

    errno = _errno.ENOENT


class AccessDenied(StoreError):
    """Credentials are missing, wrong, or lack permission."""

    errno = _errno.EACCES


class EndpointUnreachable(StoreError):
    """The S3 endpoint cannot be reached."""

    errno = _errno.EHOSTUNREACH


class CacheDirLocked(TiercacheError):
    """Another process owns this cache directory."""

    errno = _errno.EBUSY


class ReadOnly(TiercacheError):
    """A write was attempted on a read-only mount or cache."""

    errno = _errno.EROFS


class NoSpace(TiercacheError):
    """A tier or the write directory is full and nothing can be evicted."""

    errno = _errno.ENOSPC


class Corrupt(TiercacheError):
    """Cached bytes failed their checksum; callers drop the entry and refetch."""

    errno = _errno.EIO


class WriteFailed(TiercacheError):
    """An earlier write to an open file failed: the file's new version is not published; ``errno`` is the
    failed write's."""

    def __init__(self, message: str, code: int = _errno.EIO):
        super().__init__(message)
        self.errno = code
