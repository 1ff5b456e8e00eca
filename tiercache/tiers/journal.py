"""The write journal: acknowledged changes waiting for the object store, on disk (``Journal``) and in order
in memory (``Changes``).

Layout of a write dir (self-contained, so it survives the loss of an ephemeral cache dir)::

    WRITE_DIR/lock        CacheDirLock: one WriteTier per write dir
    WRITE_DIR/journal/    LMDB env (tiercache.tiers.meta.Meta): sub-db "journal" holds the records,
                          sub-db "misc" the directories made with mkdir
    WRITE_DIR/staging/    one file per written file version, named by its record id
    WRITE_DIR/corrupt/    staging files whose size or sha256 no longer matched their record (kept for humans),
                          each with a ``.json`` note; while that note exists the file is "lost": the mount shows
                          it unreadable (EIO), ``flush``/``unmount`` fail naming it. Removing the file (rm in the
                          mount) or writing a new version renames the note ``.json.acknowledged``.

DESIGN.md puts the journal in the cache dir's LMDB; it lives here instead because the cache dir may sit on
ephemeral NVMe while the write dir is on durable storage, and a journal that outlives neither its staging
files is useless.

Order: the changes touching a key run one at a time, in the order they were acknowledged (see ``Changes``), so
the store ends in the state of the last acknowledged change.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import os
import re
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..lock import CacheDirLock
from ..private import private_dir
from .meta import Meta

log = logging.getLogger(__name__)

PUT, DELETE, COPY = "put", "delete", "copy"
PENDING, CLEAN = "pending", "clean"
# HELD: acknowledged by the writer's close (durable, replayed and published after a crash) but not published
# while the file stays open (its handle keeps it, not ``Changes``)
HELD = "held"
_PERSISTED = ("id", "op", "key", "seq", "size", "sha256", "src", "state", "ctime", "mtime", "disk")
_CHUNK = 8 << 20


@dataclass(eq=False)
class Record:
    """One acknowledged change: upload a staging file (put), delete a key, or copy ``src`` to it (rename).

    ``seq`` orders changes: for one key only the newest counts. ``disk``: the bytes its staging file holds
    (less than ``size`` for a sparse file; -1, as in older journals, means ``size``). Fields after ``disk``
    live in memory only.
    """

    id: str
    op: str
    key: str
    seq: int
    size: int = 0
    sha256: str = ""
    src: str = ""
    state: str = PENDING
    ctime: float = field(default_factory=time.time)
    mtime: float = field(default_factory=time.time)
    disk: int = -1
    inflight: bool = False
    superseded: bool = False
    done: bool = False
    verify: bool = False
    fails: int = 0
    next_try: float = 0.0
    error: str = ""
    claimed: list[str] = field(default_factory=list)
    landed: bool = False  # the store operation succeeded (what fails after it is local: not redone)
    local_fails: int = 0  # failures not of the store (journal, staging file) in a row

    @property
    def charged(self) -> int:
        """Bytes of the write dir's budget this change holds (its staging file's, for a put)."""
        return self.size if self.disk < 0 else self.disk

    def keys(self) -> tuple[str, ...]:
        """Every store key this change touches (a copy reads ``src``)."""
        return (self.src, self.key) if self.op == COPY else (self.key,)

    def dumps(self) -> bytes:
        """The persisted part as JSON."""
        return json.dumps({name: getattr(self, name) for name in _PERSISTED}, separators=(",", ":")).encode()

    @classmethod
    def loads(cls, raw: bytes) -> Record:
        """Inverse of ``dumps``."""
        return cls(**json.loads(raw))


def file_sha256(fd: int, size: int) -> str:
    """sha256 of the first ``size`` bytes of an open file."""
    digest = hashlib.sha256()
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(_CHUNK, size - offset), offset)
        if not chunk:
            break
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


class Journal:
    """The LMDB journal and staging area of one write dir, owned exclusively (CacheDirLock) by one process.

    Commits are not fsynced; callers that acknowledge a change call ``sync()`` before returning.
    """

    def __init__(self, write_dir: str | os.PathLike):
        self.dir = Path(write_dir)
        self.staging = self.dir / "staging"
        self.corrupt = self.dir / "corrupt"
        self._lock = CacheDirLock(self.dir).acquire()
        try:
            private_dir(self.staging)
            self.meta = Meta(self.dir / "journal")
        except BaseException:
            self._lock.release()
            raise
        self.closed = False
        self.lost = self._load_lost()  # key → quarantine note, for files whose acknowledged bytes are lost

    def staging_path(self, rid: str) -> Path:
        """Where the staging file of record ``rid`` lives."""
        return self.staging / rid

    def load(self) -> list[Record]:
        """Every readable record, oldest first. A record that cannot be read is salvaged as far as it goes:
        its raw bytes go to corrupt/ with a note (lost: reported by ``flush``, ``unmount`` and ``stats``)."""
        recs = []
        for rid, raw in self.meta.scan("journal"):
            try:
                recs.append(Record.loads(raw))
            except (ValueError, TypeError, KeyError) as exc:
                self._salvage(rid, raw, f"journal record unreadable ({type(exc).__name__}: {exc})")
        return sorted(recs, key=lambda r: r.seq)

    def _salvage(self, rid: bytes, raw: bytes, reason: str) -> None:
        """Keep an unreadable record's bytes in corrupt/, note it as lost, drop it from the journal."""
        name = rid.decode(errors="replace").replace("/", "_")[:100]
        found = re.search(rb'"key":"((?:[^"\\]|\\.)*)"', raw)
        key = json.loads(b'"' + found.group(1) + b'"') if found else ""
        self.corrupt.mkdir(exist_ok=True)
        dest = self.corrupt / f"{name}.record"
        dest.write_bytes(raw)
        staging = self.staging_path(name)
        if staging.exists():
            os.replace(staging, self.corrupt / f"{name}-staging")
        note = {"id": name, "key": key, "size": 0, "mtime": time.time(), "reason": reason}
        self._note_lost(dest, note)
        with self.meta.write() as txn:
            txn.delete(rid, db=self.meta.db("journal"))
        self.sync()
        log.error("write journal: record %s is damaged (%s); %s kept at %s", name, reason, key or "its file", dest)

    def write(self, put: list[Record] = (), delete: list[Record] = ()) -> None:
        """Store and remove records in one transaction (not yet fsynced)."""
        if self.closed or not (put or delete):
            return
        db = self.meta.db("journal")
        with self.meta.write() as txn:
            for rec in delete:
                txn.delete(rec.id.encode(), db=db)
            for rec in put:
                txn.put(rec.id.encode(), rec.dumps(), db=db)

    def sync(self) -> None:
        """Make every commit so far durable."""
        if not self.closed:
            self.meta.sync()

    def sync_staging(self) -> None:
        """fsync the staging directory, so new staging files' names survive a crash."""
        fd = os.open(self.staging, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def dirs(self) -> dict[str, float]:
        """Directories made with mkdir: path → mtime."""
        return {k[4:].decode(): json.loads(v) for k, v in self.meta.scan("misc", b"dir:")}

    def set_dirs(self, add: dict[str, float] | None = None, remove: list[str] = ()) -> None:
        """Record made directories and forget removed ones (one transaction, not yet fsynced)."""
        if self.closed:
            return
        db = self.meta.db("misc")
        with self.meta.write() as txn:
            for path in remove:
                txn.delete(b"dir:" + path.encode(), db=db)
            for path, mtime in (add or {}).items():
                txn.put(b"dir:" + path.encode(), json.dumps(mtime).encode(), db=db)

    def discard(self, recs: list[Record], running: bool = False) -> None:
        """Delete the staging files of dropped or finished uploads; one still being uploaded only when its
        runner says so (``running``)."""
        for rec in recs:
            if rec.op == PUT and (running or not rec.inflight):
                try:
                    os.unlink(self.staging_path(rec.id))
                except FileNotFoundError:
                    pass

    def remove_orphans(self, known: set[str]) -> int:
        """Delete staging files no record names (written but never acknowledged); returns how many."""
        removed = 0
        for entry in os.scandir(self.staging):
            if entry.name not in known:
                os.unlink(entry.path)
                removed += 1
        return removed

    def quarantine(self, rec: Record, reason: str) -> Path:
        """Move a record's staging file (if any) and its record to corrupt/ for a human; drop the record."""
        self.corrupt.mkdir(exist_ok=True)
        dest = self.corrupt / f"{rec.id}-{rec.key.replace('/', '_')[:150]}"
        try:
            os.replace(self.staging_path(rec.id), dest)
        except FileNotFoundError:
            pass
        self._note_lost(dest, json.loads(rec.dumps()) | {"reason": reason})
        self.write(delete=[rec])
        self.sync()
        return dest

    def _note_lost(self, dest: Path, note: dict) -> None:
        note_path = dest.with_name(dest.name + ".json")
        note_path.write_text(json.dumps(note, indent=1) + "\n")
        self.lost[note.get("key") or f"<unknown key, record {note.get('id')}>"] = note | {"note": str(note_path)}

    def _load_lost(self) -> dict[str, dict]:
        lost: dict[str, dict] = {}
        if not self.corrupt.is_dir():
            return lost
        for entry in sorted(os.scandir(self.corrupt), key=lambda e: e.name):
            if entry.name.endswith(".json"):
                try:
                    note = json.loads(Path(entry.path).read_text())
                except (OSError, ValueError):
                    note = {"id": entry.name[:-5], "key": "", "reason": "quarantine note unreadable"}
                key = note.get("key") or f"<unknown key, record {note.get('id')}>"
                lost[key] = note | {"note": entry.path}
        return lost

    def acknowledge_lost(self, key: str) -> bool:
        """The user acted on lost file ``key`` (removed it, or wrote a new version): it stops being reported.
        Its bytes stay in corrupt/; the note is renamed ``.json.acknowledged``."""
        note = self.lost.pop(key, None)
        if note is None:
            return False
        try:
            os.replace(note["note"], note["note"] + ".acknowledged")
        except OSError:
            pass
        return True

    def corrupt_count(self) -> int:
        """How many quarantined staging files wait in corrupt/."""
        if not self.corrupt.is_dir():
            return 0
        return sum(1 for e in os.scandir(self.corrupt) if e.name.endswith(".json"))

    def close(self) -> None:
        """Flush, close the LMDB env and give up the write dir."""
        if not self.closed:
            self.closed = True
            self.meta.close()
            self._lock.release()


class Changes:
    """The pending changes in memory, in log (sequence) order per key, and which change may run next.

    Every change touching a key runs after the older changes touching it, so the store ends as the log says.
    A newer change writing a key retires older ones writing it, unless a copy reads the key in between; a
    rename re-points a pending upload (it holds its bytes locally) but chains copies (a copy reads its source
    at its place in the log, so copies are never moved).

    Not locked itself: call every method with ``cond`` (the owner's lock) held. ``on_live(path, +1/-1)``
    reports a path starting or ceasing to be written by a pending upload or copy (for listings).
    """

    def __init__(self, cond: threading.Condition, on_live: Callable[[str, int], None]):
        self.cond = cond
        self.on_live = on_live
        self.records: dict[str, Record] = {}
        self.index: dict[str, list[Record]] = {}  # key → changes touching it, oldest first
        self.queue: OrderedDict[str, None] = OrderedDict()  # ids waiting to run
        self.delayed: list[tuple[float, int, str]] = []  # heap of (due, seq, id) after failures
        self.busy: Counter[str] = Counter()  # keys with a store operation in flight
        self.inflight = 0
        self.seq = 0
        self.put_bytes = 0  # bytes of staging files held by records
        self.progress = 0  # bumps whenever a change leaves
        self._live: set[str] = set()

    def new_id(self) -> str:
        """A fresh record/staging id (ids increase)."""
        self.seq += 1
        return f"{self.seq:016x}"

    def next_seq(self) -> int:
        """A fresh sequence number (the newest so far)."""
        self.seq += 1
        return self.seq

    def add(self, op: str, key: str, rid: str = "", **fields) -> Record:
        """A new newest change of ``key``, queued; the caller supersedes older ones first and journals it."""
        self.seq += 1
        rec = Record(id=rid or f"{self.seq:016x}", op=op, key=key, seq=self.seq, **fields)
        self.insert(rec)
        return rec

    def insert(self, rec: Record) -> None:
        """Index and queue a record (new, or loaded from the journal in sequence order)."""
        self.seq = max(self.seq, rec.seq, int(rec.id, 16))
        self.records[rec.id] = rec
        for key in rec.keys():
            self.index.setdefault(key, []).append(rec)
        self._refresh(rec.key)
        if rec.op == PUT:
            self.put_bytes += rec.charged
        self.queue[rec.id] = None
        self.cond.notify_all()

    def rekey(self, rec: Record, new: str) -> None:
        """Point a pending upload at ``new`` (rename): it becomes the newest change of ``new``."""
        assert rec.op == PUT
        old = rec.key
        self._unindex(rec)
        self.seq += 1
        rec.key, rec.seq, rec.state = new, self.seq, PENDING
        self.index.setdefault(new, []).append(rec)
        self._refresh(old)
        self._refresh(new)

    def current(self, path: str, before: int | None = None) -> Record | None:
        """The newest change writing ``path`` (older than sequence ``before``, if given)."""
        for rec in reversed(self.index.get(path, ())):
            if rec.key == path and (before is None or rec.seq < before):
                return rec
        return None

    def supersede(self, key: str) -> list[Record]:
        """Retire the changes writing ``key`` that a newer one makes moot (no copy reads ``key`` after them);
        returns them, for the caller to drop from the journal with the newer change. One in flight stays in
        memory until its runner returns (``Journal.discard`` leaves its staging file alone until then)."""
        retired, recs = [], self.index.get(key, [])
        for i, rec in enumerate(list(recs)):
            if rec.key != key or any(r.op == COPY and r.src == key for r in recs[i + 1:]):
                continue
            rec.superseded = True
            self._unindex(rec)
            self.queue.pop(rec.id, None)
            if not rec.inflight:
                self.forget(rec)
            retired.append(rec)
        self._refresh(key)
        return retired

    def forget(self, rec: Record) -> Record:
        """Remove a finished or dropped record from memory (not from the journal)."""
        if not rec.done:
            rec.done = True
            self._unindex(rec)
            self._refresh(rec.key)
            self.queue.pop(rec.id, None)
            self.records.pop(rec.id, None)
            if rec.op == PUT:
                self.put_bytes -= rec.charged
            self.progress += 1
            self.cond.notify_all()
        return rec

    def runnable(self, rec: Record) -> bool:
        """No store operation in flight on ``rec``'s keys and nothing ordered before it."""
        return all(not self.busy[k] and self.index.get(k, [None])[0] is rec for k in rec.keys())

    def claim(self, rec: Record, extra: str = "") -> None:
        """Mark ``rec`` running (or, with ``extra``, one more key it now writes)."""
        keys = [extra] if extra else list(rec.keys())
        if not extra:
            self.queue.pop(rec.id, None)
            rec.inflight = True
            self.inflight += 1
        rec.claimed += keys
        self.busy.update(keys)

    def unclaim(self, rec: Record) -> None:
        """``rec`` stopped running."""
        self.busy.subtract(rec.claimed)
        self.busy = +self.busy
        rec.inflight, rec.claimed = False, []
        self.inflight -= 1
        self.cond.notify_all()

    def next_ready(self, now: float) -> Record | None:
        """Claim and return the oldest change that may run now, or None."""
        while self.delayed and self.delayed[0][0] <= now:
            rec = self.records.get(heapq.heappop(self.delayed)[2])
            if rec is not None and not rec.inflight and not rec.superseded:
                self.queue[rec.id] = None
        for rid in self.queue:
            rec = self.records[rid]
            if rec.next_try <= now and self.runnable(rec):
                self.claim(rec)
                return rec
        return None

    def next_due(self) -> float | None:
        """When the earliest delayed change becomes due (monotonic), if any."""
        return self.delayed[0][0] if self.delayed else None

    def delay(self, rec: Record, due: float) -> None:
        """Retry ``rec`` no sooner than ``due`` (monotonic)."""
        rec.next_try = due
        self.queue.pop(rec.id, None)
        heapq.heappush(self.delayed, (due, rec.seq, rec.id))

    def retry_now(self, recs: list[Record]) -> None:
        """Make delayed changes due now, queue order kept by sequence."""
        for rec in recs:
            if not rec.inflight and not rec.done:
                rec.next_try = 0.0
                self.queue[rec.id] = None
        self.queue = OrderedDict(sorted(self.queue.items(), key=lambda kv: self.records[kv[0]].seq))
        self.cond.notify_all()

    def blocked_by_failure(self, rec: Record) -> bool:
        """A change ordered before ``rec`` failed and waits for its retry."""
        for key in rec.keys():
            for before in self.index.get(key, ()):
                if before is rec:
                    break
                if before.fails and not before.inflight:
                    return True
        return False

    def _unindex(self, rec: Record) -> None:
        for key in rec.keys():
            recs = self.index.get(key, [])
            if rec in recs:
                recs.remove(rec)
                if not recs:
                    del self.index[key]

    def _refresh(self, path: str) -> None:
        """Report ``path`` to ``on_live`` when whether its newest change writes it (upload or copy) flips."""
        rec = self.current(path)
        live = rec is not None and rec.op != DELETE
        if live != (path in self._live):
            if live:
                self._live.add(path)
            else:
                self._live.discard(path)
            self.on_live(path, +1 if live else -1)
