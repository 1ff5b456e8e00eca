"""One listing of a directory's subtree, taken into the namespace index as it streams in.

A ``ListingJob`` consumes a ``store.walk.Walk`` and writes what it lists into LMDB in batches of up to
``BATCH`` records, each batch its own transaction (published as soon as it commits, and at the latest when
the walk pauses for ``walk.IDLE``). Nothing per object stays in memory: the job keeps the set of
directories it has seen (one string per directory) and the walk's units. Waiters ask ``names_known(path)``:
whether the names directly in a directory are all in the index already, which they are as soon as the walk
has passed that directory's key range, long before the whole listing ends.

Rules applied as keys come in (the namespace's, see ``namespace``): hidden keys (pending deletes) are left
out; unrepresentable keys and files that are also directories are skipped and counted; a folder marker
makes a marked directory. The write tier's overlay wins over a listed entry until the listing shows its
etag. A listing over a subtree that already had records completes each entry with the metadata read
before for the same version, and when it ends, removes the records it did not list (fetched before it
started: neither listed, nor added, nor confirmed by a HEAD meanwhile). A listing into an empty subtree
reads nothing back.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable
from itertools import repeat
from operator import attrgetter, itemgetter

from . import namespace_progress as progress
from .namespace_index import MARK, NamespaceIndex, below
from .namespace_records import INFO, TIME, encode, encode_many, keep_metadata, key_problem, parent_of, plain_keys
from .removals import Removals
from .store.base import ObjectInfo, ObjectStore
from .store.walk import LevelLister, Unit, Walk, complete, complete_below
from .tiers.meta import RAW_KEY_MAX, Meta, Txn

log = logging.getLogger("tiercache.namespace")

BATCH = 5000
_KEY = attrgetter("key")
LISTED = struct.Struct("<dQQ")  # a listing's record: when it started, files and directories it found


class ListingStopped(Exception):
    """The listing was stopped (the namespace closed) before it ended; nothing of it is recorded as listed."""


class ListingJob:
    """The listing of everything below directory ``top`` (see the module docstring); ``run`` it once."""

    def __init__(self, store: ObjectStore, meta: Meta, index: NamespaceIndex, top: str, started: float,
                 cond: threading.Condition, overlay: dict[str, ObjectInfo],
                 hidden: Callable[[], Callable[[str], bool] | None], threads: int,
                 on_end: Callable[[ListingJob], None] | None = None, removals: Removals | None = None):
        self.store, self.meta, self.index, self.top, self.started = store, meta, index, top, started
        self.cond = cond  # the namespace's lock: guards ``overlay``, ``units`` and the waiters
        self.overlay = overlay
        self.hidden = hidden  # the predicate of keys to leave out, asked for when the listing starts
        self._hidden: Callable[[str], bool] | None = None
        self.on_end = on_end  # called under ``cond`` when the job ends, before ``finished`` is set
        self.removals = removals  # keys removed since the listing started (token ``token``): never taken in
        self.token = removals.start() if removals is not None else 0
        resume = progress.load(meta, top) if threads > 1 and isinstance(store, LevelLister) else None
        self.resumed = resume is not None  # from the progress of a listing stopped early (namespace_progress)
        self.walk = Walk(store, below(top).decode(), threads, resume=resume.pending if resume else None)
        self.units: list[Unit] = resume.units if resume else []
        self.finished = threading.Event()
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.files = resume.files if resume else 0
        self.dirs: set[str] = resume.dirs if resume else set()
        if resume is not None:
            self.started = resume.started  # its generation: the records it wrote before count as this listing's
        self.bad: list[tuple[str, str]] = []
        self.skipped = 0
        self._fresh = resume.fresh if resume else False
        self._batch: list[ObjectInfo] = []
        self._keys: list[bytes] = []  # the batch's keys, encoded
        self._long = False  # a key in the batch is longer than LMDB's own keys (stored as Meta maps it)
        self._markers: list[str] = []
        self._new_dirs: list[str] = []
        self._last: dict[int, tuple[Unit, str]] = {}
        self._ended: list[Unit] = []

    # ------------------------------------------------------------------ waiting

    def names_known(self, path: str, subtree: bool = False, exact: bool = False) -> bool:
        """Whether every name directly in directory ``path`` (``subtree``: every path below it; ``exact``:
        every key that starts with ``path`` itself) is in the index (caller holds ``cond``)."""
        if self.finished.is_set():
            return self.error is None
        if exact:
            return complete_below(self.units, path)
        return (complete_below if subtree else complete)(self.units, below(path).decode())

    # ------------------------------------------------------------------ running

    def run(self) -> None:
        """List, take everything in, sweep what was not listed; sets ``finished`` (and ``error``)."""
        try:
            top = self.top
            self._hidden = self.hidden()
            if not self.resumed:  # a resumed listing keeps what it found when it started
                self._fresh = self.index.count_below(top, 1) == 0 and not any(self.index.markers(top))
            for part in self.walk:
                if part is None:
                    self._commit()
                    continue
                if part.error is not None:
                    raise part.error
                if part.end:
                    break
                unit = part.unit
                if part.started and unit is not None:
                    with self.cond:
                        self.units.append(unit)
                if part.infos:
                    self._take(part.infos, unit)
                if part.finished and unit is not None:
                    self._ended.append(unit)
                if len(self._batch) >= BATCH:
                    self._commit()
            else:
                raise ListingStopped(f"listing {top!r} stopped")
            self._commit(publish=False)  # the waiters wake when the job has ended, records swept
            self._finish()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiters
            self.error = exc
            self.walk.close()
        finally:
            with self.cond:
                if self.on_end is not None:
                    self.on_end(self)
                self.finished.set()
                self.cond.notify_all()

    def _dir(self, path: str) -> None:
        floor = len(self.top)
        while len(path) > floor and path not in self.dirs:
            self.dirs.add(path)
            self._new_dirs.append(path)
            path = parent_of(path)

    def _take(self, infos: list[ObjectInfo], unit: Unit | None) -> None:
        """Take one chunk of a unit's infos into the batch (the rules in the module docstring): as a whole
        when every key is a plain path that names no directory seen (the common case), else key by key."""
        hidden = self._hidden
        if hidden is not None:  # asked outside our lock: it takes the write tier's
            infos = [info for info in infos if not hidden(info.key)]
        keys = list(map(_KEY, infos))
        joined = "\0".join(keys)
        if plain_keys(keys, joined) and self.dirs.isdisjoint(keys):
            self._take_plain(keys, joined)
            self._batch += infos
            last = keys[-1] if keys else None
        else:
            last = self._take_each(infos)
        if unit is not None and last is not None:
            self._last[id(unit)] = (unit, last)

    def _take_plain(self, keys: list[str], joined: str) -> None:
        """The directories and encoded keys of plain ``keys`` (``joined`` by NULs, which they do not hold)."""
        if not keys:
            return
        self._keys += joined.encode().split(b"\0")
        floor = len(self.top)
        for parent in _parents(keys, joined).difference(self.dirs):
            if len(parent) > floor:
                self._dir(parent)

    def _take_each(self, infos: list[ObjectInfo]) -> str | None:
        """``_take`` key by key: folder markers, keys that cannot be paths; the last key taken."""
        dirs, batch, bad, keys = self.dirs, self._batch, self.bad, self._keys
        floor = len(self.top)
        last = None
        for info in infos:
            key = info.key
            if key.endswith("/") and key != "/":
                path = key[:-1]
                problem = key_problem(path)
                if problem:
                    bad.append((key, problem))
                else:
                    self._markers.append(path)
                    self._dir(path)
                continue
            problem = key_problem(key)
            if problem is None and key in dirs:
                problem = "is also a directory (the directory wins)"
            if problem:
                bad.append((key, problem))
                continue
            parent = key.rpartition("/")[0]
            if len(parent) > floor and parent not in dirs:
                self._dir(parent)
            batch.append(info)
            raw = key.encode()
            keys.append(raw)
            self._long = self._long or len(raw) > RAW_KEY_MAX
            last = key
        return last

    def _commit(self, publish: bool = True) -> None:
        """Write the batch in one transaction, then (``publish``) tell the waiters how far each unit has got."""
        batch, keys, markers, new_dirs = self._batch, self._keys, self._markers, self._new_dirs
        self._batch, self._keys, self._markers, self._new_dirs = [], [], [], []
        long_keys, self._long = self._long, False
        objects, listings = self.index.objects, self.index.listings
        stamp = TIME.pack(self.started)
        with self.cond:
            if batch or markers or new_dirs:
                with self.meta.write() as txn:
                    overlay = self.overlay
                    removed = self.removals is not None and self.removals.any_since(self.token)
                    if not self._fresh or long_keys or removed or (
                            overlay and not overlay.keys().isdisjoint([info.key for info in batch])):
                        self._put_each(txn, batch, keys)
                    elif batch:  # a fresh subtree, nothing to merge: one multi-put of the whole batch
                        txn.txn.cursor(db=objects).putmulti(zip(keys, encode_many(batch, self.started), strict=True))
                    for path in markers:
                        txn.put(MARK + path.encode(), stamp, db=listings)
                    for path in new_dirs:  # a file where a directory now is: the directory wins
                        raw = txn.get(path.encode(), db=objects)
                        if raw is not None:
                            txn.delete(path.encode(), db=objects)
                            self.bad.append((path, "is also a directory (the directory wins)"))
                    self.files += len(batch)
                    if self.walk.parallel and publish:  # how far it has got, should it be stopped
                        progress.save(txn, listings, self.top, self.started, self._fresh, self.files, self.units,
                                      {id(unit): key for unit, key in self._last.values()},
                                      {id(unit) for unit in self._ended}, new_dirs)
            if publish:
                for unit, key in self._last.values():
                    unit.last = key
                self._last.clear()
                for unit in self._ended:
                    unit.done = True
                self._ended.clear()
                self.cond.notify_all()

    def _put_each(self, txn: Txn, batch: list[ObjectInfo], keys: list[bytes]) -> None:
        """Write the batch record by record: removals since the listing began, the overlay, metadata kept
        from the records of a subtree listed before (caller holds ``cond``)."""
        overlay, fresh, started, objects = self.overlay, self._fresh, self.started, self.index.objects
        removals, token = self.removals, self.token
        put = txn.txn.put  # a plain LMDB put for keys short enough to be stored as themselves
        for info, key in zip(batch, keys, strict=True):
            if removals is not None and removals.removed_since(info.key, token):
                continue  # deleted while the listing was out: the listing predates it
            pending = overlay.get(info.key) if overlay else None
            if pending is not None:
                if pending.etag == info.etag:
                    del overlay[info.key]
                else:
                    info = pending
            if not fresh:
                info = keep_metadata(txn.get(key, db=objects), info)
            if len(key) <= RAW_KEY_MAX:
                put(key, encode(info, started), db=objects)
            else:
                txn.put(key, encode(info, started), db=objects)

    def _finish(self) -> None:
        """Sweep what this listing did not list, keep the overlay, record the listing, warn of skipped keys."""
        top, started = self.top, self.started
        prefix = below(top).decode()
        objects, listings = self.index.objects, self.index.listings
        if not self._fresh:
            stale: list[bytes] = []
            for path, raw in self.index.files(top):
                if INFO.unpack_from(raw)[2] < started and path not in self.overlay:
                    stale.append(path.encode())
                if len(stale) >= BATCH:
                    self.meta.delete_many("objects", stale)
                    stale = []
            self.meta.delete_many("objects", stale)
            old_marks = [k for k in self.index.markers(top)
                         if TIME.unpack(self.meta.get("listings", k) or TIME.pack(0.0))[0] < started]
            self.meta.delete_many("listings", old_marks)
        with self.cond, self.meta.write() as txn:
            for path, info in self.overlay.items():
                if path.startswith(prefix) and path not in self.dirs:
                    txn.put(path.encode(), encode(info, started), db=objects)
            # LMDB keys cannot be empty: a listing is stored under "/" + its directory
            txn.put(f"/{top}".encode(), LISTED.pack(started, self.files, len(self.dirs)), db=listings)
            progress.clear(txn, listings, top)
        if self.bad:
            self.skipped = len(self.bad)
            examples = "; ".join(f"{k!r} {why}" for k, why in self.bad[:3])
            log.warning("%s: skipped %d key(s) that cannot be paths, e.g. %s", self.store.url, len(self.bad),
                        examples)


def _parents(keys: list[str], joined: str) -> set[str]:
    """The directories that NUL-``joined`` plain ``keys`` are directly in. The common chunk (every key in the
    first key's directory or the last's) is proved by counting over the joined string: as many keys start
    with those directories as there are keys, and none holds a "/" more than its directory's key does."""
    first, last = keys[0].rpartition("/")[0], keys[-1].rpartition("/")[0]
    if first and last and (first == last or not (last.startswith(f"{first}/") or first.startswith(f"{last}/"))):
        counted = slashes = 0
        for parent in {first, last}:
            head = f"{parent}/"
            found = joined.count(f"\0{head}") + joined.startswith(head)
            counted += found
            slashes += found * head.count("/")
        if counted == len(keys) and joined.count("/") == slashes:
            return {first, last}
    return set(map(itemgetter(0), map(str.rpartition, keys, repeat("/"))))


def listed_time(raw: bytes) -> float:
    """When a listing record's listing started."""
    return (LISTED if len(raw) == LISTED.size else TIME).unpack_from(raw)[0]


def listed_counts(raw: bytes | None) -> tuple[int, int]:
    """(files, directories) a listing record counted; (0, 0) if unknown."""
    if raw is None or len(raw) != LISTED.size:
        return 0, 0
    return LISTED.unpack(raw)[1:]
