"""Directory listings of the mount: ``readdir`` (names and types) and ``readdir_plus`` (names with their
attributes, for READDIRPLUS: dirplus.py).

A listing is the engine's merged view as columns (merged_view.MergedView.table: the namespace's listing
merged with the write tier's pending changes: pending writes and made directories added, acknowledged
deletes left out), the same one library mode reads. The attributes of the listed files come from the same
scan of the namespace's index, decoded for the whole directory at once, and are computed a chunk of entries
at a time with numpy (``Listed``); only directories, pending names, names with recorded attributes (the
overlay) and libfuse's hidden names take the per-entry path, getattr's own (``_lookup``, ``_attrs``,
``_posix_attrs``). An entry gets complete attributes only when they equal what ``getattr`` would answer
without asking the store: a file whose record is past its TTL, or whose user metadata (mode, uid, gid) was
never read on a writable mount, goes out with its type only, and the kernel looks it up itself (getattr then
revalidates it or reads its metadata, as before).

``DirectoryOps`` is a mixin of ``ops.TiercacheOps``; it uses the host's ``_lookup``, ``_attrs`` and
``_posix_attrs``.
"""

from __future__ import annotations

import math
import stat
import threading
from typing import Any

import numpy

from ..dir_table import DIRECTORY, MODES, DirTable
from ..errors import NotFound
from ..merged_view import MergedView
from ..namespace_records import meta_read
from .attr_ops import BLKSIZE
from .calls import errno_op, store_key
from .dirhandles import DirHandles
from .dirplus import STAT, put_attrs
from .posix_ops import HIDDEN_PREFIX

CHUNK = 1024  # entries whose attributes are computed together (a 128 KiB READDIRPLUS reply holds ~780)
_NS = 1_000_000_000


class DirectoryOps:
    """readdir and readdir_plus for TiercacheOps (see the module docstring)."""

    cache: Any
    writes: Any
    readonly: bool
    inodes: Any
    overlay: Any
    uid: int
    gid: int
    file_mode: int
    dir_handles: DirHandles
    view: MergedView
    _lookup: Any
    _attrs: Any
    _posix_attrs: Any

    @errno_op
    def readdir(self, path: str, fh: Any) -> list:
        """Names in a directory: the store's listing merged with pending writes, minus pending deletes."""
        key = store_key(path)
        table = self.view.table(key)
        inos = self.inodes.children(key, table.names).tolist()
        modes = table.modes.tolist()
        return [".", "..", *((name, {"st_mode": mode, "st_ino": ino}, 0)
                             for name, mode, ino in zip(table.names, modes, inos, strict=True))]

    @errno_op
    def opendir(self, path: str) -> int:
        """opendir(3): a handle whose READDIRPLUS requests page through one listing (dirhandles.py)."""
        return self.dir_handles.open()

    @errno_op
    def releasedir(self, path: str | None, fh: int) -> int:
        """closedir(3): the handle's listing is dropped."""
        self.dir_handles.close(fh)
        return 0

    @errno_op
    def readdir_plus(self, path: str, fh: int, offset: int) -> Listed:
        """The entries of the directory from entry ``offset`` on ("." and ".." first), a chunk at a time
        (dirplus.DirReply): complete attributes where they need no request to the store, else type and
        inode only (see the module docstring). The listing is made at offset 0 and kept with the handle
        for later offsets."""
        key = store_key(path)
        listed = None if offset == 0 else self.dir_handles.listing(fh)
        if listed is None:
            listed = Listed(self, key, self.view.table(key))
            self.dir_handles.keep(fh, listed)
        return listed

    def entry_attrs(self, key: str, mode: int) -> tuple[dict, bool]:
        """(getattr's dict, True) of a directory or a pending name, or ({st_mode, st_ino}, False) if it
        is gone by now."""
        try:
            return self._posix_attrs(key, self._attrs(*self._lookup(key))), True
        except NotFound:
            return {"st_mode": mode, "st_ino": self.inodes.ino(key)}, False

    def file_attrs(self, key: str, record: Any) -> dict:
        """getattr's dict of a listed file from its record (the overlay's attributes over it)."""
        attrs = self._attrs(False, int(record["size"]), float(record["mtime"]), int(record["mode"]),
                            int(record["uid"]), int(record["gid"]))
        return self._posix_attrs(key, attrs)


