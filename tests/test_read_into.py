"""``TieredCache.read(..., into=buf)``, the zero-allocation read (issue 13, cold streaming in library mode): the
bytes land in the caller's buffer, at most its length and ``size``, short at EOF, 0 past it; read-only or
non-contiguous buffers are refused before anything is read; a cold stream read this way serves exactly the
object's bytes, each block checked, and keeps its SSD copy. Real HTTP S3 server, real tiers."""

from __future__ import annotations

import random

import numpy
import pytest

import tiercache
from tiercache.errors import ConfigError

pytestmark = pytest.mark.timeout(120)

KiB, MiB = 1 << 10, 1 << 20


@pytest.fixture
def blob_cache(bucket, tmp_path):
    blob = random.Random(11).randbytes(9 * MiB + 123)
    bucket.put("big.bin", blob)
    with tiercache.open(bucket.url, ram="64M", ssd=str(tmp_path / "cache"), ssd_size="256M", block_size="1M",
                        endpoint_url=bucket.server.endpoint, metadata_ttl="inf") as cache:
        yield cache, blob


def test_read_into_fills_the_buffer_and_returns_the_count(blob_cache):
    cache, blob = blob_cache
    buf = bytearray(3 * MiB)
    for offset in (0, MiB - 5, 2 * MiB + 7):  # within a block, and across block boundaries
        assert cache.read("big.bin", offset, into=buf) == len(buf)
        assert buf == blob[offset:offset + len(buf)]
    view = memoryview(buf)[:100 * KiB]
    assert cache.read("big.bin", 5 * MiB, 10 * KiB, into=view) == 10 * KiB  # size below the buffer's length
    assert view[:10 * KiB] == blob[5 * MiB:5 * MiB + 10 * KiB]
    arr = numpy.zeros((4, 1024), numpy.uint8)  # any contiguous buffer, whatever its shape
    assert cache.read("big.bin", 8 * MiB, into=arr) == 4096 and arr.tobytes() == blob[8 * MiB:8 * MiB + 4096]


def test_read_into_is_short_at_eof_and_zero_past_it(blob_cache):
    cache, blob = blob_cache
    buf = bytearray(b"\xaa" * (2 * MiB))
    tail = len(blob) - (8 * MiB + 50)
    assert cache.read("big.bin", 8 * MiB + 50, into=buf) == tail
    assert buf[:tail] == blob[8 * MiB + 50:] and buf[tail:] == b"\xaa" * (len(buf) - tail)  # the rest untouched
    assert cache.read("big.bin", len(blob), into=buf) == 0
    assert cache.read("big.bin", len(blob) + MiB, into=buf) == 0
    assert cache.read("big.bin", 0, 0, into=buf) == 0


def test_read_into_refuses_buffers_it_cannot_write(blob_cache):
    cache, _blob = blob_cache
    reads = cache.stats()["reads"]
    with pytest.raises(ConfigError):
        cache.read("big.bin", 0, into=b"\0" * 100)
    with pytest.raises(ConfigError):
        cache.read("big.bin", 0, into=memoryview(bytearray(100)).toreadonly())
    with pytest.raises(TypeError):
        cache.read("big.bin", 0, into=memoryview(bytearray(100))[::2])
    with pytest.raises(ConfigError):
        cache.read("big.bin", -1, into=bytearray(10))
    assert cache.stats()["reads"] == reads  # refused before anything was read


def test_a_cold_stream_read_into_one_buffer_serves_the_object_and_keeps_the_ssd_copy(blob_cache):
    cache, blob = blob_cache
    buf = memoryview(bytearray(MiB))
    out = bytearray()
    offset = 0
    while True:
        n = cache.read("big.bin", offset, into=buf)
        if n == 0:
            break
        out += buf[:n]
        offset += n
    assert out == blob
    stats = cache.stats()
    assert stats["bytes_read"] == len(blob)
    assert stats["prefetcher"]["readahead_read_bytes"] > 0  # the stream was read ahead
    cache.ssd.drain()
    assert cache.stats()["ssd"]["blocks"] == 10  # every block kept on the SSD tier
    buf2 = bytearray(len(blob))
    cache.evict("big.bin", tier="ram")
    fetched = cache.stats()["backend"]["bytes"]
    assert cache.read("big.bin", 0, into=buf2) == len(blob) and buf2 == blob  # from the SSD copy, checked
    assert cache.stats()["backend"]["bytes"] == fetched
