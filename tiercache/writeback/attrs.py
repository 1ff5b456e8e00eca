"""chmod/chown/utime through the write tier: the attributes (mode, uid, gid, mtime) a file stores in its
object's metadata (store/base.py ``Attrs``).

A file open for write or with a pending upload or copy carries them to the store with that change: its
StagedFile and its journal record take them (journaled and fsynced before the call returns). A stored object
with nothing pending gets them at once by a metadata copy onto itself (``ObjectStore.set_attrs``).
"""

from __future__ import annotations

from typing import Any

from ..errors import IsADirectory, NotFound
from ..store.base import Attrs
from .journal import DELETE
from .pending_view import PendingView
from .state import WriteState, norm_path


def attrs_now(state: WriteState, path: str) -> Attrs:
    """The attributes ``path`` has now: its pending change's or open file's, else the stored object's (as the
    cache's namespace knows them); nothing set if unknown."""
    with state.cond:
        rec = state.changes.current(path)
        if rec is not None and rec.op != DELETE:
            return Attrs(rec.mode, rec.uid, rec.gid, rec.mtime)
        sf = state.files.get(path)
        if sf is not None:
            return Attrs(sf.mode, sf.uid, sf.gid, sf.mtime)
    namespace = state.cache.namespace if state.cache is not None else None
    try:
        info = namespace.info(path, revalidate=False) if namespace is not None else None
    except (NotFound, IsADirectory):
        info = None
    return Attrs(info.mode, info.uid, info.gid, info.mtime) if info is not None else Attrs()


class AttrChanges:
    """set_attrs of one write tier."""

    def __init__(self, state: WriteState, view: PendingView):
        self.state, self.view = state, view

    def set_attrs(self, path: str, mode: int | None = None, uid: int | None = None, gid: int | None = None,
                  mtime: float | None = None) -> None:
        """Change a file's attributes (None: unchanged); directories keep none (no marker objects)."""
        st = self.state
        st.writable()
        path = norm_path(path)

        def apply(target: Any) -> None:
            if mode is not None:
                target.mode = mode
            if uid is not None:
                target.uid = uid
            if gid is not None:
                target.gid = gid
            if mtime is not None:
                target.mtime = mtime

        with st.cond:
            sf = st.files.get(path)
        carried = False
        if sf is not None:
            with sf.lock:
                apply(sf)
                carried = sf.dirty or sf.held is not None  # its commit or its release uploads them
        with st.cond:
            rec = st.changes.current(path)
            if rec is not None and rec.op == DELETE and sf is None:
                raise NotFound(f"{path}: deleted")
            if rec is not None and rec.op != DELETE:
                apply(rec)  # an upload in flight compares them when it finishes (uploader._put)
                rec.touched = True
                st.journal.write(put=[rec])
                carried = True
        if carried:
            st.journal.sync()
            return
        if self.view.lookup(path)[0] == "dir":
            return
        info = st.store.set_attrs(path, Attrs(mode or 0, -1 if uid is None else uid, -1 if gid is None else gid,
                                              mtime))
        st.feed.added(info)
