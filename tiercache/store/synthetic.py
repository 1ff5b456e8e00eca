"""A read-only store of N objects whose bytes derive from their key: scale benches and tests, no data held.

    synthetic://NAME?objects=1000000&size=1K&big=100000&classes=1000

Layout, in key order: ``big/file_XXXXXXX.bin`` (one directory of ``big`` files, default min(100 K, N)),
then the other N - big objects as ``train/class_CCCC/img_IIIIIIII.jpg`` spread over ``classes``
directories. Nothing is stored: a key's size (``size`` ± a quarter, from a hash of the key), etag and bytes
are computed from the key, so N can be 10 M at no memory cost, and a range read generates only the range.
The bytes are a 251-byte pattern per key (a prime period, so a block or page served at the wrong offset
never matches). Only for benchmarks and tests: ``open_store`` accepts the scheme when the environment has
``TIERCACHE_SYNTHETIC_STORE=1``.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import re
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

from ..errors import AccessDenied, ConfigError, NotFound
from .base import ObjectInfo

ENV_FLAG = "TIERCACHE_SYNTHETIC_STORE"
PERIOD = 251
MTIME = 1_700_000_000.0
_BIG = re.compile(r"big/file_(\d{7})\.bin")
_TRAIN = re.compile(r"train/class_(\d{4})/img_(\d{8})\.jpg")


def _parse_size(text: str) -> int:
    from ..config import parse_size

    return parse_size(text, "synthetic size")


class SyntheticStore:
    """``objects`` keys in a realistic layout (see the module docstring); thread-safe, read-only."""

    def __init__(self, objects: int, size: int = 1024, big: int | None = None, classes: int = 1000,
                 url: str | None = None):
        if objects < 0 or size < 0 or classes < 1:
            raise ConfigError("synthetic store: objects and size must be >= 0, classes >= 1")
        self.objects = objects
        self.size = size
        self.big = min(objects, 100_000 if big is None else big)
        self.classes = classes
        self.train = objects - self.big
        self.per_class = max(1, -(-self.train // classes))
        self.url = url or f"synthetic://bench?objects={objects}&size={size}"
        self.gets = 0  # ranges served (not locked: a statistic, not a contract)

    # ------------------------------------------------------------------ keys

    def key(self, index: int) -> str:
        """The key of object ``index`` (0 <= index < objects), in key order."""
        if index < self.big:
            return f"big/file_{index:07d}.bin"
        j = index - self.big
        return f"train/class_{j // self.per_class:04d}/img_{j:08d}.jpg"

    def index(self, key: str) -> int:
        """The index of ``key``; NotFound if it is not one of this store's keys."""
        match = _BIG.fullmatch(key)
        if match and int(match.group(1)) < self.big:
            return int(match.group(1))
        match = _TRAIN.fullmatch(key)
        if match:
            j = int(match.group(2))
            if j < self.train and j // self.per_class == int(match.group(1)):
                return self.big + j
        raise NotFound(f"no object {key!r}")

    def info(self, key: str) -> ObjectInfo:
        """Size, etag and mtime of ``key``, all derived from the key."""
        digest = hashlib.blake2b(key.encode(), digest_size=16).digest()
        jitter = int.from_bytes(digest[:4], "little") % (self.size // 2 + 1)
        size = self.size - self.size // 4 + jitter
        return ObjectInfo(key=key, size=size, etag=digest.hex(), mtime=MTIME)

    @staticmethod
    def pattern(key: str) -> bytes:
        """The 251 bytes object ``key`` repeats."""
        return hashlib.shake_128(key.encode()).digest(PERIOD)

    def content(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) of ``key`` (the whole object by default), generated, not stored."""
        size = self.info(key).size
        end = size if end is None else min(end, size)
        if start >= end:
            return b""
        pattern = self.pattern(key)
        phase = start % PERIOD
        count = -(-(end - start + phase) // PERIOD)
        return (pattern * count)[phase:phase + end - start]

    # ------------------------------------------------------------------ the ObjectStore protocol

    def check(self) -> None:
        """Always usable."""

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order, generated one at a time."""
        for index in self._range(prefix):
            key = self.key(index)
            if key.startswith(prefix):
                yield self.info(key)

    def list_after(self, prefix: str, start_after: str) -> Iterator[ObjectInfo]:
        """As ``list``, from the first key after ``start_after`` (found by bisection: keys are in index order)."""
        indexes = self._range(prefix)
        first = bisect.bisect_right(indexes, start_after, key=self.key)
        for index in indexes[first:]:
            key = self.key(index)
            if key.startswith(prefix):
                yield self.info(key)

    def list_level(self, prefix: str, start_after: str = "") -> Iterator[ObjectInfo | str]:
        """One level by delimiter "/": the root holds ``big/`` and ``train/``, ``train/`` the class
        directories, and these and ``big/`` the objects (those after ``start_after``: a level resumed)."""
        if prefix == "":
            yield from [p for p, n in (("big/", self.big), ("train/", self.train)) if n and p > start_after]
        elif prefix == "train/":
            yield from sorted(p for p in {self.key(i).rpartition("/")[0] + "/"
                                          for i in range(self.big, self.objects, self.per_class)} if p > start_after)
        elif prefix.count("/") == 1 and prefix.startswith("big/") or prefix.count("/") == 2:
            yield from self.list_after(prefix, start_after)

    def _range(self, prefix: str) -> range:
        """Indexes that can match ``prefix`` (all of them unless it names one top directory)."""
        if prefix.startswith("big/"):
            return range(0, self.big)
        match = re.match(r"train/class_(\d{4})/", prefix)
        if match:
            first = self.big + int(match.group(1)) * self.per_class
            return range(min(first, self.objects), min(first + self.per_class, self.objects))
        if prefix.startswith("train/"):
            return range(self.big, self.objects)
        return range(self.objects)

    def head(self, key: str) -> ObjectInfo:
        """Info of one object (its metadata read, as a HEAD does: no attributes stored); NotFound if the key
        is not in the layout."""
        self.index(key)
        return dataclasses.replace(self.info(key), meta=True)

    def get_range(self, key: str, start: int, end: int, etag: str | None = None) -> bytes:
        """Bytes [start, end) of the object; NotFound if it is absent or ``etag`` is not its etag."""
        info = self.head(key)
        if etag is not None and etag != info.etag:
            raise NotFound(f"{key!r} changed while reading")
        self.gets += 1
        return self.content(key, start, end)

    def _read_only(self, *_args) -> ObjectInfo:
        raise AccessDenied(f"{self.url}: the synthetic store is read-only")

    put_file = put_bytes = set_attrs = copy = _read_only

    def delete(self, key: str) -> None:
        """Refused: the store is read-only."""
        self._read_only(key)

    def close(self) -> None:
        """Nothing to release."""


def synthetic_store_from_url(url: str) -> SyntheticStore:
    """``synthetic://NAME?objects=N&size=S&big=B&classes=C`` → SyntheticStore (one clear ConfigError if bad)."""
    parts = urlsplit(url)
    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    unknown = set(query) - {"objects", "size", "big", "classes"}
    if unknown:
        raise ConfigError(f"{url!r}: unknown synthetic option(s) {', '.join(sorted(unknown))}")
    try:
        objects = int(query.get("objects", "1000"))
        big = int(query["big"]) if "big" in query else None
        classes = int(query.get("classes", "1000"))
    except ValueError:
        raise ConfigError(f"{url!r}: objects, big and classes must be integers") from None
    return SyntheticStore(objects, _parse_size(query.get("size", "1K")), big, classes, url=url)
