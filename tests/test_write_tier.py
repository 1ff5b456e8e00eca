"""The durable write tier against a real HTTP S3 server (moto): integrity, modes, read-your-writes, ordering,
backpressure and limits, crash recovery (kill -9 of a writer process)."""

from __future__ import annotations

import errno
import hashlib
import inspect
import itertools
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time

import pytest

from tiercache.errors import ConfigError, DirectoryNotEmpty, NoSpace, NotFound, ReadOnly, StoreError, WriteFailed
from tiercache.store.s3 import S3Store
from tiercache.writeback.front import WriteTier
from tiercache.writeback.journal import Journal

MiB = 1 << 20


class GatedStore:
    """A store whose uploads wait until the test opens ``gate`` (or fail while ``broken``)."""

    def __init__(self, inner, open_gate: bool = False):
        self.inner = inner
        self.url = inner.url
        self.gate = threading.Event()
        if open_gate:
            self.gate.set()
        self.broken = False
        self.started: list[str] = []
        self._cond = threading.Condition()

    def put_file(self, key, path, attrs=None):
        with self._cond:
            self.started.append(key)
            self._cond.notify_all()
        if not self.gate.wait(60):
            raise StoreError("test gate never opened")
        if self.broken:
            raise StoreError("injected failure")
        return self.inner.put_file(key, path, attrs)

    def copy(self, src, dst):
        if self.broken:
            raise StoreError("injected failure")
        return self.inner.copy(src, dst)

    def wait_started(self, key: str) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: key in self.started, 30), f"upload of {key} never started"

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture
def s3store(bucket, s3_server):
    """The test bucket as an S3Store with a small multipart threshold (5 MiB parts)."""
    store = S3Store(bucket.url, endpoint_url=s3_server.endpoint, multipart_threshold=5 * MiB,
                    multipart_chunksize=5 * MiB)
    yield store
    store.close()


@pytest.fixture
def make_tier(tmp_path):
    """WriteTier factory (write dir under tmp_path); gates are opened and tiers closed at teardown."""
    made: list[tuple[WriteTier, object]] = []

    def make(store, write_dir=None, **kwargs) -> WriteTier:
        tier = WriteTier(store, write_dir or tmp_path / "wd", **kwargs)
        made.append((tier, store))
        return tier

    yield make
    for tier, store in made:
        if isinstance(store, GatedStore):
            store.broken = False
            store.gate.set()
        tier.close(drain=False, timeout=30)


def write_file(tier: WriteTier, path: str, data: bytes, chunks=(4093, 65537, 1)) -> None:
    fh = tier.create(path)
    pos, sizes = 0, itertools.cycle(chunks)
    while pos < len(data):
        n = next(sizes)
        assert tier.write(fh, data[pos:pos + n], pos) == len(data[pos:pos + n])
        pos += n
    tier.release(fh)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_files_arrive_intact(make_tier, s3store, bucket):
    tier = make_tier(s3store)
    rng = random.Random(1)
    files = {
        "empty": b"",
        "one": b"x",
        "dir/small.bin": rng.randbytes(100_000),
        "dir/sub/unaligned.bin": rng.randbytes(3 * MiB + 12345),
    }
    for path, data in files.items():
        write_file(tier, path, data)
    # out of order: the tail first, then the head (no running checksum: computed at close)
    data = rng.randbytes(2 * MiB + 7)
    fh = tier.create("backwards.bin")
    tier.write(fh, data[MiB:], MiB)
    tier.write(fh, data[:MiB], 0)
    tier.release(fh)
    files["backwards.bin"] = data
    report = tier.flush_all(timeout=60)
    assert report["left"] == [] and set(report["uploaded"]) <= set(files)
    assert bucket.keys() == sorted(files)
    for path, data in files.items():
        assert sha(bucket.get(path)) == sha(data), path
    stats = tier.stats()
    assert stats["uploaded_files"] == len(files) and stats["pending_files"] == 0 and stats["dirty_bytes"] == 0
    assert stats["uploaded_bytes"] == sum(map(len, files.values())) and stats["write_dir_used"] == 0
    assert os.listdir(tier.journal.staging) == []


