"""The merged view: what a reader sees of the store through the cache and the write-back front together.

    listing of a directory = the namespace's listing (the store's, cached)
                             ∪ pending writes and directories made here (the write tier's)
                             − deletes acknowledged but not yet done at the store

FUSE (``fuse/ops.py`` readdir, getattr) and library mode (``fsspec_engine``/``fsspec_fs``: ls, info, find)
read the same view, so both show the same names, and unit tests reach it without a mount.

Two ways to read it:

* ``listing(key)``: names and kinds (directory, file, symlink) from cached metadata only, no request to the
  store per entry (one scan of the namespace's records: ``Namespace.children``);
* ``node``/``children``/``files``: sizes and times, revalidated as the cache does (a record past its TTL is
  HEADed; a directory left only by files deleted here is gone), for library mode.

Pending writes win over the cache: a pending path lists with the write tier's size and kind, and a directory
any pending path lies below exists.
"""

from __future__ import annotations

import stat
import time
from dataclasses import dataclass
from typing import Any

import numpy

from .dir_table import DIRECTORY, FILE, SYMLINK, DirTable
from .errors import IsADirectory, NotADirectory, NotFound
from .store.base import ObjectInfo


@dataclass(slots=True)
class Child:
    """One name of a merged listing: its type, and where its attributes come from."""

    is_dir: bool
    is_link: bool = False
    info: ObjectInfo | None = None  # the namespace's info of a listed file (from the record scan), if found
    pending: bool = False  # the write tier has it (a pending file or a made directory): attributes from there

    @property
    def mode(self) -> int:
        """d_type as st_mode bits."""
        return stat.S_IFDIR if self.is_dir else stat.S_IFLNK if self.is_link else stat.S_IFREG


@dataclass
class Node:
    """A file or directory with its size, times and stored attributes (mode, uid, gid: 0 / -1 when none is
    stored or known); ``pending``: the write tier's (a pending write, a made directory)."""

    key: str
    is_dir: bool
    size: int
    mtime: float
    etag: str | None = None
    mode: int = 0
    uid: int = -1
    gid: int = -1
    pending: bool = False


