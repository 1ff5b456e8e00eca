"""The SSD tier's index of record, in LMDB: ``ssd_index`` maps ``BlockId.encode()`` → ``Location.pack()``
and ``ssd_slots`` maps each slot (the block's dense integer id) back to its encoded block id. Both sit behind
one in-memory write buffer that a background thread commits every few milliseconds in one transaction,
with the tier's slot high-water mark (``misc/ssd_next_slot``), so the two maps and the mark always agree
on disk. Buffered changes are read before LMDB, so a change is visible the moment it is made.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Iterator

from .meta import Meta

log = logging.getLogger(__name__)

DB = "ssd_index"
SLOTS = "ssd_slots"
NEXT_SLOT = b"ssd_next_slot"
_SLOT = struct.Struct(">I")  # big-endian: slots scan in numeric order
_UNSET = object()


def slot_key(slot: int) -> bytes:
    """The ``ssd_slots`` key of a slot."""
    return _SLOT.pack(slot)


class SsdIndex:
    """Buffered, thread-safe access to the SSD index and its slot map (see the module docstring)."""

    def __init__(self, meta: Meta, flush_interval: float = 0.005):
        self.meta = meta
        self.flush_interval = flush_interval
        self.next_slot = 0  # set by the tier; committed with every flush
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._pending: dict[bytes, bytes | None] = {}  # changes not yet committed (None: deleted)
        self._pending_slots: dict[int, bytes | None] = {}
        self._stop = False
        self._wake = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="tiercache-ssd-index", daemon=True)
        self._flusher.start()

    def committed_next_slot(self) -> int:
        """The slot high-water mark on disk (0 for a new index)."""
        raw = self.meta.get("misc", NEXT_SLOT)
        return 0 if raw is None else int(raw)

    def get(self, key: bytes) -> bytes | None:
        """The current value of ``key`` (buffered or committed), or None."""
        with self._lock:
            value = self._pending.get(key, _UNSET)
        return self.meta.get(DB, key) if value is _UNSET else value

    def key_of(self, slot: int) -> bytes | None:
        """The encoded block id slot ``slot`` holds (buffered or committed), or None."""
        with self._lock:
            value = self._pending_slots.get(slot, _UNSET)
        return self.meta.get(SLOTS, slot_key(slot)) if value is _UNSET else value

    def keys_of(self, slots: list[int]) -> list[bytes | None]:
        """``key_of`` for many slots in one read transaction (background validation)."""
        keys = self.meta.get_many(SLOTS, [slot_key(s) for s in slots])
        with self._lock:
            return [self._pending_slots.get(s, k) for s, k in zip(slots, keys, strict=True)]

    def set(self, key: bytes, value: bytes | None) -> None:
        """Buffer a change (None deletes)."""
        with self._lock:
            self._pending[key] = value
        if not self._wake.is_set():
            self._wake.set()

    def set_slot(self, slot: int, key: bytes | None) -> None:
        """Buffer a change of the slot map (None frees the slot)."""
        with self._lock:
            self._pending_slots[slot] = key
        if not self._wake.is_set():
            self._wake.set()

    def count(self) -> int:
        """Committed entries (exact when nothing is buffered, as at open)."""
        return self.meta.count(DB)

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

    def committed_batches(self, size: int) -> Iterator[list[tuple[bytes, bytes]]]:
        """Committed (key, value) pairs, ``size`` at a time (background validation; see Meta.batches)."""
        return self.meta.batches(DB, size)

    def clear(self) -> None:
        """Forget every entry (at open, for an index of another format)."""
        with self._lock:
            self._pending.clear()
            self._pending_slots.clear()
        with self.meta.write() as txn:
            txn.drop(self.meta.db(DB), delete=False)
            txn.drop(self.meta.db(SLOTS), delete=False)
            txn.put(NEXT_SLOT, b"0", self.meta.db("misc"))

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
        """Commit buffered changes (and the slot high-water mark) to LMDB in one transaction."""
        with self._flush_lock:
            with self._lock:
                items = list(self._pending.items())
                slots = list(self._pending_slots.items())
                next_slot = self.next_slot
            if not items and not slots:
                return
            db, slot_db = self.meta.db(DB), self.meta.db(SLOTS)
            with self.meta.write() as txn:
                for key, value in items:
                    if value is None:
                        txn.delete(key, db=db)
                    else:
                        txn.put(key, value, db=db)
                for slot, key in slots:
                    if key is None:
                        txn.delete(slot_key(slot), db=slot_db)
                    else:
                        txn.put(slot_key(slot), key, db=slot_db)
                txn.put(NEXT_SLOT, str(next_slot).encode(), self.meta.db("misc"))
            with self._lock:
                for key, value in items:
                    if key in self._pending and self._pending[key] is value:
                        del self._pending[key]
                for slot, key in slots:
                    if slot in self._pending_slots and self._pending_slots[slot] is key:
                        del self._pending_slots[slot]

    def close(self) -> None:
        """Stop the flusher and commit what is buffered."""
        if not self._stop:
            self._stop = True
            self._wake.set()
            self._flusher.join()
        self.flush()