def test_multipart_upload_intact(make_tier, s3store, bucket, s3_server):
    tier = make_tier(s3store)
    data = random.Random(2).randbytes(23 * MiB + 333)
    write_file(tier, "big/model.pt", data, chunks=(1 << 17, 1000_003))
    tier.flush_all(timeout=120)
    assert sha(bucket.get("big/model.pt")) == sha(data)
    posts = [r for r in s3_server.requests if r.bucket == bucket.name and r.method == "POST"]
    assert posts, "expected a multipart upload (CreateMultipartUpload / Complete are POSTs)"


@pytest.mark.slow
def test_300mb_file_writeback(make_tier, bucket, s3_server, tmp_path):
    store = S3Store(bucket.url, endpoint_url=s3_server.endpoint)  # default 64 MiB threshold, 16 MiB parts
    tier = make_tier(store)
    block = random.Random(3).randbytes(MiB + 17)
    digest = hashlib.sha256()
    fh = tier.create("ckpt/300mb.bin")
    pos = 0
    while pos < 300 * MiB:
        chunk = block[: min(len(block), 300 * MiB - pos)]
        tier.write(fh, chunk, pos)
        digest.update(chunk)
        pos += len(chunk)
    tier.release(fh)
    tier.flush_all(timeout=300)
    body = s3_server.client().get_object(Bucket=bucket.name, Key="ckpt/300mb.bin")["Body"]
    got = hashlib.sha256()
    for part in iter(lambda: body.read(8 * MiB), b""):
        got.update(part)
    assert got.hexdigest() == digest.hexdigest()


def test_writethrough_object_is_in_bucket_when_release_returns(make_tier, s3store, bucket):
    tier = make_tier(s3store, mode="writethrough")
    data = os.urandom(300_000)
    write_file(tier, "wt/a.bin", data)
    assert bucket.get("wt/a.bin") == data
    assert tier.pending_entry("wt/a.bin") is None and tier.stats()["pending_files"] == 0


def test_writethrough_failure_raises_and_keeps_the_file_pending(make_tier, s3store, bucket):
    store = GatedStore(s3store, open_gate=True)
    store.broken = True
    tier = make_tier(store, mode="writethrough", retry_attempts=1, retry_interval=3600)
    with pytest.raises(StoreError):
        write_file(tier, "wt/fail.bin", b"data")
    assert tier.stats()["failed_uploads"] == 1
    store.broken = False
    report = tier.flush_all(timeout=30)
    # The last close (RELEASE) after the failed writethrough close queues the file again, and that upload may
    # land before flush_all starts: either way the file ends uploaded, and nothing is left.
    assert report["uploaded"] in (["wt/fail.bin"], []) and report["left"] == []
    assert bucket.get("wt/fail.bin") == b"data"


def test_writeback_returns_before_upload_and_reads_its_writes(make_tier, s3store, bucket):
    store = GatedStore(s3store)
    tier = make_tier(store)
    data = os.urandom(200_001)
    write_file(tier, "rw/a.bin", data)
    assert bucket.keys() == []
    entry = tier.pending_entry("rw/a.bin")
    assert entry["size"] == len(data) and not entry["is_dir"]
    assert tier.pending_entry("rw")["is_dir"]
    assert tier.pending_paths("rw/") == ["rw/a.bin"] and tier.pending_paths("x") == []
    assert tier.read_pending("rw/a.bin", 0, len(data) + 10) == data
    assert tier.read_pending("rw/a.bin", 1000, 10) == data[1000:1010]
    assert tier.read_pending("rw/other", 0, 10) is None
    # a handle open for write sees its own writes before flush, and so does read_pending
    fh = tier.open("rw/a.bin")
    tier.write(fh, b"NEW", 10)
    assert tier.read(fh, 8, 7) == data[8:10] + b"NEW" + data[13:15]
    assert tier.read_pending("rw/a.bin", 10, 3) == b"NEW"
    assert tier.pending_entry("rw/a.bin")["state"] == "open"
    tier.release(fh)
    stats = tier.stats()
    assert stats["pending_files"] >= 1 and stats["dirty_bytes"] >= len(data)
    assert stats["oldest_pending_age_s"] >= 0
    store.gate.set()
    tier.flush_all(timeout=60)
    assert bucket.get("rw/a.bin") == data[:10] + b"NEW" + data[13:]
    assert tier.pending_entry("rw/a.bin") is None and tier.read_pending("rw/a.bin", 0, 1) is None


