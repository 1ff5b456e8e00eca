"""READDIRPLUS replies without a mount: the attributes a listing computes for a whole chunk of entries at
once (fuse/dirs.py, numpy) are those getattr answers for each path, on read-only and writable mounts; and
the binding's ``struct stat`` layout they are written into (fuse/dirplus.py)."""

from __future__ import annotations

import ctypes
import os
import stat

import numpy
import pytest

from tiercache.cache import TieredCache
from tiercache.config import CacheConfig
from tiercache.fuse import FuseUnavailable
from tiercache.store.local import LocalStore
from tiercache.writeback.front import WriteTier

try:
    from tiercache.fuse.dirplus import STAT, fuse, stat_dtype, stat_rows
    from tiercache.fuse.dirs import CHUNK
    from tiercache.fuse.ops import TiercacheOps
except FuseUnavailable:  # pragma: no cover - no libfuse here
    pytest.skip("libfuse 3 / mfusepy not available", allow_module_level=True)

MANY = CHUNK + 500  # entries enough for more than one chunk


def entries(reply, start: int = 0) -> list[tuple[str, dict, bool]]:
    """Every (name, attributes, complete) of a reply from entry ``start`` on, chunk by chunk."""
    out = []
    while (chunk := reply.chunk(start)) is not None:
        names, columns, complete = chunk
        out += [(name, {f: int(columns[i][f]) for f in STAT.names}, complete[i]) for i, name in enumerate(names)]
        start += len(names)
    return out


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "store"
    (root / "d" / "sub").mkdir(parents=True)
    modes = {"plain": 0o644, "exec": 0o755, "private": 0o600, "setuid": 0o4755, ".fuse_hidden0001": 0o644}
    for name, mode in modes.items():
        path = root / "d" / name
        path.write_bytes(b"x" * (len(name) * 700))
        os.chmod(path, mode)
    for i in range(MANY):
        (root / "d" / f"f_{i:05d}").write_bytes(b"y" * (i % 1500))
    (root / "d" / "sub" / "inner").write_bytes(b"z")
    return root


def make_ops(tmp_path, root, readonly: bool):
    store = LocalStore(root)
    config = CacheConfig.build(store.url, ram="32M", ssd=tmp_path / "cache", ssd_size=0, metadata_ttl=60)
    cache = TieredCache(config, store=store)
    writes = None if readonly else WriteTier(store, tmp_path / "wd", cache=cache, reserve_bytes=0)
    return TiercacheOps(cache, writes, readonly=readonly), cache, writes


@pytest.mark.parametrize("readonly", [True, False])
def test_chunked_attributes_equal_getattr(tmp_path, tree, readonly):
    ops, cache, writes = make_ops(tmp_path, tree, readonly)
    try:
        if ops.overlay is not None:
            ops.overlay.record("d/f_00003", atime=123_000_000_007)  # recorded attributes: atime, ctime
        fh = ops.opendir("/d")
        got = entries(ops.readdir_plus("/d", fh, 0))
        names = [name for name, _attrs, _complete in got]
        assert names[:2] == [".", ".."] and names[2:] == sorted(os.listdir(tree / "d"))
        for name, attrs, complete in got[2:]:
            want = ops.getattr(f"/d/{name}")
            if complete:
                assert attrs == {f: int(want.get(f, 0)) for f in STAT.names}, name
            else:
                assert stat.S_IFMT(attrs["st_mode"]) == stat.S_IFMT(want["st_mode"]) and attrs["st_ino"] == want[
                    "st_ino"], name
        assert all(complete for _name, _attrs, complete in got[2:])  # LocalStore lists each file's mode
        by_name = {name: attrs for name, attrs, _complete in got}
        assert by_name[".fuse_hidden0001"]["st_nlink"] == 0
        assert stat.S_IMODE(by_name["setuid"]["st_mode"]) == (0o4555 if readonly else 0o4755)
        assert stat.S_ISDIR(by_name["sub"]["st_mode"])
        if not readonly:
            assert by_name["f_00003"]["st_atime"] == 123_000_000_007
        resumed = entries(ops.readdir_plus("/d", fh, 1500), 1500)  # a later request of the same handle
        assert resumed == got[1500:]
        ops.releasedir("/d", fh)
    finally:
        if writes is not None:
            writes.close()
        cache.close()


def test_plain_readdir_names_types_and_inodes(tmp_path, tree):
    ops, cache, _writes = make_ops(tmp_path, tree, True)
    try:
        listed = ops.readdir("/d", 0)
        assert listed[:2] == [".", ".."]
        for name, attrs, _offset in listed[2:]:
            want = ops.getattr(f"/d/{name}")
            assert attrs == {"st_mode": stat.S_IFMT(want["st_mode"]), "st_ino": want["st_ino"]}
    finally:
        cache.close()


def test_rows_are_the_bindings_struct_stat():
    """``stat_rows`` writes each column where ctypes' own struct stat has it."""
    columns = numpy.zeros(2, STAT)
    columns[1] = (7, 3, 0o100644, 1000, 1001, 5, 12345, 4096, 25, 1_700_000_000_123_456_789, 42, 2_000_000_001)
    rows = stat_rows(columns, stat_dtype(fuse.c_stat))
    assert rows.itemsize == ctypes.sizeof(fuse.c_stat)
    st = fuse.c_stat.from_buffer_copy(rows.tobytes()[rows.itemsize:])
    assert (st.st_ino, st.st_nlink, st.st_mode, st.st_uid, st.st_gid, st.st_rdev, st.st_size, st.st_blksize,
            st.st_blocks) == (7, 3, 0o100644, 1000, 1001, 5, 12345, 4096, 25)
    assert (st.st_atimespec.tv_sec, st.st_atimespec.tv_nsec) == (1_700_000_000, 123_456_789)
    assert (st.st_mtimespec.tv_sec, st.st_mtimespec.tv_nsec) == (0, 42)
    assert (st.st_ctimespec.tv_sec, st.st_ctimespec.tv_nsec) == (2, 1)
    assert st.st_dev == 0 and bytes(rows[0].tobytes()) == bytes(rows.itemsize)
