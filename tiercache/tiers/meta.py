"""The LMDB environment of a cache dir (object infos, listings, SSD index, regions, pins, misc) or of a
write dir (the journal).

Commits are not fsynced by default (``sync=False``): the cache's own metadata is rebuilt or re-validated
(checksums on every SSD read) after a crash. Callers that need durability before returning — the write
journal — call ``sync()`` right after their commit. Keys and values are bytes; JSON helpers are given.

Long keys. LMDB keys stop at ``max_key_size()`` (511 bytes); S3 keys go to 1,024 bytes and the keys built
from them (block ids, "dir:" + path, "/" + prefix) longer still. Every key goes through this module, which
stores a key of up to ``RAW_KEY_MAX`` bytes as itself and a longer one as its first ``RAW_KEY_MAX`` bytes,
``LONG_MARK`` and a digest of the whole key, with the whole key kept at the head of the value (checked on
every read). Stored lengths tell the two apart: a plain key is never longer than ``RAW_KEY_MAX``, a long one
is always exactly ``LONG_KEY_LEN``. A prefix scan stays correct: up to ``RAW_KEY_MAX`` bytes, every key
with the prefix is stored with it; a longer prefix seeks to its first ``RAW_KEY_MAX`` bytes and filters on
the whole keys. Scans return whole keys in key order. Callers never see stored keys: they use
``get``/``put``/``delete``/``scan`` here, or the transaction that ``write()`` yields.

Damage. A cache dir's environment is disposable (``disposable=True``): if it cannot be opened or walked
(``MDB_CORRUPTED``, "not an LMDB file"), it is moved aside to ``<dir>.corrupt`` with a warning and a fresh,
empty one is created. The journal's is not disposable: its errors propagate.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import logging
import os
import shutil
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb

from ..private import private_dir

log = logging.getLogger(__name__)

DATABASES = ("objects", "listings", "ssd_index", "regions", "journal", "pins", "misc")

RAW_KEY_MAX = 400
LONG_MARK = b"\0\xffL"
_DIGEST = 16
LONG_KEY_LEN = RAW_KEY_MAX + len(LONG_MARK) + _DIGEST  # 419, under LMDB's 511
_FULL_LEN = struct.Struct("<H")


def stored_key(key: bytes) -> bytes:
    """The LMDB key ``key`` is stored under (itself when short enough)."""
    if len(key) <= RAW_KEY_MAX:
        return key
    return key[:RAW_KEY_MAX] + LONG_MARK + hashlib.blake2b(key, digest_size=_DIGEST).digest()


def stored_value(key: bytes, value: bytes) -> bytes:
    """The LMDB value stored for ``key``: ``value``, led by the whole key when the key is long."""
    if len(key) <= RAW_KEY_MAX:
        return value
    return _FULL_LEN.pack(len(key)) + key + value


def loaded_item(stored: bytes, raw: bytes) -> tuple[bytes, bytes]:
    """(whole key, value) of one stored LMDB item (inverse of ``stored_key``/``stored_value``)."""
    if len(stored) != LONG_KEY_LEN:
        return stored, raw
    (n,) = _FULL_LEN.unpack_from(raw)
    return raw[_FULL_LEN.size:_FULL_LEN.size + n], raw[_FULL_LEN.size + n:]


def _loaded_value(key: bytes, raw: bytes | None) -> bytes | None:
    if raw is None or len(key) <= RAW_KEY_MAX:
        return raw
    whole, value = loaded_item(stored_key(key), raw)
    return value if whole == key else None  # a digest collision reads as absent


def _scan(txn: lmdb.Transaction, db: Any, prefix: bytes) -> list[tuple[bytes, bytes]]:
    seek = prefix[:RAW_KEY_MAX]
    out = []
    long_keys = False
    cursor = txn.cursor(db=db)
    if not cursor.set_range(seek):
        return out
    for stored, raw in cursor:
        if not stored.startswith(seek):
            break
        key, value = loaded_item(bytes(stored), bytes(raw))
        if len(stored) == LONG_KEY_LEN:
            long_keys = True
            if not key.startswith(prefix):
                continue
        elif len(prefix) > RAW_KEY_MAX:
            continue
        out.append((key, value))
    if long_keys:  # long keys sharing their first RAW_KEY_MAX bytes are stored in digest order
        out.sort()
    return out


_MADV_DONTNEED = 4  # Linux
_libc = None


def _mapping_of(path: str) -> tuple[int, int] | None:
    """(start, end) of this process's mapping of the file ``path`` (LMDB's map), from /proc/self/maps."""
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].rstrip("\n") == path:
                    start, _, end = fields[0].partition("-")
                    return int(start, 16), int(end, 16)
    except OSError:
        pass
    return None


def _c_library():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        _libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return _libc


def _madvise_dontneed(address: int, length: int) -> bool:
    if length <= 0:
        return False
    return _c_library().madvise(ctypes.c_void_p(address), ctypes.c_size_t(length), _MADV_DONTNEED) == 0


def trim_heap() -> bool:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``): what numpy arrays that
    grew, and LMDB's write buffers, left behind stays resident otherwise. False where there is none."""
    trim = getattr(_c_library(), "malloc_trim", None)
    return bool(trim is not None and trim(0))


