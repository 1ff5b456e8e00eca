"""The one LMDB environment of a cache dir: object infos, listings, SSD index, regions, write journal, pins.

Commits are not fsynced by default (``sync=False``): the cache's own metadata is rebuilt or re-validated
(crc32 on every SSD read) after a crash. Callers that need durability before returning — the write
journal — call ``sync()`` right after their commit. Keys and values are bytes; JSON helpers are given.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb

DATABASES = ("objects", "listings", "ssd_index", "regions", "journal", "pins", "misc")


class Meta:
    """A thin wrapper over one LMDB environment with named sub-databases (see DATABASES)."""

    def __init__(self, path: str | Path, map_size: int = 1 << 38):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        # map_size is address space, not disk: LMDB files grow only as data is written.
        self.env = lmdb.open(
            str(self.path), map_size=map_size, max_dbs=len(DATABASES) + 2, sync=False, metasync=False,
            writemap=False, max_readers=512, lock=True,
        )
        self._dbs = {name: self.env.open_db(name.encode()) for name in DATABASES}
        self._write_lock = threading.Lock()

    def db(self, name: str) -> Any:
        """Handle of one sub-database."""
        return self._dbs[name]

    @contextmanager
    def write(self) -> Iterator[lmdb.Transaction]:
        """One write transaction (LMDB allows a single writer; callers batch their puts inside)."""
        with self._write_lock, self.env.begin(write=True) as txn:
            yield txn

    def get(self, db: str, key: bytes) -> bytes | None:
        """Value of ``key`` or None."""
        with self.env.begin(db=self._dbs[db], buffers=False) as txn:
            return txn.get(key)

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
        out = []
        with self.env.begin(db=self._dbs[db]) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(prefix):
                return out
            for key, value in cursor:
                if not key.startswith(prefix):
                    break
                out.append((bytes(key), bytes(value)))
        return out

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
