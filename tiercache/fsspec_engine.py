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
from pathlib import Path
from typing import Any

from .config import CacheConfig
from .errors import ConfigError, ReadOnly
from .merged_view import MergedView

log = logging.getLogger(__name__)

DRAIN_TIMEOUT = 60.0


class Engine:
    """A TieredCache and (unless read-only) a WriteTier over its store, and their merged view (``view``:
    merged_view.MergedView, what the filesystem reads)."""

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
        self.view = MergedView(self.cache, self.writes, self.started)

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
