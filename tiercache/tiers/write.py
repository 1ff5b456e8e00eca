"""The durable write tier: what FUSE (or a library user) writes lands in staging files on the write dir, is
acknowledged in a journal, and is uploaded by background threads.

    create/open ─► write(...) into a staging file under WRITE_DIR/staging (copy-on-write for existing objects)
    flush/release ─► fsync staging, sha256, journal record (PENDING) committed and fsynced ─► return
                     (writethrough: also upload before returning)
    uploaders ─► PUT (multipart when large) ─► verify size ─► CLEAN ─► cache.admit_file ─► staging deleted
    start ─► journal replay: the newest change per key is redone; staging files no record names are deleted

Modules: ``journal`` (records on disk and their order in memory), ``staging`` (a file being written),
``uploader`` (threads running changes against the store). Dirty data lives only in the write dir, never in
the cache tiers, so it is never evicted. The journal is an LMDB env inside the write dir, not in the cache
dir as DESIGN.md has it, so that a write dir on durable storage survives the loss of an ephemeral cache dir.

Directories: ``mkdir`` records the directory in the write dir's journal (no marker object in the store); it
lists in ``pending_paths`` until ``rmdir``. Directories holding objects exist in the store by their keys.
Paths are store keys: relative to the store's prefix, "/"-separated, no leading slash.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import (
    AlreadyExists,
    BadHandle,
    ConfigError,
    DirectoryNotEmpty,
    IsADirectory,
    NoSpace,
    NotADirectory,
    NotFound,
    ReadOnly,
    StoreError,
)
from ..store.base import ObjectStore
from .journal import CLEAN, COPY, DELETE, PUT, Changes, Journal, Record
from .staging import StagedFile
from .uploader import Uploader

log = logging.getLogger(__name__)

MODES = ("writeback", "writethrough", "readonly")


class WriteTier:
    """Durable write tier over an ObjectStore, optionally feeding a TieredCache (``cache``); handles are ints.

    ``limit_bytes`` 0: the limit is the free space of the write dir's filesystem minus ``reserve_bytes``.
    Past ``high_watermark`` of the limit writers wait for uploads to drain (giving up after
    ``backpressure_timeout`` seconds without upload progress); a write past the limit raises NoSpace (ENOSPC)
    and changes nothing.
    """

    def __init__(
        self,
        store: ObjectStore,
        write_dir: str | os.PathLike,
        *,
        cache: Any = None,
        mode: str = "writeback",
        limit_bytes: int = 0,
        high_watermark: float = 0.8,
        uploaders: int = 4,
        reserve_bytes: int = 256 << 20,
        backpressure_timeout: float = 60.0,
        retry_attempts: int = 3,
        retry_wait: float = 0.2,
        retry_interval: float = 5.0,
    ):
        if mode not in MODES:
            raise ConfigError(f"mode: {mode!r} is not one of {', '.join(MODES)}")
        if not 0 < high_watermark <= 1:
            raise ConfigError(f"high watermark: {high_watermark} must be in (0, 1]")
        self.store, self.cache, self.mode = store, cache, mode
        self.write_dir = Path(write_dir)
        self.limit_bytes, self.high_watermark, self.reserve_bytes = limit_bytes, high_watermark, reserve_bytes
        self.backpressure_timeout = backpressure_timeout
        self._cond = threading.Condition(threading.Lock())
        self._open: dict[str, StagedFile] = {}
        self._handles: dict[int, StagedFile] = {}
        self._fhs = itertools.count(1)
        self._live: Counter[str] = Counter()  # paths pending upload or open for write
        self._implied: Counter[str] = Counter()  # directories holding live paths or made directories
        self._open_bytes = 0  # bytes of staging files not yet owned by a journal record
        self._waits = 0
        self._closing = False
        self.journal = Journal(self.write_dir)
        self.changes = Changes(self._cond, self._live_add)
        try:
            self._dirs = self.journal.dirs()
            for path in self._dirs:
                self._imply(path, +1)
            self._replay()
        except BaseException:
            self.journal.close()
            raise
        self.uploader = Uploader(
            store, self.journal, self.changes, cache=cache, threads=uploaders,
            retry_attempts=retry_attempts, retry_wait=retry_wait, retry_interval=retry_interval,
        )
        self.uploader.start()

    # ---------------------------------------------------------------- handles

    def create(self, path: str) -> int:
        """Open ``path`` as a new, empty file (any old content is replaced at close); returns a handle."""
        self._writable()
        path = _norm(path)
        with self._cond:
            if path in self._dirs or self._implied[path]:
                raise IsADirectory(f"{path}: is a directory")
            sf = self._open.get(path) or self._register(StagedFile(path, 0, created=True))
            fh = self._new_handle(sf)
        self._truncate_new(fh, sf)
        return fh

    def open(self, path: str, truncate: bool = False) -> int:
        """Open an existing file for writing; its content is copied to staging at the first change
        (copy-on-write from the pending upload, the cache or the store), unless ``truncate``."""
        self._writable()
        path = _norm(path)
        with self._cond:
            sf = self._open.get(path)
            fh = self._new_handle(sf) if sf is not None else 0
        if sf is None:
            kind, size = self._lookup(path)
            if kind == "dir":
                raise IsADirectory(f"{path}: is a directory")
            with self._cond:
                sf = self._open.get(path) or self._register(StagedFile(path, size, created=False))
                fh = self._new_handle(sf)
        if truncate:
            self._truncate_new(fh, sf)
        return fh

    def write(self, fh: int, data: bytes, offset: int) -> int:
        """Write ``data`` at ``offset``; waits past the high watermark, raises NoSpace at the limit."""
        self._writable()
        sf = self._sf(fh)
        with sf.lock:
            return sf.write(self, data, offset)

    def read(self, fh: int, offset: int, size: int) -> bytes:
        """Read through a write handle (it sees its own unflushed writes)."""
        sf = self._sf(fh)
        with sf.lock:
            data = sf.read(offset, size)
            path, size = sf.path, max(0, min(size, sf.size - offset))
        return data if data is not None else self.base_read(path, offset, size)

    def truncate(self, path_or_fh: str | int, length: int) -> None:
        """Set a file's length, through a handle, or by path (then committed as by a close)."""
        self._writable()
        if isinstance(path_or_fh, int):
            sf = self._sf(path_or_fh)
            with sf.lock:
                sf.truncate(self, length)
            return
        fh = self.open(path_or_fh, truncate=length == 0)
        try:
            if length:
                self.truncate(fh, length)
        finally:
            self.release(fh)

    def fsync(self, fh: int) -> None:
        """Make the handle's bytes durable in staging. The file is acknowledged for upload at flush/release:
        a crash before that loses it (never acknowledged, removed at the next start)."""
        sf = self._sf(fh)
        with sf.lock:
            if sf.fd is not None:
                os.fsync(sf.fd)

    def flush(self, fh: int) -> None:
        """Commit what was written so far, like release without closing. FUSE should call it from flush
        (sent on every close(2), which waits for it; FUSE's release is asynchronous, its errors lost)."""
        self._after_commit(self._commit(self._sf(fh)))

    def release(self, fh: int) -> None:
        """Close a handle: commit (staging fsynced, journal entry fsynced) before returning; writethrough
        also waits for the upload and raises StoreError if it fails (the file stays pending, is retried)."""
        with self._cond:
            sf = self._handles.pop(fh, None)
        if sf is None:
            raise BadHandle(f"write handle {fh} is not open")
        try:
            rec = self._commit(sf)
        finally:
            self._drop_ref(sf)
        self._after_commit(rec)

    # ---------------------------------------------------------------- namespace

    def unlink(self, path: str) -> None:
        """Remove a file: its pending uploads are dropped and the object deleted (journaled first)."""
        self._writable()
        path = _norm(path)
        if self._lookup(path)[0] == "dir":
            raise IsADirectory(f"{path}: is a directory")
        with self._cond:
            sf = self._open.get(path)
            if sf is not None:
                sf.unlinked = True
                self._unregister(sf)
            dropped = self.changes.supersede(path)
            rec = self.changes.add(DELETE, path)
            self.journal.write(put=[rec], delete=dropped)
        self._acknowledged(dropped, path)
        self.uploader.try_now(rec)

    def rename(self, old: str, new: str) -> None:
        """Move a file or directory: pending uploads of ``old`` are redirected to ``new``, stored objects
        copied then deleted (journaled first; done now unless an upload of the same key is in flight)."""
        self._writable()
        old, new = _norm(old), _norm(new)
        if old == new:
            return
        if new.startswith(old + "/"):
            raise ConfigError(f"rename {old} -> {new}: cannot move a directory into itself")
        kind, size = self._lookup(old)
        target = self._lookup(new, missing_ok=True)[0]
        if kind == "dir":
            if target == "file":
                raise NotADirectory(f"{new}: not a directory")
            self._rename_dir(old, new)
        elif target == "dir":
            raise IsADirectory(f"{new}: is a directory")
        else:
            self._rename_file(old, new, size)

    def mkdir(self, path: str) -> None:
        """Make a directory, kept in the write dir's journal (no marker object); an existing one is fine."""
        self._writable()
        path = _norm(path)
        with self._cond:
            if self._live[path]:
                raise AlreadyExists(f"{path}: a file exists there")
            if path in self._dirs:
                return
            self._add_dirs({path: time.time()})
        self.journal.sync()

    def rmdir(self, path: str) -> None:
        """Remove an empty directory (DirectoryNotEmpty, ENOTEMPTY, otherwise)."""
        self._writable()
        path = _norm(path)
        with self._cond:
            if self._implied[path]:
                raise DirectoryNotEmpty(f"{path}: directory not empty")
            if self._live[path]:
                raise NotADirectory(f"{path}: not a directory")
            local = path in self._dirs
        marker = remote = False
        for info in self.store.list(path + "/"):
            if info.key == path + "/":
                marker = True
            elif not self.is_deleted(info.key):
                raise DirectoryNotEmpty(f"{path}: directory not empty")
            else:
                remote = True
        if not (local or marker or remote):
            raise NotFound(f"{path}: no such directory")
        if marker:
            self.uploader.retrying(self.store.delete, path + "/")
        with self._cond:
            self._remove_dirs([path])
        self.journal.sync()

    # ---------------------------------------------------------------- read-your-writes

    def pending_entry(self, path: str) -> dict | None:
        """{path, size, mtime, is_dir, state} of a file written but not yet uploaded, or open for write, or of
        a directory made here or holding such files; else None. state: open|pending|uploading|failed|dir."""
        path = path.strip("/")
        with self._cond:
            if path in self._dirs or self._implied[path]:
                mtime = self._dirs.get(path, time.time())
                return {"path": path, "size": 0, "mtime": mtime, "is_dir": True, "state": "dir"}
            sf = self._open.get(path)
            if sf is not None:
                return {"path": path, "size": sf.size, "mtime": sf.mtime, "is_dir": False, "state": "open"}
            rec = self.changes.current(path)
            if rec is None or rec.op == DELETE:
                return None
            state = "uploading" if rec.inflight else "failed" if rec.fails else "pending"
            return {"path": path, "size": rec.size, "mtime": rec.mtime, "is_dir": False, "state": state}

    def pending_paths(self, prefix: str = "") -> list[str]:
        """Every path starting with ``prefix`` (at any depth) that is pending upload, open for write, or a
        directory made with mkdir; their parents are directories too (``pending_entry`` says so)."""
        with self._cond:
            return sorted({p for p in itertools.chain(self._live, self._dirs) if p.startswith(prefix)})

    def is_deleted(self, path: str) -> bool:
        """True while the delete of ``path`` is acknowledged but not yet done at the store: hide it."""
        path = path.strip("/")
        with self._cond:
            rec = self.changes.current(path)
            return rec is not None and rec.op == DELETE and path not in self._open

    def read_pending(self, path: str, offset: int, size: int) -> bytes | None:
        """Bytes of a file written but not yet uploaded (or open for write); None if nothing is pending."""
        path = path.strip("/")
        with self._cond:
            sf = self._open.get(path)
        if sf is not None:
            with sf.lock:
                data = None if sf.unlinked else sf.read(offset, size)
            if data is not None:
                return data
        return self._read_change(path, offset, size)

    # ---------------------------------------------------------------- control

    def flush_all(self, timeout: float | None = None) -> dict:
        """Run every pending change now and wait until each is done or failed once (or ``timeout``).

        Returns paths: {"uploaded": [...], "left": [...], "failed": [...] (part of left), "open": [...]}.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            targets = list(self.changes.records.values())
            fails = {rec.id: rec.fails for rec in targets}
            self.changes.retry_now(targets)
            while not self.uploader.stopping:
                waiting = [r for r in targets if not r.done and (r.inflight or r.fails == fails[r.id])]
                queue = self.changes.queue
                # in flight anywhere: its end may unblock one of ours; else only a runnable one of ours helps
                if not waiting or not (self.changes.inflight or any(
                        r.id in queue and self.changes.runnable(r) for r in waiting)):
                    break
                left_s = None if deadline is None else deadline - time.monotonic()
                if left_s is not None and left_s <= 0:
                    break
                self._cond.wait(1.0 if left_s is None else min(left_s, 1.0))
            return {
                "uploaded": [r.key for r in targets if r.done],
                "left": [r.key for r in targets if not r.done],
                "failed": [r.key for r in targets if not r.done and r.fails],
                "open": sorted(p for p, sf in self._open.items() if sf.dirty),
            }

    def stats(self) -> dict:
        """Dirty bytes, pending files, age of the oldest pending change, uploads, failures, space."""
        with self._cond:
            recs = [r for r in self.changes.records.values() if not r.superseded]
            puts = [r for r in recs if r.op == PUT]
            now, hard = time.time(), self._hard_limit()
            counts = self.uploader.counts
            return {
                "mode": self.mode,
                "dirty_bytes": sum(r.size for r in puts)
                + sum(f.size for f in self._open.values() if f.dirty),
                "pending_files": len(puts),
                "pending_ops": len(recs),
                "open_files": len(self._open),
                "in_flight": self.changes.inflight,
                "oldest_pending_age_s": max(0.0, now - min((r.ctime for r in recs), default=now)),
                "uploaded_files": counts["uploaded_files"],
                "uploaded_bytes": counts["uploaded_bytes"],
                "failed_uploads": sum(1 for r in recs if r.fails),
                "upload_errors": counts["errors"],
                "last_error": self.uploader.last_error,
                "corrupt_files": self.journal.corrupt_count(),
                "backpressure_waits": self._waits,
                "write_dir_used": self._used(),
                "limit": hard,
                "high_watermark_bytes": int(hard * self.high_watermark),
            }

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Commit open handles, drain uploads (unless ``drain`` is False), stop the uploaders, release the
        write dir. What is left stays in the journal and resumes at the next start; ``timeout`` bounds the
        drain and the wait for uploads in flight."""
        if self.journal.closed:
            return
        with self._cond:
            handles = list(self._handles)
        for fh in handles:
            try:
                self.release(fh)
            except Exception as exc:  # noqa: BLE001 - close goes on
                log.error("closing write handle %d: %s", fh, exc)
        self._closing = True
        deadline = None if timeout is None else time.monotonic() + timeout
        if drain:
            left = self.flush_all(timeout)["left"]
            if left:
                log.warning("closing with %d change(s) not done; they resume at next start", len(left))
        if not self.uploader.stop(None if deadline is None else max(0.0, deadline - time.monotonic())):
            log.warning("uploads still in flight at close; they are redone at next start")
        with self._cond:
            self.journal.close()

    def __enter__(self) -> WriteTier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- StagingHost (used by StagedFile)

    def reserve(self, nbytes: int) -> None:
        """Account ``nbytes`` new bytes: past the high watermark wait for uploads; past the limit NoSpace."""
        if nbytes <= 0:
            return
        with self._cond:
            hard = self._hard_limit()
            if self._used() + nbytes > hard * self.high_watermark and self.uploader.draining():
                self._waits += 1
                progress, since = self.changes.progress, time.monotonic()
                while self._used() + nbytes > hard * self.high_watermark and self.uploader.draining():
                    if self.changes.progress != progress:
                        progress, since = self.changes.progress, time.monotonic()
                    left = self.backpressure_timeout - (time.monotonic() - since)
                    if left <= 0:
                        break
                    self._cond.wait(min(left, 1.0))
                    hard = self._hard_limit()
            if self._used() + nbytes > hard:
                raise NoSpace(f"{self.write_dir}: write dir full ({self._used()} of {hard} bytes in use)")
            self._open_bytes += nbytes

    def unreserve(self, nbytes: int) -> None:
        """Give back bytes accounted by ``reserve``."""
        with self._cond:
            self._open_bytes -= nbytes
            self._cond.notify_all()

    def new_staging(self) -> tuple[str, Path]:
        """A fresh staging id and path."""
        with self._cond:
            rid = self.changes.new_id()
        return rid, self.journal.staging_path(rid)

    def base_fd(self, path: str) -> int | None:
        """An fd on the staging file holding ``path``'s pending content, or None."""
        where = self._resolve(path)
        return where[0] if where is not None else None

    def base_read(self, path: str, offset: int, size: int) -> bytes:
        """``path``'s current content as left by its pending change, else from the cache or the store."""
        data = self._read_change(path, offset, size)
        return data if data is not None else self._remote_read(path, offset, size)

    # ---------------------------------------------------------------- internals

    def _writable(self) -> None:
        if self.mode == "readonly":
            raise ReadOnly("read-only: writes are refused (mode readonly)")
        if self._closing:
            raise ReadOnly("the write tier is closing")

    def _sf(self, fh: int) -> StagedFile:
        with self._cond:
            sf = self._handles.get(fh)
        if sf is None:
            raise BadHandle(f"write handle {fh} is not open")
        return sf

    def _new_handle(self, sf: StagedFile) -> int:
        fh = next(self._fhs)
        self._handles[fh] = sf
        sf.refs += 1
        return fh

    def _register(self, sf: StagedFile) -> StagedFile:
        self._open[sf.path] = sf
        self._live_add(sf.path, +1)
        return sf

    def _unregister(self, sf: StagedFile) -> None:
        if self._open.get(sf.path) is sf:
            del self._open[sf.path]
            self._live_add(sf.path, -1)

    def _truncate_new(self, fh: int, sf: StagedFile) -> None:
        """Truncate a just-opened handle to 0; on failure the handle is closed again."""
        try:
            with sf.lock:
                sf.truncate(self, 0)
        except BaseException:
            with self._cond:
                self._handles.pop(fh, None)
            self._drop_ref(sf)
            raise

    def _drop_ref(self, sf: StagedFile) -> None:
        with sf.lock, self._cond:
            sf.refs -= 1
            if sf.refs:
                return
            self._unregister(sf)
            private, fd, sf.fd = sf.private, sf.fd, None
            if private:
                self._open_bytes -= sf.size
        if fd is not None:
            os.close(fd)
        if private:
            self.journal.staging_path(sf.staging_id).unlink(missing_ok=True)

    def _commit(self, sf: StagedFile) -> Record | None:
        """Acknowledge ``sf``'s content: staging fsynced, journal record committed and fsynced."""
        with sf.lock:
            digest = sf.prepare_commit()
            if digest is None:
                return None
            self.journal.sync_staging()
            with self._cond:
                if self.journal.closed:
                    raise StoreError("the write tier is closed")
                dropped = self.changes.supersede(sf.path)
                rec = self.changes.add(
                    PUT, sf.path, rid=sf.staging_id, size=sf.size, sha256=digest, mtime=sf.mtime
                )
                self.journal.write(put=[rec], delete=dropped)
                self._open_bytes -= sf.size
                sf.sealed, sf.dirty = True, False
        self._acknowledged(dropped, rec.key)
        return rec

    def _after_commit(self, rec: Record | None) -> None:
        if rec is not None and self.mode == "writethrough":
            self.uploader.run_now(rec)

    def _acknowledged(self, dropped: list[Record], *paths: str) -> None:
        """After a journal change: make it durable, delete superseded staging files, drop stale cache data."""
        self.journal.sync()
        self.journal.discard(dropped)
        for path in paths:
            self.uploader.tell_cache("invalidate", path)

    def _lookup(self, path: str, missing_ok: bool = False) -> tuple[str, int]:
        """("file", size) or ("dir", 0) for ``path`` as it is now, pending changes included; NotFound if
        nothing is there (("", 0) with ``missing_ok``)."""
        with self._cond:
            if path in self._open:
                return "file", self._open[path].size
            rec = self.changes.current(path)
            if rec is not None and rec.op != DELETE:
                return "file", rec.size
            if path in self._dirs or self._implied[path]:
                return "dir", 0
            deleted = rec is not None
        try:
            if deleted:
                raise NotFound(f"{path}: deleted")
            if self.cache is not None:
                entry = self.cache.stat(path)
                return ("dir", 0) if entry.is_dir else ("file", entry.size)
            return "file", self.store.head(path).size
        except NotFound:
            if not deleted and self.cache is None and next(iter(self.store.list(path + "/")), None):
                return "dir", 0
            if missing_ok:
                return "", 0
            raise

    def _resolve(self, path: str) -> tuple[int | None, str, int] | None:
        """Where ``path``'s pending content is: (fd on a staging file, "", size), or (None, store key, size)
        at the end of a chain of pending copies; None if no upload or copy of ``path`` is pending."""
        with self._cond:
            rec = self.changes.current(path)
            if rec is None or rec.op == DELETE:
                return None
            size = rec.size
            while rec.op == COPY:  # a copy reads its source as it is at the copy's place in the log
                src = rec.src
                rec = self.changes.current(src, before=rec.seq)
                if rec is None or rec.op == DELETE:
                    return None, src, size
            try:
                return os.open(self.journal.staging_path(rec.id), os.O_RDONLY | os.O_CLOEXEC), "", size
            except FileNotFoundError:  # a quarantined staging file
                return None

    def _read_change(self, path: str, offset: int, size: int) -> bytes | None:
        """``path`` as its pending upload or copy leaves it; None if no such change is pending."""
        where = self._resolve(path)
        if where is None:
            return None
        fd, key, total = where
        size = max(0, min(size, total - offset))
        if fd is None:
            return self._remote_read(key, offset, size)
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)

    def _remote_read(self, key: str, offset: int, size: int) -> bytes:
        if size <= 0:
            return b""
        if self.cache is not None:
            return bytes(self.cache.read(key, offset, size))
        return self.store.get_range(key, offset, offset + size)

    def _rename_file(self, old: str, new: str, size: int) -> None:
        with self._cond:
            sf_old, sf_new = self._open.get(old), self._open.get(new)
            if sf_new is not None and sf_new is not sf_old:
                sf_new.unlinked = True
                self._unregister(sf_new)
            dropped = self.changes.supersede(new)
            cur = self.changes.current(old)
            changed, run = [], []
            if cur is not None and cur.op == PUT:
                self.changes.rekey(cur, new)  # the pending upload now writes `new`
                changed.append(cur)
            elif cur is not None or sf_old is None or not sf_old.created:
                run.append(self.changes.add(COPY, new, src=old, size=size))
            dropped += self.changes.supersede(old)
            run.append(self.changes.add(DELETE, old))
            if sf_old is not None:
                self._unregister(sf_old)
                sf_old.path = new
                self._register(sf_old)
            self.journal.write(put=changed + run, delete=dropped)
        self._acknowledged(dropped, old, new)
        for rec in run:
            self.uploader.try_now(rec)

    def _rename_dir(self, old: str, new: str) -> None:
        files = {info.key: info.size for info in self.store.list(old + "/") if not info.key.endswith("/")}
        with self._cond:
            for path in itertools.chain(self._live, self._open):
                if path.startswith(old + "/"):
                    sf = self._open.get(path)
                    files[path] = sf.size if sf is not None else self.changes.current(path).size
            moved = {p: t for p, t in self._dirs.items() if p == old or p.startswith(old + "/")}
        for path in sorted(files):
            if not self.is_deleted(path):
                self._rename_file(path, new + path[len(old):], files[path])
        with self._cond:
            self._remove_dirs(list(moved))
            self._add_dirs({new + p[len(old):]: t for p, t in moved.items()} or {new: time.time()})
        self.journal.sync()

    def _add_dirs(self, dirs: dict[str, float]) -> None:
        dirs = {p: t for p, t in dirs.items() if p not in self._dirs}
        for path, mtime in dirs.items():
            self._dirs[path] = mtime
            self._imply(path, +1)
        self.journal.set_dirs(add=dirs)

    def _remove_dirs(self, paths: list[str]) -> None:
        paths = [p for p in paths if self._dirs.pop(p, None) is not None]
        for path in paths:
            self._imply(path, -1)
        self.journal.set_dirs(remove=paths)

    def _live_add(self, path: str, delta: int) -> None:
        before = self._live[path] > 0
        self._live[path] += delta
        if self._live[path] <= 0:
            del self._live[path]
        if before != (path in self._live):
            self._imply(path, delta)

    def _imply(self, path: str, delta: int) -> None:
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            self._implied[parent] += delta
            if self._implied[parent] <= 0:
                del self._implied[parent]

    def _replay(self) -> None:
        """Queue the journal's changes again: the newest per key is redone (a staging file's size and sha256
        are checked before its upload), older ones are dropped, staging files no record names deleted."""
        dropped, clean = [], []
        with self._cond:
            for rec in self.journal.load():
                if rec.state == CLEAN:
                    clean.append(rec)
                    continue
                dropped += self.changes.supersede(rec.key)
                rec.verify = rec.op == PUT
                self.changes.insert(rec)
            self.journal.write(delete=dropped + clean)
        self.journal.sync()
        self.journal.discard(dropped + clean)
        known = {r.id for r in self.changes.records.values() if r.op == PUT}
        orphans = self.journal.remove_orphans(known)
        if self.changes.records or orphans:
            log.info("journal replay: %d change(s) to redo, %d superseded, %d unacknowledged file(s) removed",
                     len(self.changes.records), len(dropped), orphans)

    def _used(self) -> int:
        return self._open_bytes + self.changes.put_bytes

    def _hard_limit(self) -> int:
        st = os.statvfs(self.journal.staging)
        fs_limit = self._used() + st.f_bavail * st.f_frsize - self.reserve_bytes
        return max(0, min(self.limit_bytes, fs_limit) if self.limit_bytes else fs_limit)


def _norm(path: str) -> str:
    clean = path.strip("/")
    if not clean or any(part in ("", ".", "..") for part in clean.split("/")):
        raise ConfigError(f"invalid path {path!r}")
    return clean
