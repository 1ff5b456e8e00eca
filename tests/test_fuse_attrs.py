"""POSIX attributes through a real mount, stored in object metadata as s3fs and rclone store them (mode,
uid, gid, mtime), and symlinks stored as s3fs stores them; rsync -a of an unchanged tree sends nothing."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess

import pytest

from .fusehelpers import needs_fuse

pytestmark = [needs_fuse, pytest.mark.fuse, pytest.mark.timeout(150)]

WHEN = 1577934245.25  # 2020-01-02 03:04:05.25 UTC


def flush(m) -> None:
    proc = m.cli("flush", timeout=60)
    assert proc.returncode == 0, proc.stderr


def metadata(bucket, key: str) -> dict:
    return bucket.client.head_object(Bucket=bucket.name, Key=key)["Metadata"]


def remount(mounter, bucket, m, name: str):
    """The same bucket through a fresh mount with a new cache dir (nothing cached from ``m``)."""
    proc = m.cli("unmount", timeout=90)
    assert proc.returncode == 0, proc.stderr
    return mounter.mount(bucket.url, endpoint=bucket.server.endpoint, name=name)


@pytest.mark.parametrize("state", ["pending", "stored"])
def test_chmod_chown_utime_take_effect_and_persist(bucket, mounter, state):
    m = mounter.mount(bucket.url, endpoint=bucket.server.endpoint)
    path = m.path / "f.txt"
    path.write_bytes(b"hello")
    if state == "stored":
        flush(m)
    os.chmod(path, 0o750)
    os.chown(path, 1234, 5678)
    os.utime(path, (WHEN, WHEN))
    st = os.stat(path)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, 1234, 5678)
    assert st.st_mtime == pytest.approx(WHEN, abs=1e-6)
    flush(m)
    meta = metadata(bucket, "f.txt")
    assert (meta["mode"], meta["uid"], meta["gid"]) == (str(stat.S_IFREG | 0o750), "1234", "5678")
    assert float(meta["mtime"]) == pytest.approx(WHEN, abs=1e-6)
    assert bucket.get("f.txt") == b"hello"
    m2 = remount(mounter, bucket, m, "again")
    st = os.stat(m2.path / "f.txt")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, 1234, 5678)
    assert st.st_mtime == pytest.approx(WHEN, abs=1e-6)


def test_touch_d_on_a_bucket_object(bucket, mounter):
    bucket.put("data/x.bin", b"x" * 100)
    m = mounter.mount(bucket.url, endpoint=bucket.server.endpoint)
    subprocess.run(["touch", "-d", "2020-01-02 03:04:05", str(m.path / "data/x.bin")], check=True, timeout=30,
                   env={**os.environ, "TZ": "UTC"})
    assert os.stat(m.path / "data/x.bin").st_mtime == 1577934245
    assert float(metadata(bucket, "data/x.bin")["mtime"]) == 1577934245
    assert bucket.get("data/x.bin") == b"x" * 100
    assert (m.path / "data/x.bin").read_bytes() == b"x" * 100


def test_s3fs_and_rclone_metadata_is_served(bucket, mounter):
    """Objects written by s3fs (mode/uid/gid/mtime) and rclone (mtime with a fraction) show those values."""
    bucket.client.put_object(Bucket=bucket.name, Key="s3fs.sh", Body=b"#!/bin/sh\n",
                             Metadata={"mode": str(stat.S_IFREG | 0o755), "uid": "42", "gid": "43",
                                       "mtime": "1600000000"})
    bucket.client.put_object(Bucket=bucket.name, Key="rclone.bin", Body=b"r",
                             Metadata={"mtime": "1600000000.123456789"})
    bucket.put("plain.bin", b"p")
    m = mounter.mount(bucket.url, endpoint=bucket.server.endpoint)
    st = os.stat(m.path / "s3fs.sh")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime) == (0o755, 42, 43, 1600000000)
    assert os.stat(m.path / "rclone.bin").st_mtime == pytest.approx(1600000000.123456789, abs=1e-6)
    assert stat.S_IMODE(os.stat(m.path / "plain.bin").st_mode) == 0o644


def test_symlinks_are_stored_as_s3fs_stores_them(bucket, mounter):
    bucket.client.put_object(Bucket=bucket.name, Key="from-s3fs", Body=b"data/target.txt",
                             Metadata={"mode": str(stat.S_IFLNK | 0o777)})
    bucket.put("data/target.txt", b"pointed at")
    m = mounter.mount(bucket.url, endpoint=bucket.server.endpoint)
    os.symlink("data/target.txt", m.path / "link")
    assert os.readlink(m.path / "link") == "data/target.txt"
    assert stat.S_ISLNK(os.lstat(m.path / "link").st_mode)
    assert (m.path / "link").read_bytes() == b"pointed at"
    assert os.readlink(m.path / "from-s3fs") == "data/target.txt"
    found = subprocess.run(["find", str(m.path), "-type", "l"], capture_output=True, text=True, check=True)
    assert sorted(found.stdout.split()) == [str(m.path / "from-s3fs"), str(m.path / "link")]
    flush(m)
    assert bucket.get("link") == b"data/target.txt"
    assert metadata(bucket, "link")["mode"] == str(stat.S_IFLNK | 0o777)
    m2 = remount(mounter, bucket, m, "again")
    assert os.readlink(m2.path / "link") == "data/target.txt"
    assert (m2.path / "link").read_bytes() == b"pointed at"


@pytest.mark.skipif(shutil.which("rsync") is None, reason="needs rsync (apt-get install rsync)")
def test_second_rsync_of_an_unchanged_tree_sends_nothing(bucket, mounter, tmp_path):
    src = tmp_path / "src"
    for i in range(4):
        (src / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 2}" / f"f{i}.bin").write_bytes(os.urandom(1000 + i))
    os.chmod(src / "d0" / "f0.bin", 0o600)
    os.symlink("f0.bin", src / "d0" / "link")
    m = mounter.mount(bucket.url, endpoint=bucket.server.endpoint)
    dest = f"{m.path}/tree/"

    def rsync() -> subprocess.CompletedProcess:
        return subprocess.run(["rsync", "-a", "--itemize-changes", "--stats", f"{src}/", dest],
                              capture_output=True, text=True, timeout=60, check=True)

    first = rsync()
    assert "Number of regular files transferred: 4" in first.stdout, first.stdout
    for when in ("pending or uploaded", "uploaded"):
        second = rsync()
        assert "Number of regular files transferred: 0" in second.stdout, (when, second.stdout)
        changed = [ln for ln in second.stdout.splitlines() if ln[:2] in (">f", "cL", ".f", ".L")]
        assert changed == [], (when, second.stdout)
        flush(m)
    assert (m.path / "tree/d0/f0.bin").read_bytes() == (src / "d0" / "f0.bin").read_bytes()
    m2 = remount(mounter, bucket, m, "again")
    third = subprocess.run(["rsync", "-a", "--itemize-changes", "--stats", f"{src}/", f"{m2.path}/tree/"],
                           capture_output=True, text=True, timeout=60, check=True)
    assert "Number of regular files transferred: 0" in third.stdout, third.stdout
