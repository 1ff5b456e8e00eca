"""KeyTable: object keys interned as dense int32 ids, held in a few numpy arrays (no Python object per key).

Plans name files by id. The table holds every key once, however many plans (and epochs within a plan)
name it: the UTF-8 bytes of all keys in one buffer, each followed by a newline byte, with an offset array
(id → bytes), and the keys' 64-bit hashes sorted with their ids beside them (key → id by binary search).
Lookups read one immutable snapshot of those arrays; adding keys builds new arrays outside the lock and
swaps them in by reference, so a reader never waits on a large plan being interned. Keys come in as a
:class:`~tiercache.keybatch.KeyBatch` (or a list of strings, turned into one): hashing and picking the new
keys are vectorised, with no Python object per key.

Footprint per distinct key: 8 (hash) + 4 (id) + 8 (offset) + 1 (terminator) bytes + the key's bytes.

Ids come from :func:`~tiercache.keybatch.key_hash` (64 bits). Two distinct keys with the same hash (odds
about n²/2⁶⁵: 3·10⁻⁸ for a million keys) would share an id: a plan is a hint for prefetch and eviction,
so that costs at most a wasted prefetch.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .keybatch import KeyBatch, key_hash

__all__ = ["KeyTable", "as_batch"]


@dataclass(frozen=True)
class _Snapshot:
    hashes: np.ndarray  # int64, sorted
    ids: np.ndarray  # int32, the id of hashes[i]
    offsets: np.ndarray  # int64[n + 1]: key id i is blob[offsets[i]:offsets[i + 1] - 1] (then a newline)
    blob: np.ndarray  # uint8


_EMPTY = _Snapshot(np.empty(0, np.int64), np.empty(0, np.int32), np.zeros(1, np.int64), np.zeros(0, np.uint8))


_RECENT = 4096  # lookups remembered per snapshot


def as_batch(keys: Sequence[str] | KeyBatch) -> KeyBatch:
    """``keys`` as a KeyBatch (a batch is used as it is)."""
    return keys if isinstance(keys, KeyBatch) else KeyBatch.from_strings(keys)


class KeyTable:
    """Key ↔ int32 id; thread-safe; ``nbytes`` is its whole footprint."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snap = _EMPTY
        self._recent: tuple[_Snapshot, dict[str, int]] = (_EMPTY, {})  # lookups of one snapshot

    def __len__(self) -> int:
        return len(self._snap.offsets) - 1

    @property
    def nbytes(self) -> int:
        """Bytes held by the table's arrays and key buffer."""
        s = self._snap
        return s.hashes.nbytes + s.ids.nbytes + s.offsets.nbytes + s.blob.nbytes

    def intern(self, keys: Sequence[str] | KeyBatch, hashes: np.ndarray | None = None) -> np.ndarray:
        """The ids of ``keys`` (int32, in order), adding the keys not known yet; ``hashes``: the batch's
        :meth:`~tiercache.keybatch.KeyBatch.hashes` when already computed."""
        batch = as_batch(keys)
        if hashes is None:
            hashes = batch.hashes()
        order = np.argsort(hashes)  # queries in hash order: the binary searches walk memory in order
        ids, known = self._find(self._snap, hashes, order)
        if known.all():
            return ids
        with self._lock:  # one writer at a time; readers keep using the snapshot they hold
            snap = self._snap
            ids, known = self._find(snap, hashes, order)
            if not len(snap.hashes):  # the first plan: often every key is new and named once
                sorted_hashes = hashes[order]
                if not (sorted_hashes[1:] == sorted_hashes[:-1]).any():
                    blob, lengths = batch.take(np.arange(len(hashes)))
                    offsets = np.concatenate([snap.offsets, np.cumsum(lengths + 1)])
                    ids = np.arange(len(hashes), dtype=np.int32)
                    self._snap = _Snapshot(sorted_hashes, order.astype(np.int32), offsets, blob)
                    return ids
            unknown = order[~known[order]]  # indices of unknown keys, in hash order
            if not len(unknown):
                return ids
            sorted_new = hashes[unknown]
            runs = np.flatnonzero(np.concatenate([[True], sorted_new[1:] != sorted_new[:-1]]))
            first_of_run = np.minimum.reduceat(unknown, runs)  # each new key's first index, in hash order
            is_first = np.zeros(len(hashes), bool)
            is_first[first_of_run] = True
            firsts = np.flatnonzero(is_first)  # ... in plan order: new ids are given in that order
            rank = (np.cumsum(is_first) - 1)[first_of_run]
            blob, lengths = batch.take(firsts)
            start = len(snap.offsets) - 1
            new_hashes = sorted_new[runs]
            new_ids = (start + rank).astype(np.int32)  # in hash order
            offsets = np.concatenate([snap.offsets, snap.offsets[-1] + np.cumsum(lengths + 1)])
            if len(snap.hashes):  # merge two sorted runs (no sort of the whole table)
                at = snap.hashes.searchsorted(new_hashes)
                all_hashes, all_ids = np.insert(snap.hashes, at, new_hashes), np.insert(snap.ids, at, new_ids)
            else:
                all_hashes, all_ids = new_hashes, new_ids
            if len(snap.blob) < snap.offsets[-1]:  # its last key's newline was left implicit
                blob = np.concatenate([snap.blob, np.full(1, 10, np.uint8), blob])
            elif len(snap.blob):
                blob = np.concatenate([snap.blob, blob])
            snap = _Snapshot(all_hashes, all_ids, offsets, blob)
            self._snap = snap
            ids[unknown] = new_ids[np.cumsum(np.concatenate([[0], (sorted_new[1:] != sorted_new[:-1])]))]
            return ids

    def lookup(self, key: str) -> int:
        """The id of ``key``, or -1 when no plan named it (the last few thousand answers are remembered: a
        read asks for its key several times)."""
        snap = self._snap
        if not len(snap.hashes):
            return -1
        recent = self._recent
        if recent[0] is snap:
            found = recent[1].get(key)
            if found is not None:
                return found
        else:
            recent = self._recent = (snap, {})
        h = key_hash(key)
        i = int(snap.hashes.searchsorted(h))
        found = int(snap.ids[i]) if i < len(snap.hashes) and snap.hashes[i] == h else -1
        if len(recent[1]) >= _RECENT:
            recent[1].clear()
        recent[1][key] = found
        return found

    def lookup_many(self, keys: Sequence[str] | KeyBatch) -> np.ndarray:
        """The ids of ``keys`` (int32; -1 for unknown ones)."""
        snap = self._snap
        if not len(snap.hashes):
            return np.full(len(keys), -1, np.int32)
        ids, known = self._find(snap, as_batch(keys).hashes())
        ids[~known] = -1
        return ids

    def key(self, key_id: int) -> str:
        """The key with id ``key_id``."""
        snap = self._snap
        return snap.blob[snap.offsets[key_id]:snap.offsets[key_id + 1] - 1].tobytes().decode()

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
