"""The write tier under faults (issue 10 §1, §6), against the real HTTP S3 test server: the writer's flush
vs another owner's, bounded backpressure, a write dir too small for its reserve, a damaged journal salvaged
record by record, and journal failures at run time that must not redo an upload forever."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import threading
import time
from pathlib import Path

import lmdb
import pytest

from tiercache.errors import ConfigError, NoSpace, WriteFailed
from tiercache.store.s3 import S3Store
from tiercache.tiers.meta import Meta
from tiercache.writeback.front import WriteTier

from .fusehelpers import assert_one_line_error, needs_fuse, run_cli, ssd_size

MiB = 1 << 20


class CountingStore:
    """The test bucket's store, counting uploads; ``gate`` (a Semaphore) lets uploads through one by one."""

    def __init__(self, inner, gate: threading.Semaphore | None = None):
        self.inner, self.gate, self.puts = inner, gate, []

    def put_file(self, key, path, attrs=None):
        if self.gate is not None and not self.gate.acquire(timeout=60):
            raise AssertionError("test gate never opened")
        self.puts.append(key)
        return self.inner.put_file(key, path, attrs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture
def s3store(bucket, s3_server):
    store = S3Store(bucket.url, endpoint_url=s3_server.endpoint)
    yield store
    store.close()


@pytest.fixture
def make_tier(tmp_path):
    made: list[WriteTier] = []

    def make(store, write_dir=None, **kwargs) -> WriteTier:
        tier = WriteTier(store, write_dir or tmp_path / "wd", **kwargs)
        made.append(tier)
        return tier

    yield make
    for tier in made:
        tier.close(drain=False, timeout=30)


def put(tier: WriteTier, path: str, data: bytes) -> None:
    fh = tier.create(path)
    tier.write(fh, data, 0)
    tier.flush(fh)
    tier.release(fh)


def test_only_the_openers_flush_journals_and_only_release_publishes(make_tier, s3store, bucket, tmp_path):
    bucket.put("c/ckpt", b"old version")
    tier = make_tier(s3store)
    fh = tier.open("c/ckpt", truncate=True, owner=100)
    tier.write(fh, b"new version, part 1", 0)
    tier.flush(fh, owner=200)  # a child's close: durable bytes only
    assert [r.key for r in tier.journal.load()] == []
    tier.flush(fh, owner=100)  # the writer's own close of a dup: journaled, not published
    assert [(r.key, r.state) for r in tier.journal.load()] == [("c/ckpt", "held")]
    assert tier.flush_all(timeout=30)["uploaded"] == [] and bucket.get("c/ckpt") == b"old version"
    tier.release(fh)
    assert tier.flush_all(timeout=30)["left"] == []  # (the uploaders may have taken it already)
    assert bucket.get("c/ckpt") == b"new version, part 1"


def test_backpressure_waits_at_most_its_timeout_then_poisons(make_tier, s3store, bucket):
    gate = threading.Semaphore(0)
    stop = threading.Event()

    def trickle() -> None:  # uploads keep making progress, slowly: the old timer restarted at each one
        while not stop.wait(0.3):
            gate.release()

    tier = make_tier(CountingStore(s3store, gate), limit_bytes=4 * MiB, high_watermark=0.5, uploaders=1,
                     backpressure_timeout=1.0)
    for i in range(30):
        put(tier, f"bp/{i}", os.urandom(64 << 10))  # 1.9 MiB pending, just under the 2 MiB watermark
    feeder = threading.Thread(target=trickle, daemon=True)
    feeder.start()
    try:
        fh = tier.create("bp/big")
        with pytest.raises(NoSpace) as info:
            tier.write(fh, os.urandom(MiB), 0)  # needs 14 uploads (~4 s) to fit under the watermark
        assert info.value.errno == errno.ENOSPC and "did not drain" in str(info.value)
        with pytest.raises(WriteFailed) as closing:
            tier.release(fh)
        assert closing.value.errno == errno.ENOSPC
    finally:
        stop.set()
        for _ in range(64):
            gate.release()
    tier.flush_all(timeout=60)
    assert "bp/big" not in bucket.keys() and len([k for k in bucket.keys() if k.startswith("bp/")]) == 30


def test_write_dir_too_small_for_its_reserve_is_refused(s3store, tmp_path):
    st = os.statvfs(tmp_path)
    size = st.f_blocks * st.f_frsize
    with pytest.raises(ConfigError) as info:
        WriteTier(s3store, tmp_path / "wd", reserve_bytes=size + MiB)
    assert "reserve" in str(info.value)
    WriteTier(s3store, tmp_path / "wd").close()  # the lock was given back: a sane reserve opens it


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str):
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@needs_fuse
@pytest.mark.fuse
def test_mount_on_a_write_dir_smaller_than_the_reserve_fails_with_one_line(bucket, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with small_tmpfs(tmp_path / "small", "48m") as write_dir:
        proc = run_cli("mount", bucket.url, str(mnt), "--ssd", str(tmp_path / "cache"), "--ssd-size",
                       ssd_size(), "--write-dir", str(write_dir), "--ram", "64M")
        try:
            assert_one_line_error(proc, "reserve", str(write_dir))
        finally:
            subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)


