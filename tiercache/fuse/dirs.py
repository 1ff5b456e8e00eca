"""Directory listings of the mount: ``readdir`` (names and types) and ``readdir_plus`` (names with their
attributes, for READDIRPLUS: dirplus.py).

A listing is the engine's merged view (merged_view.MergedView.listing: the namespace's listing merged with
the write tier's pending changes: pending writes and made directories added, acknowledged deletes left out),
the same one library mode reads. The attributes of the listed files come from the same scan of the
namespace's index (``Namespace.children``: each file's whole record), not a lookup per name;
an entry gets complete attributes only when they equal what ``getattr`` would answer without asking the
store: a file whose record is past its TTL, or whose user metadata (mode, uid, gid) was never read on a
writable mount, goes out with its type only, and the kernel looks it up itself (getattr then revalidates
it or reads its metadata, as before).

``DirectoryOps`` is a mixin of ``ops.TiercacheOps``; it uses the host's ``_lookup``, ``_attrs`` and
``_posix_attrs``.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from typing import Any

from ..errors import NotFound
from ..merged_view import Child, MergedView
from .calls import errno_op, store_key
from .dirhandles import DirHandles


class DirectoryOps:
    """readdir and readdir_plus for TiercacheOps (see the module docstring)."""

    cache: Any
    writes: Any
    readonly: bool
    inodes: Any
    dir_handles: DirHandles
    view: MergedView
    _lookup: Any
    _attrs: Any
    _posix_attrs: Any

    @errno_op
    def readdir(self, path: str, fh: Any) -> list:
        """Names in a directory: the store's listing merged with pending writes, minus pending deletes."""
        key = store_key(path)
        prefix = key + "/" if key else ""
        entries: list = [".", ".."]
        for name, child in self.view.listing(key).items():
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
        return [(".", None), ("..", None), *self.view.listing(key, with_infos=True).items()]

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


def _untimed(namespace: Any) -> bool:
    """Whether the namespace's records never expire (``--metadata-ttl inf``)."""
    ttl = getattr(namespace, "ttl", 0)
    return ttl == float("inf")
