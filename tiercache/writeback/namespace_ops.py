"""Namespace changes through the write tier: unlink, rename (files and directories), mkdir, rmdir. Each is
journaled (and fsynced) before it returns, then run against the store in journal order."""

from __future__ import annotations

import itertools
import time

from ..errors import AlreadyExists, ConfigError, DirectoryNotEmpty, IsADirectory, NotADirectory, NotFound
from .attrs import attrs_now
from .journal import COPY, DELETE, PUT
from .pending_view import PendingView
from .state import WriteState, norm_path


class NamespaceOps:
    """unlink/rename/mkdir/rmdir of one write tier."""

    def __init__(self, state: WriteState, view: PendingView):
        self.state, self.view = state, view

    def unlink(self, path: str) -> None:
        """Remove a file: its pending uploads are dropped and the object deleted (journaled first)."""
        st = self.state
        st.writable()
        path = norm_path(path)
        if self.view.lookup(path, allow_lost=True)[0] == "dir":
            raise IsADirectory(f"{path}: is a directory")
        with st.cond:
            st.journal.acknowledge_lost(path)
            sf = st.files.get(path)
            if sf is not None:
                sf.unlinked = True
                st.files.unregister(sf)
            dropped = st.changes.supersede(path)
            rec = st.changes.add(DELETE, path)
            st.journal.write(put=[rec], delete=dropped)
        st.acknowledged(dropped, path)
        st.uploader.try_now(rec)

    def rename(self, old: str, new: str) -> None:
        """Move a file or directory: pending uploads of ``old`` are redirected to ``new``, stored objects
        copied then deleted (journaled first; done now unless an upload of the same key is in flight)."""
        self.state.writable()
        old, new = norm_path(old), norm_path(new)
        if old == new:
            return
        if new.startswith(old + "/"):
            raise ConfigError(f"rename {old} -> {new}: cannot move a directory into itself")
        kind, size = self.view.lookup(old)
        target = self.view.lookup(new, missing_ok=True)[0]
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
        st = self.state
        st.writable()
        path = norm_path(path)
        with st.cond:
            if st.names.live[path]:
                raise AlreadyExists(f"{path}: a file exists there")
            if path in st.names.dirs:
                return
            st.names.add_dirs(st.journal, {path: time.time()})
        st.journal.sync()

    def rmdir(self, path: str) -> None:
        """Remove a directory that is empty in the merged view (its listing less pending deletes, plus pending
        writes; DirectoryNotEmpty, ENOTEMPTY, otherwise). A marker object's delete is journaled like a file's."""
        st = self.state
        st.writable()
        path = norm_path(path)
        with st.cond:
            if st.names.implied[path]:
                raise DirectoryNotEmpty(f"{path}: directory not empty")
            if st.names.live[path]:
                raise NotADirectory(f"{path}: not a directory")
            local = path in st.names.dirs
        marker = remote = False
        for info in st.store.list(path + "/"):
            if info.key == path + "/":
                with st.cond:  # its delete may be pending already (an earlier rmdir)
                    pending = st.changes.current(info.key)
                marker = pending is None or pending.op != DELETE
                remote = remote or not marker
            elif not self.view.is_deleted(info.key) and not self._deleted_meanwhile(info.key):
                raise DirectoryNotEmpty(f"{path}: directory not empty")
            else:
                remote = True
        if not (local or marker or remote or self._cached_dir(path)):
            raise NotFound(f"{path}: no such directory")
        rec = None
        with st.cond:
            if marker:  # journaled after the pending deletes of its files: a replay removes them first
                dropped = st.changes.supersede(path + "/")
                rec = st.changes.add(DELETE, path + "/")
                st.journal.write(put=[rec], delete=dropped)
            st.names.remove_dirs(st.journal, [path])
        st.journal.sync()
        st.feed.dir_removed(path)  # no ghost of it lists or blocks a mkdir
        if rec is not None:
            st.uploader.try_now(rec)

    def _deleted_meanwhile(self, key: str) -> bool:
        """A listed key whose acknowledged delete finished after the listing: gone from the store now."""
        try:
            self.state.store.head(key)
            return False
        except NotFound:
            return True

    def _cached_dir(self, path: str) -> bool:
        """Whether the cache's namespace holds ``path`` as a directory (its files may be deleted already)."""
        cache = self.state.cache
        try:
            return cache is not None and bool(cache.stat(path).is_dir)
        except NotFound:
            return False

    def _rename_file(self, old: str, new: str, size: int) -> None:
        st = self.state
        attrs = attrs_now(st, old)  # a copy keeps them (server-side); its pending entry shows them
        with st.cond:
            sf_old, sf_new = st.files.get(old), st.files.get(new)
            if sf_new is not None and sf_new is not sf_old:
                sf_new.unlinked = True
                st.files.unregister(sf_new)
            dropped = st.changes.supersede(new)
            cur = st.changes.current(old)
            changed, run = [], []
            if cur is not None and cur.op == PUT:
                st.changes.rekey(cur, new)  # the pending upload now writes `new`
                changed.append(cur)
            elif cur is not None or sf_old is None or not sf_old.created:
                run.append(st.changes.add(COPY, new, src=old, size=size, mode=attrs.mode, uid=attrs.uid,
                                          gid=attrs.gid, mtime=attrs.mtime or time.time()))
            held = sf_old.held if sf_old is not None else None
            if held is not None:  # a version its writer closed, not yet published: a crash replays it at `new`
                held.key, held.seq = new, st.changes.next_seq()
                changed.append(held)
            dropped += st.changes.supersede(old)
            run.append(st.changes.add(DELETE, old))
            if sf_old is not None:
                st.files.unregister(sf_old)
                sf_old.path = new
                st.files.register(sf_old)
            st.journal.write(put=changed + run, delete=dropped)
        st.acknowledged(dropped, old, new)
        for rec in run:
            st.uploader.try_now(rec)

    def _rename_dir(self, old: str, new: str) -> None:
        st = self.state
        files = {info.key: info.size for info in st.store.list(old + "/") if not info.key.endswith("/")}
        with st.cond:
            for path in itertools.chain(st.names.live, st.files.by_path):
                if path.startswith(old + "/"):
                    sf = st.files.get(path)
                    files[path] = sf.size if sf is not None else st.changes.current(path).size
            moved = {p: t for p, t in st.names.dirs.items() if p == old or p.startswith(old + "/")}
        for path in sorted(files):
            if not self.view.is_deleted(path):
                self._rename_file(path, new + path[len(old):], files[path])
        with st.cond:
            st.names.remove_dirs(st.journal, list(moved))
            st.names.add_dirs(st.journal, {new + p[len(old):]: t for p, t in moved.items()} or {new: time.time()})
        st.journal.sync()
        st.feed.dir_removed(old)  # the old name lists no more