class MergedView:
    """The store as the cache (``cache``: a TieredCache) and the write tier (``writes``: a WriteTier, or
    None when read-only) show it together. Keys are store keys ("" is the root)."""

    def __init__(self, cache: Any, writes: Any | None, started: float | None = None):
        self.cache, self.writes = cache, writes
        self.started = time.time() if started is None else started  # the times of directories

    # ---------------------------------------------------------------- names and kinds (no store requests)

    def listing(self, key: str) -> dict[str, Child]:
        """The merged listing of directory ``key``, sorted by name (``table`` as one Child per name);
        NotADirectory if it is a file, NotFound if neither."""
        table = self.table(key)
        return {name: Child(kind == DIRECTORY, kind == SYMLINK, pending=bool(pending))
                for name, kind, pending in zip(table.names, table.kinds.tolist(), table.pending.tolist(), strict=True)}

    def table(self, key: str) -> DirTable:
        """The merged listing of directory ``key`` as columns (dir_table.py: each listed file's record
        decoded with the whole directory, no object per entry but its name), sorted by name;
        NotADirectory if it is a file, NotFound if neither."""
        if not self.is_dir(key):
            raise NotADirectory(f"{key}: not a directory")
        prefix = key + "/" if key else ""
        pending = self.writes.pending_paths(prefix) if self.writes is not None else []
        deleted = self.writes.is_deleted if self.writes is not None else None
        names: list[str] = []
        raws: list[bytes] = []
        try:
            for name, raw in self.cache.namespace.records(key):
                if deleted is None or not deleted(prefix + name):
                    names.append(name)
                    raws.append(raw)
        except (NotFound, NotADirectory):
            pass
        table = DirTable.from_records(names, raws)
        over: dict[str, int] = {}  # name -> kind, from the write tier
        listed_dirs = {table.names[i] for i in numpy.flatnonzero(table.kinds == DIRECTORY)} if pending else set()
        for path in pending:
            name, sep, _ = path[len(prefix):].partition("/")
            if not name:
                continue
            if sep:
                over[name] = DIRECTORY
            elif over.get(name, DIRECTORY if name in listed_dirs else FILE) != DIRECTORY:  # a directory stays one
                entry = self.writes.pending_entry(path)
                if entry is not None:
                    link = stat.S_ISLNK(int(entry.get("mode", 0)))
                    over[name] = DIRECTORY if entry["is_dir"] else SYMLINK if link else FILE
        return table.with_pending(over).sorted()

    def is_dir(self, key: str) -> bool:
        """Whether ``key`` is a directory (False: a file); NotFound if neither. Pending writes first."""
        if not key:
            return True
        if self.writes is not None:
            pending = self.writes.pending_entry(key)
            if pending is not None:
                return bool(pending["is_dir"])
            if self.writes.is_deleted(key):
                raise NotFound(f"{key}: deleted")
        return bool(self.cache.stat(key).is_dir)

    def _deleted(self, key: str) -> bool:
        return self.writes is not None and self.writes.is_deleted(key)

    # ---------------------------------------------------------------- nodes (sizes and times, revalidated)

    def entry(self, key: str, metadata: bool = False) -> Node:
        """The file or directory at ``key`` as ``table`` lists it ("" is the root): pending writes first,
        acknowledged deletes gone, then the cache's metadata (a record past its TTL HEADed); ``metadata``:
        a file whose user metadata (mode, uid, gid) the listing did not carry gets one HEAD for it.
        NotFound if neither. FUSE's getattr and lookup (fuse/attr_ops.py) answer from this."""
        if not key:
            return Node("", True, 0, self.started)
        if self.writes is not None:
            pending = self.writes.pending_entry(key)
            if pending is not None:
                return Node(key, bool(pending["is_dir"]), int(pending["size"]), float(pending["mtime"]), None,
                            int(pending.get("mode", 0)), int(pending.get("uid", -1)), int(pending.get("gid", -1)),
                            pending=True)
            if self.writes.is_deleted(key):
                raise NotFound(f"{key}: no such file or directory")
        entry = self.cache.stat(key)
        namespace = getattr(self.cache, "namespace", None)
        if entry.is_dir or namespace is None:
            return Node(key, bool(entry.is_dir), int(entry.size), float(entry.mtime or self.started), entry.etag)
        info = namespace.info(key, revalidate=False)  # just revalidated by stat
        if metadata and not info.meta:
            info = namespace.refresh(key)
        return Node(key, False, info.size, info.mtime, info.etag, info.mode, info.uid, info.gid)

    def node(self, key: str) -> Node:
        """The file or directory at ``key`` as library mode sees it: ``entry``, except that a directory of
        the cached listing that no longer holds a file is gone (the store has no directories of its own;
        FUSE keeps such a directory until rmdir as a directory made in the write tier)."""
        found = self.entry(key)
        if found.is_dir and key and not found.pending and not self._holds_a_file(key):
            raise NotFound(f"{key}: no such file or directory")
        return found

    def _holds_a_file(self, key: str) -> bool:
        """Whether a directory of the cached listing still has a file below it: the listing keeps the
        directories of files deleted since it was made (the store has no directories of its own)."""
        namespace = self.cache.namespace
        for info in namespace.files(key):
            if self._deleted(info.key):
                continue
            if not namespace.expired(info.key):
                return True
            try:
                namespace.info(info.key)  # just deleted here, or past the TTL: a HEAD says
                return True
            except NotFound:
                continue
        return False

    def _pending_names(self, prefix: str) -> list[str]:
        """Paths below ``prefix`` pending in the write tier. Taken before the cache's listing is read: a file
        whose upload ends in between is then in the listing (it is admitted before it stops being pending)."""
        return self.writes.pending_paths(prefix) if self.writes is not None else []

    def children(self, key: str) -> list[Node]:
        """What is in directory ``key``: the store's listing merged with pending writes, minus pending deletes."""
        if not self.node(key).is_dir:
            raise NotADirectory(f"{key}: not a directory")
        prefix = key + "/" if key else ""
        pending = self._pending_names(prefix)
        try:
            names = [prefix + name.rstrip("/") for name in self.cache.listdir(key)]
        except NotFound:
            names = []
        found: dict[str, Node] = {}
        for path in pending:
            name, sep, _ = path[len(prefix):].partition("/")
            if name and sep:
                found[prefix + name] = Node(prefix + name, True, 0, self.started)
        for child in [*names, *(p for p in pending if "/" not in p[len(prefix):])]:
            if child in found or child == key:
                continue
            try:
                found[child] = self.node(child)
            except NotFound:
                continue
        return [found[k] for k in sorted(found)]

    def files(self, key: str) -> list[Node]:
        """Every file at or below ``key`` (one pass over the cached listing, plus pending writes)."""
        prefix = key + "/" if key else ""
        found: dict[str, Node] = {}
        for path in self._pending_names(key):
            if path == key or path.startswith(prefix):
                entry = self.writes.pending_entry(path)
                if entry is not None and not entry["is_dir"]:
                    found[path] = Node(path, False, int(entry["size"]), float(entry["mtime"]))
        namespace = self.cache.namespace
        try:
            self.cache.listdir(key)  # relists the subtree if its listing is past the TTL
        except (NotFound, NotADirectory):
            pass
        try:
            for info in namespace.files(key):
                if info.key in found or self._deleted(info.key):
                    continue
                if namespace.expired(info.key):  # e.g. just deleted here: a HEAD says whether it is still there
                    try:
                        found[info.key] = self.node(info.key)
                    except NotFound:
                        pass
                    continue
                found[info.key] = Node(info.key, False, info.size, info.mtime or self.started, info.etag)
        except (NotFound, IsADirectory, NotADirectory):
            pass
        return [found[k] for k in sorted(found)]

    def empty_dirs(self, key: str) -> list[str]:
        """Directories made here (mkdir) at or below ``key``: they hold no file, so ``files`` misses them."""
        if self.writes is None:
            return []
        prefix = key + "/" if key else ""
        return [p for p in self.writes.pending_paths(prefix)
                if (self.writes.pending_entry(p) or {}).get("is_dir")]

    # ---------------------------------------------------------------- bytes

    def read(self, key: str, offset: int, size: int | None) -> bytes:
        """Bytes [offset, offset+size) of a file (to its end when size is None): written-but-not-uploaded
        bytes first, then the cache."""
        if self.writes is not None:
            if size is None:
                entry = self.writes.pending_entry(key)
                if entry is not None:
                    if entry["is_dir"]:
                        raise IsADirectory(f"{key}: is a directory")
                    size = max(0, int(entry["size"]) - offset)
            if size is not None:
                data = self.writes.read_pending(key, offset, size)
                if data is not None:
                    return bytes(data)
            if self.writes.is_deleted(key):
                raise NotFound(f"{key}: no such file or directory")
        data = self.cache.read(key, offset, size)
        return data if isinstance(data, bytes) else bytes(data)
