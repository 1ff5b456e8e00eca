"""A small persistent table keyed by path, for what a mount keeps beside the objects (xattrs.py,
overlay.py): one JSON record per path, in an LMDB env of the write dir, private (0700/0600).

Records follow the namespace: ``renamed`` moves a path's record and those below it, ``removed`` drops them.
Keys: ``p:`` + the path while it fits an LMDB key, else ``h:`` + its sha256 (the path is kept in the record,
so renames find those too).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import lmdb

from ..private import private_dir

_KEY_MAX = 480


class PathTable:
    """path → JSON-able dict; thread-safe. ``durable``: every change fsynced before it returns."""

    def __init__(self, directory: str | os.PathLike, durable: bool = True):
        self.path = Path(directory)
        private_dir(self.path)
        self.env = lmdb.open(str(self.path), map_size=1 << 34, max_dbs=1, sync=durable, metasync=durable,
                             mode=0o600)
        for name in ("data.mdb", "lock.mdb"):  # private whatever the umask
            os.chmod(self.path / name, 0o600)
        self.lock = threading.RLock()  # callers that read-modify-write hold it
        with self.env.begin() as txn:
            self._empty = txn.stat()["entries"] == 0

    def close(self) -> None:
        """Flush and release the env."""
        self.env.sync(True)
        self.env.close()

    def get(self, path: str) -> dict[str, Any] | None:
        """The record of ``path``, or None."""
        if self._empty:
            return None
        with self.env.begin() as txn:
            raw = txn.get(_key(path))
        return None if raw is None else json.loads(raw)["value"]

    def put(self, path: str, value: dict[str, Any] | None) -> None:
        """Store (or, with None or {}, drop) the record of ``path``."""
        with self.env.begin(write=True) as txn:
            if value:
                _put(txn, path, value)
                self._empty = False
            else:
                txn.delete(_key(path))

    def get_meta(self, name: bytes) -> bytes | None:
        """A table-wide value (keys outside the path space)."""
        with self.env.begin() as txn:
            return txn.get(b"m:" + name)

    def put_meta(self, name: bytes, value: bytes) -> None:
        """Store a table-wide value."""
        with self.env.begin(write=True) as txn:
            txn.put(b"m:" + name, value)
        self._empty = False

    def below(self, top: str) -> list[str]:
        """The paths with a record at or below ``top`` ("" the root: all of them)."""
        if self._empty:
            return []
        with self.env.begin() as txn:
            return [path for path, _ in _entries(txn, top)]

    def renamed(self, old: str, new: str) -> None:
        """``old`` (and everything below it) is now ``new``; what ``new`` had is dropped."""
        if self._empty:
            return
        with self.lock:
            with self.env.begin() as txn:
                moved, replaced = _entries(txn, old), _entries(txn, new)
            if not moved and not replaced:
                return  # the usual case: no write transaction per rename
            with self.env.begin(write=True) as txn:
                for path, _ in replaced + moved:
                    txn.delete(_key(path))
                for path, value in moved:
                    _put(txn, new + path[len(old):], value)

    def removed(self, path: str) -> None:
        """``path`` is gone: drop its record and those below it."""
        if self._empty:
            return
        with self.lock:
            with self.env.begin() as txn:
                gone = [entry for entry, _ in _entries(txn, path)]
            if gone:
                with self.env.begin(write=True) as txn:
                    for entry in gone:
                        txn.delete(_key(entry))


def _key(path: str) -> bytes:
    raw = path.encode("utf-8", "surrogateescape")
    if len(raw) + 2 <= _KEY_MAX:
        return b"p:" + raw
    return b"h:" + hashlib.sha256(raw).digest()


def _put(txn: lmdb.Transaction, path: str, value: dict[str, Any]) -> None:
    txn.put(_key(path), json.dumps({"path": path, "value": value}, separators=(",", ":")).encode())


def _entries(txn: lmdb.Transaction, top: str) -> list[tuple[str, dict[str, Any]]]:
    """(path, record) of ``top`` and of everything below it ("" the root: every path)."""
    out = []
    cursor = txn.cursor()
    for prefix in (b"p:" + top.encode("utf-8", "surrogateescape"), b"h:"):
        if not cursor.set_range(prefix):
            continue
        for key, raw in cursor:
            if not key.startswith(prefix):
                break
            record = json.loads(bytes(raw))
            path = record["path"]
            if not top or path == top or path.startswith(top + "/"):
                out.append((path, record["value"]))
    return out
