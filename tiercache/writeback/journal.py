"""The write journal: acknowledged changes waiting for the object store, on disk (``Journal``); their order
in memory is ``changes.Changes``.

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

Order: the changes touching a key run one at a time, in the order they were acknowledged (see ``changes.Changes``), so
the store ends in the state of the last acknowledged change.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import lmdb

from ..lock import CacheDirLock
from ..private import private_dir
from ..tiers.meta import Meta, loaded_item

log = logging.getLogger(__name__)

PUT, DELETE, COPY = "put", "delete", "copy"
PENDING, CLEAN = "pending", "clean"
# HELD: acknowledged by the writer's close (durable, replayed and published after a crash) but not published
# while the file stays open (its handle keeps it, not ``Changes``)
HELD = "held"
_PERSISTED = ("id", "op", "key", "seq", "size", "sha256", "src", "state", "ctime", "mtime", "disk", "mode", "uid",
              "gid", "touched")
_CHUNK = 8 << 20


@dataclass(eq=False)
class Record:
    """One acknowledged change: upload a staging file (put), delete a key, or copy ``src`` to it (rename).

    ``seq`` orders changes: for one key only the newest counts. ``disk``: the bytes its staging file holds
    (less than ``size`` for a sparse file; -1, as in older journals, means ``size``). ``mode``/``uid``/``gid``
    (0 / -1: not set) and ``mtime`` are the file's attributes, stored in the object's metadata; ``touched``:
    they were changed after the change was acknowledged (a copy then sets them after copying). Fields after
    ``touched`` live in memory only.
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
    mode: int = 0
    uid: int = -1
    gid: int = -1
    touched: bool = False
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


def _readable_items(path: Path) -> list[tuple[str, bytes, bytes]]:
    """(sub-db, stored key, raw value) of every item of a damaged journal env that can still be read."""
    items: list[tuple[str, bytes, bytes]] = []
    try:
        env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=16)
    except lmdb.Error:
        return items
    try:
        for name in ("journal", "misc"):
            try:
                with env.begin() as txn:
                    db = env.open_db(name.encode(), txn=txn, create=False)
                    for key, value in txn.cursor(db=db):
                        items.append((name, bytes(key), bytes(value)))
            except lmdb.Error:
                continue
    finally:
        env.close()
    return items


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
            self.lost = self._load_lost()  # key → quarantine note, for files whose acknowledged bytes are lost
            self.meta = self._open_meta(self.dir / "journal")
        except BaseException:
            self._lock.release()
            raise
        self.closed = False

    def _open_meta(self, path: Path) -> Meta:
        """The journal's LMDB env; a damaged one (it cannot be opened or read) is salvaged."""
        try:
            meta = Meta(path)
        except lmdb.Error as exc:
            return self._salvage_env(path, exc, None)
        try:
            meta.scan("journal")
            meta.scan("misc")
        except lmdb.Error as exc:
            return self._salvage_env(path, exc, meta)
        return meta

    def _salvage_env(self, path: Path, exc: Exception, meta: Meta | None) -> Meta:
        """Move a damaged journal env aside, carry every item still readable into a fresh one, and report
        the staging files no salvaged record names as lost (their names are unknown)."""
        if meta is not None:
            with contextlib.suppress(lmdb.Error):
                meta.close()
        aside = path.with_name(f"journal.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(path, aside)
        fresh = Meta(path)
        kept: set[str] = set()
        with fresh.write() as txn:
            for name, stored, raw in _readable_items(aside):
                try:
                    key, value = loaded_item(stored, raw)
                except (ValueError, IndexError, struct.error):
                    continue
                txn.put(key, value, db=fresh.db(name))
                if name == "journal":
                    kept.add(key.decode(errors="replace"))
        fresh.sync()
        reason = f"write journal damaged ({type(exc).__name__}: {exc}); it was moved to {aside}"
        unknown = 0
        for entry in list(os.scandir(self.staging)):
            if entry.name in kept:
                continue
            self.corrupt.mkdir(exist_ok=True)
            dest = self.corrupt / f"{entry.name}-staging"
            st = entry.stat()
            os.replace(entry.path, dest)
            self._note_lost(dest, {"id": entry.name, "key": "", "size": st.st_size, "mtime": st.st_mtime,
                                   "reason": reason})
            unknown += 1
        log.error("%s; %d record(s) salvaged, %d written file(s) of unknown name kept in %s", reason, len(kept),
                  unknown, self.corrupt)
        return fresh

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
