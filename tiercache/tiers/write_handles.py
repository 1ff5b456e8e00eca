"""Handles on files open for writing: open/create, write, read, truncate, and the commit at close (staging
fsynced, journal record fsynced) that acknowledges a file's new version for upload."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import BadHandle, IsADirectory, StoreError
from .journal import PUT, Record
from .staging import StagedFile
from .write_space import WriteSpace
from .write_state import WriteState, norm_path
from .write_view import PendingView


class Handles:
    """The write tier's handles (ints); also the ``StagingHost`` its StagedFiles call back into."""

    def __init__(self, state: WriteState, space: WriteSpace, view: PendingView):
        self.state, self.space, self.view = state, space, view

    def create(self, path: str) -> int:
        """Open ``path`` as a new, empty file (any old content is replaced at close); returns a handle."""
        st = self.state
        st.writable()
        path = norm_path(path)
        with st.cond:
            if st.names.is_dir(path):
                raise IsADirectory(f"{path}: is a directory")
            sf = st.files.get(path) or st.files.register(StagedFile(path, 0, created=True))
            fh = st.files.new_handle(sf)
        self._truncate_new(fh, sf)
        return fh

    def open(self, path: str, truncate: bool = False) -> int:
        """Open an existing file for writing; its content is copied to staging at the first change
        (copy-on-write from the pending upload, the cache or the store), unless ``truncate``."""
        st = self.state
        st.writable()
        path = norm_path(path)
        with st.cond:
            sf = st.files.get(path)
            fh = st.files.new_handle(sf) if sf is not None else 0
        if sf is None:
            kind, size = self.view.lookup(path)
            if kind == "dir":
                raise IsADirectory(f"{path}: is a directory")
            with st.cond:
                sf = st.files.get(path) or st.files.register(StagedFile(path, size, created=False))
                fh = st.files.new_handle(sf)
        if truncate:
            self._truncate_new(fh, sf)
        return fh

    def write(self, fh: int, data: bytes, offset: int) -> int:
        """Write ``data`` at ``offset``; waits past the high watermark, raises NoSpace at the limit."""
        self.state.writable()
        sf = self.staged(fh)
        with sf.lock:
            return sf.write(self, data, offset)

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
        sf = self.staged(fh)
        with sf.lock:
            if sf.fd is not None:
                os.fsync(sf.fd)

    def flush(self, fh: int) -> None:
        """Commit what was written so far, like release without closing. FUSE should call it from flush
        (sent on every close(2), which waits for it; FUSE's release is asynchronous, its errors lost)."""
        self._after_commit(self._commit(self.staged(fh)))

    def release(self, fh: int) -> None:
        """Close a handle: commit (staging fsynced, journal entry fsynced) before returning; writethrough
        also waits for the upload and raises StoreError if it fails (the file stays pending, is retried)."""
        st = self.state
        with st.cond:
            sf = st.files.pop_handle(fh)
        if sf is None:
            raise BadHandle(f"write handle {fh} is not open")
        try:
            rec = self._commit(sf)
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

    def _commit(self, sf: StagedFile) -> Record | None:
        """Acknowledge ``sf``'s content: staging fsynced, journal record committed and fsynced."""
        st = self.state
        with sf.lock:
            digest = sf.prepare_commit()
            if digest is None:
                return None
            st.journal.sync_staging()
            with st.cond:
                if st.journal.closed:
                    raise StoreError("the write tier is closed")
                dropped = st.changes.supersede(sf.path)
                rec = st.changes.add(
                    PUT, sf.path, rid=sf.staging_id, size=sf.size, sha256=digest, mtime=sf.mtime, disk=sf.charged
                )
                st.journal.write(put=[rec], delete=dropped)
                self.space.open_bytes -= sf.charged
                sf.sealed, sf.dirty = True, False
        st.acknowledged(dropped, rec.key)
        return rec

    def _after_commit(self, rec: Record | None) -> None:
        if rec is not None and self.state.mode == "writethrough":
            self.state.uploader.run_now(rec)
