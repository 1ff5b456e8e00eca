"""The SSD tier's index: ``BlockId.encode()`` → ``Location.pack()`` in the LMDB sub-database ``ssd_index``,
behind an in-memory write buffer that a background thread commits every few milliseconds in one
transaction. Buffered changes are read before LMDB, so a change is visible the moment it is made.
"""

from __future__ import annotations

import logging
import threading
import time

from .meta import Meta

log = logging.getLogger(__name__)

DB = "ssd_index"
_UNSET = object()


class SsdIndex:
    """Buffered, thread-safe access to the SSD index (see the module docstring)."""

    def __init__(self, meta: Meta, flush_interval: float = 0.005):
        self.meta = meta
        self.flush_interval = flush_interval
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._pending: dict[bytes, bytes | None] = {}  # changes not yet committed (None: deleted)
        self._stop = False
        self._wake = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="tiercache-ssd-index", daemon=True)
        self._flusher.start()

    def get(self, key: bytes) -> bytes | None:
        """The current value of ``key`` (buffered or committed), or None."""
        with self._lock:
            value = self._pending.get(key, _UNSET)
        return self.meta.get(DB, key) if value is _UNSET else value

    def set(self, key: bytes, value: bytes | None) -> None:
        """Buffer a change (None deletes)."""
        with self._lock:
            self._pending[key] = value
        if not self._wake.is_set():
            self._wake.set()

    def scan(self, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
        """Current (key, value) pairs whose key starts with ``prefix``, in key order."""
        with self._lock:
            pending = {k: v for k, v in self._pending.items() if k.startswith(prefix)}
        items = dict(self.meta.scan(DB, prefix))
        for key, value in pending.items():
            if value is None:
                items.pop(key, None)
            else:
                items[key] = value
        return sorted(items.items())

    def delete_committed(self, keys: list[bytes]) -> None:
        """Remove entries straight from LMDB (at open, before anything is buffered)."""
        self.meta.delete_many(DB, keys)

    def clear(self) -> None:
        """Forget every entry (at open, for an index of another format)."""
        with self._lock:
            self._pending.clear()
        with self.meta.write() as txn:
            txn.drop(self.meta.db(DB), delete=False)

    def _flush_loop(self) -> None:
        while True:
            self._wake.wait()
            if not self._stop:
                time.sleep(self.flush_interval)  # let a batch gather
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - keep flushing; entries stay buffered and readable
                log.exception("ssd tier: index flush failed")
            if self._stop:
                return

    def flush(self) -> None:
        """Commit buffered changes to LMDB in one transaction."""
        with self._flush_lock:
            with self._lock:
                items = list(self._pending.items())
            if not items:
                return
            db = self.meta.db(DB)
            with self.meta.write() as txn:
                for key, value in items:
                    if value is None:
                        txn.delete(key, db=db)
                    else:
                        txn.put(key, value, db=db)
            with self._lock:
                for key, value in items:
                    if key in self._pending and self._pending[key] is value:
                        del self._pending[key]

    def close(self) -> None:
        """Stop the flusher and commit what is buffered."""
        if not self._stop:
            self._stop = True
            self._wake.set()
            self._flusher.join()
        self.flush()
