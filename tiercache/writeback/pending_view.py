"""Read-your-writes: the namespace and bytes as the write tier's pending changes and open files leave them,
in front of the cache and the store."""

from __future__ import annotations

import itertools
import os
import time

from ..errors import Corrupt, NotFound
from .journal import COPY, DELETE
from .state import WriteState


class PendingView:
    """What a path is and holds now, pending changes included (answers for the mount's reads and lists)."""

    def __init__(self, state: WriteState):
        self.state = state

    def pending_entry(self, path: str) -> dict | None:
        """{path, size, mtime, is_dir, state[, mode, uid, gid]} of a file written but not yet uploaded, or open
        for write, or of a directory made here or holding such files; else None.
        state: open|pending|uploading|failed|dir. mode/uid/gid: 0 / -1 when none is set."""
        st = self.state
        path = path.strip("/")
        with st.cond:
            if st.names.is_dir(path):
                mtime = st.names.dirs.get(path, time.time())
                return {"path": path, "size": 0, "mtime": mtime, "is_dir": True, "state": "dir"}
            sf = st.files.get(path)
            if sf is not None:
                return {"path": path, "size": sf.size, "mtime": sf.mtime, "is_dir": False, "state": "open",
                        "mode": sf.mode, "uid": sf.uid, "gid": sf.gid}
            rec = st.changes.current(path)
            if rec is None:
                note = st.journal.lost.get(path)
                if note is not None:
                    return {"path": path, "size": int(note.get("size") or 0), "is_dir": False, "state": "lost",
                            "mtime": float(note.get("mtime") or note.get("ctime") or time.time())}
                if any(key.startswith(path + "/") for key in st.journal.lost):
                    return {"path": path, "size": 0, "mtime": time.time(), "is_dir": True, "state": "dir"}
            if rec is None or rec.op == DELETE:
                return None
            state = "uploading" if rec.inflight else "failed" if rec.fails else "pending"
            return {"path": path, "size": rec.size, "mtime": rec.mtime, "is_dir": False, "state": state,
                    "mode": rec.mode, "uid": rec.uid, "gid": rec.gid}

    def pending_paths(self, prefix: str = "") -> list[str]:
        """Every path starting with ``prefix`` (at any depth) that is pending upload, open for write, or a
        directory made with mkdir, or lost; their parents are directories too (``pending_entry`` says so)."""
        st = self.state
        with st.cond:
            lost = (k for k in st.journal.lost if not k.startswith("<") and st.changes.current(k) is None)
            return sorted({p for p in itertools.chain(st.names.paths(), lost) if p.startswith(prefix)})

    def is_deleted(self, path: str) -> bool:
        """True while the delete of ``path`` is acknowledged but not yet done at the store: hide it."""
        st = self.state
        path = path.strip("/")
        with st.cond:
            rec = st.changes.current(path)
            return rec is not None and rec.op == DELETE and st.files.get(path) is None

    def quiet(self) -> bool:
        """Whether no file is open for write, no change pending and no file lost: reads need not look. No
        lock: each is a dict's emptiness, and whatever was acknowledged before a read began is in them."""
        st = self.state
        return not st.files.by_path and not st.changes.index and not st.journal.lost

    def read_pending(self, path: str, offset: int, size: int) -> bytes | None:
        """Bytes of a file written but not yet uploaded (or open for write); None if nothing is pending."""
        if self.quiet():  # a read-only mount's every READ, a quiet read-write one's
            return None
        path = path.strip("/")
        with self.state.cond:
            sf = self.state.files.get(path)
        if sf is not None:
            with sf.lock:
                data = None if sf.unlinked else sf.read(offset, size)
            if data is not None:
                return data
        data = self.read_change(path, offset, size)
        if data is None:
            self.check_lost(path)
        return data

    def check_lost(self, path: str) -> None:
        """Raise Corrupt (EIO) if ``path``'s last acknowledged version was lost (quarantined) and nothing
        newer is pending: it stays unreadable until removed or overwritten."""
        st = self.state
        with st.cond:
            newer = st.changes.current(path) is not None or st.files.get(path) is not None
            note = None if newer else st.journal.lost.get(path)
        if note is not None:
            raise Corrupt(f"{path}: its last written version could not be uploaded ({note.get('reason')}); "
                          f"the bytes are kept in {note.get('note', '')[:-5]}; rm the file to acknowledge")

    def lookup(self, path: str, missing_ok: bool = False, allow_lost: bool = False) -> tuple[str, int]:
        """("file", size) or ("dir", 0) for ``path`` as it is now, pending changes included; NotFound if
        nothing is there (("", 0) with ``missing_ok``). A lost file is Corrupt (EIO), or ("file", 0) with
        ``allow_lost`` (removing or overwriting it)."""
        st = self.state
        if allow_lost:
            with st.cond:
                if path in st.journal.lost and st.changes.current(path) is None and st.files.get(path) is None:
                    return "file", 0
        else:
            self.check_lost(path)
        with st.cond:
            sf = st.files.get(path)
            if sf is not None:
                return "file", sf.size
            rec = st.changes.current(path)
            if rec is not None and rec.op != DELETE:
                return "file", rec.size
            if st.names.is_dir(path):
                return "dir", 0
            deleted = rec is not None
        try:
            if deleted:
                raise NotFound(f"{path}: deleted")
            if st.cache is not None:
                entry = st.cache.stat(path)
                return ("dir", 0) if entry.is_dir else ("file", entry.size)
            return "file", st.store.head(path).size
        except NotFound:
            if not deleted and st.cache is None and next(iter(st.store.list(path + "/")), None):
                return "dir", 0
            if missing_ok:
                return "", 0
            raise

    def resolve(self, path: str) -> tuple[int | None, str, int] | None:
        """Where ``path``'s pending content is: (fd on a staging file, "", size), or (None, store key, size)
        at the end of a chain of pending copies; None if no upload or copy of ``path`` is pending."""
        st = self.state
        with st.cond:
            rec = st.changes.current(path)
            if rec is None or rec.op == DELETE:
                return None
            size = rec.size
            while rec.op == COPY:  # a copy reads its source as it is at the copy's place in the log
                src = rec.src
                rec = st.changes.current(src, before=rec.seq)
                if rec is None or rec.op == DELETE:
                    return None, src, size
            try:
                return os.open(st.journal.staging_path(rec.id), os.O_RDONLY | os.O_CLOEXEC), "", size
            except FileNotFoundError:  # a quarantined staging file
                return None

    def read_change(self, path: str, offset: int, size: int) -> bytes | None:
        """``path`` as its pending upload or copy leaves it; None if no such change is pending."""
        where = self.resolve(path)
        if where is None:
            return None
        fd, key, total = where
        size = max(0, min(size, total - offset))
        if fd is None:
            return self.remote_read(key, offset, size)
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)

    def remote_read(self, key: str, offset: int, size: int) -> bytes:
        """Bytes of a stored object, through the cache when there is one."""
        if size <= 0:
            return b""
        if self.state.cache is not None:
            try:
                return bytes(self.state.cache.read(key, offset, size))
            except NotFound:  # a renamed-away source: gone from the namespace, in the store until its delete
                pass
        return self.state.store.get_range(key, offset, offset + size)

    def base_fd(self, path: str) -> int | None:
        """An fd on the staging file holding ``path``'s pending content, or None."""
        where = self.resolve(path)
        return where[0] if where is not None else None

    def base_read(self, path: str, offset: int, size: int) -> bytes:
        """``path``'s current content as left by its pending change, else from the cache or the store."""
        data = self.read_change(path, offset, size)
        return data if data is not None else self.remote_read(path, offset, size)
