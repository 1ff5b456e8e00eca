"""The durable write tier: what FUSE (or a library user) writes lands in staging files on the write dir, is
acknowledged in a journal, and is uploaded by background threads.

    create/open ─► write(...) into a staging file under WRITE_DIR/staging (copy-on-write for existing objects)
    flush/release ─► fsync staging, sha256, journal record (PENDING) committed and fsynced ─► return
                     (writethrough: also upload before returning)
    uploaders ─► PUT (multipart when large) ─► verify size ─► CLEAN ─► cache.admit_file ─► staging deleted
    start ─► journal replay: the newest change per key is redone; staging files no record names are deleted

Modules: ``state`` (the shared parts: lock, open files, pending names), ``handles`` (open files and their
commit), ``pending_view`` (read-your-writes), ``namespace_ops`` (unlink, rename, mkdir, rmdir), ``space`` (space
accounting, backpressure), ``attrs`` (chmod/chown/utime), ``journal`` (records on disk), ``changes`` (their
order in memory), ``staging`` (a file being written), ``uploader`` (threads running changes against the
store). Dirty data lives only in the write dir, never in the cache tiers, so it is never evicted. The journal
is an LMDB env inside the write dir, not in the cache dir as DESIGN.md has it, so that a write dir on durable
storage survives the loss of an ephemeral cache dir.

Directories: ``mkdir`` records the directory in the write dir's journal (no marker object in the store); it
lists in ``pending_paths`` until ``rmdir``. Directories holding objects exist in the store by their keys.
Paths are store keys: relative to the store's prefix, "/"-separated, no leading slash.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..store.base import ObjectStore
from .attrs import AttrChanges
from .cacheside import CacheFeed, CacheSide
from .changes import Changes
from .handles import Handles
from .journal import CLEAN, PUT, Journal
from .namespace_ops import NamespaceOps
from .pending_view import PendingView
from .space import WriteSpace
from .state import MODES, OpenFiles, PendingNames, WriteState
from .uploader import Uploader

log = logging.getLogger(__name__)

__all__ = ["MODES", "WriteTier"]

HELD_GRACE_S = 2.0


class WriteTier:
    """Durable write tier over an ObjectStore, optionally feeding a cache (``cache``: a ``CacheSide``, e.g. a
    TieredCache); handles are ints.

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
        cache: CacheSide | None = None,
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
        cond = threading.Condition(threading.Lock())
        names = PendingNames()
        self.journal = Journal(self.write_dir)
        self.changes = Changes(cond, names.live_add)
        self.feed = CacheFeed(cache)
        self._state = WriteState(store, cache, self.feed, mode, self.journal, cond, names, OpenFiles(names),
                                 self.changes)
        self._cond = cond
        self.space = WriteSpace(cond, self.journal.staging, self.changes, limit_bytes=limit_bytes,
                                high_watermark=high_watermark, reserve_bytes=reserve_bytes,
                                backpressure_timeout=backpressure_timeout)
        self.view = PendingView(self._state)
        self.handles = Handles(self._state, self.space, self.view)
        self.namespace = NamespaceOps(self._state, self.view)
        try:
            for path, mtime in self.journal.dirs().items():
                names.dirs[path] = mtime
                names.imply(path, +1)
            self._replay()
            self.space.check_room()
        except BaseException:
            self.journal.close()
            raise
        self.uploader = Uploader(
            store, self.journal, self.changes, feed=self.feed, threads=uploaders,
            retry_attempts=retry_attempts, retry_wait=retry_wait, retry_interval=retry_interval,
        )
        self._state.uploader = self.space.uploader = self.uploader
        self.uploader.start()
        self.feed.hide(self.is_deleted)  # listings leave out pending deletes
        self.attrs = AttrChanges(self._state, self.view)


    # ---------------------------------------------------------------- handles (handles.py)

    def create(self, path: str, owner: Any = None, mode: int = 0, uid: int = -1, gid: int = -1) -> int:
        """Open ``path`` as a new, empty file; returns a handle (``owner``: who opens it, see ``flush``;
        ``mode``/``uid``/``gid``: its attributes, 0 / -1: none stored)."""
        return self.handles.create(path, owner, mode, uid, gid)

    def open(self, path: str, truncate: bool = False, owner: Any = None) -> int:
        """Open an existing file for writing (copy-on-write at the first change unless ``truncate``)."""
        return self.handles.open(path, truncate, owner)

    def write(self, fh: int, data: bytes, offset: int) -> int:
        """Write ``data`` at ``offset``; waits past the high watermark, raises NoSpace at the limit."""
        return self.handles.write(fh, data, offset)

    def read(self, fh: int, offset: int, size: int) -> bytes:
        """Read through a write handle (it sees its own writes)."""
        return self.handles.read(fh, offset, size)

    def truncate(self, path_or_fh: str | int, length: int) -> None:
        """Set a file's length, through a handle, or by path (then committed as by a close)."""
        self.handles.truncate(path_or_fh, length)

    def fsync(self, fh: int) -> None:
        """Make the handle's bytes durable in staging."""
        self.handles.fsync(fh)

    def flush(self, fh: int, owner: Any = None, abandoned: bool = False) -> None:
        """A close(2) of one descriptor: by the writer (``owner`` None or the opener) the version so far is
        made durable and journaled, published by ``release`` (or replayed after a crash); by another owner
        only fsynced; ``abandoned`` (the writer is being killed): fsynced, and nothing new is published at
        ``release`` (see ``Handles.flush``)."""
        self.handles.flush(fh, owner, abandoned)

    def release(self, fh: int) -> None:
        """The last close of a handle: its newest version is published (see ``Handles.release``)."""
        self.handles.release(fh)

    # ---------------------------------------------------------------- namespace (namespace_ops.py)

    def unlink(self, path: str) -> None:
        """Remove a file (journaled first)."""
        self.namespace.unlink(path)

    def rename(self, old: str, new: str) -> None:
        """Move a file or directory (journaled first)."""
        self.namespace.rename(old, new)

    def mkdir(self, path: str) -> None:
        """Make a directory (kept in the journal, no marker object)."""
        self.namespace.mkdir(path)

    def rmdir(self, path: str) -> None:
        """Remove an empty directory."""
        self.namespace.rmdir(path)

    def set_attrs(self, path: str, mode: int | None = None, uid: int | None = None, gid: int | None = None,
                  mtime: float | None = None) -> None:
        """chmod/chown/utime of a file (None: unchanged; see ``attrs``)."""
        self.attrs.set_attrs(path, mode, uid, gid, mtime)

    # ---------------------------------------------------------------- read-your-writes (pending_view.py)

    def pending_entry(self, path: str) -> dict | None:
        """{path, size, mtime, is_dir, state} of a pending file or directory, else None."""
        return self.view.pending_entry(path)

    def pending_paths(self, prefix: str = "") -> list[str]:
        """Every pending path (file or made directory) starting with ``prefix``."""
        return self.view.pending_paths(prefix)

    def is_deleted(self, path: str) -> bool:
        """True while the delete of ``path`` is acknowledged but not yet done at the store."""
        return self.view.is_deleted(path)

    def read_pending(self, path: str, offset: int, size: int) -> bytes | None:
        """Bytes of a pending file; None if nothing is pending."""
        return self.view.read_pending(path, offset, size)

    # ---------------------------------------------------------------- control

    def flush_all(self, timeout: float | None = None) -> dict:
        """Run every pending change now and wait until each is done or failed once (or ``timeout``).

        Returns paths: {"uploaded": [...], "left": [...], "failed": [...] (part of left), "open": [...],
        "lost": [...] (acknowledged files whose bytes were found damaged: never uploaded)}. Files whose
        writer closed them but whose last close (FUSE RELEASE, sent asynchronously) has not arrived yet are
        waited for a moment (``HELD_GRACE_S``), then count as open.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        files = self._state.files
        with self._cond:
            held_until = time.monotonic() + HELD_GRACE_S
            while any(sf.held is not None for sf in files.by_path.values()) and time.monotonic() < held_until:
                self._cond.wait(0.05)
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
                "open": sorted(p for p, sf in files.by_path.items() if sf.dirty or sf.held is not None),
                "lost": sorted(self.journal.lost),
            }

    def stats(self) -> dict:
        """Dirty bytes, pending files, age of the oldest pending change, uploads, failures, space."""
        with self._cond:
            recs = [r for r in self.changes.records.values() if not r.superseded]
            puts = [r for r in recs if r.op == PUT]
            now, hard = time.time(), self.space.hard_limit()
            counts = self.uploader.counts
            open_files = self._state.files.by_path
            held = [f for f in open_files.values() if f.held is not None]  # closed by the writer, still open
            return {
                "mode": self.mode,
                "dirty_bytes": sum(r.size for r in puts)
                + sum(f.size for f in open_files.values() if f.dirty or f.held is not None),
                "pending_files": len(puts) + len(held),
                "pending_ops": len(recs),
                "open_files": len(open_files),
                "in_flight": self.changes.inflight,
                "oldest_pending_age_s": max(0.0, now - min((r.ctime for r in recs), default=now)),
                "uploaded_files": counts["uploaded_files"],
                "uploaded_bytes": counts["uploaded_bytes"],
                "failed_uploads": sum(1 for r in recs if r.fails),
                "upload_errors": counts["errors"],
                "local_errors": counts["local_errors"],
                "last_error": self.uploader.last_error,
                "corrupt_files": self.journal.corrupt_count(),
                "lost_files": sorted(self.journal.lost),
                "backpressure_waits": self.space.waits,
                "write_dir_used": self.space.used(),
                "limit": hard,
                "high_watermark_bytes": int(hard * self.space.high_watermark),
            }

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Commit open handles, drain uploads (unless ``drain`` is False), stop the uploaders, release the
        write dir. What is left stays in the journal and resumes at the next start; ``timeout`` bounds the
        drain and the wait for uploads in flight."""
        if self.journal.closed:
            return
        with self._cond:
            handles = self._state.files.handles()
        for fh in handles:
            try:
                self.release(fh)
            except Exception as exc:  # noqa: BLE001 - close goes on
                log.error("closing write handle %d: %s", fh, exc)
        self._state.closing = True
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

    # ---------------------------------------------------------------- internals

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
