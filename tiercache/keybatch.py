"""KeyBatch: many object keys as one UTF-8 buffer with start/end offsets, and a 64-bit key hash computed
over the whole batch with numpy (no Python string or object per key).

A plan of a million files arrives as a few newline-joined payloads (:meth:`KeyBatch.from_lines`) or as a
list of strings (:meth:`KeyBatch.from_strings`, which joins them in parts). Everything after that —
hashing, normalisation checks, picking the new keys for the :class:`~tiercache.keytable.KeyTable` — is
vectorised and runs in bounded chunks, so numpy releases the interpreter between and within the steps and
readers on other threads keep going while a big plan is interned.

:func:`key_hash` is the same hash for one key (a read looking itself up in the plans): the key's UTF-8
bytes, zero-padded to whole little-endian 64-bit words, each word folded in with a multiply and an
xor-shift, seeded with the length, and finished with an avalanche (as in MurmurHash3's fmix64).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["KeyBatch", "key_hash"]

_MASK = (1 << 64) - 1
_SEED = 0x9E3779B97F4A7C15
_K_LEN = 0xC2B2AE3D27D4EB4F
_P1 = 0xFF51AFD7ED558CCD
_P2 = 0xC4CEB9FE1A85EC53
# Keys per step. Python-level steps (joins, encodes) hold the interpreter: small steps keep readers going.
# numpy steps release it while they run: large steps mean few hand-overs (each may wait a switch interval
# for a busy reader thread) and readers run alongside them.
_CHUNK = 1 << 15
_VECTOR = 1 << 20
_NEWLINE = 10
_TAIL_MASKS = np.array([(1 << (8 * n)) - 1 for n in range(9)], dtype=np.uint64)  # the low n bytes of a word


def _hash_words(words: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """key_hash of the keys at ``starts`` (lengths ``lengths``) given ``words``, the buffer's unaligned
    64-bit word at every byte offset."""
    with np.errstate(over="ignore"):
        h = np.uint64(_SEED) ^ (lengths.astype(np.uint64) * np.uint64(_K_LEN))
        for j in range(int(lengths.max(initial=0) + 7) // 8):
            left = lengths - 8 * j  # bytes of each key from word j on
            active = np.flatnonzero(left > 0)
            if len(active) == len(h):
                word = words[starts + 8 * j] & _TAIL_MASKS[np.minimum(left, 8)]
                mixed = (h ^ word) * np.uint64(_P1)
                h = mixed ^ (mixed >> np.uint64(32))
            else:  # only the longer keys have a word j
                word = words[starts[active] + 8 * j] & _TAIL_MASKS[np.minimum(left[active], 8)]
                mixed = (h[active] ^ word) * np.uint64(_P1)
                h[active] = mixed ^ (mixed >> np.uint64(32))
        h ^= h >> np.uint64(29)
        h *= np.uint64(_P2)
        h ^= h >> np.uint64(32)
    return h.view(np.int64)


def key_hash(key: str | bytes) -> int:
    """The 64-bit hash of one key (as a signed int64 value), equal to :meth:`KeyBatch.hashes`' for it."""
    data = key.encode() if isinstance(key, str) else key
    n = len(data)
    h = _SEED ^ ((n * _K_LEN) & _MASK)
    for (word,) in struct.iter_unpack("<Q", data + bytes(-n % 8)):
        h = ((h ^ word) * _P1) & _MASK
        h ^= h >> 32
    h ^= h >> 29
    h = (h * _P2) & _MASK
    h ^= h >> 32
    return h - (1 << 64) if h >> 63 else h


