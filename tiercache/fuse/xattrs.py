"""Extended attributes of a mount's files, kept in a PathTable of the write dir (WRITE_DIR/xattrs).

They are local to the mount's write dir (like its journal): they survive remounts of the same write dir and
follow renames and removals made through the mount, but are not stored in the bucket. The ``user.``,
``trusted.`` and ``security.`` namespaces are kept (the kernel itself checks who may set which);
``system.`` (POSIX ACLs) is refused with ENOTSUP, so ACLs are not half-supported. A path's record is
``{name: base64 value}``.
"""

from __future__ import annotations

import base64
import errno
import os

from .pathtable import PathTable

XATTR_CREATE, XATTR_REPLACE = 1, 2
NAME_MAX = 255
SIZE_MAX = 65536
_NAMESPACES = ("user.", "trusted.", "security.")
_SECURITY_SET = b"security"  # present once any security.* attribute was set


class XattrTable:
    """path (store key) → {name: value}; thread-safe."""

    def __init__(self, directory: str | os.PathLike):
        self.table = PathTable(directory, durable=True)
        self._security = self.table.get_meta(_SECURITY_SET) is not None

    def close(self) -> None:
        """Release the table."""
        self.table.close()

    def never_set(self, name: str) -> bool:
        """True if no file can have ``name``: a ``security.`` attribute while none was ever set. The kernel
        asks for security.capability before every write(2); this answers it without a lookup."""
        return not self._security and name.startswith("security.")

    # ---------------------------------------------------------------- the xattr calls

    def get(self, path: str, name: str) -> bytes:
        """getxattr(2): ENODATA if ``path`` has no attribute ``name``."""
        attrs = self._read(path)
        if name not in attrs:
            raise OSError(errno.ENODATA, f"{path}: no attribute {name}")
        return attrs[name]

    def set(self, path: str, name: str, value: bytes, flags: int = 0) -> None:
        """setxattr(2) with XATTR_CREATE (EEXIST if set) or XATTR_REPLACE (ENODATA if not)."""
        _check_name(name)
        if len(value) > SIZE_MAX:
            raise OSError(errno.E2BIG, f"{name}: value over {SIZE_MAX} bytes")
        with self.table.lock:
            attrs = self._read(path)
            if flags & XATTR_CREATE and name in attrs:
                raise OSError(errno.EEXIST, f"{path}: attribute {name} exists")
            if flags & XATTR_REPLACE and name not in attrs:
                raise OSError(errno.ENODATA, f"{path}: no attribute {name}")
            attrs[name] = bytes(value)
            self._write(path, attrs)
            if name.startswith("security.") and not self._security:
                self.table.put_meta(_SECURITY_SET, b"1")
                self._security = True

    def names(self, path: str) -> list[str]:
        """listxattr(2)."""
        return sorted(self._read(path))

    def remove(self, path: str, name: str) -> None:
        """removexattr(2): ENODATA if not set."""
        with self.table.lock:
            attrs = self._read(path)
            if attrs.pop(name, None) is None:
                raise OSError(errno.ENODATA, f"{path}: no attribute {name}")
            self._write(path, attrs)

    # ---------------------------------------------------------------- namespace changes

    def renamed(self, old: str, new: str) -> None:
        """``old`` (and everything below it) is now ``new``; what ``new`` had is dropped."""
        self.table.renamed(old, new)

    def removed(self, path: str) -> None:
        """``path`` is gone: drop its attributes (and those of everything below it)."""
        self.table.removed(path)

    def _read(self, path: str) -> dict[str, bytes]:
        record = self.table.get(path) or {}
        return {k: base64.b64decode(v) for k, v in record.items()}

    def _write(self, path: str, attrs: dict[str, bytes]) -> None:
        self.table.put(path, {k: base64.b64encode(v).decode() for k, v in attrs.items()})


def _check_name(name: str) -> None:
    raw = name.encode("utf-8", "surrogateescape")
    if not raw:
        raise OSError(errno.ERANGE, "empty attribute name")
    if len(raw) > NAME_MAX:
        raise OSError(errno.ERANGE, f"attribute name over {NAME_MAX} bytes")
    if not name.startswith(_NAMESPACES):
        raise OSError(errno.ENOTSUP, f"{name}: only user., trusted. and security. attributes are kept")
