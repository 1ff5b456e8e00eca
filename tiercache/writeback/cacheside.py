"""The cache side of the write-back front, declared: what a WriteTier reads from the cache it feeds, and the
calls it makes into it as changes land at the store.

The composition root (``fuse/daemon.py``, ``fsspec_engine.py``, a library user) passes its ``TieredCache`` as
``cache=``; a TieredCache satisfies ``CacheSide`` as it is (``stat``, ``read``, ``admit_file``, ``invalidate``
and its ``namespace``). Without a cache the write tier reads the store itself and tells no one.

``CacheFeed`` is how the write-back calls the cache: one method per event, each a no-op without a cache, its
failures logged and never raised (the store is already right; the cache at worst revalidates or reads cold).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from ..store.base import ObjectInfo

log = logging.getLogger(__name__)


class NamespaceSide(Protocol):
    """The cache's directory tree, as the write-back uses it."""

    def info(self, path: str, revalidate: bool = True) -> ObjectInfo:
        """The stored object's info (mode, owner, mtime); NotFound / IsADirectory if it is none."""

    def add(self, info: ObjectInfo) -> None:
        """Show a file that just landed at the store."""

    def remove(self, path: str) -> None:
        """Forget a file whose delete is done at the store."""

    def remove_dir(self, path: str) -> None:
        """Forget a directory and everything below it (rmdir, or renamed away)."""

    def hide(self, predicate: Callable[[str], bool] | None) -> None:
        """Leave the keys ``predicate`` names out of every listing (deletes acknowledged, not yet done)."""


class CacheSide(Protocol):
    """What a WriteTier needs of the cache it feeds (a TieredCache is one)."""

    @property
    def namespace(self) -> NamespaceSide:
        """The cache's directory tree."""

    def stat(self, path: str) -> object:
        """An entry with ``is_dir`` of a stored file or directory; NotFound if neither."""

    def read(self, path: str, offset: int = 0, size: int | None = None) -> bytes | memoryview:
        """Bytes of a stored object (copy-on-write of an existing file reads through it)."""

    def admit_file(self, path: str, info: ObjectInfo, local_file: str) -> None:
        """Record a just-uploaded object and cache its bytes from ``local_file``."""

    def invalidate(self, path: str) -> None:
        """Drop cached bytes of ``path`` and distrust its info."""


class CacheFeed:
    """The write-back's calls into its cache (``cache`` None: none): each event one method, failures logged."""

    def __init__(self, cache: CacheSide | None):
        self.cache = cache

    def uploaded(self, key: str, info: ObjectInfo, local_file: str) -> None:
        """``key`` landed at the store from ``local_file``: the cache records it and keeps its bytes warm."""
        if self.cache is not None:
            self._call("admit_file", key, lambda: self.cache.admit_file(key, info, local_file))

    def changed(self, key: str) -> None:
        """``key`` changed (written, renamed, deleted here): its cached bytes and info are stale."""
        if self.cache is not None:
            self._call("invalidate", key, lambda: self.cache.invalidate(key))

    def added(self, info: ObjectInfo) -> None:
        """A file landed at the store under ``info.key`` (a copy, a metadata change): the namespace shows it."""
        if self.cache is not None:
            self._call("namespace.add", info.key, lambda: self.cache.namespace.add(info))

    def removed(self, key: str) -> None:
        """The delete of ``key`` is done at the store: the namespace forgets it."""
        if self.cache is not None:
            self._call("namespace.remove", key, lambda: self.cache.namespace.remove(key))

    def dir_removed(self, path: str) -> None:
        """Directory ``path`` was removed or renamed away here: the namespace forgets it and what is below."""
        if self.cache is not None:
            self._call("namespace.remove_dir", path, lambda: self.cache.namespace.remove_dir(path))

    def hide(self, predicate: Callable[[str], bool] | None) -> None:
        """Listings leave out the keys ``predicate`` names (the write tier's deletes not yet done)."""
        if self.cache is not None:
            self._call("namespace.hide", "", lambda: self.cache.namespace.hide(predicate))

    @staticmethod
    def _call(what: str, key: str, call: Callable[[], object]) -> None:
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - the store is right; the cache at worst reads cold
            log.warning("cache.%s(%s) failed: %s", what, key, exc)