def test_copy_on_write_overwrite_of_stored_object(make_tier, s3store, bucket):
    original = os.urandom(3 * MiB)
    bucket.put("cow/obj", original)
    bucket.put("cow/keep", b"0123456789")
    tier = make_tier(s3store)
    fh = tier.open("cow/obj")
    assert tier.read(fh, 5, 10) == original[5:15]  # lazy: read from the store, nothing copied yet
    tier.write(fh, b"middle", MiB + 1)
    tier.release(fh)
    fh = tier.open("cow/keep", truncate=True)
    tier.write(fh, b"ab", 0)
    tier.release(fh)
    tier.flush_all(timeout=60)
    assert bucket.get("cow/obj") == original[:MiB + 1] + b"middle" + original[MiB + 7:]
    assert bucket.get("cow/keep") == b"ab"
    with pytest.raises(NotFound):
        tier.open("cow/missing")


def test_truncate_by_path_and_handle(make_tier, s3store, bucket):
    bucket.put("t/a", b"0123456789" * 10)
    tier = make_tier(s3store)
    tier.truncate("t/a", 15)
    fh = tier.create("t/b")
    tier.write(fh, b"abc", 0)
    tier.truncate(fh, 6)
    tier.write(fh, b"Z", 8)
    tier.release(fh)
    tier.flush_all(timeout=60)
    assert bucket.get("t/a") == (b"0123456789" * 2)[:15]
    assert bucket.get("t/b") == b"abc\0\0\0\0\0Z"


def test_two_handles_share_one_file(make_tier, s3store, bucket):
    tier = make_tier(s3store)
    fh1 = tier.create("s/f")
    fh2 = tier.open("s/f")
    tier.write(fh1, b"aaaa", 0)
    tier.write(fh2, b"bb", 2)
    assert tier.read(fh1, 0, 10) == b"aabb"
    tier.release(fh1)  # commits a version; fh2 goes on writing on a copy
    tier.write(fh2, b"c", 4)
    tier.release(fh2)
    tier.flush_all(timeout=60)
    assert bucket.get("s/f") == b"aabbc"


def test_rewrite_while_pending_keeps_newest(make_tier, s3store, bucket, s3_server):
    store = GatedStore(s3store)
    tier = make_tier(store, uploaders=1)
    write_file(tier, "v/blocker", b"first")
    store.wait_started("v/blocker")  # the only uploader is busy: the versions below wait in the queue
    for version in range(5):
        write_file(tier, "v/file", f"version {version}".encode())
    assert tier.stats()["pending_files"] == 2
    assert len(os.listdir(tier.journal.staging)) == 2  # superseded staging files are gone
    store.gate.set()
    tier.flush_all(timeout=60)
    assert bucket.get("v/file") == b"version 4"
    puts = [r for r in s3_server.requests if r.bucket == bucket.name and r.method == "PUT"]
    assert [r.key for r in puts].count("v/file") == 1


def test_rename_and_unlink_of_pending_files(make_tier, s3store, bucket):
    store = GatedStore(s3store)
    tier = make_tier(store, uploaders=1)
    write_file(tier, "p/blocker", b"b")
    store.wait_started("p/blocker")
    write_file(tier, "p/ckpt.tmp", b"checkpoint")
    write_file(tier, "p/scratch", b"scratch")
    tier.rename("p/ckpt.tmp", "p/ckpt")
    tier.unlink("p/scratch")
    assert tier.pending_entry("p/ckpt.tmp") is None and tier.pending_entry("p/scratch") is None
    assert tier.read_pending("p/ckpt", 0, 100) == b"checkpoint"
    assert tier.pending_paths("p/") == ["p/blocker", "p/ckpt"]
    with pytest.raises(NotFound):
        tier.unlink("p/scratch")
    store.gate.set()
    tier.flush_all(timeout=60)
    assert bucket.keys() == ["p/blocker", "p/ckpt"]
    assert bucket.get("p/ckpt") == b"checkpoint"


