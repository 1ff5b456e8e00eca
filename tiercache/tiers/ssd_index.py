"""The SSD tier's index of record, in LMDB: ``ssd_index`` maps a block's 12-byte digest (``block_key``)
→ ``Location.pack()`` (20 bytes for a block of one page). The full identity is not repeated here: it lives
once, in the block's record in its region file, and every read checks it (``ssd_format.py``), so a digest
collision is a miss, never another block's bytes. The digest is 8 bytes of the object key's hash then 4 of
the whole block id's, so one prefix scan finds every block of a key (any etag). Changes sit in one
in-memory write buffer that a background thread commits every few milliseconds, the tier's slot high-water
mark (``misc/ssd_next_slot``) with the first transaction of each flush. Buffered changes are read before
LMDB, so a change is visible the moment it is made. Committed values a read fetched from LMDB are kept in a
small read cache (``RECENT_MAX`` entries, oldest dropped first) so a hot block's read costs no LMDB
transaction: every change goes through ``set``/``clear``, which drop the key's cached value first, and a value
read from LMDB is cached only if no flush let a change of that key reach LMDB meanwhile (a value is never
older than the index). Every ``RELEASE_EVERY`` committed changes (a bulk load:
a warm), the environment's mapped pages are let go (``Meta.release_pages``: they stay in the page cache,
not in the process's RSS) and the C heap's free pages given back (``trim_heap``: the arrays' growth).
Slot → digest is not stored: it is rebuilt in memory by the background validation (``ssd_slots.py``).

Why digests (issue 12): the old index held the encoded id twice (block → entry, slot → block), ~300 bytes
per block on disk and in mapped pages; CacheLib navy's BlockCache keeps a key hash and a small entry per
item and the key with the data, verified on read; Mountpoint-S3's disk cache names a block by a hash of
(key, etag, block) and checks the full key stored in the block's header. This is the same, with LMDB
(opened, not loaded) as the index so that a restart is constant work.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import threading
import time
from collections.abc import Iterator

from .meta import Meta, trim_heap

log = logging.getLogger(__name__)

DB = "ssd_index"
LEGACY = ("ssd_slots",)  # sub-databases of older formats, deleted when the index is cleared
NEXT_SLOT = b"ssd_next_slot"
KEY_PART, BLOCK_PART = 8, 4
KEY_LEN = KEY_PART + BLOCK_PART
TXN_CHANGES = 512  # changes per write transaction: LMDB keeps the most pages one dirtied, for good
RECENT_MAX = 4096  # committed values kept in the read cache (about 300 bytes each for a 4 MiB block)
RELEASE_EVERY = 1 << 16  # changes (about 4 MiB of index pages) between letting go of the mapped pages
_IDENT = struct.Struct("<q")
_UNSET = object()


def _first(item: tuple[bytes, bytes | None]) -> bytes:
    return item[0]


def digest(data: bytes, size: int) -> bytes:
    """``size`` bytes of a hash of ``data`` (blake2b)."""
    return hashlib.blake2b(data, digest_size=size).digest()


def key_part(key: str) -> bytes:
    """The prefix every index key of object ``key``'s blocks starts with."""
    return digest(key.encode(), KEY_PART)


def block_key(block, ident: bytes | None = None) -> bytes:
    """The index key of a block (a ``BlockId``; ``ident``: its ``encode()``, when the caller has it)."""
    return digest(block.key.encode(), KEY_PART) + digest(block.encode() if ident is None else ident, BLOCK_PART)


def ident(key: bytes) -> int:
    """The 64-bit identity of an index key that the policy's ghost remembers (the low 32 bits are the
    block's own part; stable across processes; never 0)."""
    return _IDENT.unpack(key[KEY_PART:KEY_LEN] + key[:BLOCK_PART])[0] or 1


