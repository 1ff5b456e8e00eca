"""Sparse files in the write tier: a truncate that grows a file makes a hole, and the write dir's budget counts
the bytes written, not the length (issue 16: a large sparse truncate answered ENOSPC)."""

from __future__ import annotations

import errno
import os

import pytest

from tiercache.errors import NoSpace, WriteFailed
from tiercache.store.local import LocalStore
from tiercache.writeback.front import WriteTier

from .fusehelpers import needs_fuse

MiB, GiB = 1 << 20, 1 << 30


@pytest.fixture
def tier(tmp_path):
    (tmp_path / "store").mkdir()
    store = LocalStore(tmp_path / "store")
    tier = WriteTier(store, tmp_path / "wd", limit_bytes=8 * MiB, reserve_bytes=0, backpressure_timeout=0.2)
    try:
        yield tier
    finally:
        tier.close(timeout=30)


def test_a_large_sparse_truncate_is_charged_its_written_bytes(tier):
    fh = tier.create("sparse.bin")
    tier.truncate(fh, 4 * GiB)  # far past the 8 MiB limit: a hole costs nothing
    assert tier.stats()["write_dir_used"] < MiB
    tier.write(fh, b"x" * MiB, 2 * GiB)
    used = tier.stats()["write_dir_used"]
    assert MiB <= used < 2 * MiB
    assert tier.read(fh, 2 * GiB - 2, 4) == b"\0\0xx"
    assert tier.read(fh, 4 * GiB - 3, 10) == b"\0\0\0"
    tier.truncate(fh, GiB)  # shrinking past the written bytes gives them back
    used = tier.stats()["write_dir_used"]
    assert used < MiB
    with pytest.raises(NoSpace):  # real bytes still meet the limit
        tier.write(fh, b"y" * (8 * MiB), 0)
    assert tier.stats()["write_dir_used"] == used  # the refused write left nothing charged
    tier.unlink("sparse.bin")  # (not uploaded: gigabytes of zeros)
    with pytest.raises(WriteFailed):  # the failed write poisoned the open file: its close fails too
        tier.release(fh)
    assert tier.stats()["write_dir_used"] == 0


def test_a_committed_sparse_file_keeps_its_small_charge_until_uploaded(tier, tmp_path):
    fh = tier.create("s.bin")
    tier.truncate(fh, 64 * MiB)
    tier.write(fh, b"tail", 64 * MiB - 4)
    tier.release(fh)  # committed: the journal record holds the staging file's bytes, not its length
    assert tier.stats()["write_dir_used"] < MiB
    fh = tier.create("dense.bin")
    tier.write(fh, b"d" * (4 * MiB), 0)  # still fits beside it
    tier.release(fh)
    assert tier.flush_all(timeout=60)["left"] == []
    assert tier.stats()["write_dir_used"] == 0
    stored = tmp_path / "store" / "s.bin"
    assert stored.stat().st_size == 64 * MiB
    with open(stored, "rb") as fh:
        fh.seek(64 * MiB - 8)
        assert fh.read() == b"\0\0\0\0tail"


@needs_fuse
@pytest.mark.fuse
@pytest.mark.timeout(120)
def test_sparse_truncate_through_the_mount_is_not_enospc(bucket, mounter):
    m = mounter.mount(bucket.url, "--write-limit", "16M")
    path = m.path / "big.sparse"
    with open(path, "wb") as fh:
        fh.truncate(48 * MiB)  # three times the write limit
        fh.seek(20 * MiB)
        fh.write(b"middle")
    assert os.path.getsize(path) == 48 * MiB
    with open(path, "rb") as fh:
        fh.seek(20 * MiB - 2)
        assert fh.read(8) == b"\0\0middle"
    os.truncate(m.path / "big.sparse", 40 * MiB)  # by path, too
    assert os.path.getsize(path) == 40 * MiB
    with pytest.raises(OSError) as info, open(m.path / "dense.bin", "wb") as fh:  # real bytes meet the limit
        fh.write(os.urandom(20 * MiB))
    assert info.value.errno == errno.ENOSPC
    assert "dense.bin" not in os.listdir(m.path)  # the failed create left no name (issue 10 §1)
    proc = m.cli("flush")
    assert proc.returncode == 0, proc.stderr
    body = bucket.client.get_object(Bucket=bucket.name, Key="big.sparse", Range=f"bytes={20 * MiB}-{20 * MiB + 5}")
    assert body["Body"].read() == b"middle"
