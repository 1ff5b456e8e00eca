"""Directory listings of the mount: ``readdir`` (names and types) and ``readdir_plus`` (names with their
attributes, for READDIRPLUS: dirplus.py).

A listing is the store's (the namespace's) merged with the write tier's pending changes: pending writes and
made directories added, acknowledged deletes left out. The attributes of the listed files come from one
ordered scan of the namespace's records below the directory (``Namespace.files``), not a lookup per name;
an entry gets complete attributes only when they equal what ``getattr`` would answer without asking the
store: a file whose record is past its TTL, or whose user metadata (mode, uid, gid) was never read on a
writable mount, goes out with its type only, and the kernel looks it up itself (getattr then revalidates
it or reads its metadata, as before).

``DirectoryOps`` is a mixin of ``ops.TiercacheOps``; it uses the host's ``_lookup``, ``_attrs`` and
``_posix_attrs``.
"""

from __future__ import annotations

import errno
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import IsADirectory, NotFound
from .calls import errno_op, fuse, store_key
from .dirhandles import DirHandles

SCAN_SLACK = 4  # the record scan of a directory stops after SCAN_SLACK x its entries (+ SCAN_BASE) records:
SCAN_BASE = 1024  # a directory over a big subtree (the root of a bucket) then looks its files up one by one


@dataclass(slots=True)
class Child:
    """One name of a merged listing: its type, and where its attributes come from."""

    is_dir: bool
    is_link: bool = False
    info: Any = None  # the namespace's ObjectInfo of a listed file (from the record scan), if found
    pending: bool = False  # the write tier has it (a pending file or a made directory): attributes from there

    @property
    def mode(self) -> int:
        """d_type as st_mode bits."""
        return stat.S_IFDIR if self.is_dir else stat.S_IFLNK if self.is_link else stat.S_IFREG


class DirectoryOps:
    """readdir and readdir_plus for TiercacheOps (see the module docstring)."""

    cache: Any
    writes: Any
    readonly: bool
    inodes: Any
    dir_handles: DirHandles
    _lookup: Any
    _attrs: Any
    _posix_attrs: Any

    @errno_op
    def readdir(self, path: str, fh: Any) -> list:
        """Names in a directory: the store's listing merged with pending writes, minus pending deletes."""
        key = store_key(path)
        prefix = key + "/" if key else ""
        entries: list = [".", ".."]
        for name, child in self._merged(key).items():
            entries.append((name, {"st_mode": child.mode, "st_ino": self.inodes.ino(prefix + name)}, 0))
        return entries

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
    def readdir_plus(self, path: str, fh: int, offset: int) -> Iterator[tuple[str, dict, int]]:
        """(name, attributes, offset of the next entry) from entry ``offset`` on ("." and ".." first):
        complete getattr dicts where they need no request to the store, else type and inode only (see the
        module docstring). The listing is made at offset 0 and kept with the handle for later offsets."""
        key = store_key(path)
        listing = None if offset == 0 else self.dir_handles.listing(fh)
        if listing is None:
            listing = self._listing(key)
            self.dir_handles.keep(fh, listing)
        return self._plus_entries(key, listing, offset)

    def _listing(self, key: str) -> list[tuple[str, Child | None]]:
        return [(".", None), ("..", None), *self._merged(key, with_infos=True).items()]

    def _plus_entries(self, key: str, listing: list, offset: int) -> Iterator[tuple[str, dict, int]]:
        prefix = key + "/" if key else ""
        namespace = getattr(self.cache, "namespace", None)
        timed = namespace if namespace is not None and not _untimed(namespace) else None
        for index in range(offset, len(listing)):
            name, child = listing[index]
            if child is None:
                yield name, {"st_mode": stat.S_IFDIR}, index + 1
            else:
                yield name, self._child_attrs(prefix + name, child, timed), index + 1

    def _child_attrs(self, key: str, child: Child, timed: Any) -> dict:
        """getattr's dict of a listed name, or {st_mode, st_ino} where getattr would ask the store."""
        info = child.info
        if child.is_dir or child.pending:
            try:
                attrs = self._attrs(*self._lookup(key))
            except NotFound:
                return {"st_mode": child.mode, "st_ino": self.inodes.ino(key)}
        elif info is not None and (info.meta or self.readonly) and (timed is None or not timed.expired(key)):
            attrs = self._attrs(False, info.size, info.mtime, info.mode, info.uid, info.gid)
        else:
            return {"st_mode": child.mode, "st_ino": self.inodes.ino(key)}
        return self._posix_attrs(key, attrs)

    def _merged(self, key: str, with_infos: bool = False) -> dict[str, Child]:
        """The merged listing of directory ``key``, sorted by name; ENOTDIR if it is a file."""
        if not self._lookup(key)[0]:
            raise fuse.FuseOSError(errno.ENOTDIR)
        prefix = key + "/" if key else ""
        try:
            names = self.cache.listdir(key)
        except NotFound:
            names = []
        infos = self._listed_infos(key, len(names))
        pending = set(self.writes.pending_paths(prefix)) if self.writes is not None else set()
        children: dict[str, Child] = {}
        for name in names:
            name = name.rstrip("/")
            child_key = prefix + name
            if self.writes is not None and self.writes.is_deleted(child_key):
                continue
            info = infos.get(name)
            if info is not None:
                child = Child(False, stat.S_ISLNK(info.mode), info if with_infos else None)
            else:
                child = self._kind(child_key)
            if child is not None:
                children[name] = child
        for path in pending:
            rest = path[len(prefix):]
            if not rest:
                continue
            name, sep, _ = rest.partition("/")
            known = children.get(name)
            if sep:
                children[name] = Child(True, pending=True)
            elif known is None or not known.is_dir:
                entry = self.writes.pending_entry(path)
                if entry is not None:
                    children[name] = Child(bool(entry["is_dir"]), stat.S_ISLNK(int(entry.get("mode", 0))),
                                           pending=True)
        return {name: children[name] for name in sorted(children)}

    def _listed_infos(self, key: str, count: int) -> dict[str, Any]:
        """name -> ObjectInfo of the files directly in ``key``, from one scan of the records below it (cut
        short past SCAN_SLACK x ``count`` records: the rest are looked up by name)."""
        namespace = getattr(self.cache, "namespace", None)
        if namespace is None or not count:
            return {}
        prefix = key + "/" if key else ""
        budget = SCAN_SLACK * count + SCAN_BASE
        out: dict[str, Any] = {}
        for info in namespace.files(key):
            rest = info.key[len(prefix):]
            if "/" not in rest:
                out[rest] = info
            budget -= 1
            if budget <= 0:
                break
        return out

    def _kind(self, key: str) -> Child | None:
        """A directory, a file (a symlink by its stored mode) or gone (None), from cached metadata: no HEAD
        per entry when a listing is older than the TTL."""
        namespace = getattr(self.cache, "namespace", None)
        try:
            if namespace is None:
                return Child(bool(self.cache.stat(key).is_dir))
            info = namespace.info(key, revalidate=False)
            return Child(False, stat.S_ISLNK(info.mode))
        except IsADirectory:
            return Child(True)
        except NotFound:
            return None


def _untimed(namespace: Any) -> bool:
    """Whether the namespace's records never expire (``--metadata-ttl inf``)."""
    ttl = getattr(namespace, "ttl", 0)
    return ttl == float("inf")
