"""Extended attributes of a mount's files, kept in an LMDB env of the write dir (WRITE_DIR/xattrs).

They are local to the mount's write dir (like its journal): they survive remounts of the same write dir and
follow renames and removals made through the mount, but are not stored in the bucket. The ``user.``,
``trusted.`` and ``security.`` namespaces are kept (the kernel itself checks who may set which);
``system.`` (POSIX ACLs) is refused with ENOTSUP, so ACLs are not half-supported.

Keys: the path itself while short enough for LMDB (``p:`` + path), else ``h:`` + its sha256 with the path
in the value; a value is JSON ``{"path": ..., "attrs": {name: base64}}``.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import threading
from pathlib import Path

import lmdb

from ..private import private_dir

XATTR_CREATE, XATTR_REPLACE = 1, 2
NAME_MAX = 255
SIZE_MAX = 65536
_KEY_MAX = 480
_NAMESPACES = ("user.", "trusted.", "security.")
_SECURITY_SET = b"m:security"  # present once any security.* attribute was set


def _error(code: int, text: str) -> OSError:
    return OSError(code, text)


class XattrTable:
    """path (store key) → {name: value}; thread-safe."""

    def __init__(self, directory: str | os.PathLike):
        self.path = Path(directory)
        private_dir(self.path)
        self.env = lmdb.open(str(self.path), map_size=1 << 34, max_dbs=1, sync=True, metasync=True, mode=0o600)
        for name in ("data.mdb", "lock.mdb"):  # private whatever the umask
            os.chmod(self.path / name, 0o600)
        self._lock = threading.Lock()
        with self.env.begin() as txn:
            self._security = txn.get(_SECURITY_SET) is not None

    def never_set(self, name: str) -> bool:
        """True if no file can have ``name``: a ``security.`` attribute while none was ever set. The kernel
        asks for security.capability before every write(2); this answers it without a lookup."""
        return not self._security and name.startswith("security.")

    def close(self) -> None:
        """Release the env."""
        self.env.close()

    # ---------------------------------------------------------------- the xattr calls

    def get(self, path: str, name: str) -> bytes:
        """getxattr(2): ENODATA if ``path`` has no attribute ``name``."""
        attrs = self._read(path)
        if name not in attrs:
            raise _error(errno.ENODATA, f"{path}: no attribute {name}")
        return attrs[name]

    def set(self, path: str, name: str, value: bytes, flags: int = 0) -> None:
        """setxattr(2) with XATTR_CREATE (EEXIST if set) or XATTR_REPLACE (ENODATA if not)."""
        self._check_name(name)
        if len(value) > SIZE_MAX:
            raise _error(errno.E2BIG, f"{name}: value over {SIZE_MAX} bytes")
        with self._lock:
            attrs = self._read(path)
            if flags & XATTR_CREATE and name in attrs:
                raise _error(errno.EEXIST, f"{path}: attribute {name} exists")
            if flags & XATTR_REPLACE and name not in attrs:
                raise _error(errno.ENODATA, f"{path}: no attribute {name}")
            attrs[name] = bytes(value)
            self._write(path, attrs)
            if name.startswith("security.") and not self._security:
                with self.env.begin(write=True) as txn:
                    txn.put(_SECURITY_SET, b"1")
                self._security = True

    def names(self, path: str) -> list[str]:
        """listxattr(2)."""
        return sorted(self._read(path))

    def remove(self, path: str, name: str) -> None:
        """removexattr(2): ENODATA if not set."""
        with self._lock:
            attrs = self._read(path)
            if attrs.pop(name, None) is None:
                raise _error(errno.ENODATA, f"{path}: no attribute {name}")
            self._write(path, attrs)

    # ---------------------------------------------------------------- namespace changes

    def renamed(self, old: str, new: str) -> None:
        """``old`` (and everything below it) is now ``new``; what ``new`` had is dropped."""
        with self._lock:
            with self.env.begin() as txn:
                if not self._entries(txn, old) and not self._entries(txn, new):
                    return  # the usual case: no write transaction (and no fsync) per rename
            with self.env.begin(write=True) as txn:
                self._move(txn, old, new)

    def _move(self, txn: lmdb.Transaction, old: str, new: str) -> None:
        moved = self._entries(txn, old)
        for path, _ in self._entries(txn, new):
            txn.delete(self._key(path))
        for path, _ in moved:
            txn.delete(self._key(path))
        for path, attrs in moved:
            self._put(txn, new + path[len(old):], attrs)

    def removed(self, path: str) -> None:
        """``path`` is gone: drop its attributes (and those of everything below it)."""
        with self._lock:
            with self.env.begin() as txn:
                gone = [entry for entry, _ in self._entries(txn, path)]
            if gone:
                with self.env.begin(write=True) as txn:
                    for entry in gone:
                        txn.delete(self._key(entry))

    # ---------------------------------------------------------------- storage

    @staticmethod
    def _check_name(name: str) -> None:
        raw = name.encode("utf-8", "surrogateescape")
        if not raw:
            raise _error(errno.ERANGE, "empty attribute name")
        if len(raw) > NAME_MAX:
            raise _error(errno.ERANGE, f"attribute name over {NAME_MAX} bytes")
        if not name.startswith(_NAMESPACES):
            raise _error(errno.ENOTSUP, f"{name}: only user., trusted. and security. attributes are kept")

    @staticmethod
    def _key(path: str) -> bytes:
        raw = path.encode("utf-8", "surrogateescape")
        if len(raw) + 2 <= _KEY_MAX:
            return b"p:" + raw
        return b"h:" + hashlib.sha256(raw).digest()

    def _read(self, path: str) -> dict[str, bytes]:
        with self.env.begin() as txn:
            raw = txn.get(self._key(path))
        if raw is None:
            return {}
        return {k: base64.b64decode(v) for k, v in json.loads(raw)["attrs"].items()}

    def _write(self, path: str, attrs: dict[str, bytes]) -> None:
        with self.env.begin(write=True) as txn:
            if attrs:
                self._put(txn, path, attrs)
            else:
                txn.delete(self._key(path))

    def _put(self, txn: lmdb.Transaction, path: str, attrs: dict[str, bytes]) -> None:
        value = {"path": path, "attrs": {k: base64.b64encode(v).decode() for k, v in attrs.items()}}
        txn.put(self._key(path), json.dumps(value, separators=(",", ":")).encode())

    def _entries(self, txn: lmdb.Transaction, top: str) -> list[tuple[str, dict[str, bytes]]]:
        """(path, attrs) of ``top`` and of everything below it."""
        out = []
        cursor = txn.cursor()
        raw_top = top.encode("utf-8", "surrogateescape")
        for prefix in (b"p:" + raw_top, b"h:"):
            if not cursor.set_range(prefix):
                continue
            for key, value in cursor:
                if not key.startswith(prefix):
                    break
                record = json.loads(bytes(value))
                path = record["path"]
                if path == top or path.startswith(top + "/"):
                    out.append((path, {k: base64.b64decode(v) for k, v in record["attrs"].items()}))
        return out
