"""Inode numbers of a mount: stable for as long as the mount knows a file, kept across rename, unique.

A path's number is a 64-bit digest of the path (the same at every stat, with no table entry per file). A
rename keeps the number the moved file had: the new path maps to its origin (the path whose digest it
keeps) in a small table of renamed paths, one entry per rename, not per file; children of a renamed
directory resolve through their parent's entry. A new file made where a renamed one used to be (its origin,
or below it) would share that digest, so it gets an origin of its own (a synthetic one, never a real path).
Two digests collide with probability ~n²/2⁶⁵ for n files.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections import Counter

ROOT_INO = 1


def _digest(path: str) -> int:
    raw = hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    value = int.from_bytes(raw, "little")
    return value if value > ROOT_INO else value + 2


def _below(path: str, top: str) -> bool:
    return path == top or path.startswith(top + "/")


class InodeTable:
    """path (store key, "" for the root) → inode number; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._origin: dict[str, str] = {}  # a renamed (or re-made) path -> the path whose digest it keeps
        self._taken: Counter[str] = Counter()  # origins in use by some entry of _origin
        self._fresh = itertools.count(1)

    def ino(self, path: str) -> int:
        """The inode number of ``path``."""
        if not path:
            return ROOT_INO
        with self._lock:
            if not self._origin:
                return _digest(path)
            origin = self._resolve(path)
            if origin is None:
                origin = path
                if self._shadowed(path):
                    origin = f"\0{next(self._fresh)}"
                    self._set(path, origin)
            return _digest(origin)

    def renamed(self, old: str, new: str) -> None:
        """``old`` (a file, or a directory with everything below it) is now ``new``: keep their numbers."""
        if not old or not new or old == new:
            return
        with self._lock:
            origin = self._resolve(old) or old
            for path in [p for p in self._origin if _below(p, new)]:  # what was at new is replaced
                self._unset(path)
            for path in [p for p in self._origin if p.startswith(old + "/")]:
                self._set(new + path[len(old):], self._unset(path))
            if old in self._origin:
                self._unset(old)
            if origin != new or self._shadowed(new):
                self._set(new, origin)

    def removed(self, path: str) -> None:
        """``path`` is gone (unlink, rmdir): forget what the table held for it."""
        with self._lock:
            for key in [p for p in self._origin if _below(p, path)]:
                self._unset(key)

    def _set(self, path: str, origin: str) -> None:
        self._origin[path] = origin
        self._taken[origin] += 1

    def _unset(self, path: str) -> str:
        origin = self._origin.pop(path)
        self._taken[origin] -= 1
        if self._taken[origin] <= 0:
            del self._taken[origin]
        return origin

    def _resolve(self, path: str) -> str | None:
        """Where ``path`` (or the nearest directory above it with an entry) came from, or None."""
        probe = path
        while True:
            origin = self._origin.get(probe)
            if origin is not None:
                return origin + path[len(probe):]
            probe, sep, _ = probe.rpartition("/")
            if not sep:
                return None

    def _shadowed(self, path: str) -> bool:
        """Is ``path``'s own digest in use by a renamed entry (``path`` or a directory above it is an
        origin)?"""
        probe = path
        while True:
            if probe in self._taken:
                return True
            probe, sep, _ = probe.rpartition("/")
            if not sep:
                return False