class SsdIndex:
    """Buffered, thread-safe access to the SSD index (see the module docstring)."""

    def __init__(self, meta: Meta, flush_interval: float = 0.005):
        self.meta = meta
        self.flush_interval = flush_interval
        self.next_slot = 0  # set by the tier; committed with every flush
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._pending: dict[bytes, bytes | None] = {}  # changes not yet committed (None: deleted)
        self._recent: dict[bytes, bytes] = {}  # committed values read lately (the read cache), oldest first
        self._flushes = 0  # flushes that took committed changes out of _pending (a cached read then retries)
        self._committed = self._released = 0  # changes committed; and when mapped pages were last let go
        self._stop = False
        self._wake = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="tiercache-ssd-index", daemon=True)
        self._flusher.start()

    def committed_next_slot(self) -> int:
        """The slot high-water mark on disk (0 for a new index)."""
        raw = self.meta.get("misc", NEXT_SLOT)
        return 0 if raw is None else int(raw)

    def get(self, key: bytes, remember: bool = True) -> bytes | None:
        """The current value of ``key`` (a ``block_key``: buffered or committed), or None. A committed value
        read from LMDB goes into the read cache unless ``remember`` is False (a look that only asks whether
        a block is resident, as a warm of a million blocks does, must not fill it)."""
        if len(key) != KEY_LEN:
            raise ValueError(f"an SSD index key is a {KEY_LEN}-byte block_key(block), not {len(key)} bytes")
        with self._lock:
            value = self._pending.get(key, _UNSET)
            if value is _UNSET:
                value = self._recent.get(key, _UNSET)
            flushes = self._flushes
        if value is not _UNSET:
            return value
        value = self.meta.get(DB, key)
        if value is not None and remember:
            with self._lock:  # not if a change of key is buffered, or was committed after the look above
                if flushes == self._flushes and key not in self._pending:
                    recent = self._recent
                    if len(recent) >= RECENT_MAX:
                        del recent[next(iter(recent))]
                    recent[key] = value
        return value

    def set(self, key: bytes, value: bytes | None) -> None:
        """Buffer a change (None deletes); the key's cached value goes."""
        with self._lock:
            self._pending[key] = value
            self._recent.pop(key, None)
        if not self._wake.is_set():
            self._wake.set()

    def cached(self) -> int:
        """Committed values held in the read cache."""
        return len(self._recent)

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
        """Forget every entry (at open, for an index of another format; older formats' sub-databases go)."""
        with self._lock:
            self._pending.clear()
            self._recent.clear()
            self._flushes += 1
        with self.meta.write() as txn:
            txn.drop(self.meta.db(DB), delete=False)
            txn.put(NEXT_SLOT, b"0", self.meta.db("misc"))
        with self._lock:  # nothing read while the drop ran stays cached
            self._recent.clear()
            self._flushes += 1
        for name in LEGACY:
            self.meta.delete_legacy(name)

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
        """Commit buffered changes to LMDB, ``TXN_CHANGES`` a transaction (random digests dirty a page each),
        the slot high-water mark with the first."""
        with self._flush_lock:
            with self._lock:
                items = list(self._pending.items())
                next_slot = self.next_slot
            if not items:
                return
            items.sort(key=_first)  # in key order: each leaf page is visited once
            db = self.meta.db(DB)
            for start in range(0, len(items), TXN_CHANGES):
                with self.meta.write() as txn:
                    for key, value in items[start:start + TXN_CHANGES]:
                        if value is None:
                            txn.delete(key, db=db)
                        else:
                            txn.put(key, value, db=db)
                    if start == 0:  # first: the mark on disk is never below a committed entry's slot
                        txn.put(NEXT_SLOT, str(next_slot).encode(), self.meta.db("misc"))
            with self._lock:
                self._flushes += 1
                for key, value in items:
                    if key in self._pending and self._pending[key] is value:
                        del self._pending[key]
                if not self._pending:
                    self._pending = {}  # a dict keeps its largest table: let a backlog's go
            self._committed += len(items)
            if self._committed - self._released >= RELEASE_EVERY:
                self.meta.release_pages()
                trim_heap()
                self._released = self._committed

    def close(self) -> None:
        """Stop the flusher and commit what is buffered."""
        if not self._stop:
            self._stop = True
            self._wake.set()
            self._flusher.join()
        self.flush()