def test_damaged_journal_records_are_salvaged_one_by_one(make_tier, s3store, bucket, tmp_path):
    stalled = CountingStore(s3store, threading.Semaphore(0))
    tier = make_tier(stalled)
    put(tier, "j/good", b"good")
    put(tier, "j/bad", b"bad record")
    tier.close(drain=False, timeout=1)
    meta = Meta(tmp_path / "wd" / "journal")
    rid = next(k for k, v in meta.scan("journal") if b'"j/bad"' in v)
    raw = meta.get("journal", rid)
    meta.put("journal", rid, raw[: len(raw) // 2])  # a torn record: not JSON any more
    meta.sync()
    meta.close()
    again = make_tier(s3store)
    report = again.flush_all(timeout=60)
    assert report["left"] == [] and report["lost"] == ["j/bad"]
    assert bucket.keys() == ["j/good"] and again.stats()["lost_files"] == ["j/bad"]
    assert again.pending_entry("j/bad")["state"] == "lost"
    with pytest.raises(Exception) as info:
        again.read_pending("j/bad", 0, 10)
    assert getattr(info.value, "errno", None) == errno.EIO
    again.unlink("j/bad")  # the user acknowledges the loss
    assert again.flush_all(timeout=60)["lost"] == [] and again.pending_entry("j/bad") is None


def test_a_journal_failing_at_run_time_does_not_redo_the_upload(make_tier, s3store, bucket):
    store = CountingStore(s3store)
    tier = make_tier(store, retry_interval=0.05, retry_wait=0.01)
    real_write = tier.journal.write

    def failing_write(put=(), delete=()):
        if store.puts:  # once the upload happened, every journal commit fails
            raise lmdb.DiskError("injected journal failure")
        return real_write(put=put, delete=delete)

    tier.journal.write = failing_write
    fh = tier.create("jf/a")
    tier.write(fh, b"payload", 0)
    tier.release(fh)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        time.sleep(0.1)
    assert store.puts == ["jf/a"] and bucket.get("jf/a") == b"payload"
    stats = tier.stats()
    assert stats["local_errors"] >= 1 and "injected" in stats["last_error"] and stats["pending_files"] == 0
    tier.journal.write = real_write


def test_a_journal_that_cannot_be_opened_is_salvaged_and_its_files_reported(make_tier, s3store, bucket,
                                                                             tmp_path):
    tier = make_tier(CountingStore(s3store, threading.Semaphore(0)))  # nothing uploads
    put(tier, "d/one", b"one")
    put(tier, "d/two", b"two")
    tier.close(drain=False, timeout=1)
    data = tmp_path / "wd" / "journal" / "data.mdb"
    with open(data, "r+b") as fh:
        fh.write(os.urandom(2 * 4096))  # both meta pages: "not an LMDB file"
    again = make_tier(s3store)  # starts (it refused to before), with an empty journal
    report = again.flush_all(timeout=30)
    assert report["uploaded"] == [] and bucket.keys() == []
    assert len(report["lost"]) == 2 and all(name.startswith("<unknown key") for name in report["lost"])
    kept = sorted(p.name for p in (tmp_path / "wd" / "corrupt").iterdir() if p.name.endswith("-staging"))
    assert sorted((tmp_path / "wd" / "corrupt" / name).read_bytes() for name in kept) == [b"one", b"two"]
    assert any(p.name.startswith("journal.damaged-") for p in (tmp_path / "wd").iterdir())
    put(again, "d/three", b"three")  # the fresh journal works
    assert again.flush_all(timeout=30)["left"] == [] and bucket.get("d/three") == b"three"
