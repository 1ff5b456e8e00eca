"""Keys ↔ POSIX paths: the directory tree of a store, built from listings cached in LMDB with a TTL.

Paths are keys relative to the source prefix, "/"-separated, without a leading slash; "" is the root.
Rules for keys that are not plain paths:

* a key ending in "/" (a "folder marker") makes a directory and no file;
* keys with an empty segment, a "." or ".." segment, a segment over 255 bytes or a NUL are skipped with
  a warning — they are never mapped anywhere, least of all outside the root;
* a key that is both a file and a prefix of other keys ("a" and "a/b"): the directory wins and the
  file "a" is skipped with a warning.

Metadata is trusted for ``ttl`` seconds after it was fetched (by LIST or HEAD, or confirmed by a
conditional GET — see :meth:`Namespace.confirm`). After that a directory is listed again on its next use
(in the background, serving the old listing meanwhile, when it holds more than ``BACKGROUND_FILES`` files)
and a file's info is revalidated with a HEAD. The full listing is loaded lazily on first use; a restart
within the TTL reads it back from LMDB instead of listing again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator

from .errors import IsADirectory, NotADirectory, NotFound
from .namespace_records import (
    FORMAT,
    INFO,
    TIME,
    Entry,
    ancestors,
    decode,
    encode,
    keep_metadata,
    key_problem,
    normalize,
    parent_of,
)
from .store.base import ObjectInfo, ObjectStore
from .tiers.meta import Meta

__all__ = ["Entry", "Namespace", "key_problem", "normalize"]

log = logging.getLogger(__name__)

BACKGROUND_FILES = 10_000


class Namespace:
    """The directory tree of one store; thread-safe. See the module docstring for the rules."""

    def __init__(
        self, store: ObjectStore, meta: Meta, ttl: float = 60.0, clock: Callable[[], float] = time.time
    ):
        self.store = store
        self.meta = meta
        self.ttl = ttl
        self.clock = clock
        self.on_change: Callable[[str, ObjectInfo | None], None] | None = None  # (path, new info or None)
        self.hidden: Callable[[str], bool] | None = None  # keys left out of listings (deletes not yet done)
        self._lock = threading.RLock()
        self._load_lock = threading.Lock()
        self._children: dict[str, dict[str, bool]] = {}  # dir -> {name: is_dir}
        self._files_below: dict[str, int] = {}
        self._listed: dict[str, float] = {}  # dir -> when it was last listed
        self._overlay: dict[str, ObjectInfo] = {}  # added by the write tier; wins until a listing agrees
        self._confirmed: dict[str, float] = {}  # path -> when a conditional GET last confirmed its etag
        self._refreshing: dict[str, threading.Event] = {}
        self._loaded = False
        if self.meta.get("misc", b"objects_format") != FORMAT:
            with self.meta.write() as txn:
                for name in ("objects", "listings"):
                    txn.drop(self.meta.db(name), delete=False)
                txn.put(b"objects_format", FORMAT, db=self.meta.db("misc"))
        self.skipped = 0
        self.lists = 0
        self.heads = 0

    # ------------------------------------------------------------------ loading and listing

    def _expired(self, fetched: float) -> bool:
        if math.isinf(self.ttl):
            return False
        return self.ttl == 0 or self.clock() - fetched > self.ttl

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        with self._load_lock:  # one LIST at start, however many threads arrive at once
            if self._loaded:
                return
            with self._lock:
                self._listed = {k.decode()[1:]: TIME.unpack(v)[0] for k, v in self.meta.scan("listings")}
                if "" in self._listed and not self._expired(self._listed[""]):
                    self._build(((k.decode(), v) for k, v in self.meta.scan("objects")), "")
                    self._loaded = True
                    return
            self._relist("")
            self._loaded = True

    def _build(self, items: Iterator[tuple[str, bytes]], top: str) -> None:
        """Insert (path, encoded info) pairs below ``top`` into the in-memory tree (caller holds the lock)."""
        self._children.setdefault(top, {})
        for path, raw in items:
            size = INFO.unpack_from(raw)[0]
            self._insert(path, size)

    def _insert(self, path: str, size: int = 0, is_dir: bool = False) -> None:
        parts = path.split("/")
        cur = ""
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            children = self._children.setdefault(cur, {})
            child = part if not cur else f"{cur}/{part}"
            if last and not is_dir:
                children[part] = False
            else:
                children[part] = True
                self._children.setdefault(child, {})
            cur = child
        if not is_dir:
            for anc in ancestors(path):
                self._files_below[anc] = self._files_below.get(anc, 0) + 1

    def _drop_subtree(self, top: str) -> None:
        """Forget every entry below directory ``top`` (caller holds the lock)."""
        stack = [top]
        removed_files = 0
        while stack:
            d = stack.pop()
            for name, is_dir in self._children.pop(d, {}).items():
                child = name if not d else f"{d}/{name}"
                if is_dir:
                    stack.append(child)
                else:
                    removed_files += 1
            self._files_below.pop(d, None)
        for anc in ancestors(top) if top else ():
            self._files_below[anc] = self._files_below.get(anc, 0) - removed_files
        self._children[top] = {}

    def _relist(self, top: str) -> None:
        """LIST everything below directory ``top`` and replace that subtree (LMDB and memory)."""
        prefix = f"{top}/" if top else ""
        started = self.clock()
        infos = list(self.store.list(prefix))
        self.lists += 1
        hidden = self.hidden
        if hidden is not None:  # asked outside our lock: the predicate takes the write tier's
            infos = [info for info in infos if not hidden(info.key)]
        good: list[ObjectInfo] = []
        dirs: set[str] = set()
        bad: list[tuple[str, str]] = []
        for info in infos:
            key = info.key
            if key.endswith("/") and key != "/":
                key = key[:-1]
                problem = key_problem(key) if key else None
                if problem is None and key:
                    dirs.add(key)
                    dirs.update(a for a in ancestors(key) if a)
                elif problem:
                    bad.append((info.key, problem))
                continue
            problem = key_problem(key)
            if problem:
                bad.append((key, problem))
                continue
            good.append(info)
            dirs.update(a for a in ancestors(key) if a)
        files = []
        for info in good:
            if info.key in dirs:
                bad.append((info.key, "is also a directory (the directory wins)"))
            else:
                files.append(info)
        if bad:
            self.skipped += len(bad)
            examples = "; ".join(f"{k!r} {why}" for k, why in bad[:3])
            log.warning(
                "%s: skipped %d key(s) that cannot be paths, e.g. %s", self.store.url, len(bad), examples
            )
        with self._lock:
            listed = {i.key: i.etag for i in files}
            for path, info in list(self._overlay.items()):
                if path.startswith(prefix) and listed.get(path) == info.etag:
                    del self._overlay[path]
            overlay = [i for p, i in self._overlay.items() if p.startswith(prefix) and p not in dirs]
            stale = [k for k, _ in self.meta.scan("objects", prefix.encode())] if top else []
            with self.meta.write() as txn:
                objects = self.meta.db("objects")
                files = [keep_metadata(txn.get(i.key.encode(), db=objects), i) for i in files]
                if not top:
                    txn.drop(objects, delete=False)
                for key in stale:
                    txn.delete(key, db=objects)
                for info in files:
                    txn.put(info.key.encode(), encode(info, started), db=objects)
                for info in overlay:
                    txn.put(info.key.encode(), encode(info, started), db=objects)
                # LMDB keys cannot be empty: directories are stored as "/" + path
                txn.put(f"/{top}".encode(), TIME.pack(started), db=self.meta.db("listings"))
            self._drop_subtree(top)
            for d in sorted(dirs):
                if d.startswith(prefix) or not top:
                    self._insert(d, is_dir=True)
            for info in files:
                self._insert(info.key, info.size)
            for info in overlay:
                if info.key not in listed:
                    self._insert(info.key, info.size)
            if top and not self._children.get(top):  # the directory is gone from the store
                self._children.pop(top, None)
                self._children.get(parent_of(top), {}).pop(top.rpartition("/")[2], None)
            self._listed[top] = started
            for path in [p for p in self._confirmed if p.startswith(prefix)]:
                del self._confirmed[path]

    def _dir_fresh(self, path: str) -> bool:
        newest = max((self._listed.get(d, -math.inf) for d in (path, *ancestors(path))), default=-math.inf)
        return not self._expired(newest)

    def _refresh_dir(self, path: str) -> None:
        """List ``path`` again: in the foreground, or in the background for big subtrees (serving stale)."""
        background = self._files_below.get(path, 0) > BACKGROUND_FILES
        with self._lock:
            event = self._refreshing.get(path)
            owner = event is None
            if owner:
                event = self._refreshing[path] = threading.Event()
        if not owner:
            if not background:
                event.wait()
            return

        def run() -> None:
            try:
                self._relist(path)
            except Exception as exc:  # noqa: BLE001 - a failed refresh keeps serving the old listing
                log.warning("%s: listing %r failed: %s", self.store.url, path, exc)
                if not background:
                    raise
            finally:
                with self._lock:
                    self._refreshing.pop(path, None)
                event.set()

        if background:
            threading.Thread(target=run, name=f"tiercache-list:{path}", daemon=True).start()
        else:
            run()

    def _nearest_dir(self, path: str) -> str:
        for d in (path, *ancestors(path)):
            if d in self._children:
                return d
        return ""

    # ------------------------------------------------------------------ queries

    def listdir(self, path: str = "") -> list[str]:
        """Names (directories and files) in directory ``path``, sorted."""
        path = normalize(path)
        self._ensure_loaded()
        if not self._dir_fresh(path):
            self._refresh_dir(self._nearest_dir(path))
        with self._lock:
            children = self._children.get(path)
            if children is None:
                if self._is_file(path):
                    raise NotADirectory(f"{path!r} is a file, not a directory")
                raise NotFound(f"no such directory {path!r}")
            return sorted(children)

    def _is_file(self, path: str) -> bool:
        parent = self._children.get(parent_of(path))
        name = path.rpartition("/")[2]
        return parent is not None and parent.get(name) is False

    def _lookup(self, path: str) -> str | None:
        """"dir", "file" or None, refreshing a stale listing once."""
        self._ensure_loaded()
        for attempt in (0, 1):
            with self._lock:
                if path in self._children:
                    kind = "dir"
                elif self._is_file(path):
                    kind = "file"
                else:
                    kind = None
                nearest = self._nearest_dir(parent_of(path)) if path else ""
            if kind is not None or attempt or self._dir_fresh(nearest):
                return kind
            self._refresh_dir(nearest)
        return None

    def info(self, path: str, revalidate: bool = True) -> ObjectInfo:
        """ObjectInfo of the file at ``path`` (HEAD first if its metadata expired and ``revalidate``)."""
        info, expired = self.lookup(path)
        return self.refresh(info.key) if revalidate and expired else info

    def lookup(self, path: str) -> tuple[ObjectInfo, bool]:
        """(info of the file at ``path``, whether that info is past its TTL), without revalidating."""
        path = normalize(path)
        kind = self._lookup(path)
        if kind == "dir" or not path:
            raise IsADirectory(f"{path!r} is a directory")
        if kind is None:
            raise NotFound(f"no such file {path!r}")
        raw = self.meta.get("objects", path.encode())
        if raw is None:
            return self.refresh(path), False
        info, fetched = decode(path, raw)
        return info, self._expired(max(fetched, self._confirmed.get(path, -math.inf)))

    def expired(self, path: str) -> bool:
        """Whether the cached info of ``path`` is past its TTL (unknown paths count as expired)."""
        path = normalize(path)
        raw = self.meta.get("objects", path.encode())
        if raw is None:
            return True
        return self._expired(max(decode(path, raw)[1], self._confirmed.get(path, -math.inf)))

    def stat(self, path: str) -> Entry:
        """Entry of a file or directory; NotFound if neither."""
        path = normalize(path)
        kind = self._lookup(path)
        name = path.rpartition("/")[2]
        if kind == "dir" or not path:
            return Entry(path, name, True, 0, self._listed.get("", 0.0), None)
        if kind is None:
            raise NotFound(f"no such file or directory {path!r}")
        info = self.info(path)
        return Entry(path, name, False, info.size, info.mtime, info.etag)

    def exists(self, path: str) -> bool:
        """Whether a file or directory is at ``path``."""
        try:
            self.stat(path)
            return True
        except NotFound:
            return False

    def files(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Infos of every file at or below ``prefix`` (a file or a directory; "" is everything)."""
        prefix = normalize(prefix)
        self._ensure_loaded()
        if prefix:
            raw = self.meta.get("objects", prefix.encode())
            if raw is not None:
                yield decode(prefix, raw)[0]
                return
        for key, raw in self.meta.scan("objects", f"{prefix}/".encode() if prefix else b""):
            yield decode(key.decode(), raw)[0]

    # ------------------------------------------------------------------ changes

    def refresh(self, path: str) -> ObjectInfo:
        """HEAD ``path`` and record the answer; NotFound (and the path forgotten) if it is gone."""
        path = normalize(path)
        self.heads += 1
        try:
            info = self.store.head(path)
        except NotFound:
            self.remove(path)
            raise
        old = self.meta.get("objects", path.encode())
        self._record(info)
        if old is not None and decode(path, old)[0].etag != info.etag and self.on_change:
            self.on_change(path, info)
        return info

    def confirm(self, path: str) -> None:
        """A conditional GET just proved the cached etag current: restart its TTL (in memory)."""
        if not math.isinf(self.ttl) and self.ttl > 0:
            if len(self._confirmed) > 200_000:
                self._confirmed.clear()
            self._confirmed[path] = self.clock()

    def _record(self, info: ObjectInfo) -> None:
        self.meta.put("objects", info.key.encode(), encode(info, self.clock()))
        with self._lock:
            if not self._is_file(info.key):
                self._insert(info.key, info.size)

    def add(self, info: ObjectInfo) -> None:
        """Show a file (e.g. one being written or just uploaded); it survives relists until they list it."""
        path = normalize(info.key)
        if not path:
            raise IsADirectory("the root is a directory")
        self._ensure_loaded()
        with self._lock:
            if path in self._children:
                raise IsADirectory(f"{path!r} is a directory")
            self._overlay[path] = info
            self._record(info)
            self._confirmed.pop(path, None)

    def add_dir(self, path: str) -> None:
        """Show an (empty) directory until the next listing of its parent."""
        path = normalize(path)
        self._ensure_loaded()
        with self._lock:
            if self._is_file(path):
                raise NotADirectory(f"{path!r} is a file")
            self._insert(path, is_dir=True)

    def remove(self, path: str) -> None:
        """Forget a file (deleted, or gone from the store)."""
        path = normalize(path)
        self.meta.delete("objects", path.encode())
        with self._lock:
            self._overlay.pop(path, None)
            self._confirmed.pop(path, None)
            parent = self._children.get(parent_of(path))
            name = path.rpartition("/")[2]
            if parent is not None and parent.get(name) is False:
                del parent[name]
                for anc in ancestors(path):
                    self._files_below[anc] = self._files_below.get(anc, 1) - 1
        if self.on_change:
            self.on_change(path, None)

    def hide(self, predicate: Callable[[str], bool] | None) -> None:
        """Leave the keys ``predicate`` names out of every listing from now on (the write tier's deletes
        that are acknowledged but not yet done at the store), so that no directory is made of them."""
        self.hidden = predicate

    def remove_dir(self, path: str) -> None:
        """Forget directory ``path`` and everything below it (removed or renamed through the mount)."""
        path = normalize(path)
        if not path:
            return
        prefix = f"{path}/"
        with self._lock:
            if path in self._children:
                self._drop_subtree(path)
                del self._children[path]
                self._files_below.pop(path, None)
            self._children.get(parent_of(path), {}).pop(path.rpartition("/")[2], None)
            for table in (self._listed, self._overlay, self._confirmed):
                for key in [k for k in table if k == path or k.startswith(prefix)]:
                    del table[key]
            stale = [k for k, _ in self.meta.scan("objects", prefix.encode())]
            listings = [k for k, _ in self.meta.scan("listings", f"/{path}".encode())
                        if k == f"/{path}".encode() or k.startswith(f"/{prefix}".encode())]
            with self.meta.write() as txn:
                for key in stale:
                    txn.delete(key, db=self.meta.db("objects"))
                for key in listings:
                    txn.delete(key, db=self.meta.db("listings"))
        if self.on_change:
            for key in stale:
                self.on_change(key.decode(), None)

    def forget(self, path: str) -> None:
        """Distrust the cached info of ``path``: its next use revalidates with a HEAD."""
        path = normalize(path)
        raw = self.meta.get("objects", path.encode())
        with self._lock:
            self._confirmed.pop(path, None)
            self._overlay.pop(path, None)
        if raw is not None:
            self.meta.put("objects", path.encode(), encode(decode(path, raw)[0], -math.inf))

    def stats(self) -> dict:
        """Counts, JSON-serializable."""
        with self._lock:
            return {
                "files": self._files_below.get("", 0), "dirs": max(0, len(self._children) - 1),
                "skipped_keys": self.skipped, "lists": self.lists, "heads": self.heads,
                "loaded": self._loaded,
            }