class Listed:
    """One open directory's entries for READDIRPLUS (dirplus.DirReply): its DirTable, and the attributes
    of the last chunk asked for (a request that resumes inside it takes the rest)."""

    def __init__(self, ops: DirectoryOps, key: str, table: DirTable):
        self.ops, self.key, self.table = ops, key, table
        self.prefix = key + "/" if key else ""
        self._lock = threading.Lock()
        self._last: tuple[int, list[str], numpy.ndarray, list[bool]] | None = None
        self._recorded: set[str] | None = None  # names with attributes in the overlay

    def __len__(self) -> int:
        return len(self.table) + 2

    def chunk(self, start: int) -> tuple[list[str], numpy.ndarray, list[bool]] | None:
        """(names, STAT columns, complete flags) of entries ``start`` on; None past the end."""
        if start >= len(self):
            return None
        with self._lock:
            last = self._last
            if last is None or not last[0] <= start < last[0] + len(last[1]):
                last = self._last = (start, *self._compute(start, min(len(self), start + CHUNK)))
            skip = start - last[0]
            return last[1][skip:], last[2][skip:], last[3][skip:]

    def _compute(self, start: int, end: int) -> tuple[list[str], numpy.ndarray, list[bool]]:
        dots = [name for index, name in ((0, "."), (1, "..")) if start <= index < end]
        first, stop = max(start - 2, 0), max(end - 2, 0)
        names = self.table.names[first:stop]
        columns = numpy.zeros(len(dots) + len(names), STAT)
        columns["st_mode"][:len(dots)] = stat.S_IFDIR
        rows = columns[len(dots):]
        complete = numpy.zeros(len(columns), bool)
        complete[len(dots):] = self._fill(rows, first, stop, names)
        return dots + names, columns, complete.tolist()

    def _fill(self, rows: numpy.ndarray, first: int, stop: int, names: list[str]) -> numpy.ndarray:
        """Attributes of table entries [first, stop) into ``rows``; whether each is complete."""
        ops, table = self.ops, self.table
        kinds, listed = table.kinds[first:stop], table.listed[first:stop]
        pending, records = table.pending[first:stop], table.records[first:stop]
        rows["st_ino"] = ops.inodes.children(self.key, names)
        rows["st_mode"] = MODES[kinds]
        fast = listed & (meta_read(records) | ops.readonly) & ~self._expired(records, names)
        mode = records["mode"]
        own = numpy.where(mode & 0o170000, mode, stat.S_IFREG | mode)
        file_mode = numpy.where(mode == 0, stat.S_IFREG | ops.file_mode, own)
        if ops.readonly:
            file_mode &= ~numpy.uint32(0o222)
        ns = (records["mtime"] * 1e9).astype(numpy.int64)
        size = records["size"].astype(numpy.int64)
        for name, value in (("st_mode", file_mode), ("st_nlink", 1), ("st_size", size),
                            ("st_uid", numpy.where(records["uid"] >= 0, records["uid"], ops.uid)),
                            ("st_gid", numpy.where(records["gid"] >= 0, records["gid"], ops.gid)),
                            ("st_atime", ns), ("st_mtime", ns), ("st_ctime", ns), ("st_blocks", (size + 511) // 512),
                            ("st_blksize", BLKSIZE)):
            rows[name] = numpy.where(fast, value, rows[name])
        complete = fast.copy()
        recorded = self._overlaid()
        slow = (kinds == DIRECTORY) | pending
        slow |= numpy.fromiter((name.startswith(HIDDEN_PREFIX) or name in recorded for name in names), bool,
                               len(names))
        for i in numpy.flatnonzero(slow).tolist():
            key = self.prefix + names[i]
            if kinds[i] == DIRECTORY or pending[i]:
                attrs, complete[i] = ops.entry_attrs(key, int(MODES[kinds[i]]))
            elif fast[i]:
                attrs = ops.file_attrs(key, records[i])
            else:
                continue  # type and inode only, as any incomplete entry
            put_attrs(rows, i, attrs)
        return complete

    def _expired(self, records: numpy.ndarray, names: list[str]) -> numpy.ndarray:
        """Whether each record is past the namespace's TTL (its confirm time counted, as getattr counts it)."""
        namespace = getattr(self.ops.cache, "namespace", None)
        ttl = getattr(namespace, "ttl", math.inf)
        if math.isinf(ttl):
            return numpy.zeros(len(records), bool)
        if ttl == 0:
            return numpy.ones(len(records), bool)
        expired = namespace.clock() - records["fetched"] > ttl
        for i in numpy.flatnonzero(expired).tolist():  # a conditional GET may have confirmed it since
            expired[i] = namespace.expired(self.prefix + names[i])
        return expired

    def _overlaid(self) -> set[str]:
        """Names of this directory with attributes recorded in the overlay (writable mounts)."""
        if self._recorded is None:
            overlay = self.ops.overlay
            self._recorded = set() if overlay is None else overlay.children(self.key)
        return self._recorded
