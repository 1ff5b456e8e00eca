"""What the write tier's parts share: the lock, the journal, the pending changes, the open files and the
pending namespace (directories made here, paths written but not yet uploaded).

Every method of ``OpenFiles`` and ``PendingNames`` is called with ``WriteState.cond`` held.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, ReadOnly
from ..store.base import ObjectStore
from .cacheside import CacheFeed, CacheSide
from .changes import Changes
from .journal import Journal, Record
from .staging import StagedFile

if TYPE_CHECKING:
    from .uploader import Uploader

MODES = ("writeback", "writethrough", "readonly")


class PendingNames:
    """Which paths the write tier makes exist before the store knows them: ``live`` (pending upload or open
    for write), ``dirs`` (made with mkdir: path → mtime) and ``implied`` (parents of those)."""

    def __init__(self) -> None:
        self.live: Counter[str] = Counter()
        self.implied: Counter[str] = Counter()
        self.dirs: dict[str, float] = {}

    def is_dir(self, path: str) -> bool:
        """Made here with mkdir, or the parent of something pending."""
        return path in self.dirs or bool(self.implied[path])

    def live_add(self, path: str, delta: int) -> None:
        """``path`` starts (+1) or stops (-1) being written by an open file or a pending change."""
        before = self.live[path] > 0
        self.live[path] += delta
        if self.live[path] <= 0:
            del self.live[path]
        if before != (path in self.live):
            self.imply(path, delta)

    def imply(self, path: str, delta: int) -> None:
        """Count ``path``'s parents as directories (+1) or stop counting them (-1)."""
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            self.implied[parent] += delta
            if self.implied[parent] <= 0:
                del self.implied[parent]

    def add_dirs(self, journal: Journal, dirs: dict[str, float]) -> None:
        """Record made directories (journaled, not yet fsynced)."""
        dirs = {p: t for p, t in dirs.items() if p not in self.dirs}
        for path, mtime in dirs.items():
            self.dirs[path] = mtime
            self.imply(path, +1)
        journal.set_dirs(add=dirs)

    def remove_dirs(self, journal: Journal, paths: list[str]) -> None:
        """Forget removed directories (journaled, not yet fsynced)."""
        paths = [p for p in paths if self.dirs.pop(p, None) is not None]
        for path in paths:
            self.imply(path, -1)
        journal.set_dirs(remove=paths)

    def paths(self) -> Iterator[str]:
        """Every live path and made directory."""
        return itertools.chain(self.live, self.dirs)


class OpenFiles:
    """The files open for writing: one StagedFile per path, any number of int handles on each."""

    def __init__(self, names: PendingNames):
        self.names = names
        self.by_path: dict[str, StagedFile] = {}
        self.by_handle: dict[int, StagedFile] = {}
        self.owners: dict[int, Any] = {}  # handle → who opened it (the caller's token, e.g. a process id)
        self.abandoned: set[int] = set()  # handles whose writer was killed (see ``abandon``)
        self._fhs = itertools.count(1)

    def get(self, path: str) -> StagedFile | None:
        """The open file of ``path``, if any."""
        return self.by_path.get(path)

    def handle(self, fh: int) -> StagedFile | None:
        """The file behind handle ``fh``, if it is open."""
        return self.by_handle.get(fh)

    def new_handle(self, sf: StagedFile, owner: Any = None) -> int:
        """A new handle on ``sf`` (it gains a reference), opened by ``owner`` (None: unknown)."""
        fh = next(self._fhs)
        self.by_handle[fh] = sf
        if owner is not None:
            self.owners[fh] = owner
        sf.refs += 1
        return fh

    def abandon(self, fh: int) -> None:
        """Handle ``fh``'s writer was killed before closing it: its release publishes nothing new."""
        self.abandoned.add(fh)

    def owner(self, fh: int) -> Any:
        """Who opened handle ``fh`` (None: unknown)."""
        return self.owners.get(fh)

    def pop_handle(self, fh: int) -> StagedFile | None:
        """Forget handle ``fh`` (the caller drops its reference); returns its file."""
        self.owners.pop(fh, None)
        self.abandoned.discard(fh)
        return self.by_handle.pop(fh, None)

    def handles(self) -> list[int]:
        """Every open handle."""
        return list(self.by_handle)

    def register(self, sf: StagedFile) -> StagedFile:
        """Make ``sf`` the open file of its path."""
        self.by_path[sf.path] = sf
        self.names.live_add(sf.path, +1)
        return sf

    def unregister(self, sf: StagedFile) -> None:
        """``sf`` is no longer the open file of its path (closed, unlinked or renamed)."""
        if self.by_path.get(sf.path) is sf:
            del self.by_path[sf.path]
            self.names.live_add(sf.path, -1)


@dataclass(eq=False)
class WriteState:
    """The parts of one write tier, shared by its modules (``handles``, ``view``, ``namespace``)."""

    store: ObjectStore
    cache: CacheSide | None
    feed: CacheFeed
    mode: str
    journal: Journal
    cond: threading.Condition
    names: PendingNames
    files: OpenFiles
    changes: Changes
    uploader: Uploader | None = None
    closing: bool = False

    def writable(self) -> None:
        """Raise ReadOnly unless writes are accepted now."""
        if self.mode == "readonly":
            raise ReadOnly("read-only: writes are refused (mode readonly)")
        if self.closing:
            raise ReadOnly("the write tier is closing")

    def acknowledged(self, dropped: list[Record], *paths: str, sync: bool = True) -> None:
        """After a journal change: make it durable (unless ``sync`` is False: the change is already durable
        in another form), delete superseded staging files, drop stale cache data."""
        if sync:
            self.journal.sync()
        self.journal.discard(dropped)
        for path in paths:
            self.feed.changed(path)


def norm_path(path: str) -> str:
    """A store key from a caller's path; ConfigError for empty, "." or ".." parts."""
    clean = path.strip("/")
    if not clean or any(part in ("", ".", "..") for part in clean.split("/")):
        raise ConfigError(f"invalid path {path!r}")
    return clean

