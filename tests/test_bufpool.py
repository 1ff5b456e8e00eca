"""Reused block buffers (issue 13, cold streaming): a GET's block is read straight into a pooled buffer no one
holds any more (tiercache/bufpool.py), never into one a block still lives in — held by RAM, the staging
area, the SSD write queue or a reader's view. Unit checks on the pool, then real streams through a cache
against a real HTTP S3 server, with views held across reuse, every byte compared, the SSD copy read back."""

from __future__ import annotations

import gc
import random

import numpy
import pytest

import tiercache
from tiercache.bufpool import BufferPool

pytestmark = pytest.mark.timeout(180)

KiB, MiB = 1 << 10, 1 << 20


def test_a_buffer_is_reused_only_once_nothing_references_it():
    pool = BufferPool(64 * KiB, limit=3, keep=1)
    assert pool.acquire(64 * KiB - 1) is None and pool.acquire(128 * KiB) is None  # only whole blocks
    a = pool.acquire(64 * KiB)
    view = memoryview(a)[:10].toreadonly()
    del a
    b = pool.acquire(64 * KiB)  # the view holds the first: a new one
    arr = numpy.frombuffer(memoryview(b), numpy.uint8)[5:]
    part = memoryview(b)[1:2]
    del b
    c = pool.acquire(64 * KiB)
    assert pool.stats()["created"] == 3 and pool.in_use() == 3
    assert pool.acquire(64 * KiB) is None and pool.stats()["refused"] == 1  # at the limit, all in use
    del view
    d = pool.acquire(64 * KiB)  # the first one, unreferenced now
    assert pool.stats()["reused"] == 1
    del part
    assert pool.in_use() == 3  # the numpy array still holds the second
    del arr, c, d
    gc.collect()
    assert pool.in_use() == 0
    e = pool.acquire(64 * KiB)
    assert e is not None and pool.stats()["buffers"] <= 2  # unused beyond keep were let go
    memoryview(e)[:3] = b"abc"
    f = pool.acquire(64 * KiB, grow=False)  # an unused one is still taken when the pool may not grow
    assert f is not None and f is not e
    assert pool.acquire(64 * KiB, grow=False) is None and pool.stats()["buffers"] == 2


@pytest.fixture
def two_blobs(bucket):
    rng = random.Random(21)
    blobs = {"a.bin": rng.randbytes(48 * MiB + 1000), "b.bin": rng.randbytes(48 * MiB + 5)}
    for key, blob in blobs.items():
        bucket.put(key, blob)
    return blobs


def stream(cache, key: str, size: int, step: int = MiB) -> bytes:
    out = bytearray()
    for offset in range(0, size, step):
        out += cache.read(key, offset, step)
    return bytes(out)


@pytest.mark.parametrize("ram", ["64M", "1G"])
def test_streams_through_reused_buffers_serve_every_byte_and_keep_held_views_intact(bucket, tmp_path, two_blobs,
                                                                                     ram):
    """A's views held by the caller (``view=True``) and A's blocks in the SSD write queue survive B's stream
    read into reused buffers; every byte of both is right, read again from RAM and from the SSD tier."""
    a, b = two_blobs["a.bin"], two_blobs["b.bin"]
    with tiercache.open(bucket.url, ram=ram, ssd=str(tmp_path / "cache"), ssd_size="512M", block_size="4M",
                        endpoint_url=bucket.server.endpoint, metadata_ttl="inf") as cache:
        held = [(offset, cache.read("a.bin", offset, MiB, view=True)) for offset in range(0, len(a), MiB)]
        held = held[4:6] + held[17:30:5]  # a few blocks' views kept (the rest let go)
        for offset, view in held:
            assert view == a[offset:offset + MiB]
        assert stream(cache, "b.bin", len(b)) == b
        assert stream(cache, "a.bin", len(a), 3 * MiB + 7) == a
        for offset, view in held:  # nothing the caller holds was overwritten
            assert view == a[offset:offset + MiB]
        pool = cache.fetcher.buffers.stats()
        if ram == "64M":  # RAM lets go of stream blocks as it goes: their buffers take later blocks
            assert pool["created"] > 0 and pool["reused"] > 0
        else:  # RAM keeps every block: no buffer would come back soon, none is made (a new bytes is cheaper)
            assert pool["created"] == 0
        del held, view
        cache.ssd.drain()
        cache.evict(tier="ram")
        fetched = cache.stats()["backend"]["bytes"]
        assert stream(cache, "a.bin", len(a)) == a and stream(cache, "b.bin", len(b)) == b
        assert cache.stats()["backend"]["bytes"] - fetched < len(a) + len(b)  # mostly from the SSD copy
        assert cache.stats()["ssd"]["crc_errors"] == 0
