"""Bucket listings as files: LIST a source once, hand the file to every node, and mount from it without a LIST.

    tiercache listing export s3://bucket/prefix listing.jsonl.gz      # one LIST, on one machine
    tiercache mount s3://bucket/prefix /mnt/data --listing listing.jsonl.gz --metadata-ttl inf

The file is gzip'd JSON lines: a header ``{"format": "tiercache-listing", "version": 1, "source": ...,
"listed": unix time, "objects": N}``, then one ``[key, size, etag, mtime]`` per object, keys relative to the
source. ``SeededStore`` wraps the real store and answers the first listing of the tree (the one a mount
makes at start, within SEED_WINDOW of it), and any directory's listed before it, from the file, filtered by
the prefix asked; every later listing (a refresh after the metadata TTL) and every other request goes to
the store.
"""

from __future__ import annotations

import gzip
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .store.base import ObjectInfo, ObjectStore

FORMAT = "tiercache-listing"
VERSION = 1
SEED_WINDOW = 300.0  # seconds after start within which the first listing may come from the file


def export_listing(store: ObjectStore, source: str, path: str | Path) -> int:
    """LIST ``store`` once and write the listing file; the number of objects. The listing streams into a
    body file (one gzip member) and the header, which needs the count, is a gzip member of its own put in
    front of it: nothing of the listing is held in memory."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    body = path.with_name(path.name + ".body.tmp")
    count = 0
    started = time.time()
    try:
        with gzip.open(body, "wt", encoding="utf-8") as out:
            for info in store.list(""):
                out.write(json.dumps([info.key, info.size, info.etag, info.mtime]) + "\n")
                count += 1
        with open(tmp, "wb") as raw:
            with gzip.open(raw, "wt", encoding="utf-8") as head:
                head.write(json.dumps({"format": FORMAT, "version": VERSION, "source": source, "listed": started,
                                       "objects": count}) + "\n")
            with open(body, "rb") as members:
                shutil.copyfileobj(members, raw)
        tmp.replace(path)
    finally:
        body.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return count


def read_header(path: str | Path) -> dict:
    """The listing file's header; ConfigError for a missing or foreign file."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            header = json.loads(fh.readline())
    except (ValueError, EOFError, gzip.BadGzipFile):
        raise ConfigError(f"listing {path}: not a tiercache listing (make one with: tiercache listing export)"
                          ) from None
    except OSError as exc:
        raise ConfigError(f"listing {path}: {exc.strerror or exc}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ConfigError(f"listing {path}: not a tiercache listing (make one with: tiercache listing export)")
    if header.get("version") != VERSION:
        raise ConfigError(f"listing {path}: version {header.get('version')} is not {VERSION}")
    return header


def read_listing(path: str | Path, source: str) -> Iterator[ObjectInfo]:
    """The objects of a listing file made for ``source`` (ConfigError if it was made for another)."""
    header = read_header(path)
    if str(header.get("source", "")).rstrip("/") != source.rstrip("/"):
        raise ConfigError(f"listing {path} is of {header.get('source')}, not {source}")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        fh.readline()
        for n, line in enumerate(fh, 2):
            try:
                key, size, etag, mtime = json.loads(line)
                yield ObjectInfo(str(key), int(size), str(etag), float(mtime))
            except (ValueError, TypeError):
                raise ConfigError(f"listing {path}: line {n} is not [key, size, etag, mtime]") from None


class SeededStore:
    """An ObjectStore whose first ``list`` comes from a listing file (see the module docstring)."""

    def __init__(self, store: ObjectStore, path: str | Path, source: str):
        read_header(path)
        self._store = store
        self._path = Path(path)
        self._source = source
        self._lock = threading.Lock()
        self._seeded = False
        self._created = time.monotonic()
        self.seeded_lists = 0

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """The file's objects under ``prefix`` until the whole tree (prefix "") has been listed from it to
        the end once; the store's listing after that. (A directory listed before or while the tree is, as a
        lookup racing the mount's first listing may ask, comes from the file too: otherwise that directory's
        listing went to the store and showed what the file does not.)"""
        with self._lock:
            seeding = not self._seeded and time.monotonic() - self._created < SEED_WINDOW
        if not seeding:
            yield from self._store.list(prefix)
            return
        self.seeded_lists += 1
        for info in read_listing(self._path, self._source):
            if info.key.startswith(prefix):
                yield info
        if prefix == "":
            with self._lock:
                self._seeded = True

    def __getattr__(self, name: str) -> Any:
        if name in ("list_level", "list_after"):  # a parallel walk would go around the file
            raise AttributeError(name)
        return getattr(self._store, name)