class Txn:
    """One write transaction of a ``Meta``; every key is mapped as the module docstring says."""

    def __init__(self, txn: lmdb.Transaction):
        self.txn = txn

    def put(self, key: bytes, value: bytes, db: Any) -> None:
        """Store ``value`` under ``key``."""
        self.txn.put(stored_key(key), stored_value(key, value), db=db)

    def get(self, key: bytes, db: Any) -> bytes | None:
        """The value under ``key`` or None."""
        return _loaded_value(key, self.txn.get(stored_key(key), db=db))

    def delete(self, key: bytes, db: Any) -> bool:
        """Remove ``key``; True if it was there."""
        if len(key) > RAW_KEY_MAX and self.get(key, db) is None:
            return False
        return self.txn.delete(stored_key(key), db=db)

    def scan(self, db: Any, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
        """All (key, value) pairs whose key starts with ``prefix``, in key order."""
        return _scan(self.txn, db, prefix)

    def drop(self, db: Any, delete: bool = False) -> None:
        """Empty a sub-database (``delete=True`` removes it)."""
        self.txn.drop(db, delete=delete)


class Meta:
    """A thin wrapper over one LMDB environment with named sub-databases (see DATABASES)."""

    def __init__(self, path: str | Path, map_size: int = 1 << 38, disposable: bool = False):
        self.path = Path(path)
        self.map_size = map_size
        self.reset_reason = ""  # why a disposable environment was started over at open ("" if it was not)
        try:
            self._open()
            if disposable:
                self._walk()
        except lmdb.Error as exc:
            if not disposable:
                raise
            self._start_over(exc)
        self._write_lock = threading.Lock()
        self.reads: dict[str, int] = dict.fromkeys(DATABASES, 0)  # entries read by get/scan, per database

    def _open(self) -> None:
        private_dir(self.path)
        # map_size is address space, not disk: LMDB files grow only as data is written.
        self.env = lmdb.open(
            str(self.path), map_size=self.map_size, max_dbs=len(DATABASES) + 2, sync=False, metasync=False,
            writemap=False, max_readers=512, lock=True, mode=0o600,
        )
        try:
            self._dbs = {name: self.env.open_db(name.encode()) for name in DATABASES}
        except BaseException:
            self.env.close()
            raise
        for name in ("data.mdb", "lock.mdb"):
            try:
                os.chmod(self.path / name, 0o600)
            except FileNotFoundError:
                pass

    def _walk(self) -> None:
        """Touch the first and last entries of every sub-database (raises lmdb.Error where the path down to
        them is damaged): bounded work at open, whatever the size. Deeper damage is met when read; the SSD
        tier's checksums catch wrong bytes."""
        try:
            with self.env.begin() as txn:
                for db in self._dbs.values():
                    cursor = txn.cursor(db=db)
                    if cursor.first():
                        cursor.value()
                        cursor.last()
                        cursor.value()
        except BaseException:
            self.env.close()
            raise

    def _start_over(self, exc: lmdb.Error) -> None:
        aside = self.path.with_name(self.path.name + ".corrupt")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(self.path, aside)
        self.reset_reason = f"{type(exc).__name__}: {exc}"
        log.warning(
            "cache index %s is damaged (%s); moved it to %s and starting with an empty cache",
            self.path, self.reset_reason, aside,
        )
        self._open()

    def db(self, name: str) -> Any:
        """Handle of one sub-database."""
        return self._dbs[name]

    @contextmanager
    def write(self) -> Iterator[Txn]:
        """One write transaction (LMDB allows a single writer; callers batch their puts inside)."""
        with self._write_lock, self.env.begin(write=True) as txn:
            yield Txn(txn)

    def get(self, db: str, key: bytes) -> bytes | None:
        """Value of ``key`` or None."""
        self.reads[db] += 1
        with self.env.begin(db=self._dbs[db], buffers=False) as txn:
            return _loaded_value(key, txn.get(stored_key(key)))

    def get_many(self, db: str, keys: list[bytes]) -> list[bytes | None]:
        """Values of ``keys`` (None where absent), read in one transaction; background work, not counted."""
        with self.env.begin(db=self._dbs[db], buffers=False) as txn:
            return [_loaded_value(key, txn.get(stored_key(key))) for key in keys]

    def put(self, db: str, key: bytes, value: bytes) -> None:
        """Store one value in its own transaction."""
        with self.write() as txn:
            txn.put(key, value, db=self._dbs[db])

    def put_many(self, db: str, items: list[tuple[bytes, bytes]]) -> None:
        """Store many values in one transaction."""
        if items:
            with self.write() as txn:
                for key, value in items:
                    txn.put(key, value, db=self._dbs[db])

    def delete(self, db: str, key: bytes) -> bool:
        """Remove ``key``; True if it was there."""
        with self.write() as txn:
            return txn.delete(key, db=self._dbs[db])

    def delete_many(self, db: str, keys: list[bytes]) -> None:
        """Remove many keys in one transaction."""
        if keys:
            with self.write() as txn:
                for key in keys:
                    txn.delete(key, db=self._dbs[db])

    def scan(self, db: str, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
        """All (key, value) pairs whose key starts with ``prefix``, in key order."""
        with self.env.begin(db=self._dbs[db]) as txn:
            out = _scan(txn, self._dbs[db], prefix)
        self.reads[db] += len(out)
        return out

    def batches(self, db: str, size: int) -> Iterator[list[tuple[bytes, bytes]]]:
        """Every (key, value) pair of ``db`` in stored-key order, ``size`` at a time, each batch read in its
        own short transaction (a long walk holds no snapshot; entries changed meanwhile may or may not be
        seen). Not counted in ``reads``: this is background work."""
        after: bytes | None = None
        while True:
            out: list[tuple[bytes, bytes]] = []
            with self.env.begin(db=self._dbs[db]) as txn:
                cursor = txn.cursor()
                more = cursor.first() if after is None else cursor.set_range(after)
                if more and after is not None and cursor.key() == after:
                    more = cursor.next()
                while more and len(out) < size:
                    after = bytes(cursor.key())
                    out.append(loaded_item(after, bytes(cursor.value())))
                    more = cursor.next()
            if not out:
                return
            yield out
            if not more:
                return

    def delete_legacy(self, name: str) -> bool:
        """Delete the sub-database ``name`` of an older format if the environment has one."""
        try:
            with self._write_lock, self.env.begin(write=True) as txn:
                txn.drop(self.env.open_db(name.encode(), txn=txn, create=False), delete=True)
        except lmdb.NotFoundError:
            return False
        return True

    def release_pages(self) -> bool:
        """Let go of the environment's mapped pages (``madvise(MADV_DONTNEED)`` over LMDB's read-only shared
        map): they leave this process's RSS and stay in the page cache, so the next read of one is a minor
        fault. For walks that touch every page once (the SSD tier's background validation). False where
        the platform has no ``madvise``."""
        mapped = _mapping_of(os.path.realpath(self.path / "data.mdb"))
        if mapped is None:
            return False
        start, end = mapped
        length = (self.env.info()["last_pgno"] + 1) * self.env.stat()["psize"]
        return _madvise_dontneed(start, min(length, end - start))

    def page_bytes(self, db: str) -> int:
        """Bytes of the pages a sub-database's B-tree takes (its share of the file and of mapped pages)."""
        with self.env.begin(db=self._dbs[db]) as txn:
            st = txn.stat(self._dbs[db])
        return (st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]) * st["psize"]

    def count(self, db: str) -> int:
        """Number of entries in a sub-database."""
        with self.env.begin(db=self._dbs[db]) as txn:
            return txn.stat(self._dbs[db])["entries"]

    def get_json(self, db: str, key: str) -> Any:
        """Decode a JSON value stored under a str key, or None."""
        raw = self.get(db, key.encode())
        return None if raw is None else json.loads(raw)

    def put_json(self, db: str, key: str, value: Any) -> None:
        """Store a JSON-encodable value under a str key."""
        self.put(db, key.encode(), json.dumps(value, separators=(",", ":")).encode())

    def sync(self) -> None:
        """fsync everything committed so far (for callers that promise durability)."""
        self.env.sync(True)

    def close(self) -> None:
        """Flush and close the environment."""
        self.env.sync(True)
        self.env.close()
