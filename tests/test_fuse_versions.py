"""Every open file reads one version, and a changed object is never served stale (real mount, real S3)."""

from __future__ import annotations

import errno
import json
import os
import random
import time

import pytest

from .fusehelpers import needs_fuse, run_cli

pytestmark = [needs_fuse, pytest.mark.fuse, pytest.mark.timeout(120)]

MiB = 1 << 20


def reads(m) -> int:
    proc = m.cli("stats", "--json")
    assert proc.returncode == 0, proc.stderr
    return int(json.loads(proc.stdout)["cache"]["reads"])


@pytest.mark.parametrize("ttl", ["0", "3"])
def test_open_file_reads_one_version_across_an_overwrite(bucket, mounter, ttl):
    """Read 3 MiB at a time across an overwrite in the bucket whose old blocks are no longer cached: all
    bytes come from the version opened, then ESTALE; never old and new mixed. A new open reads new."""
    rng = random.Random(1)
    old, new = rng.randbytes(24 * MiB), rng.randbytes(24 * MiB)
    bucket.put("ckpt.bin", old)
    m = mounter.mount(bucket.url, "--metadata-ttl", ttl, endpoint=bucket.server.endpoint)
    got = bytearray()
    with open(m.path / "ckpt.bin", "rb", buffering=0) as f:
        got += f.read(3 * MiB)
        bucket.put("ckpt.bin", new)
        evicted = m.cli("evict", str(m.path / "ckpt.bin"))
        assert evicted.returncode == 0, evicted.stderr
        error = None
        while True:
            try:
                chunk = f.read(3 * MiB)
            except OSError as exc:
                error = exc
                break
            if not chunk:
                break
            got += chunk
    assert bytes(got) == old[: len(got)], "bytes of another version were served"
    assert error is not None and error.errno in (errno.ESTALE, errno.EIO), (len(got), error)
    if ttl != "0":
        time.sleep(float(ttl) + 0.5)
    assert (m.path / "ckpt.bin").read_bytes() == new


@pytest.mark.parametrize("ttl", ["0", "2"])
def test_same_size_same_second_overwrite_reads_new_after_the_ttl(bucket, mounter, ttl):
    """The kernel keeps a file's pages across opens only while its etag is unchanged (not while size and
    mtime are): an object overwritten with the same size within the same second reads new after the TTL."""
    rng = random.Random(2)
    m = mounter.mount(bucket.url, "--metadata-ttl", ttl, endpoint=bucket.server.endpoint)
    for attempt in range(4):  # S3 mtimes are whole seconds: put, read and overwrite within one of them
        key, old, new = f"f{attempt}.bin", rng.randbytes(MiB), rng.randbytes(MiB)
        time.sleep(float(ttl) + 0.2)  # the root listing is past its TTL: the new name is listed again
        while time.time() % 1 > 0.1:
            time.sleep(0.01)
        bucket.put(key, old)
        first = bucket.client.head_object(Bucket=bucket.name, Key=key)["LastModified"]
        assert (m.path / key).read_bytes() == old
        bucket.put(key, new)
        if bucket.client.head_object(Bucket=bucket.name, Key=key)["LastModified"] == first:
            break
    time.sleep(float(ttl) + 0.5)
    assert os.stat(m.path / key).st_size == MiB
    assert (m.path / key).read_bytes() == new, "the old version was served after the TTL"


def test_unchanged_file_keeps_its_kernel_pages(bucket, mounter):
    """Re-opening an unchanged file is served from the kernel's page cache (keep_cache by etag): the
    daemon sees no READ for the second pass."""
    data = random.Random(3).randbytes(2 * MiB)
    bucket.put("same.bin", data)
    m = mounter.mount(bucket.url, "--metadata-ttl", "60", endpoint=bucket.server.endpoint)
    assert (m.path / "same.bin").read_bytes() == data
    before = reads(m)
    assert (m.path / "same.bin").read_bytes() == data
    assert reads(m) == before


def test_readonly_finite_ttl_mount_sees_overwrites(bucket, mounter):
    """A readonly mount with a finite TTL opens files through the daemon too, so it never serves an old
    version from the kernel once the TTL passed."""
    rng = random.Random(4)
    old, new = rng.randbytes(MiB), rng.randbytes(MiB)
    bucket.put("r.bin", old)
    m = mounter.mount(bucket.url, "--mode", "readonly", "--metadata-ttl", "0",
                      endpoint=bucket.server.endpoint)
    assert (m.path / "r.bin").read_bytes() == old
    bucket.put("r.bin", new)
    assert (m.path / "r.bin").read_bytes() == new
    assert run_cli("stats", str(m.path)).returncode == 0
