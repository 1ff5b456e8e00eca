"""Keys ↔ POSIX paths: the directory tree of a store, from listings kept in LMDB with a TTL.

Paths are keys relative to the source prefix, "/"-separated, without a leading slash; "" is the root.
Rules for keys that are not plain paths:

* a key ending in "/" (a "folder marker") makes a directory and no file;
* keys with an empty segment, a "." or ".." segment, a segment over 255 bytes or a NUL are skipped with
  a warning — they are never mapped anywhere, least of all outside the root;
* a key that is both a file and a prefix of other keys ("a" and "a/b"): the directory wins and the
  file "a" is skipped with a warning.

The index of record is LMDB (``namespace_index``): nothing per object in memory, so a restart opens it and
serves at once. The first listing streams in (``namespace_ingest``, in parallel by prefix where the store
allows, ``store.walk``): a directory answers as soon as the walk has passed it. Metadata is trusted for
``ttl`` seconds after it was fetched (by LIST or HEAD, or confirmed by a conditional GET, ``confirm``); then
a directory is listed again on its next use (in the background, serving the old listing meanwhile, when it
holds more than ``BACKGROUND_FILES`` files) and a file's info is revalidated with a HEAD.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator

from .errors import IsADirectory, NotADirectory, NotFound
from .namespace_index import MARK, NamespaceIndex
from .namespace_ingest import listed_counts
from .namespace_listings import Listings
from .namespace_records import FORMAT, TIME, Entry, ancestors, decode, encode, key_problem, normalize, parent_of
from .removals import Removals
from .store.base import ObjectInfo, ObjectStore
from .tiers.meta import Meta

__all__ = ["Entry", "Namespace", "key_problem", "normalize"]


BACKGROUND_FILES = 10_000
LIST_THREADS = 8


class Namespace:
    """The directory tree of one store; thread-safe. See the module docstring for the rules."""

    def __init__(self, store: ObjectStore, meta: Meta, ttl: float = 60.0, clock: Callable[[], float] = time.time,
                 threads: int = LIST_THREADS):
        self.store = store
        self.meta = meta
        self.ttl = ttl
        self.clock = clock
        self.threads = threads
        self.on_change: Callable[[str, ObjectInfo | None], None] | None = None  # (path, new info or None)
        self.hidden: Callable[[str], bool] | None = None  # keys left out of listings (deletes not yet done)
        self.index = NamespaceIndex(meta)
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._overlay: dict[str, ObjectInfo] = {}  # added by the write tier; wins until a listing agrees
        self._confirmed: dict[str, float] = {}  # path -> when a conditional GET last confirmed its etag
        self.removals = Removals()  # a LIST or HEAD answered before a removal does not undo it
        self.listings = Listings(store, meta, self.index, self._cond, self._overlay, lambda: self.hidden,
                                 self.removals, threads, lambda: self.clock(), self._forget_confirmed)
        self._loaded = False
        if self.meta.get("misc", b"objects_format") != FORMAT:
            with self.meta.write() as txn:
                for name in ("objects", "listings"):
                    txn.drop(self.meta.db(name), delete=False)
                txn.put(b"objects_format", FORMAT, db=self.meta.db("misc"))
        self.heads = 0

    # ------------------------------------------------------------------ listings

    def _expired(self, fetched: float) -> bool:
        if math.isinf(self.ttl):
            return False
        return self.ttl == 0 or self.clock() - fetched > self.ttl

    def _ensure_loaded(self) -> None:
        """Read the listings' times (one record per listed directory, not per object); start the first
        listing of a store never listed, or relist a root past its TTL."""
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            self.listings.load()
            self._loaded = True
            if "" not in self.listings.listed:
                self.listings.start("")
                return
        if self._expired(self.listings.listed[""]):
            self._refresh_dir("")

    def close(self, grace: float = 2.0, timeout: float = 10.0) -> None:
        """Let running listings end within ``grace`` seconds, stop the others (they resume at the next start)."""
        self.listings.close(grace, timeout)

    @property
    def lists(self) -> int:
        """Listings ended (well or not)."""
        return self.listings.lists

    def _forget_confirmed(self, prefix: str) -> None:  # a listing below ``prefix`` ended: its times count
        for path in [p for p in self._confirmed if p.startswith(prefix)]:
            del self._confirmed[path]

    def _dir_fresh(self, path: str) -> bool:
        newest = max((self.listings.listed.get(d, -math.inf) for d in (path, *ancestors(path))), default=-math.inf)
        return newest > -math.inf and not self._expired(newest)

    def _settle(self, path: str) -> None:
        """Make the names in directory ``path`` current: wait for the first listing to pass it, or list
        its nearest existing directory again (see ``_refresh_dir``)."""
        cold = self.listings.first()
        if cold is not None:
            self.listings.wait(cold, path)
        elif not self._dir_fresh(path):  # (the first listing may have ended since the caller looked: then
            self._refresh_dir(self._nearest_dir(path))  # listing the tree again would be a second LIST)

    def _refresh_dir(self, path: str) -> None:
        """List ``path`` again: in the foreground, or in the background for big subtrees (serving stale)."""
        background = self.index.count_below(path, BACKGROUND_FILES + 1) > BACKGROUND_FILES
        with self._lock:
            job = self.listings.jobs.get(path)
            if job is None and background and self.listings.running_above(path):
                return  # a listing above it is running already: the old listing serves meanwhile
            job = job or self.listings.start(path)
        if not background:
            self.listings.wait(job, None)

    def _nearest_dir(self, path: str) -> str:
        return next((d for d in (path, *ancestors(path)) if self.index.is_dir(d)), "")

    # ------------------------------------------------------------------ queries

    def listdir(self, path: str = "") -> list[str]:
        """Names (directories and files) in directory ``path``, sorted."""
        return sorted({name for name, _info in self.children(path)})

    def entries(self, path: str = "") -> Iterator[Entry]:
        """The entries of directory ``path``, with the attributes the index holds (a file's size, mtime
        and etag; for a directory size 0), in index order (a subdirectory sorts as its name + "/").
        NotFound / NotADirectory as ``listdir``. One prefix scan of the index: cheap per entry."""
        for name, info in self.children(path):
            child = f"{path.strip('/')}/{name}" if path.strip("/") else name
            if info is None:
                yield Entry(child, name, True, 0, self.listings.listed.get("", 0.0), None)
            else:
                yield Entry(child, name, False, info.size, info.mtime, info.etag)

    def children(self, path: str = "") -> Iterator[tuple[str, ObjectInfo | None]]:
        """(name, info) of each entry of directory ``path``, info None for a subdirectory: the whole
        record of each file (size, mtime, etag, mode, uid, gid), for readdirplus-style callers; as
        ``entries`` otherwise (freshness checked first, NotFound / NotADirectory when iterated)."""
        path, records = normalize(path), self.records(path)
        return ((name, decode(f"{path}/{name}" if path else name, raw)[0] if raw else None) for name, raw in records)

    def records(self, path: str = "") -> Iterator[tuple[str, bytes]]:
        """``children`` with each file's record undecoded (b"" for a subdirectory), for decoding a whole
        directory at once (namespace_records.record_columns)."""
        path = normalize(path)
        self._ensure_loaded()
        if not self._dir_fresh(path):
            self._settle(path)
        return self.index.directory(path)

    def _lookup(self, path: str) -> tuple[str | None, bytes | None]:
        """As ``index.kind``; for a path not found, after the first listing has passed its directory or its
        stale listing was refreshed once."""
        self._ensure_loaded()
        kind = self.index.kind(path)
        if kind[0] is not None:
            return kind
        parent = parent_of(path)
        if not self._dir_fresh(parent):
            self._settle(parent)
        return self.index.kind(path)  # again when fresh too: the listing may have ended since the first look

    def info(self, path: str, revalidate: bool = True) -> ObjectInfo:
        """ObjectInfo of the file at ``path`` (HEAD first if its metadata expired and ``revalidate``)."""
        info, expired = self.lookup(path)
        return self.refresh(info.key) if revalidate and expired else info

    def lookup(self, path: str) -> tuple[ObjectInfo, bool]:
        """(info of the file at ``path``, whether that info is past its TTL), without revalidating."""
        path = normalize(path)
        kind, raw = self._lookup(path)
        if kind == "dir":
            raise IsADirectory(f"{path!r} is a directory")
        if kind is None or raw is None:
            raise NotFound(f"no such file {path!r}")
        info, fetched = decode(path, raw)
        return info, self._expired(max(fetched, self._confirmed.get(path, -math.inf)))

    def expired(self, path: str) -> bool:
        """Whether the cached info of ``path`` is past its TTL (unknown paths count as expired)."""
        path = normalize(path)
        raw = self.index.get(path)
        if raw is None:
            return True
        return self._expired(max(decode(path, raw)[1], self._confirmed.get(path, -math.inf)))

    def stat(self, path: str) -> Entry:
        """Entry of a file or directory; NotFound if neither."""
        path = normalize(path)
        kind, _raw = self._lookup(path)
        name = path.rpartition("/")[2]
        if kind == "dir":
            return Entry(path, name, True, 0, self.listings.listed.get("", 0.0), None)
        if kind is None:
            raise NotFound(f"no such file or directory {path!r}")
        info = self.info(path)
        return Entry(path, name, False, info.size, info.mtime, info.etag)

    def exists(self, path: str) -> bool:
        """Whether a file or directory is at ``path``."""
        try:
            return self.stat(path) is not None
        except NotFound:
            return False

    def files(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Infos of every file at or below ``prefix`` (a file or a directory; "" is everything), streamed
        from the index in key order (once the first listing, if it is still running, has passed it)."""
        prefix = normalize(prefix)
        self._ensure_loaded()
        cold = self.listings.first()
        if cold is not None:  # the first listing: until it has passed the file or the subtree
            self.listings.wait(cold, prefix, exact=True)
        raw = self.index.get(prefix) if prefix else None
        if raw is not None:
            yield decode(prefix, raw)[0]
            return
        for path, raw in self.index.files(prefix):
            yield decode(path, raw)[0]

    # ------------------------------------------------------------------ changes

    def refresh(self, path: str) -> ObjectInfo:
        """HEAD ``path`` and record the answer; NotFound (and the path forgotten) if it is gone."""
        path = normalize(path)
        self.heads += 1
        with self.removals.lookup() as removed_since:
            try:
                info = self.store.head(path)
            except NotFound:
                self.remove(path)
                raise
            old = self.index.get(path)
            self._record(info)
            if removed_since(path):  # removed while the HEAD was out: its answer predates that
                self.remove(path)
                raise NotFound(f"no such file {path!r}")
        if old is not None and decode(path, old)[0].etag != info.etag and self.on_change:
            self.on_change(path, info)
        return info

    def confirm(self, path: str) -> None:
        """A conditional GET just proved the cached etag current: restart its TTL (in memory, bounded)."""
        if not math.isinf(self.ttl) and self.ttl > 0:
            if len(self._confirmed) > 200_000:
                self._confirmed.clear()
            self._confirmed[path] = self.clock()

    def _record(self, info: ObjectInfo) -> None:
        self.meta.put("objects", info.key.encode(), encode(info, self.clock()))

    def add(self, info: ObjectInfo) -> None:
        """Show a file (e.g. one being written or just uploaded); it survives relists until they list it."""
        path = normalize(info.key)
        if not path:
            raise IsADirectory("the root is a directory")
        self._ensure_loaded()
        with self._lock:
            if self.index.is_dir(path):
                raise IsADirectory(f"{path!r} is a directory")
            self._overlay[path] = info
            self._record(info)
            self._confirmed.pop(path, None)

    def add_dir(self, path: str) -> None:
        """Show an (empty) directory until the next listing of its parent."""
        path = normalize(path)
        self._ensure_loaded()
        with self._lock:
            if self.index.get(path) is not None:
                raise NotADirectory(f"{path!r} is a file")
            if path:
                self.meta.put("listings", MARK + path.encode(), TIME.pack(self.clock()))

    def remove(self, path: str) -> None:
        """Forget a file (deleted, or gone from the store)."""
        path = normalize(path)
        self.removals.removed(path)
        with self._lock:
            if self.meta.delete("objects", path.encode()):
                self._keep_parent(path)
            self._overlay.pop(path, None)
            self._confirmed.pop(path, None)
        if self.on_change:
            self.on_change(path, None)

    def _keep_parent(self, path: str) -> None:
        """The directory of a path just removed stays, empty, until its next listing (caller holds the lock)."""
        parent = parent_of(path)
        if parent and not self.index.is_dir(parent):
            self.meta.put("listings", MARK + parent.encode(), TIME.pack(self.clock()))

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
        stale: list[bytes] = []
        self.removals.removed(path, tree=True)
        with self._lock:
            for table in (self.listings.listed, self._overlay, self._confirmed):
                for key in [k for k in table if k == path or k.startswith(prefix)]:
                    del table[key]
            for key, _raw in self.index.walk(self.index.objects, prefix.encode()):
                stale.append(key)
            marks = list(self.index.markers(path))
            listings = [k for k, _ in self.meta.scan("listings", f"/{path}".encode())
                        if k == f"/{path}".encode() or k.startswith(f"/{prefix}".encode())]
            self.meta.delete_many("objects", stale)
            self.meta.delete_many("listings", marks + listings)
            self._keep_parent(path)
        if self.on_change:
            for key in stale:
                self.on_change(key.decode(), None)

    def forget(self, path: str) -> None:
        """Distrust the cached info of ``path``: its next use revalidates with a HEAD."""
        path = normalize(path)
        raw = self.index.get(path)
        with self._lock:
            self._confirmed.pop(path, None)
            self._overlay.pop(path, None)
        if raw is not None:
            self.meta.put("objects", path.encode(), encode(decode(path, raw)[0], -math.inf))

    def stats(self) -> dict:
        """Counts, JSON-serializable ("dirs": as the last listing of the root counted them)."""
        with self._lock:
            return {
                "files": self.meta.count("objects"),
                "dirs": listed_counts(self.meta.get("listings", b"/"))[1],
                "skipped_keys": self.listings.skipped, "lists": self.lists, "heads": self.heads,
                "list_requests": self.listings.list_requests, "listing": sorted(self.listings.jobs),
                "loaded": self._loaded,
            }
