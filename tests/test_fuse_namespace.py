"""The namespace through a real mount behaves like a filesystem: no ghost names after rm/mv, the
checkpoint-rotation idiom, attributes (mode, mtime, uid, gid) stored in object metadata, symlinks."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess

import pytest

from .fusehelpers import needs_fuse

pytestmark = [needs_fuse, pytest.mark.fuse, pytest.mark.timeout(120)]


def flush(m) -> None:
    proc = m.cli("flush", timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_rm_r_leaves_no_ghost_directory(bucket, mounter):
    """After ``rm -r dir`` neither the directory nor its files list, stat or block a new mkdir, at once
    and after the deletes reached the bucket."""
    for name in ("a", "b", "sub/c"):
        bucket.put(f"dir/{name}", b"x" * 10)
    bucket.put("keep", b"k")
    m = mounter.mount(bucket.url, endpoint=bucket.server.endpoint)
    assert sorted(os.listdir(m.path)) == ["dir", "keep"]
    subprocess.run(["rm", "-r", str(m.path / "dir")], check=True, timeout=30)
    for when in ("acknowledged", "uploaded"):
        assert os.listdir(m.path) == ["keep"], when
        assert not (m.path / "dir").exists(), when
        with pytest.raises(FileNotFoundError):
            os.listdir(m.path / "dir")
        if when == "acknowledged":
            flush(m)
    assert bucket.keys() == ["keep"]
    os.mkdir(m.path / "dir")  # no EEXIST from a ghost
    assert os.listdir(m.path / "dir") == []


def test_mv_dir_leaves_no_ghost(bucket, mounter):
    for name in ("a", "b"):
        bucket.put(f"dir1/{name}", name.encode())
    m = mounter.mount(bucket.url, endpoint=bucket.server.endpoint)
    os.rename(m.path / "dir1", m.path / "dir2")
    for when in ("acknowledged", "uploaded"):
        assert os.listdir(m.path) == ["dir2"], when
        assert sorted(os.listdir(m.path / "dir2")) == ["a", "b"], when
        assert not (m.path / "dir1").exists(), when
        if when == "acknowledged":
            flush(m)
    assert bucket.keys() == ["dir2/a", "dir2/b"]
    assert (m.path / "dir2" / "a").read_bytes() == b"a"
    os.mkdir(m.path / "dir1")


def test_removed_file_never_lists_again(bucket, mounter):
    bucket.put("d/x", b"1")
    bucket.put("d/y", b"2")
    m = mounter.mount(bucket.url, endpoint=bucket.server.endpoint)
    assert sorted(os.listdir(m.path / "d")) == ["x", "y"]
    os.unlink(m.path / "d" / "x")
    assert os.listdir(m.path / "d") == ["y"]
    flush(m)
    assert os.listdir(m.path / "d") == ["y"]
    assert bucket.keys() == ["d/y"]


@pytest.mark.parametrize("flush_first", [False, True], ids=["pending", "uploaded"])
def test_checkpoint_rotation_rm_rf_then_mv(bucket, mounter, flush_first):
    """``rm -rf out && mv tmp out``: the new checkpoint lands at out/model, not out/tmp/model."""
    bucket.put("out/model", b"old checkpoint")
    bucket.put("out/opt", b"old optimizer")
    m = mounter.mount(bucket.url, endpoint=bucket.server.endpoint)
    assert sorted(os.listdir(m.path / "out")) == ["model", "opt"]
    (m.path / "tmp").mkdir()
    (m.path / "tmp" / "model").write_bytes(b"new checkpoint")
    if flush_first:
        flush(m)
    shell = f"cd {m.path} && rm -rf out && mv tmp out"
    subprocess.run(["sh", "-c", shell], check=True, timeout=30)
    assert sorted(os.listdir(m.path)) == ["out"]
    assert os.listdir(m.path / "out") == ["model"]
    assert (m.path / "out" / "model").read_bytes() == b"new checkpoint"
    flush(m)
    assert bucket.keys() == ["out/model"]
    assert bucket.get("out/model") == b"new checkpoint"
    assert os.listdir(m.path / "out") == ["model"]


def test_hard_link_is_eperm(bucket, mounter):
    bucket.put("f", b"data")
    m = mounter.mount(bucket.url, endpoint=bucket.server.endpoint)
    with pytest.raises(OSError) as info:
        os.link(m.path / "f", m.path / "g")
    assert info.value.errno == errno.EPERM
    assert os.listdir(m.path) == ["f"]


def test_rmtree_then_recreate_same_names(bucket, mounter):
    for i in range(5):
        bucket.put(f"run/step{i}/w", b"w%d" % i)
    m = mounter.mount(bucket.url, endpoint=bucket.server.endpoint)
    shutil.rmtree(m.path / "run")
    assert os.listdir(m.path) == []
    (m.path / "run" / "step0").mkdir(parents=True)
    (m.path / "run" / "step0" / "w").write_bytes(b"new")
    assert os.listdir(m.path / "run") == ["step0"]
    flush(m)
    assert bucket.keys() == ["run/step0/w"]
    assert os.listdir(m.path / "run") == ["step0"]


@pytest.mark.parametrize("how", ["rm", "mv"])
def test_directory_emptied_by_its_last_file_stays_until_rmdir(bucket, mounter, how):
    """A listed directory whose last file is removed (or moved out) stays, empty, at once, after the change
    reached the bucket and after a relist, until rmdir; then it is gone."""
    bucket.put("d/only", b"x")
    bucket.put("keep", b"k")
    m = mounter.mount(bucket.url, "--metadata-ttl", "0", endpoint=bucket.server.endpoint)
    assert sorted(os.listdir(m.path)) == ["d", "keep"]
    if how == "rm":
        os.unlink(m.path / "d" / "only")
    else:
        os.rename(m.path / "d" / "only", m.path / "moved")
    for when in ("acknowledged", "uploaded"):
        assert "d" in os.listdir(m.path), when  # metadata-ttl 0: every listing relists
        assert os.listdir(m.path / "d") == [], when
        assert (m.path / "d").is_dir(), when
        if when == "acknowledged":
            flush(m)
    assert "d/only" not in bucket.keys()
    os.rmdir(m.path / "d")
    assert "d" not in os.listdir(m.path)
    with pytest.raises(FileNotFoundError):
        os.stat(m.path / "d")
