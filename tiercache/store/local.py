"""A local directory as an object store: tests, demos and NFS-backed datasets."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import BucketNotFound, ConfigError, NotFound
from .base import Attrs, ObjectInfo

UPLOAD_PREFIX = ".tc-upload-"  # a put's temp file beside its destination, until the rename: never an object


class LocalStore:
    """Objects are the regular files under ``root``; the etag is derived from (size, mtime_ns, inode). The
    POSIX attributes are the files' own (``set_attrs`` changes them: mtime, permission bits, owner)."""

    def __init__(self, root: str | os.PathLike, url: str | None = None):
        self.root = Path(root)
        self.url = url or f"file://{self.root}"

    def _path(self, key: str) -> Path:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise NotFound(f"no object {key!r}")
        return self.root / key

    @staticmethod
    def _info(key: str, st: os.stat_result) -> ObjectInfo:
        tag = hashlib.blake2b(f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}".encode(), digest_size=8).hexdigest()
        return ObjectInfo(key=key, size=st.st_size, etag=tag, mtime=st.st_mtime, mode=st.st_mode, uid=st.st_uid,
                          gid=st.st_gid, meta=True)

    def check(self) -> None:
        """Raise BucketNotFound if the root directory is missing."""
        if not self.root.is_dir():
            raise BucketNotFound(f"{self.url}: no such directory")

    def _tree(self, rel: str, after: str = "") -> Iterator[ObjectInfo]:
        """Every regular file below directory ``rel`` ("" the root) whose key sorts after ``after``, in key
        order, one directory read at a time (a subdirectory sorts as its name + "/")."""
        for key, is_dir, path in self._level(rel):
            if is_dir:
                if key < after and not after.startswith(key):
                    continue  # the whole subtree sorts before ``after``
                yield from self._tree(key[:-1], after)
            elif key > after:
                try:
                    yield self._info(key, os.stat(path))
                except FileNotFoundError:
                    continue

    def _level(self, rel: str) -> list[tuple[str, bool, str]]:
        """(key, is_dir, path) of each entry of directory ``rel``, in key order; a directory's key ends in
        "/". Symlinks to directories are left out, as os.walk leaves them, and so are uploads in progress."""
        top = os.path.join(self.root, rel) if rel else str(self.root)
        try:
            with os.scandir(top) as it:
                found = []
                for entry in it:
                    if entry.name.startswith(UPLOAD_PREFIX):
                        continue
                    key = f"{rel}/{entry.name}" if rel else entry.name
                    try:
                        if entry.is_dir():
                            if not entry.is_symlink():
                                found.append((key + "/", True, entry.path))
                            continue
                    except OSError:
                        continue
                    found.append((key, False, entry.path))
        except (FileNotFoundError, NotADirectoryError):
            return []
        found.sort()
        return found

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every regular file under root whose key starts with ``prefix``, in key order, streamed."""
        for info in self._tree(prefix.rpartition("/")[0]):
            if info.key.startswith(prefix):
                yield info

    def list_after(self, prefix: str, start_after: str) -> Iterator[ObjectInfo]:
        """As ``list``, from the first key after ``start_after`` (for parallel walks)."""
        for info in self._tree(prefix.rpartition("/")[0], start_after):
            if info.key.startswith(prefix):
                yield info

    def list_level(self, prefix: str, start_after: str = "") -> Iterator[ObjectInfo | str]:
        """The files directly in directory ``prefix`` ("" or ending in "/") and its subdirectories (as
        prefixes ending in "/"), in key order (those after ``start_after``: a level resumed)."""
        for key, is_dir, path in self._level(prefix.rstrip("/")):
            if key <= start_after:
                continue
            if is_dir:
                yield key
                continue
            try:
                yield self._info(key, os.stat(path))
            except FileNotFoundError:
                continue

    def head(self, key: str) -> ObjectInfo:
        """Info of one file; NotFound if absent or a directory."""
        try:
            st = os.stat(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"no object {key!r}") from None
        if not os.path.isfile(self._path(key)):
            raise NotFound(f"no object {key!r}")
        return self._info(key, st)

    def get_range(self, key: str, start: int, end: int, etag: str | None = None) -> bytes:
        """Bytes [start, end) of the file."""
        try:
            with open(self._path(key), "rb") as f:
                if etag is not None and self._info(key, os.fstat(f.fileno())).etag != etag:
                    raise NotFound(f"{key!r} changed while reading")
                f.seek(start)
                return f.read(max(0, end - start))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"no object {key!r}") from None

    def put_file(self, key: str, path: str, attrs: Attrs | None = None) -> ObjectInfo:
        """Copy a file in atomically (temp file + rename), with ``attrs``."""
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=UPLOAD_PREFIX)
        try:
            with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
            if attrs is not None:
                self._apply(tmp, attrs)
            os.replace(tmp, dest)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return self.head(key)

    def put_bytes(self, key: str, data: bytes, attrs: Attrs | None = None) -> ObjectInfo:
        """Write a small object atomically."""
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=UPLOAD_PREFIX)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        if attrs is not None:
            self._apply(tmp, attrs)
        os.replace(tmp, dest)
        return self.head(key)

    def set_attrs(self, key: str, attrs: Attrs) -> ObjectInfo:
        """Change the file's mtime, permission bits and owner (the set fields of ``attrs``)."""
        path = self._path(key)
        if not path.is_file():
            raise NotFound(f"no object {key!r}")
        self._apply(str(path), attrs)
        return self.head(key)

    @staticmethod
    def _apply(path: str, attrs: Attrs) -> None:
        if attrs.mode:
            os.chmod(path, attrs.mode & 0o7777)
        if attrs.uid >= 0 or attrs.gid >= 0:
            try:
                os.chown(path, attrs.uid, attrs.gid)
            except PermissionError:
                pass  # not root: the owner stays
        if attrs.mtime is not None:
            os.utime(path, ns=(time.time_ns(), round(attrs.mtime * 1e9)))

    def delete(self, key: str) -> None:
        """Remove the file if present."""
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass

    def copy(self, src_key: str, dst_key: str) -> ObjectInfo:
        """Copy one file to another key."""
        return self.put_file(dst_key, str(self._path(src_key)))

    def close(self) -> None:
        """Nothing to release."""


def local_store_from_url(url: str) -> LocalStore:
    """``file:///abs/dir`` → LocalStore."""
    path = url[len("file://"):]
    if not path.startswith("/"):
        raise ConfigError(f"{url!r}: file:// URLs need an absolute path, e.g. file:///data/train")
    return LocalStore(path.rstrip("/") or "/", url=url)
