"""Handles on files open for writing: open/create, write, read, truncate, and the commits that make a new
version durable (at the writer's flush) and publish it (at the last close of the open file).

    flush by the writer (its close(2)) ─► staging fsynced, journal record HELD fsynced: durable; a crash now
                                          replays and publishes it. Nothing is visible to the store yet.
    flush by anyone else (a forked or exec'd child closing its inherited descriptor) ─► staging fsynced only
    release (last close of the open file) ─► the held (or any newer) version is published: queued for upload
    a failed write (ENOSPC, EIO, backpressure timeout) ─► the open file is poisoned: flush and release raise
                                          the error, nothing is published, the previous version stays

"Writer": whoever opened the handle (``owner``, the process id under FUSE); a caller that names no owner is
the writer. In writethrough mode the writer's flush publishes and uploads before returning.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any

from ..errors import BadHandle, IsADirectory, StoreError, TiercacheError, WriteFailed
from .attrs import attrs_now
from .journal import HELD, PENDING, PUT, Record
from .pending_view import PendingView
from .space import WriteSpace
from .staging import StagedFile
from .state import WriteState, norm_path

log = logging.getLogger(__name__)


class Handles:
    """The write tier's handles (ints); also the ``StagingHost`` its StagedFiles call back into."""

    def __init__(self, state: WriteState, space: WriteSpace, view: PendingView):
        self.state, self.space, self.view = state, space, view

    def create(self, path: str, owner: Any = None, mode: int = 0, uid: int = -1, gid: int = -1) -> int:
        """Open ``path`` as a new, empty file (any old content is replaced at close); returns a handle.
        ``owner``: who opens it (its flushes commit; other callers' flushes only make bytes durable).
        ``mode``/``uid``/``gid``: the new file's attributes (0 / -1: none stored)."""
        st = self.state
        st.writable()
        path = norm_path(path)
        with st.cond:
            if st.names.is_dir(path):
                raise IsADirectory(f"{path}: is a directory")
            sf = st.files.get(path)
            if sf is None:
                sf = st.files.register(StagedFile(path, 0, created=True))
                sf.mode, sf.uid, sf.gid = mode, uid, gid
            fh = st.files.new_handle(sf, owner)
        self._truncate_new(fh, sf)
        return fh

    def open(self, path: str, truncate: bool = False, owner: Any = None) -> int:
        """Open an existing file for writing; its content is copied to staging at the first change
        (copy-on-write from the pending upload, the cache or the store), unless ``truncate``."""
        st = self.state
        st.writable()
        path = norm_path(path)
        with st.cond:
            sf = st.files.get(path)
            fh = st.files.new_handle(sf, owner) if sf is not None else 0
        if sf is None:
            kind, size = self.view.lookup(path, allow_lost=truncate)
            if kind == "dir":
                raise IsADirectory(f"{path}: is a directory")
            attrs = attrs_now(st, path)
            with st.cond:
                sf = st.files.get(path)
                if sf is None:
                    sf = st.files.register(StagedFile(path, size, created=False))
                    sf.mode, sf.uid, sf.gid = attrs.mode, attrs.uid, attrs.gid
                    sf.mtime = attrs.mtime or sf.mtime
                fh = st.files.new_handle(sf, owner)
        if truncate:
            self._truncate_new(fh, sf)
        return fh

    def write(self, fh: int, data: bytes, offset: int) -> int:
        """Write ``data`` at ``offset``; waits past the high watermark, raises NoSpace at the limit."""
        self.state.writable()
        sf = self.staged(fh)
        with sf.lock:
            self._check(sf)
            try:
                return sf.write(self, data, offset)
            except (TiercacheError, OSError) as exc:
                self._poison(sf, exc)
                raise

    def read(self, fh: int, offset: int, size: int) -> bytes:
        """Read through a write handle (it sees its own unflushed writes)."""
        sf = self.staged(fh)
        with sf.lock:
            data = sf.read(offset, size)
            path, size = sf.path, max(0, min(size, sf.size - offset))
        return data if data is not None else self.view.base_read(path, offset, size)

    def truncate(self, path_or_fh: str | int, length: int) -> None:
        """Set a file's length, through a handle, or by path (then committed as by a close)."""
        self.state.writable()
        if isinstance(path_or_fh, int):
            sf = self.staged(path_or_fh)
            with sf.lock:
                self._check(sf)
                try:
                    sf.truncate(self, length)
                except (TiercacheError, OSError) as exc:
                    self._poison(sf, exc)
                    raise
            return
        fh = self.open(path_or_fh, truncate=length == 0)
        try:
            if length:
                self.truncate(fh, length)
        finally:
            self.release(fh)

    def fsync(self, fh: int) -> None:
        """Make the handle's bytes durable in staging (no journal record: see ``flush``)."""
        sf = self.staged(fh)
        with sf.lock:
            self._check(sf)
            if sf.fd is not None:
                os.fsync(sf.fd)

    def flush(self, fh: int, owner: Any = None, abandoned: bool = False) -> None:
        """One close(2) of a descriptor (FUSE FLUSH: close waits for it, its error is close's).

        By the writer (``owner`` None or the opener): the version so far is made durable and journaled HELD,
        so a crash from now on replays and publishes it; it is published by ``release``. By another owner
        (a child closing an inherited descriptor): the bytes are fsynced, nothing is journaled or published.
        ``abandoned``: the writer is being killed (the kernel closes its files): fsynced, and its release
        publishes nothing written since its last own close. A poisoned file raises its write's error."""
        sf = self.staged(fh)
        with sf.lock:
            self._check(sf)
            opener = self.state.files.owner(fh)
            other = owner is not None and opener is not None and owner != opener
            if other or abandoned:
                if sf.fd is not None:
                    os.fsync(sf.fd)
                if abandoned and not other:
                    with self.state.cond:
                        self.state.files.abandon(fh)
                return
        if self.state.mode == "writethrough":
            self._after_commit(self._commit(sf, hold=False))
        else:
            self._commit(sf, hold=True)

    def release(self, fh: int) -> None:
        """The last close of an open file (FUSE RELEASE): publish its newest version (the writer's held
        one, or what was written since): queued for upload; writethrough waits for the upload and raises
        StoreError if it fails (the file stays pending, is retried). A poisoned file publishes nothing and
        raises its write's error."""
        st = self.state
        with st.cond:
            abandoned = fh in st.files.abandoned
            sf = st.files.pop_handle(fh)
        if sf is None:
            raise BadHandle(f"write handle {fh} is not open")
        rec = None
        try:
            with sf.lock:
                failure = self._failure(sf)
                if failure is not None:
                    self._drop_held(sf)
                    raise failure
                if abandoned:
                    log.warning("%s: its writer was killed before closing it: nothing it wrote since its "
                                "last close is published", sf.path)
                    rec = self._publish_held(sf)
            if not abandoned:
                rec = self._commit(sf, hold=False)
        finally:
            self._drop_ref(sf)
        self._after_commit(rec)

    def staged(self, fh: int) -> StagedFile:
        """The file behind handle ``fh``; BadHandle if it is not open."""
        with self.state.cond:
            sf = self.state.files.handle(fh)
        if sf is None:
            raise BadHandle(f"write handle {fh} is not open")
        return sf

    # ---------------------------------------------------------------- StagingHost (used by StagedFile)

    def reserve(self, nbytes: int) -> None:
        """Account ``nbytes`` new bytes: past the high watermark wait for uploads; past the limit NoSpace."""
        self.space.reserve(nbytes)

    def unreserve(self, nbytes: int) -> None:
        """Give back bytes accounted by ``reserve``."""
        self.space.unreserve(nbytes)

    def new_staging(self) -> tuple[str, Path]:
        """A fresh staging id and path."""
        with self.state.cond:
            rid = self.state.changes.new_id()
        return rid, self.state.journal.staging_path(rid)

    def base_fd(self, path: str) -> int | None:
        """An fd on the staging file holding ``path``'s pending content, or None."""
        return self.view.base_fd(path)

    def base_read(self, path: str, offset: int, size: int) -> bytes:
        """``path``'s current content as left by its pending change, else from the cache or the store."""
        return self.view.base_read(path, offset, size)

    # ---------------------------------------------------------------- internals

    def _truncate_new(self, fh: int, sf: StagedFile) -> None:
        """Truncate a just-opened handle to 0; on failure the handle is closed again."""
        try:
            with sf.lock:
                sf.truncate(self, 0)
        except BaseException:
            with self.state.cond:
                self.state.files.pop_handle(fh)
            self._drop_ref(sf)
            raise

    def _drop_ref(self, sf: StagedFile) -> None:
        st = self.state
        with sf.lock, st.cond:
            sf.refs -= 1
            if sf.refs:
                return
            st.files.unregister(sf)
            private, fd, sf.fd = sf.private, sf.fd, None
            if private:
                self.space.open_bytes -= sf.charged
        if fd is not None:
            os.close(fd)
        if private:
            st.journal.staging_path(sf.staging_id).unlink(missing_ok=True)

    def _commit(self, sf: StagedFile, hold: bool) -> Record | None:
        """Acknowledge ``sf``'s content: staging fsynced, journal record committed and fsynced. ``hold``: the
        record is HELD (kept by ``sf``, published by a later commit without ``hold``); else it is published,
        as is a version held earlier when nothing changed since. Returns the published record, if any."""
        st = self.state
        with sf.lock:
            digest = sf.prepare_commit()
            if digest is None:
                return None if hold else self._publish_held(sf)
            st.journal.sync_staging()
            with st.cond:
                if st.journal.closed:
                    raise StoreError("the write tier is closed")
                prev = [sf.held] if sf.held is not None else []
                fields = {"size": sf.size, "sha256": digest, "mtime": sf.mtime, "disk": sf.charged,
                          "mode": sf.mode, "uid": sf.uid, "gid": sf.gid}
                if hold:
                    rec = Record(id=sf.staging_id, op=PUT, key=sf.path, seq=st.changes.next_seq(), state=HELD,
                                 **fields)
                    dropped: list[Record] = []
                else:
                    dropped = st.changes.supersede(sf.path)
                    rec = st.changes.add(PUT, sf.path, rid=sf.staging_id, **fields)
                    self.space.open_bytes -= sf.charged  # now held by the record (``changes.put_bytes``)
                    st.journal.acknowledge_lost(sf.path)
                sf.held = rec if hold else None
                st.journal.write(put=[rec], delete=dropped + prev)
                sf.sealed, sf.dirty = True, False
        self._discard_held(prev)
        st.acknowledged(dropped, *(() if hold else (rec.key,)))
        return None if hold else rec

    def _publish_held(self, sf: StagedFile) -> Record | None:
        """Queue the version ``sf``'s writer closed (call holding ``sf.lock``); dropped if ``sf`` was
        unlinked meanwhile. It becomes the newest change of ``sf``'s path (renamed or not)."""
        st = self.state
        rec = sf.held
        if rec is None:
            return None
        if sf.unlinked:
            self._drop_held(sf)
            return None
        with st.cond:
            if st.journal.closed:
                raise StoreError("the write tier is closed")
            sf.held = None
            dropped = st.changes.supersede(sf.path)
            rec.key, rec.state, rec.seq = sf.path, PENDING, st.changes.next_seq()
            rec.mode, rec.uid, rec.gid, rec.mtime = sf.mode, sf.uid, sf.gid, sf.mtime  # chmod/utime since
            st.changes.insert(rec)
            self.space.open_bytes -= rec.charged
            st.journal.acknowledge_lost(sf.path)
            st.journal.write(put=[rec], delete=dropped)
        # no fsync: the HELD record on disk already replays as this version; what is dropped is older than it
        st.acknowledged(dropped, rec.key, sync=False)
        return rec

    def _drop_held(self, sf: StagedFile) -> None:
        """Forget the version ``sf``'s writer closed (call holding ``sf.lock``): journal entry and staging."""
        with self.state.cond:
            rec, sf.held = sf.held, None
            if rec is None:
                return
            self.state.journal.write(delete=[rec])
        self.state.journal.sync()
        self._discard_held([rec])

    def _discard_held(self, recs: list[Record]) -> None:
        """Delete the staging files of held versions no longer wanted (journal entries already gone)."""
        for rec in recs:
            with self.state.cond:
                self.space.open_bytes -= rec.charged
                self.state.cond.notify_all()
            self.state.journal.staging_path(rec.id).unlink(missing_ok=True)

    def _poison(self, sf: StagedFile, exc: Exception) -> None:
        if sf.failed is None:
            sf.failed = exc
            log.warning("write to %s failed (%s): this open file publishes nothing; the previous version stays",
                        sf.path, exc)

    def _failure(self, sf: StagedFile) -> WriteFailed | None:
        """The error a poisoned file's flush and release raise (None if it is not poisoned)."""
        exc = sf.failed
        if exc is None:
            return None
        code = getattr(exc, "errno", None)
        code = code if isinstance(code, int) and code > 0 else errno.EIO
        return WriteFailed(f"{sf.path}: an earlier write failed ({exc}); nothing of this open file is saved, "
                           f"the previous version stays", code)

    def _check(self, sf: StagedFile) -> None:
        failure = self._failure(sf)
        if failure is not None:
            raise failure

    def _after_commit(self, rec: Record | None) -> None:
        if rec is not None and self.state.mode == "writethrough":
            self.state.uploader.run_now(rec)