def test_rename_while_uploading_follows_the_file(make_tier, s3store, bucket):
    store = GatedStore(s3store)
    tier = make_tier(store)
    write_file(tier, "m/ckpt.tmp", b"moving target")
    store.wait_started("m/ckpt.tmp")  # in flight to the old name
    tier.rename("m/ckpt.tmp", "m/ckpt")
    assert tier.read_pending("m/ckpt", 0, 100) == b"moving target"
    store.gate.set()
    tier.flush_all(timeout=60)
    assert bucket.keys() == ["m/ckpt"]
    assert bucket.get("m/ckpt") == b"moving target"


def test_rename_and_unlink_of_stored_objects_and_directories(make_tier, s3store, bucket):
    bucket.put("r/a", b"A")
    bucket.put("r/gone", b"G")
    bucket.put("d/x", b"X")
    bucket.put("d/sub/y", b"Y")
    tier = make_tier(s3store)
    tier.rename("r/a", "r/b")
    tier.unlink("r/gone")
    write_file(tier, "d/pending", b"P")
    tier.rename("d", "e")
    tier.flush_all(timeout=60)
    assert bucket.keys() == ["e/pending", "e/sub/y", "e/x", "r/b"]
    assert bucket.get("r/b") == b"A" and bucket.get("e/sub/y") == b"Y" and bucket.get("e/pending") == b"P"
    assert not tier.is_deleted("r/gone")
    with pytest.raises(NotFound):
        tier.rename("r/nothing", "r/else")


def test_deferred_renames_replay_in_order(make_tier, s3store, bucket, tmp_path):
    bucket.put("q/a", b"stored")
    store = GatedStore(s3store, open_gate=True)
    store.broken = True  # server-side copies fail: the renames stay in the journal
    tier = make_tier(store, retry_attempts=1, retry_interval=3600)
    tier.rename("q/a", "q/b")
    tier.rename("q/b", "q/c")  # the pending copy is redirected; q/b never existed in the store
    assert tier.is_deleted("q/a") and tier.is_deleted("q/b") and not tier.is_deleted("q/c")
    assert tier.read_pending("q/c", 0, 100) == b"stored" and tier.pending_paths("q/") == ["q/c"]
    with pytest.raises(ConfigError):
        tier.rename("q", "q/inside")
    tier.close(drain=False)
    assert bucket.keys() == ["q/a"]
    again = make_tier(s3store)  # replay: the copy runs before the delete of its source
    assert again.flush_all(timeout=60)["left"] == []
    assert bucket.keys() == ["q/c"] and bucket.get("q/c") == b"stored"


def test_mkdir_rmdir(make_tier, s3store, bucket, tmp_path):
    tier = make_tier(s3store)
    tier.mkdir("a/b")
    assert tier.pending_entry("a/b")["is_dir"] and tier.pending_entry("a")["is_dir"]
    assert tier.pending_paths("a/") == ["a/b"]
    write_file(tier, "a/b/f", b"f")
    with pytest.raises(DirectoryNotEmpty) as info:
        tier.rmdir("a/b")
    assert info.value.errno == errno.ENOTEMPTY
    tier.flush_all(timeout=60)
    with pytest.raises(DirectoryNotEmpty):
        tier.rmdir("a/b")  # the file is in the store now
    tier.unlink("a/b/f")
    tier.mkdir("kept")
    tier.rmdir("a/b")
    assert tier.pending_entry("a/b") is None and tier.pending_entry("a") is None
    with pytest.raises(NotFound):
        tier.rmdir("nowhere")
    tier.close()
    again = make_tier(s3store)
    assert again.pending_paths() == ["kept"]


