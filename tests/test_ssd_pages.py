"""Sub-block reads (issue 13): a scattered read of a large block reads and checks only the SSD pages it
needs and pulls nothing whole into RAM; a bad page is a miss, refetched, never served. Real HTTP S3 server."""

from __future__ import annotations

import os
import random

import pytest

import tiercache
from tiercache.tiers.ssd_format import PAGE_SIZE

pytestmark = pytest.mark.timeout(90)

MiB = 1 << 20
BS = 4 * MiB


@pytest.fixture
def warm_cache_dir(bucket, tmp_path):
    """A 16 MiB object whose blocks the SSD tier of a closed cache dir holds."""
    blob = random.Random(8).randbytes(16 * MiB)
    bucket.put("big.bin", blob)
    opts = {"ram": "8M", "ssd": str(tmp_path / "cache"), "ssd_size": "256M", "block_size": BS,
            "endpoint_url": bucket.server.endpoint, "metadata_ttl": "inf"}
    with tiercache.open(bucket.url, **opts) as cache:
        # warm writes the SSD tier before it returns (a reader's write-through may drop under pressure)
        assert cache.warm("big.bin", "ssd")["complete"]
        assert bytes(cache.read("big.bin")) == blob
    bucket.server.reset_log()
    return blob, opts


def test_scattered_reads_read_their_pages_not_whole_blocks(bucket, warm_cache_dir):
    blob, opts = warm_cache_dir
    rng = random.Random(3)
    offsets = [rng.randrange(len(blob) // PAGE_SIZE) * PAGE_SIZE for _ in range(200)]
    with tiercache.open(bucket.url, **opts) as cache:
        for off in offsets:
            assert bytes(cache.read("big.bin", off, PAGE_SIZE)) == blob[off:off + PAGE_SIZE]
        ssd, ram = cache.stats()["ssd"], cache.stats()["ram"]
        # before: every read pulled its whole 4 MiB block from the SSD tier into RAM (and read ahead one more)
        assert ssd["bytes_served"] <= 200 * PAGE_SIZE + 8 * BS
        assert ram["used"] <= 2 * BS and bucket.gets() == []
        for off in range(8 * MiB, 10 * MiB, 128 << 10):  # a sequential reader earns its block a place in RAM
            assert bytes(cache.read("big.bin", off, 128 << 10)) == blob[off:off + (128 << 10)]
        assert cache.resident("big.bin", "ram") >= BS


def test_a_bad_page_is_refetched_and_never_served(bucket, warm_cache_dir):
    blob, opts = warm_cache_dir
    regions = os.path.join(opts["ssd"], "regions")
    for name in [n for n in os.listdir(regions) if n.endswith(".region")]:  # flip a byte in each block's page 5
        with open(os.path.join(regions, name), "r+b") as fh:
            size = fh.seek(0, 2)
            for base in range(0, size, BS):  # each record leads with its block's id (well under 1 KiB)
                if base + 5 * PAGE_SIZE < size:
                    fh.seek(base + 5 * PAGE_SIZE + PAGE_SIZE // 2)
                    byte = fh.read(1)
                    fh.seek(base + 5 * PAGE_SIZE + PAGE_SIZE // 2)
                    fh.write(bytes([byte[0] ^ 0xFF]))
    with tiercache.open(bucket.url, **opts) as cache:
        assert bytes(cache.read("big.bin", 2 * PAGE_SIZE, PAGE_SIZE)) == blob[2 * PAGE_SIZE:3 * PAGE_SIZE]
        assert bucket.gets() == []  # an intact page is served from the SSD tier
        assert bytes(cache.read("big.bin", 5 * PAGE_SIZE, PAGE_SIZE)) == blob[5 * PAGE_SIZE:6 * PAGE_SIZE]
        assert len(bucket.gets()) == 1 and cache.stats()["ssd"]["crc_errors"] == 1
