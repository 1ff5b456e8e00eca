"""A file's new version is published only when its writer says so (issue 10 §1), through a real mount over
the real HTTP S3 test server: a forked/exec'd child's close or a dup's close publishes nothing, kill -9 right
after the writer's final close replays and publishes, a failed write poisons its open file, and a lost file
is reported (flush, unmount, stats) and reads EIO until removed."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tiercache import mounts
from tiercache.writeback.journal import Journal

from .fusehelpers import needs_fuse

pytestmark = [needs_fuse, pytest.mark.fuse, pytest.mark.timeout(180)]

MiB = 1 << 20


def wait_gone(pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while mounts.pid_alive(pid):
        assert time.monotonic() < deadline, f"daemon {pid} still alive"
        time.sleep(0.05)


def kill_daemon(m) -> None:
    """kill -9 the mount's daemon and detach its dead mount."""
    pid = m.pid
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    subprocess.run(["fusermount3", "-uz", str(m.path)], capture_output=True)


def write_over(path, data: bytes) -> int:
    """open(O_WRONLY|O_TRUNC) an existing file and write ``data``; returns the still open fd."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    for off in range(0, len(data), MiB):
        os.write(fd, data[off:off + MiB])
    return fd


@pytest.mark.parametrize("other_close", ["exec_child", "dup"])
def test_a_close_other_than_the_last_publishes_nothing(bucket, mounter, other_close):
    old, new = os.urandom(5 * MiB), os.urandom(5 * MiB)
    bucket.put("ckpt.bin", old)
    m = mounter.mount(bucket.url)
    reader = mounter.mount(bucket.url, "--metadata-ttl", "0")  # another reader of the bucket
    assert (reader.path / "ckpt.bin").read_bytes() == old
    fd = write_over(m.path / "ckpt.bin", new)
    try:
        if other_close == "exec_child":
            subprocess.run(["true"], check=True)  # the child closes its copy of fd: a FLUSH from another process
        else:
            os.close(os.dup(fd))  # a FLUSH from the writer itself, while fd stays open
        assert m.cli("flush").returncode == 0
        assert bucket.get("ckpt.bin") == old
        assert (reader.path / "ckpt.bin").read_bytes() == old
    finally:
        os.close(fd)
    assert m.cli("flush").returncode == 0  # the last close published it
    assert bucket.get("ckpt.bin") == new
    assert (reader.path / "ckpt.bin").read_bytes() == new


def test_kill_9_right_after_the_final_close_replays_and_publishes(bucket, mounter, proxy):
    old, new = os.urandom(MiB), os.urandom(5 * MiB)
    bucket.put("ckpt.bin", old)
    m = mounter.mount(bucket.url, endpoint=proxy.endpoint)
    assert os.stat(m.path / "ckpt.bin").st_size == MiB  # metadata known before the store stalls
    proxy.pause()  # no upload can finish before the kill
    try:
        os.close(write_over(m.path / "ckpt.bin", new))
        kill_daemon(m)
    finally:
        proxy.resume()
    assert bucket.get("ckpt.bin") == old
    again = mounter.mount(bucket.url, name=m.path.name, cache_dir=m.cache_dir, write_dir=m.write_dir)
    assert again.cli("flush").returncode == 0
    assert bucket.get("ckpt.bin") == new
    assert (again.path / "ckpt.bin").read_bytes() == new


def test_kill_9_after_only_a_childs_close_keeps_the_old_version(bucket, mounter):
    old, new = os.urandom(5 * MiB), os.urandom(5 * MiB)
    bucket.put("ckpt.bin", old)
    m = mounter.mount(bucket.url)
    fd = write_over(m.path / "ckpt.bin", new)
    subprocess.run(["true"], check=True)
    kill_daemon(m)  # the writer never closed: nothing it wrote was acknowledged
    try:
        os.close(fd)
    except OSError:
        pass  # the connection is gone
    again = mounter.mount(bucket.url, name=m.path.name, cache_dir=m.cache_dir, write_dir=m.write_dir)
    assert again.cli("flush").returncode == 0
    assert bucket.get("ckpt.bin") == old
    assert (again.path / "ckpt.bin").read_bytes() == old


def test_a_failed_write_publishes_nothing_and_the_good_version_stays(bucket, mounter):
    good = os.urandom(5 * MiB)
    bucket.put("model.bin", good)
    m = mounter.mount(bucket.url, "--write-limit", "43M", "--metadata-ttl", "0")
    assert (m.path / "model.bin").read_bytes() == good
    for name in ("model.bin", "fresh.bin"):  # over a good version, and a new name
        fd = os.open(m.path / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        with pytest.raises(OSError) as info:  # noqa: PT012 - one of the writes crosses the limit
            for _ in range(80):
                os.write(fd, os.urandom(MiB))
        assert info.value.errno == errno.ENOSPC
        with pytest.raises(OSError) as closing:
            os.close(fd)
        assert closing.value.errno == errno.ENOSPC
    flushed = m.cli("flush")
    assert flushed.returncode == 0, flushed.stderr
    assert bucket.keys() == ["model.bin"] and bucket.get("model.bin") == good
    assert "fresh.bin" not in os.listdir(m.path)
    assert (m.path / "model.bin").read_bytes() == good
    stats = json.loads(m.cli("stats", "--json").stdout)["writes"]
    assert stats["write_dir_used"] == 0 and stats["pending_files"] == 0


def test_a_lost_file_fails_flush_and_unmount_reads_eio_until_removed(bucket, mounter, proxy):
    m = mounter.mount(bucket.url, endpoint=proxy.endpoint)
    assert os.listdir(m.path) == []
    proxy.pause()
    try:
        (m.path / "k").mkdir()
        (m.path / "k/good.bin").write_bytes(b"good data")
        (m.path / "k/bad.bin").write_bytes(b"will be damaged")
        pid = m.pid
        assert m.cli("unmount", "--force").returncode == 0  # both stay pending for the next mount
        wait_gone(pid)  # no upload stalled at the proxy can finish now
    finally:
        proxy.resume()
    journal = Journal(m.write_dir)
    rid = next(r.id for r in journal.load() if r.key == "k/bad.bin")
    journal.close()
    (m.write_dir / "staging" / rid).write_bytes(b"WILL be damaged")  # same size, other bytes
    again = mounter.mount(bucket.url, name=m.path.name, cache_dir=m.cache_dir, write_dir=m.write_dir)
    flushed = again.cli("flush")
    assert flushed.returncode != 0 and "k/bad.bin" in flushed.stderr and "LOST" in flushed.stderr
    # A PUT the proxy held may still reach the server after the daemon died (as it can on real S3): then the
    # bucket holds the acknowledged bytes, never the damaged ones.
    assert bucket.keys() in (["k/good.bin"], ["k/bad.bin", "k/good.bin"])
    if "k/bad.bin" in bucket.keys():
        assert bucket.get("k/bad.bin") == b"will be damaged"
    stats = json.loads(again.cli("stats", "--json").stdout)["writes"]
    assert stats["lost_files"] == ["k/bad.bin"]
    assert "k/bad.bin" in again.cli("stats").stdout
    assert sorted(os.listdir(again.path / "k")) == ["bad.bin", "good.bin"]
    with pytest.raises(OSError) as info:
        (again.path / "k/bad.bin").read_bytes()
    assert info.value.errno == errno.EIO
    refused = again.cli("unmount")
    assert refused.returncode != 0 and "k/bad.bin" in refused.stderr
    os.unlink(again.path / "k/bad.bin")  # the user acknowledges the loss
    assert again.cli("flush").returncode == 0
    assert "bad.bin" not in os.listdir(again.path / "k")
    assert again.cli("unmount").returncode == 0


KILLED_WRITER = r"""
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_TRUNC)
for _ in range(5):
    os.write(fd, os.urandom(1 << 20))
print("written", flush=True)
time.sleep(600)
"""


def test_a_writer_killed_before_its_close_publishes_nothing(bucket, mounter):
    old = os.urandom(MiB)
    bucket.put("ckpt.bin", old)
    m = mounter.mount(bucket.url, "--metadata-ttl", "0")
    assert (m.path / "ckpt.bin").read_bytes() == old
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(m.path / "ckpt.bin")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "written"
    finally:
        writer.kill()  # the kernel closes its descriptor: a FLUSH and a RELEASE nobody asked for
        writer.wait(30)
    assert m.cli("flush").returncode == 0
    assert bucket.get("ckpt.bin") == old
    assert (m.path / "ckpt.bin").read_bytes() == old
    assert "writer was killed" in m.log