@dataclass(frozen=True)
class KeyBatch:
    """Keys ``data[starts[i]:ends[i]]`` (UTF-8) for i in order; no Python object per key."""

    data: np.ndarray  # uint8
    starts: np.ndarray  # int64
    ends: np.ndarray  # int64
    known_hashes: np.ndarray | None = None  # hashes() already computed (with_hashes)

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def lengths(self) -> np.ndarray:
        """Each key's length in bytes."""
        return self.ends - self.starts

    def key(self, i: int) -> str:
        """Key ``i`` as a string."""
        return self.data[self.starts[i]:self.ends[i]].tobytes().decode()

    def keys(self) -> list[str]:
        """Every key as a string (tests, small batches)."""
        return [self.key(i) for i in range(len(self))]

    # ------------------------------------------------------------------ building

    @classmethod
    def from_lines(cls, payload: bytes | str) -> KeyBatch:
        """Keys separated by newlines (one trailing newline allowed; an empty payload holds no key)."""
        data = payload.encode() if isinstance(payload, str) else payload
        if data.endswith(b"\n"):
            data = data[:-1]
        return cls._split(data) if data else cls.empty()

    @classmethod
    def _split(cls, data: bytes) -> KeyBatch:
        arr = np.frombuffer(data, dtype=np.uint8)
        breaks = np.flatnonzero(arr == _NEWLINE)
        starts = np.concatenate([np.zeros(1, np.int64), breaks + 1])
        ends = np.concatenate([breaks, np.array([len(arr)], np.int64)])
        return cls(arr, starts, ends)

    @classmethod
    def from_strings(cls, keys: Sequence[str]) -> KeyBatch:
        """Keys from strings (non-strings go through ``str``), joined and encoded in parts."""
        parts = []
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start:start + _CHUNK]
            try:
                joined = "\n".join(chunk)
            except TypeError:
                chunk = [str(k) for k in chunk]
                joined = "\n".join(chunk)
            if joined.count("\n") == len(chunk) - 1:
                parts.append(cls._split(joined.encode()))
            else:  # a key holds a newline: one terminator byte after each key instead
                encoded = [k.encode() for k in chunk]
                lens = np.array([len(e) for e in encoded], np.int64)
                ends = np.cumsum(lens + 1) - 1
                parts.append(cls(np.frombuffer(b"\n".join(encoded), np.uint8), ends - lens, ends))
        return cls.concat(parts)

    @classmethod
    def empty(cls) -> KeyBatch:
        """A batch of no keys."""
        return cls(np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64))

    @classmethod
    def concat(cls, batches: Sequence[KeyBatch]) -> KeyBatch:
        """The keys of ``batches`` in order, in one batch."""
        batches = [b for b in batches if len(b)]
        if not batches:
            return cls.empty()
        if len(batches) == 1:
            return batches[0]
        bases = np.cumsum([0] + [len(b.data) + 1 for b in batches[:-1]])  # a newline between the parts
        hashed = all(b.known_hashes is not None for b in batches)
        newline = np.full(1, _NEWLINE, np.uint8)
        return cls(np.concatenate([x for b in batches for x in (b.data, newline)][:-1]),
                   np.concatenate([b.starts + base for b, base in zip(batches, bases, strict=True)]),
                   np.concatenate([b.ends + base for b, base in zip(batches, bases, strict=True)]),
                   np.concatenate([b.known_hashes for b in batches]) if hashed else None)

    def with_hashes(self) -> KeyBatch:
        """This batch with its hashes computed now (so that a later ``hashes()`` costs nothing)."""
        return self if self.known_hashes is not None else KeyBatch(self.data, self.starts, self.ends, self.hashes())

    def _newline_joined(self) -> bool:
        """Whether the keys lie in order, one newline between each (as ``from_lines`` and ``concat`` lay them)."""
        n = len(self)
        return bool(n) and self.starts[0] == 0 and self.ends[-1] == len(self.data) and \
            np.array_equal(self.starts[1:], self.ends[:-1] + 1)

    def take(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The keys at ``indices`` (ascending), each followed by a newline byte (uint8; the very last one may
        be left out), and their lengths."""
        lengths = self.lengths[indices]
        if self._newline_joined():
            if len(indices) == len(self):  # every key (ascending indices, so in order): the buffer itself
                return self.data, lengths  # (the last key's newline left implicit)
            chosen = np.zeros(len(self), bool)
            chosen[indices] = True
            keep = np.repeat(chosen, self.lengths + 1)  # each chosen key's bytes and the newline after it
            return np.concatenate([self.data, np.full(1, _NEWLINE, np.uint8)])[keep], lengths
        pieces = []
        data = np.concatenate([self.data, np.full(1, _NEWLINE, np.uint8)])  # the last byte: a terminator
        for lo in range(0, len(indices), _VECTOR):
            sel = indices[lo:lo + _VECTOR]
            lens = lengths[lo:lo + _VECTOR] + 1
            total = int(lens.sum())
            # byte j of the selection is data[start of its key + j - (bytes of the keys before it)]
            before = np.cumsum(lens) - lens
            at = np.repeat(self.starts[sel] - before, lens) + np.arange(total, dtype=np.int64)
            at[np.cumsum(lens) - 1] = len(self.data)  # each key's terminator
            pieces.append(data[at])
        return (np.concatenate(pieces) if pieces else np.zeros(0, np.uint8)), lengths

    # ------------------------------------------------------------------ hashing and checks

    def hashes(self) -> np.ndarray:
        """Every key's :func:`key_hash` (int64), vectorised in bounded steps (a few word loads per key)."""
        if self.known_hashes is not None:
            return self.known_hashes
        out = np.empty(len(self), np.int64)
        if not len(self):
            return out
        lengths = self.lengths
        # keys whose last word would run past the buffer's end (the last few): hashed from a padded copy
        tail = np.flatnonzero(self.starts + (lengths + 7) // 8 * 8 > len(self.data)) if len(self.data) >= 8 \
            else np.arange(len(self))
        inside = np.ones(len(self), bool)
        inside[tail] = False
        if len(self.data) >= 8:
            # every byte offset as the start of a little-endian 64-bit word (an unaligned view, no copy)
            words = np.ndarray(shape=(len(self.data) - 7,), dtype="<u8", buffer=self.data, strides=(1,))
            rows = np.flatnonzero(inside) if len(tail) else None
            for lo in range(0, len(self) if rows is None else len(rows), _VECTOR):
                at = slice(lo, lo + _VECTOR) if rows is None else rows[lo:lo + _VECTOR]
                out[at] = _hash_words(words, self.starts[at], lengths[at])
        if len(tail):
            base = int(self.starts[tail].min())
            padded = np.concatenate([self.data[base:], np.zeros(8, np.uint8)])
            words = np.ndarray(shape=(len(padded) - 7,), dtype="<u8", buffer=padded, strides=(1,))
            out[tail] = _hash_words(words, self.starts[tail] - base, lengths[tail])
        return out

    def rows_needing_normalisation(self, inner: bool = True) -> np.ndarray:
        """Indices of the keys that are not plain relative paths already: a leading or trailing ``/``, and
        with ``inner`` a leading ``.`` or ``//`` or ``/.`` inside (vectorised: one pass over the bytes)."""
        if not len(self):
            return np.zeros(0, np.int64)
        arr = np.concatenate([self.data, np.zeros(1, np.uint8)])  # a sentinel after the last byte
        nonempty = self.ends > self.starts
        first, last = arr[self.starts], arr[np.maximum(self.ends - 1, 0)]
        suspect = nonempty & ((first == ord("/")) | (last == ord("/")))
        if not inner:
            return np.flatnonzero(suspect)
        suspect |= nonempty & (first == ord("."))
        slashes = np.flatnonzero(arr == ord("/"))
        after = arr[slashes + 1]
        hits = slashes[(after == ord("/")) | (after == ord("."))]  # "//" or "/." (rare: then find their keys)
        if len(hits):
            rows = np.searchsorted(self.starts, hits, side="right") - 1
            inside = (rows >= 0) & (hits + 1 < self.ends[np.maximum(rows, 0)])
            suspect[rows[inside]] = True
        return np.flatnonzero(suspect)

    def replaced(self, rows: np.ndarray, new_keys: Sequence[str]) -> KeyBatch:
        """This batch with the keys at ``rows`` replaced by ``new_keys`` (the rest shared, not copied)."""
        if not len(rows):
            return self
        extra = [k.encode() for k in new_keys]
        lens = np.array([len(e) for e in extra], np.int64)
        base = len(self.data) + 1
        starts, ends = self.starts.copy(), self.ends.copy()
        starts[rows] = base + np.cumsum(lens + 1) - lens - 1
        ends[rows] = starts[rows] + lens
        tail = np.frombuffer(b"\n" + b"\n".join(extra), np.uint8)
        return KeyBatch(np.concatenate([self.data, tail]), starts, ends)
