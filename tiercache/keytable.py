"""KeyTable: object keys interned as dense int32 ids, held in a few numpy arrays (no Python object per key).

Plans name files by id. The table holds every key once, however many plans (and epochs within a plan)
name it: the UTF-8 bytes of all keys in one buffer with an offset array (id → bytes), and the keys'
64-bit hashes sorted with their ids beside them (key → id by binary search). Lookups read one immutable
snapshot of those arrays; adding keys builds new arrays outside the lock and swaps them in by reference,
so a reader never waits on a large plan being interned.

Ids come from Python's 64-bit string hash (SipHash, fixed for the life of the process; the table is never
persisted). Two distinct keys with the same hash (odds about n²/2⁶⁵: 3·10⁻⁸ for a million keys) would
share an id: a plan is a hint for prefetch and eviction, so that costs at most a wasted prefetch.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["KeyTable"]


@dataclass(frozen=True)
class _Snapshot:
    hashes: np.ndarray  # int64, sorted
    ids: np.ndarray  # int32, the id of hashes[i]
    offsets: np.ndarray  # int64[n + 1]: key id i is blob[offsets[i]:offsets[i + 1]]
    blob: bytes


_EMPTY = _Snapshot(np.empty(0, np.int64), np.empty(0, np.int32), np.zeros(1, np.int64), b"")


_CHUNK = 1 << 15  # keys per C-level call: each holds the GIL, so readers never wait long on a big plan


def hashes_of(keys: Sequence[str]) -> np.ndarray:
    """The 64-bit hashes of ``keys`` (int64), in order."""
    out = np.empty(len(keys), np.int64)
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start:start + _CHUNK]
        out[start:start + len(chunk)] = np.fromiter(map(hash, chunk), dtype=np.int64, count=len(chunk))
    return out


class KeyTable:
    """Key ↔ int32 id; thread-safe; ``nbytes`` is its whole footprint."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snap = _EMPTY

    def __len__(self) -> int:
        return len(self._snap.offsets) - 1

    @property
    def nbytes(self) -> int:
        """Bytes held by the table's arrays and key buffer."""
        s = self._snap
        return s.hashes.nbytes + s.ids.nbytes + s.offsets.nbytes + len(s.blob)

    def intern(self, keys: Sequence[str]) -> np.ndarray:
        """The ids of ``keys`` (int32, in order), adding the keys not known yet."""
        hashes = hashes_of(keys)
        order = np.argsort(hashes)  # queries in hash order: the binary searches walk memory in order
        ids, known = self._find(self._snap, hashes, order)
        if known.all():
            return ids
        with self._lock:  # one writer at a time; readers keep using the snapshot they hold
            snap = self._snap
            ids, known = self._find(snap, hashes, order)
            unknown = order[~known[order]]  # indices of unknown keys, in hash order
            if len(unknown):
                sorted_new = hashes[unknown]
                starts = np.flatnonzero(np.concatenate([[True], sorted_new[1:] != sorted_new[:-1]]))
                firsts = np.sort(np.minimum.reduceat(unknown, starts))  # each new key's first index, in order
                new_keys = list(keys) if len(firsts) == len(keys) else [keys[i] for i in firsts.tolist()]
                new_hashes = hashes[firsts]
                blob, lengths = _encode(new_keys)
                start = len(snap.offsets) - 1
                new_ids = np.arange(start, start + len(new_keys), dtype=np.int32)
                offsets = np.concatenate([snap.offsets, snap.offsets[-1] + np.cumsum(lengths)])
                all_hashes = np.concatenate([snap.hashes, new_hashes])
                all_ids = np.concatenate([snap.ids, new_ids])
                merged = np.argsort(all_hashes)
                snap = _Snapshot(all_hashes[merged], all_ids[merged], offsets, snap.blob + blob)
                self._snap = snap
                ids, _ = self._find(snap, hashes, order)
            return ids

    def lookup(self, key: str) -> int:
        """The id of ``key``, or -1 when no plan named it."""
        snap = self._snap
        h = hash(key)
        i = int(snap.hashes.searchsorted(h))
        if i < len(snap.hashes) and snap.hashes[i] == h:
            return int(snap.ids[i])
        return -1

    def lookup_many(self, keys: Sequence[str]) -> np.ndarray:
        """The ids of ``keys`` (int32; -1 for unknown ones)."""
        ids, known = self._find(self._snap, hashes_of(keys))
        ids[~known] = -1
        return ids

    def key(self, key_id: int) -> str:
        """The key with id ``key_id``."""
        snap = self._snap
        return snap.blob[snap.offsets[key_id]:snap.offsets[key_id + 1]].decode()

    def clear(self) -> None:
        """Forget every key (when no plan is left)."""
        with self._lock:
            self._snap = _EMPTY

    @staticmethod
    def _find(snap: _Snapshot, hashes: np.ndarray, order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, known) of ``hashes``; ``order`` (their argsort) makes the searches cache-friendly."""
        if not len(snap.hashes):
            return np.full(len(hashes), -1, np.int32), np.zeros(len(hashes), bool)
        queries = hashes if order is None else hashes[order]
        at = np.minimum(snap.hashes.searchsorted(queries), len(snap.hashes) - 1)
        found = snap.hashes[at] == queries
        if order is None:
            return snap.ids[at], found
        ids = np.empty(len(hashes), np.int32)
        known = np.empty(len(hashes), bool)
        ids[order] = snap.ids[at]
        known[order] = found
        return ids, known


def _encode(keys: list[str]) -> tuple[bytes, np.ndarray]:
    """The UTF-8 bytes of ``keys`` back to back, and each key's length in bytes."""
    blobs, lengths = [], []
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start:start + _CHUNK]
        blob = "".join(chunk).encode()
        sizes = np.fromiter(map(len, chunk), dtype=np.int64, count=len(chunk))
        if len(blob) != int(sizes.sum()):  # not all ASCII: lengths in bytes differ from those in characters
            sizes = np.fromiter((len(k.encode()) for k in chunk), dtype=np.int64, count=len(chunk))
        blobs.append(blob)
        lengths.append(sizes)
    return b"".join(blobs), (np.concatenate(lengths) if lengths else np.empty(0, np.int64))
