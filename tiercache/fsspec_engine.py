"""One engine per cache dir in a process, shared by every fsspec filesystem over it: a TieredCache plus, unless
read-only, the durable write tier, and the view of both that the filesystem reads (pending writes first).

fsspec makes a new filesystem instance per distinct set of arguments and per thread, and a chained URL
(``tiercache::s3://bucket/key``) passes the file's path as an argument; a cache dir has one owner per process
(its lock file), so instances share the engine of their cache dir instead of opening it again. Engines are
closed at interpreter exit (pending uploads drained up to ``DRAIN_TIMEOUT``; what is left resumes at the next
open from the journal) or by ``close_all``.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import CacheConfig
from .errors import ConfigError, IsADirectory, NotADirectory, NotFound, ReadOnly

log = logging.getLogger(__name__)

DRAIN_TIMEOUT = 60.0


@dataclass
class Node:
    """A file or directory as the view sees it (pending writes merged over the cache's metadata)."""

    key: str
    is_dir: bool
    size: int
    mtime: float
    etag: str | None = None


class Engine:
    """A TieredCache and (unless read-only) a WriteTier over its store, with a merged read view."""

    def __init__(self, config: CacheConfig):
        from .cache import TieredCache

        self.config = config
        self.cache = TieredCache(config)
        self.writes: Any = None
        self.started = time.time()
        if config.mode != "readonly":
            from .writeback.front import WriteTier

            write_dir = config.write_dir or Path(config.cache_dir) / "write"
            try:
                self.writes = WriteTier(self.cache.store, write_dir, cache=self.cache, mode=config.mode,
                                        limit_bytes=config.write_limit)
            except BaseException:
                self.cache.close()
                raise

    # ---------------------------------------------------------------- reads

    def node(self, key: str) -> Node:
        """The file or directory at ``key`` ("" is the root); NotFound if neither."""
        if not key:
            return Node("", True, 0, self.started)
        if self.writes is not None:
            pending = self.writes.pending_entry(key)
            if pending is not None:
                return Node(key, bool(pending["is_dir"]), int(pending["size"]), float(pending["mtime"]))
            if self.writes.is_deleted(key):
                raise NotFound(f"{key}: no such file or directory")
        entry = self.cache.stat(key)
        if entry.is_dir and not self._holds_a_file(key):
            raise NotFound(f"{key}: no such file or directory")
        return Node(key, bool(entry.is_dir), int(entry.size), float(entry.mtime or self.started), entry.etag)

    def _holds_a_file(self, key: str) -> bool:
        """Whether a directory of the cached listing still has a file below it: the listing keeps the
        directories of files deleted since it was made (the store has no directories of its own)."""
        namespace = self.cache.namespace
        for info in namespace.files(key):
            if self.writes is not None and self.writes.is_deleted(info.key):
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
                if info.key in found or (self.writes is not None and self.writes.is_deleted(info.key)):
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

    # ---------------------------------------------------------------- writes

    def writable(self) -> Any:
        """The write tier; ReadOnly when the engine has none."""
        if self.writes is None:
            raise ReadOnly(f"{self.config.source} is open read-only (mode readonly)")
        return self.writes

    def close(self) -> None:
        """Drain pending uploads (bounded), close the write tier, then the cache."""
        try:
            if self.writes is not None:
                self.writes.close(drain=True, timeout=DRAIN_TIMEOUT)
        finally:
            self.cache.close()


_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def engine_for(config: CacheConfig) -> Engine:
    """The process's engine for ``config.cache_dir``, opened on first use; ConfigError if that cache dir is
    open for another source or mode here."""
    key = str(Path(config.cache_dir).resolve())
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = Engine(config)
            return engine
    if engine.config.source != config.source:
        raise ConfigError(f"cache dir {config.cache_dir} is already open in this process for "
                          f"{engine.config.source}; give {config.source} its own ssd= dir")
    if engine.config.mode != config.mode:
        raise ConfigError(f"cache dir {config.cache_dir} is already open in this process in mode "
                          f"{engine.config.mode}, not {config.mode}")
    return engine


def close_all() -> None:
    """Close every engine of this process (at exit; tests)."""
    with _lock:
        engines = list(_engines.values())
        _engines.clear()
    for engine in engines:
        try:
            engine.close()
        except Exception:  # noqa: BLE001 - at exit: log and go on with the others
            log.exception("closing the tiercache engine of %s failed", engine.config.cache_dir)


def _at_exit() -> None:
    """Close engines before the interpreter stops its thread pools (uploads need boto3's executor)."""
    register = getattr(threading, "_register_atexit", None)  # runs before concurrent.futures shuts down
    if register is None:
        atexit.register(close_all)
    else:
        register(close_all)


_at_exit()