def test_readonly_refuses_every_write(make_tier, s3store, bucket):
    bucket.put("ro/a", b"a")
    tier = make_tier(s3store, mode="readonly")
    for call in (lambda: tier.create("ro/new"), lambda: tier.open("ro/a"), lambda: tier.unlink("ro/a"),
                 lambda: tier.rename("ro/a", "ro/b"), lambda: tier.mkdir("ro/d"), lambda: tier.rmdir("ro"),
                 lambda: tier.truncate("ro/a", 0)):
        with pytest.raises(ReadOnly) as info:
            call()
        assert info.value.errno == errno.EROFS
    assert bucket.keys() == ["ro/a"]


def test_hard_limit_gives_enospc_keeps_closed_files_and_publishes_nothing_of_the_failed_one(
        make_tier, s3store, bucket):
    store = GatedStore(s3store)
    tier = make_tier(store, limit_bytes=4 * MiB, high_watermark=1.0, backpressure_timeout=0.2)
    a, b = os.urandom(MiB), os.urandom(MiB)
    write_file(tier, "full/a", a)
    write_file(tier, "full/b", b)
    fh = tier.create("full/c")
    written = b""
    with pytest.raises(NoSpace) as info:
        for _ in range(10):
            chunk = os.urandom(MiB // 2)
            tier.write(fh, chunk, len(written))
            written += chunk
    assert info.value.errno == errno.ENOSPC
    assert len(written) == 2 * MiB and tier.read(fh, 0, 4 * MiB) == written
    assert tier.stats()["write_dir_used"] == 4 * MiB and tier.stats()["limit"] == 4 * MiB
    with pytest.raises(WriteFailed) as poisoned:  # the handle is poisoned: its close fails too
        tier.release(fh)
    assert poisoned.value.errno == errno.ENOSPC
    assert tier.pending_entry("full/c") is None  # the failed create leaves no name behind
    store.gate.set()
    tier.flush_all(timeout=60)
    assert bucket.get("full/a") == a and bucket.get("full/b") == b and "full/c" not in bucket.keys()
    assert tier.stats()["write_dir_used"] == 0


def test_backpressure_waits_for_uploads_instead_of_failing(make_tier, s3store, bucket):
    class SlowStore(GatedStore):
        def put_file(self, key, path, attrs=None):
            time.sleep(0.05)
            return self.inner.put_file(key, path, attrs)

    tier = make_tier(SlowStore(s3store), limit_bytes=4 * MiB, high_watermark=0.5, uploaders=1)
    files = {f"bp/{i}": os.urandom(MiB) for i in range(8)}
    for path, data in files.items():
        write_file(tier, path, data, chunks=(MiB,))
    tier.flush_all(timeout=60)
    assert tier.stats()["backpressure_waits"] > 0
    assert all(bucket.get(p) == d for p, d in files.items())


def test_failing_uploads_stay_pending_and_are_reported(make_tier, s3store, bucket):
    store = GatedStore(s3store, open_gate=True)
    store.broken = True
    tier = make_tier(store, retry_attempts=2, retry_wait=0.01, retry_interval=3600)
    write_file(tier, "f/a", b"aaa")
    report = tier.flush_all(timeout=30)
    assert report["left"] == ["f/a"] and report["failed"] == ["f/a"]
    stats = tier.stats()
    assert stats["failed_uploads"] == 1 and stats["pending_files"] == 1 and "injected" in stats["last_error"]
    assert tier.pending_entry("f/a")["state"] == "failed"
    store.broken = False
    assert tier.flush_all(timeout=30)["uploaded"] == ["f/a"]
    assert bucket.get("f/a") == b"aaa"


def test_close_drains_and_undrained_work_resumes_at_next_start(make_tier, s3store, bucket, tmp_path):
    tier = make_tier(s3store)
    for i in range(10):
        write_file(tier, f"c/{i}", str(i).encode() * 1000)
    tier.close(drain=True)
    assert bucket.keys() == sorted(f"c/{i}" for i in range(10))

    store = GatedStore(s3store)
    stalled = make_tier(store, write_dir=tmp_path / "wd2")
    write_file(stalled, "c/late", b"late")
    store.wait_started("c/late")
    stalled.close(drain=False, timeout=0.5)  # the upload in flight is abandoned, not lost
    resumed = make_tier(s3store, write_dir=tmp_path / "wd2")
    assert resumed.pending_paths() == ["c/late"]
    assert resumed.flush_all(timeout=60)["uploaded"] == ["c/late"]
    store.gate.set()  # the abandoned upload finishes now and must not touch the new tier's files
    assert stalled.uploader.stop(timeout=30)
    assert bucket.get("c/late") == b"late" and resumed.stats()["pending_files"] == 0
    assert os.listdir(tmp_path / "wd2" / "staging") == []


def test_corrupt_staging_is_kept_and_orphans_removed(make_tier, s3store, bucket, tmp_path):
    store = GatedStore(s3store, open_gate=True)
    store.broken = True
    tier = make_tier(store, retry_attempts=1, retry_interval=3600)
    write_file(tier, "k/good", b"good data")
    write_file(tier, "k/bad", b"will be damaged")
    tier.flush_all(timeout=30)
    tier.close(drain=False)
    staging = tmp_path / "wd" / "staging"
    journal = Journal(tmp_path / "wd")
    recs = {r.key: r.id for r in journal.load()}
    journal.close()
    (staging / recs["k/bad"]).write_bytes(b"WILL be damaged")  # same size, other bytes
    (staging / "00000000deadbeef").write_bytes(b"never acknowledged")
    again = make_tier(s3store)
    again.flush_all(timeout=30)
    assert bucket.keys() == ["k/good"]
    assert again.stats()["corrupt_files"] == 1 and again.stats()["pending_files"] == 0
    assert os.listdir(staging) == []
    kept = sorted(os.listdir(tmp_path / "wd" / "corrupt"))
    assert len(kept) == 2 and (tmp_path / "wd" / "corrupt" / kept[0]).read_bytes() == b"WILL be damaged"


CRASH_WRITER = r"""
import os, random, sys, time
from tiercache.store.s3 import S3Store
from tiercache.writeback.front import WriteTier

class Stalled:
    def __init__(self, inner):
        self.inner, self.url = inner, inner.url
    def put_file(self, key, path, attrs=None):
        if key.endswith("-fast"):
            return self.inner.put_file(key, path, attrs)
        time.sleep(3600)
    def __getattr__(self, name):
        return getattr(self.inner, name)

url, endpoint, write_dir = sys.argv[1:4]
tier = WriteTier(Stalled(S3Store(url, endpoint_url=endpoint)), write_dir, uploaders=2)
i = 0
while True:
    name = "same" if i % 3 == 0 else f"f{i:04d}" + ("-fast" if i % 4 == 1 else "")
    size = random.Random(i).randrange(1, 300_000)
    data = payload(name, i, size)
    fh = tier.create(name)
    for pos in range(0, len(data), 50_001):
        tier.write(fh, data[pos:pos + 50_001], pos)
    tier.release(fh)
    print(f"ACK {name} {i}", flush=True)
    i += 1
"""


def payload(name: str, version: int, size: int) -> bytes:
    """Content of version ``version`` of ``name``: a header naming it, then deterministic bytes."""
    head = f"{name}:{version}:{size}\n".encode()
    return head + random.Random(f"{name}/{version}").randbytes(size)


def test_kill9_during_writeback_loses_nothing_acknowledged(tmp_path, bucket, s3_server, s3store, make_tier):
    write_dir = tmp_path / "crash"
    proc = subprocess.Popen(
        [sys.executable, "-c", "import random\n" + inspect.getsource(payload) + CRASH_WRITER,
         bucket.url, s3_server.endpoint, str(write_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )
    acked: dict[str, int] = {}
    buf = b""
    deadline = time.monotonic() + 60
    try:
        while len(acked) < 12 and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if not ready:
                assert proc.poll() is None, proc.stderr.read().decode()
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            assert chunk, proc.stderr.read().decode()
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                _, name, version = line.decode().split()
                acked[name] = int(version)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert len(acked) >= 12, "the writer did not acknowledge enough files"
    before = {r.key for r in s3_server.requests if r.bucket == bucket.name and r.method == "PUT" and r.key}
    assert all(key.endswith("-fast") for key in before)

    tier = make_tier(s3store, write_dir=write_dir)
    report = tier.flush_all(timeout=120)
    assert report["left"] == []
    keys = bucket.keys()
    for name, version in acked.items():
        assert name in keys, f"acknowledged {name} lost"
        head = bucket.get(name).split(b"\n", 1)[0].decode()
        assert int(head.split(":")[1]) >= version, f"{name}: older version than acknowledged"
    for key in keys:  # whatever is there is whole: never a truncated or mixed file
        data = bucket.get(key)
        name, version, size = data.split(b"\n", 1)[0].decode().split(":")
        assert name == key and data == payload(name, int(version), int(size))
    puts = [r.key for r in s3_server.requests if r.bucket == bucket.name and r.method == "PUT"]
    stalled = [k for k in keys if not k.endswith("-fast")]
    assert all(puts.count(k) == 1 for k in stalled), "a replayed file was uploaded twice (or a stale version)"
    assert os.listdir(write_dir / "staging") == []


class DeleteFailingStore:
    """A store whose deletes fail while ``failing`` (so acknowledged deletes stay pending); the rest passes."""

    def __init__(self, inner):
        self.inner, self.url, self.failing, self.deleted = inner, inner.url, True, []

    def delete(self, key):
        if self.failing:
            raise StoreError("injected: deletes stalled")
        self.deleted.append(key)
        return self.inner.delete(key)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_rmdir_of_a_directory_whose_deletes_are_pending(make_tier, s3store, bucket, tmp_path):
    """rm -r: each file unlinked (its delete still pending), then rmdir bottom-up succeeds; the bucket is right
    after a restart (the journal replays the deletes, then the directory marker's delete)."""
    for key, data in (("d/", b""), ("d/a", b"1"), ("d/sub/b", b"2"), ("keep/c", b"3")):
        bucket.put(key, data)
    store = DeleteFailingStore(s3store)
    tier = make_tier(store, retry_attempts=1, retry_wait=0.0, retry_interval=600.0)
    tier.unlink("d/a")
    tier.unlink("d/sub/b")
    assert tier.is_deleted("d/a") and tier.is_deleted("d/sub/b")  # genuinely pending
    tier.rmdir("d/sub")
    tier.rmdir("d")
    assert sorted(bucket.keys()) == ["d/", "d/a", "d/sub/b", "keep/c"]  # nothing reached the store yet
    tier.rmdir("d")  # again: its marker's delete is pending already, nothing more is journaled
    tier.close(drain=False, timeout=30)  # as after kill -9: everything stays in the journal
    store.failing = False
    again = make_tier(store, uploaders=1)  # one runner: the store sees the journal's order
    again.flush_all(timeout=60)
    assert bucket.keys() == ["keep/c"]
    assert store.deleted.index("d/") > max(store.deleted.index("d/a"), store.deleted.index("d/sub/b"))


def test_reads_skip_the_pending_view_only_while_nothing_is_written_pending_or_lost(make_tier, s3store, bucket):
    store = GatedStore(s3store)  # the upload waits at the gate: the change stays pending
    tier = make_tier(store)
    assert tier.view.quiet() and tier.read_pending("q/a", 0, 10) is None  # a read-only mount's every READ
    fh = tier.create("q/a")
    assert tier.write(fh, b"open", 0) == 4
    assert not tier.view.quiet() and tier.read_pending("q/a", 0, 10) == b"open"  # open for write
    tier.release(fh)
    store.wait_started("q/a")
    assert not tier.view.quiet() and tier.read_pending("q/a", 0, 10) == b"open"  # acknowledged, uploading
    store.gate.set()
    assert tier.flush_all(timeout=60)["left"] == []
    assert tier.view.quiet() and tier.read_pending("q/a", 0, 10) is None and bucket.get("q/a") == b"open"
