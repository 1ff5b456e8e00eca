"""Through a real mount: getattr/lookup and readdir answer from the same merged view (pending writes, pending
deletes and renames show the same in both), and a directory's link count is 1 ("not counted"), which find
and os.walk walk correctly."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from .fusehelpers import needs_fuse

pytestmark = [needs_fuse, pytest.mark.fuse, pytest.mark.timeout(180)]


def stat_or_none(path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def test_pending_changes_show_the_same_in_getattr_and_readdir(bucket, mounter, proxy):
    """With the uploads stalled: a new file (pending write), an rm (pending delete), an mv (pending rename)
    and a mkdir. Each candidate name stats (the removed ones by LOOKUP + getattr in the daemon) exactly
    when the listing (READDIRPLUS) has it, with the same kind, size and inode number. (The store stays
    unreachable meanwhile, so the directory's listing must stay within its TTL: default TTL.)"""
    for name, data in {"d/a.txt": b"a" * 10, "d/b.txt": b"b" * 20, "d/c.txt": b"c" * 30}.items():
        bucket.put(name, data)
    m = mounter.mount(bucket.url, endpoint=proxy.endpoint)
    d = m.path / "d"
    assert sorted(os.listdir(d)) == ["a.txt", "b.txt", "c.txt"]
    for name in ("a.txt", "b.txt", "c.txt"):
        os.lstat(d / name)  # their user metadata read (a HEAD each) while the store answers
    proxy.pause()
    try:
        (d / "new.txt").write_bytes(b"n" * 40)
        os.unlink(d / "b.txt")
        os.rename(d / "c.txt", d / "moved.txt")
        os.mkdir(d / "made")
        expected = {"a.txt": 10, "new.txt": 40, "moved.txt": 30, "made": None}
        by_stat = {}
        for name in ["a.txt", "b.txt", "c.txt", "new.txt", "moved.txt", "made"]:
            st = stat_or_none(d / name)
            if st is not None:
                by_stat[name] = None if stat.S_ISDIR(st.st_mode) else st.st_size
        with os.scandir(d) as it:
            listed = {e.name: (e.is_dir(follow_symlinks=False), e.inode()) for e in it}
        assert by_stat == expected
        assert sorted(listed) == sorted(expected)
        for name, size in expected.items():
            is_dir, ino = listed[name]
            st = os.lstat(d / name)
            assert is_dir == (size is None) and st.st_ino == ino, name
        assert {"d/b.txt", "d/c.txt"} <= set(bucket.keys())  # the delete and the rename are still stalled
    finally:
        proxy.resume()
    assert m.cli("flush").returncode == 0
    assert sorted(os.listdir(d)) == sorted(expected)
    assert sorted(k for k in bucket.keys() if k.startswith("d/")) == ["d/a.txt", "d/moved.txt", "d/new.txt"]


def test_directories_link_count_and_real_walkers(bucket, mounter):
    """Every directory, the root too, has st_nlink 1; ``find -type d`` (fts, leaf optimization on for
    FUSE) and os.walk both find every directory of a lazily listed tree, and ``find -type f`` every file."""
    files = ["top.txt", "a/x.txt", "a/b/y.txt", "a/b/c/z.txt", "a/e/w.txt", "f/g/h/i/deep.txt"]
    for key in files:
        bucket.put(key, key.encode())
    m = mounter.mount(bucket.url, "--mode", "readonly")
    dirs = {"."}
    for key in files:
        parts = key.split("/")[:-1]
        dirs |= {"./" + "/".join(parts[:i]) for i in range(1, len(parts) + 1)}
    dirs = sorted(dirs)
    for rel in dirs:
        assert os.lstat(m.path / rel).st_nlink == 1, rel
    found = subprocess.run(["find", ".", "-type", "d"], cwd=m.path, capture_output=True, text=True, timeout=60)
    assert found.returncode == 0, found.stderr
    assert sorted(found.stdout.split()) == dirs
    found_files = subprocess.run(["find", ".", "-type", "f"], cwd=m.path, capture_output=True, text=True,
                                 timeout=60)
    assert sorted(found_files.stdout.split()) == sorted("./" + key for key in files)
    walked = sorted("." + root[len(str(m.path)):] for root, _dirs, _files in os.walk(m.path))
    assert walked == dirs
