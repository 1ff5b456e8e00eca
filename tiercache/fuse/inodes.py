"""Inode numbers of a mount: stable for as long as the mount knows a file, kept across rename, unique, and
no Python object per file.

A path's natural number is a 64-bit digest of its parent's number and its name (the root is 1), so every
path has one without a table entry, and a directory's children follow its number. A rename keeps the moved
file's number: the new path's natural number maps to the number it carries, one entry in a compact map
(u64map.py, 16 bytes per entry in numpy arrays) per rename, not per file; a renamed directory's children
keep theirs through it (their natural numbers derive from the number it carries). A new file made at the
name a renamed one left (whose natural number the moved file still carries) gets a fresh number of its
own, one entry too; so do the children of a new directory made there (through their parent). Two numbers
collide with probability ~n²/2⁶⁵ for n files.
"""

from __future__ import annotations

import hashlib
import itertools
import threading

import numpy

from .u64map import U64Map

ROOT_INO = 1
DIR_CACHE = 4096  # directory numbers remembered (a path's digest chain is walked once); cleared when full


def _child(parent: int, name: str) -> int:
    """The natural number of ``name`` in the directory numbered ``parent``."""
    raw = hashlib.blake2b(parent.to_bytes(8, "little") + name.encode("utf-8", "surrogateescape"),
                          digest_size=8).digest()
    value = int.from_bytes(raw, "little")
    return value if value > ROOT_INO else value + 2


class InodeTable:
    """path (store key, "" for the root) → inode number; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._carried = U64Map()  # natural number of a path -> the number it carries (renamed, or fresh)
        self._held = U64Map()  # numbers carried by an entry of _carried -> 1
        self._fresh = itertools.count(1)
        self._dirs: dict[str, int] = {}  # a cache of directory numbers, cleared at every change

    def ino(self, path: str) -> int:
        """The inode number of ``path``."""
        if not path:
            return ROOT_INO
        with self._lock:
            return self._ino(path)

    def children(self, parent: str, names: list[str]) -> numpy.ndarray:
        """The inode numbers of ``names`` in directory ``parent`` (a listing's), as ``ino`` gives each."""
        with self._lock:
            if len(self._carried):
                prefix = parent + "/" if parent else ""
                return numpy.array([self._ino(prefix + name) for name in names], numpy.uint64)
            base = self._dir(parent).to_bytes(8, "little")
        digest = hashlib.blake2b
        raw = b"".join([digest(base + name.encode("utf-8", "surrogateescape"), digest_size=8).digest()
                        for name in names])
        numbers = numpy.frombuffer(raw, "<u8").astype(numpy.uint64)
        numbers[numbers <= ROOT_INO] += 2  # as _child: never 0 or the root's
        return numbers

    def renamed(self, old: str, new: str) -> None:
        """``old`` (a file, or a directory with everything below it) is now ``new``: keep their numbers."""
        if not old or not new or old == new:
            return
        with self._lock:
            self._forget_dirs(old, new)
            carried = self._ino(old)
            self._drop(self._natural(old))
            target = self._natural(new)
            self._drop(target)  # what was at new is replaced
            if carried != target:
                self._carried.set(target, carried)
                self._held.set(carried, 1)

    def removed(self, path: str) -> None:
        """``path`` is gone (unlink, rmdir): forget what the table held for it."""
        if not path:
            return
        with self._lock:
            self._forget_dirs(path)
            self._drop(self._natural(path))

    def entries(self) -> int:
        """Entries held (renamed or re-made paths): the table's only state that grows."""
        return len(self._carried)

    def nbytes(self) -> int:
        """Bytes of the table's arrays (beyond a bounded base)."""
        return self._carried.nbytes() + self._held.nbytes()

    def _forget_dirs(self, *paths: str) -> None:
        """Drop the cached numbers that a change at ``paths`` may alter: the cache holds a directory only with
        all its ancestors, so nothing below a path that is not cached itself is cached."""
        if any(path in self._dirs for path in paths):
            self._dirs.clear()

    def _natural(self, path: str) -> int:
        parent, _, name = path.rpartition("/")
        return _child(self._dir(parent), name)

    def _dir(self, path: str) -> int:
        if not path:
            return ROOT_INO
        ino = self._dirs.get(path)
        if ino is None:
            ino = self._ino(path)
            if len(self._dirs) >= DIR_CACHE:
                self._dirs.clear()
            self._dirs[path] = ino
        return ino

    def _ino(self, path: str) -> int:
        natural = self._natural(path)
        if not len(self._carried):
            return natural
        carried = self._carried.get(natural)
        if carried is not None:
            return carried
        if natural in self._held:  # a renamed file still carries this number: this is a new one
            fresh = _child(0, f"\0{next(self._fresh)}")  # a NUL name: never a real path's number
            self._carried.set(natural, fresh)
            self._held.set(fresh, 1)
            return fresh
        return natural

    def _drop(self, natural: int) -> None:
        carried = self._carried.pop(natural)
        if carried is not None:
            self._held.pop(carried)
