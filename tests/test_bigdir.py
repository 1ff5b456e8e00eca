"""Big directories through a real mount (issue 12): READDIRPLUS carries each entry's attributes, so ``ls -l``
is answered by the kernel (the daemon's getattr is not called per entry), and those attributes equal what
getattr answers for the same path on a mount that never listed it."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest

from tiercache.store.synthetic import SyntheticStore

from .fusehelpers import needs_fuse

pytestmark = [needs_fuse, pytest.mark.fuse, pytest.mark.timeout(240)]

FILES = 20_000
FIELDS = ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks", "st_mtime_ns",
          "st_ctime_ns")


def fuse_ops(m) -> dict[str, int]:
    proc = m.cli("stats", "--json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["mount"]["fuse_ops"]


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def fields(st: os.stat_result) -> dict[str, int]:
    return {name: getattr(st, name) for name in FIELDS}


@pytest.fixture
def synthetic(monkeypatch):
    monkeypatch.setenv("TIERCACHE_SYNTHETIC_STORE", "1")
    url = f"synthetic://bigdir?objects={FILES}&size=1K&big={FILES}"
    return url, SyntheticStore(FILES, 1024, FILES)


@pytest.mark.parametrize("ttl", ["inf", "60"])
def test_listing_carries_the_attributes_getattr_gives(synthetic, mounter, ttl):
    """A 20 K directory listed and stat'ed entry by entry: no getattr per entry (ops counted by the daemon),
    and every sampled entry's attributes equal those a mount that never listed the directory answers
    through LOOKUP + getattr."""
    url, store = synthetic
    common = ("--mode", "readonly", "--metadata-ttl", ttl)
    by_path = mounter.mount(url, *common, name="by-path")
    listed = mounter.mount(url, *common, name="listed")
    sample = [store.key(i) for i in range(0, FILES, 97)]
    expected = {key: fields(os.lstat(by_path.path / key)) for key in sample}

    before = fuse_ops(listed)
    with os.scandir(listed.path / "big") as it:
        entries = sorted(it, key=lambda e: e.name)
    got = {entry.name: (entry.inode(), os.lstat(entry.path)) for entry in entries}
    ops = delta(fuse_ops(listed), before)

    assert len(got) == FILES
    assert ops.get("readdir_plus", 0) >= 1
    assert ops.get("getattr", 0) <= 2, ops  # the directory itself at most; never one per entry
    for key, want in expected.items():
        assert fields(got[key.rpartition("/")[2]][1]) == want, key
    for name, (d_ino, st) in got.items():
        info = store.info(f"big/{name}")
        assert st.st_ino == d_ino
        assert st.st_size == info.size and st.st_mtime_ns == int(info.mtime * 1e9)
        assert stat.S_ISREG(st.st_mode)


def test_ls_l_of_a_big_directory_asks_the_daemon_little(synthetic, mounter):
    """``ls -l`` of the 20 K directory: a handful of READDIRPLUS requests and no getattr per entry."""
    url, _store = synthetic
    m = mounter.mount(url, "--mode", "readonly", "--metadata-ttl", "inf")
    before = fuse_ops(m)
    out = subprocess.run(["ls", "-l", str(m.path / "big")], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    ops = delta(fuse_ops(m), before)
    assert out.count("\n") == FILES + 1  # the "total" line
    assert ops.get("getattr", 0) <= 2, ops
    assert 1 <= ops.get("readdir_plus", 0) < FILES // 10, ops


def test_mixed_directory_lists_what_stat_says(bucket, mounter):
    """A writable mount's directory mixing listed objects (metadata never read: they go out without
    attributes and are looked up), a chmod'ed file, a pending new file, a made directory and a symlink:
    types and attributes come out right, and once uploaded they equal what a second mount answers by path
    (LOOKUP + getattr) and by its own listing."""
    for i in range(30):
        bucket.put(f"d/f{i:02d}", b"x" * i)
    m = mounter.mount(bucket.url, endpoint=bucket.server.endpoint)
    d = m.path / "d"
    os.chmod(d / "f01", 0o600)
    (d / "new").write_bytes(b"n" * 77)
    os.mkdir(d / "sub")
    os.symlink("f02", d / "link")
    with os.scandir(d) as it:
        listed = {e.name: (e.is_dir(follow_symlinks=False), e.is_symlink(), os.lstat(e.path)) for e in it}
    assert sorted(listed) == sorted([f"f{i:02d}" for i in range(30)] + ["new", "sub", "link"])
    assert listed["sub"][0] and stat.S_ISDIR(listed["sub"][2].st_mode)
    assert listed["link"][1] and os.readlink(d / "link") == "f02"
    assert stat.S_IMODE(listed["f01"][2].st_mode) == 0o600
    assert listed["new"][2].st_size == 77
    for i in range(30):
        assert listed[f"f{i:02d}"][2].st_size == i

    proc = m.cli("flush", timeout=60)
    assert proc.returncode == 0, proc.stderr
    other = mounter.mount(bucket.url, endpoint=bucket.server.endpoint, name="other")
    for name in ("f01", "f05", "new", "link"):
        fresh = os.lstat(other.path / "d" / name)  # a path lookup on a mount that never listed d
        again = os.lstat(d / name)
        for field in ("st_mode", "st_size", "st_uid", "st_gid", "st_mtime_ns", "st_ino"):
            assert getattr(fresh, field) == getattr(again, field), (name, field)
    with os.scandir(other.path / "d") as it:
        relisted = {e.name: os.lstat(e.path) for e in it}
    for name in ("f01", "f05", "new", "link"):
        assert fields(relisted[name])["st_mode"] == listed[name][2].st_mode
        assert relisted[name].st_size == listed[name][2].st_size
