"""Attributes the objects cannot hold, kept beside them in a PathTable of the write dir (WRITE_DIR/attrs):

* a directory's mode, owner, group and times (directories have no marker objects to carry metadata);
* every file's ctime and atime (object metadata holds the mtime: a write or truncate moves the mtime, and
  the ctime with it, without an entry here);
* a device node's rdev.

A record is ``{"mode", "uid", "gid", "mtime", "atime", "ctime", "rdev"}``, each optional, times in ns. It
follows renames and removals like the objects. Not fsynced per change (attributes, not data): a crash may
lose the last changes of a few seconds, never a file's bytes.
"""

from __future__ import annotations

import os
import stat
import time
from typing import Any

from .pathtable import PathTable

_FIELDS = ("mode", "uid", "gid", "mtime", "atime", "ctime", "rdev")


class AttrOverlay:
    """path → the attributes above; thread-safe."""

    def __init__(self, directory: str | os.PathLike):
        self.table = PathTable(directory, durable=False)

    def close(self) -> None:
        """Flush and release the table."""
        self.table.close()

    def apply(self, path: str, attrs: dict[str, Any]) -> dict[str, Any]:
        """``attrs`` (getattr's stat dict) with this path's recorded attributes over it."""
        record = self.table.get(path)
        if not record:
            return attrs
        if "mode" in record:
            attrs["st_mode"] = stat.S_IFMT(attrs["st_mode"]) | (record["mode"] & 0o7777)
        for name in ("uid", "gid", "rdev"):
            if name in record:
                attrs["st_" + name] = record[name]
        for name in ("mtime", "atime"):
            if name in record:
                attrs["st_" + name] = record[name]
        # the ctime is the last change of either kind: an attribute change (here) or a write (the mtime)
        attrs["st_ctime"] = max(record.get("ctime", 0), attrs.get("st_mtime", 0))
        return attrs

    def record(self, path: str, *, touch: bool = True, **fields: int | None) -> None:
        """Record ``fields`` (None drops one) for ``path``; ``touch``: its ctime becomes now."""
        unknown = set(fields) - set(_FIELDS)
        if unknown:
            raise ValueError(f"unknown attribute(s) {sorted(unknown)}")
        with self.table.lock:
            record = self.table.get(path) or {}
            for name, value in fields.items():
                if value is None:
                    record.pop(name, None)
                else:
                    record[name] = int(value)
            if touch:
                record["ctime"] = time.time_ns()
            self.table.put(path, record)

    def get(self, path: str) -> dict[str, int]:
        """The recorded attributes of ``path`` ({} if none)."""
        return dict(self.table.get(path) or {})

    def children(self, directory: str) -> set[str]:
        """Names in ``directory`` ("" the root) that have recorded attributes."""
        prefix = directory + "/" if directory else ""
        names = set()
        for path in self.table.below(directory):
            name, sep, _ = path[len(prefix):].partition("/")
            if name and not sep and path.startswith(prefix):
                names.add(name)
        return names

    def renamed(self, old: str, new: str) -> None:
        """``old`` (and everything below it) is now ``new``; the moved entry's ctime becomes now."""
        self.table.renamed(old, new)
        self.record(new)

    def removed(self, path: str) -> None:
        """``path`` is gone: drop its attributes and those of everything below it."""
        self.table.removed(path)
