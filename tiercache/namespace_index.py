"""The namespace's index of record: object infos in LMDB, read in key order, with no Python object per object.

Sub-database ``objects`` holds one record per file (key: its path; value: ``namespace_records.encode``).
Directories are not stored: a directory is every path that is a proper prefix, up to a "/", of a stored
key. Empty directories (folder markers of the store, ``mkdir`` through the mount) are marker records in
``listings`` under ``MARK + path``, next to the listings' own records (``"/" + path`` -> when it was listed).

Reads go in chunks of ``CHUNK`` items, each in its own short read transaction, so a walk of a million
records holds neither a long reader nor a list of all of them. A directory's entries come from one prefix
scan that jumps over each subdirectory's subtree with one seek (``set_range`` to the key just past it).
"""

from __future__ import annotations

from collections.abc import Iterator

from .errors import NotADirectory, NotFound
from .tiers.meta import LONG_KEY_LEN, RAW_KEY_MAX, Meta, loaded_item, stored_key

CHUNK = 4096
MARK = b"+"  # marker records of empty directories in "listings" ("/" + path is a listing's time)
_NEXT = b"0"  # the byte after "/": prefix + "0" is the first key past every key below prefix + "/"


def below(path: str) -> bytes:
    """The key prefix of everything below directory ``path`` ("" is the root)."""
    return f"{path}/".encode() if path else b""


class NamespaceIndex:
    """Key-order queries over the ``objects`` records and the directory markers of one ``Meta``."""

    def __init__(self, meta: Meta):
        self.meta = meta
        self.objects = meta.db("objects")
        self.listings = meta.db("listings")

    # ------------------------------------------------------------------ raw walks

    def _chunk(self, db, prefix: bytes, start: bytes, skip_dirs: bytes | None) -> tuple[list, bytes | None]:
        """Up to CHUNK (key, value) pairs from ``start`` on, with ``prefix``; and the key the next chunk
        starts at (None when the prefix is exhausted). With ``skip_dirs`` (a directory's prefix), each
        subdirectory of it comes once, as (b"name/", b""), and its subtree is jumped over."""
        out: list[tuple[bytes, bytes]] = []
        skipping: bytes | None = None  # a subtree past the long-key limit, stepped through
        seek = prefix[:RAW_KEY_MAX]
        with self.meta.env.begin(db=db) as txn:
            cursor = txn.cursor(db=db)
            found = cursor.set_range(stored_key(start) if len(start) <= RAW_KEY_MAX else start[:RAW_KEY_MAX])
            while found and (len(out) < CHUNK or len(cursor.key()) == LONG_KEY_LEN):  # a run of long
                # keys ends in this transaction: the next chunk starts at a whole key
                stored = cursor.key()
                if not stored.startswith(seek):
                    return out, None
                key, value = loaded_item(stored, cursor.value())
                if (len(stored) == LONG_KEY_LEN or len(prefix) > RAW_KEY_MAX) and (
                        not key.startswith(prefix) or key < start):
                    found = cursor.next()
                    continue
                if skipping is not None and key.startswith(skipping):
                    found = cursor.next()
                    continue
                slash = key.find(b"/", len(skip_dirs)) if skip_dirs is not None else -1
                if slash >= 0:
                    out.append((key[len(skip_dirs):slash + 1], b""))
                    past = key[:slash] + _NEXT
                    if len(past) <= RAW_KEY_MAX:
                        found = cursor.set_range(past)
                    else:
                        skipping = key[:slash + 1]
                        found = cursor.next()
                    continue
                out.append((key, value))
                found = cursor.next()
            return out, (cursor.key() if found else None)

    def walk(self, db, prefix: bytes, skip_dirs: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) with ``prefix`` in key order, chunk by chunk (see ``_chunk``)."""
        start: bytes | None = prefix
        while start is not None:
            items, start = self._chunk(db, prefix, start, skip_dirs)
            yield from items

    # ------------------------------------------------------------------ queries

    def get(self, path: str) -> bytes | None:
        """The record of file ``path`` or None."""
        return self.meta.get("objects", path.encode())

    def _any_below(self, db, prefix: bytes) -> bool:
        items, _ = self._chunk(db, prefix, prefix, None) if len(prefix) > RAW_KEY_MAX else (None, None)
        if items is not None:
            return bool(items)
        with self.meta.env.begin(db=db) as txn:
            cursor = txn.cursor(db=db)
            return cursor.set_range(prefix) and cursor.key().startswith(prefix)

    def kind(self, path: str) -> tuple[str | None, bytes | None]:
        """("file", its record), ("dir", None) or (None, None)."""
        raw = self.get(path) if path else None
        if raw is not None:
            return "file", raw
        return ("dir" if self.is_dir(path) else None), None

    def is_dir(self, path: str) -> bool:
        """Whether ``path`` is a directory: the root, a prefix of a file, or a marked empty directory."""
        if not path:
            return True
        return self._any_below(self.objects, below(path)) or self.marked(path)

    def marked(self, path: str) -> bool:
        """Whether ``path`` or a directory below it has a marker record."""
        key = MARK + path.encode()
        return self.meta.get("listings", key) is not None or self._any_below(self.listings, key + b"/")

    def entries(self, path: str) -> Iterator[tuple[str, bool, bytes]]:
        """(name, is_dir, record) of each entry of directory ``path`` (record b"" for a directory): files
        and subdirectories in key order, then the directories only markers make."""
        prefix = below(path)
        dirs: set[str] = set()
        for key, value in self.walk(self.objects, prefix, skip_dirs=prefix):
            if value:
                yield key[len(prefix):].decode(), False, value
            else:
                dirs.add(key[:-1].decode())
                yield key[:-1].decode(), True, b""
        marks = MARK + prefix
        for key, value in self.walk(self.listings, marks, skip_dirs=marks):
            name = key[len(marks):].decode() if value else key[:-1].decode()
            if name and name not in dirs:
                dirs.add(name)
                yield name, True, b""

    def directory(self, path: str) -> Iterator[tuple[str, bytes]]:
        """(name, record) of each entry of directory ``path``, record b"" for a subdirectory; a name that is
        both comes once, as a directory. NotADirectory / NotFound (when iterated) if ``path`` is none."""
        found = False
        dirs: set[str] = set()
        for name, is_dir, raw in self.entries(path):
            found = True
            if is_dir:
                dirs.add(name)
                yield name, b""
            elif name not in dirs:
                yield name, raw
        if not found and not self.is_dir(path):
            if self.get(path) is not None:
                raise NotADirectory(f"{path!r} is a file, not a directory")
            raise NotFound(f"no such directory {path!r}")

    def files(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        """(path, record) of every file below directory ``prefix``, in key order."""
        for key, value in self.walk(self.objects, below(prefix)):
            yield key.decode(), value

    def count_below(self, path: str, limit: int) -> int:
        """How many files are below directory ``path``, counting no further than ``limit``."""
        n = 0
        for _ in self.walk(self.objects, below(path)):
            n += 1
            if n >= limit:
                break
        return n

    def markers(self, path: str) -> Iterator[bytes]:
        """The marker record keys of ``path`` and of the directories below it."""
        key = MARK + path.encode()
        if self.meta.get("listings", key) is not None:
            yield key
        for k, _v in self.walk(self.listings, key + b"/"):
            yield k
