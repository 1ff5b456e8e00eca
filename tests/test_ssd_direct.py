"""The direct SSD read path (issue 13, warm streaming): a block RAM lacks and the SSD tier holds goes from its
region file straight into the reader's buffer (through a mount: libfuse's reply buffer), only the pages read
checked; read-ahead only advises such blocks into the kernel's page cache (nothing staged in Python). A bad
page is a miss, refetched, never served. Real SSD tier files, real mounts, a real HTTP S3 server."""

from __future__ import annotations

import json
import os
import random

import pytest

import tiercache
from tiercache.tiers.base import BlockId
from tiercache.tiers.meta import Meta
from tiercache.tiers.ssd import SsdTier
from tiercache.tiers.ssd_format import PAGE_SIZE

from .fusehelpers import needs_fuse

pytestmark = pytest.mark.timeout(120)

MiB = 1 << 20
BS = 4 * MiB


def region_paths(directory) -> list[str]:
    return sorted(os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".region"))


def flip(path: str, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


# ---------------------------------------------------------------------------------------------- the SSD tier


@pytest.fixture
def tier(tmp_path):
    meta = Meta(tmp_path / "meta")
    ssd = SsdTier(tmp_path / "regions", 64 * MiB, meta)
    yield ssd, tmp_path / "regions"
    ssd.close()
    meta.close()


def test_read_into_reads_just_the_pages_of_a_range(tier):
    ssd, _ = tier
    block, data = BlockId("big", "e1", 0), random.Random(1).randbytes(BS - 1000)
    assert ssd.put(block, data)
    for start, length in [(0, BS - 1000), (0, PAGE_SIZE), (3 * PAGE_SIZE, 16 * PAGE_SIZE),  # whole pages
                          (100, 10), (PAGE_SIZE - 5, 10), (5 * PAGE_SIZE + 7, 3 * PAGE_SIZE),  # inside pages
                          (BS - 1000 - 300, 300)]:  # the block's short last page
        out = memoryview(bytearray(length))
        served = ssd.stats()["bytes_served"]
        assert ssd.read_into(block, start, out)
        assert out == data[start:start + length]
        assert ssd.stats()["bytes_served"] - served == length
    assert not ssd.read_into(block, BS - 1000 - 10, memoryview(bytearray(20)))  # past the block's end
    assert not ssd.read_into(BlockId("big", "other-etag", 0), 0, memoryview(bytearray(10)))  # another version


def test_read_into_a_bad_page_is_a_miss_and_drops_the_entry(tier):
    ssd, regions = tier
    block, data = BlockId("big", "e1", 0), random.Random(2).randbytes(BS)
    assert ssd.put(block, data)
    ssd.flush()
    [path] = region_paths(regions)
    flip(path, 5 * PAGE_SIZE + 9)
    out = memoryview(bytearray(PAGE_SIZE))
    assert ssd.read_into(block, 2 * PAGE_SIZE, out) and out == data[2 * PAGE_SIZE:3 * PAGE_SIZE]  # intact page
    assert not ssd.read_into(block, 4 * PAGE_SIZE, memoryview(bytearray(2 * PAGE_SIZE)))
    assert ssd.stats()["crc_errors"] == 1 and not ssd.contains(block)
    assert not ssd.read_into(block, 0, memoryview(bytearray(10)))


def test_advise_only_for_blocks_in_region_files(tier):
    ssd, _ = tier
    placed = BlockId("p", "e1", 0)
    assert not ssd.advise(placed)  # not on the SSD: read-ahead fetches and stages it
    assert ssd.put(placed, random.Random(3).randbytes(3 * PAGE_SIZE)) and ssd.advise(placed)


# ---------------------------------------------------------------------------------------------- through a mount


@pytest.fixture
def warmed(bucket, tmp_path):
    """A 16 MiB object whose blocks the SSD tier of a closed cache dir holds."""
    blob = random.Random(8).randbytes(16 * MiB)
    bucket.put("big.bin", blob)
    cache_dir = tmp_path / "cache"
    with tiercache.open(bucket.url, ram="8M", ssd=str(cache_dir), ssd_size="256M", block_size=BS,
                        endpoint_url=bucket.server.endpoint, metadata_ttl="inf") as cache:
        assert cache.warm("big.bin", "ssd")["complete"]
    bucket.server.reset_log()
    return blob, cache_dir


def mount_warmed(mounter, bucket, cache_dir, ttl: str):
    return mounter.mount(bucket.url, "--ram", "8M", "--mode", "readonly", "--metadata-ttl", ttl,
                         endpoint=bucket.server.endpoint, cache_dir=cache_dir)


def read_all(path, chunk: int = MiB) -> bytes:
    parts = []
    with open(path, "rb", buffering=0) as fh:
        while data := fh.read(chunk):
            parts.append(data)
    return b"".join(parts)


def stats(m) -> dict:
    proc = m.cli("stats", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@needs_fuse
@pytest.mark.fuse
@pytest.mark.parametrize("ttl", ["inf", "600"])  # immutable data (no OPEN), and read handles pinning a version
def test_a_warm_stream_through_a_mount_reads_the_ssd_pages_into_the_replies(bucket, mounter, warmed, ttl):
    blob, cache_dir = warmed
    m = mount_warmed(mounter, bucket, cache_dir, ttl)
    assert read_all(m.path / "big.bin") == blob
    st = stats(m)
    assert bucket.gets() == []
    assert st["mount"]["fuse_ops"]["read_into"] >= 16
    # before: read-ahead read each SSD block whole into its staging area, and readers admitted it to RAM
    assert st["cache"]["prefetcher"]["readahead_bytes"] == 0
    assert st["cache"]["ram"]["used"] <= 2 * BS and st["cache"]["ssd"]["crc_errors"] == 0


@needs_fuse
@pytest.mark.fuse
def test_a_bad_page_on_the_direct_path_is_refetched_not_served(bucket, mounter, warmed):
    blob, cache_dir = warmed
    for path in region_paths(cache_dir / "regions"):  # one flipped byte in page 5 of every block
        size = os.path.getsize(path)
        for base in range(0, size, BS):  # each record leads with its block's id (well under 1 KiB)
            if base + 5 * PAGE_SIZE < size:
                flip(path, base + 5 * PAGE_SIZE + PAGE_SIZE // 2)
    m = mount_warmed(mounter, bucket, cache_dir, "inf")
    fd = os.open(m.path / "big.bin", os.O_RDONLY)
    try:
        assert os.pread(fd, PAGE_SIZE, 2 * PAGE_SIZE) == blob[2 * PAGE_SIZE:3 * PAGE_SIZE]
        assert bucket.gets() == []  # an intact page came from the SSD tier
        assert os.pread(fd, PAGE_SIZE, 5 * PAGE_SIZE) == blob[5 * PAGE_SIZE:6 * PAGE_SIZE]
        assert len(bucket.gets()) == 1
    finally:
        os.close(fd)
    assert read_all(m.path / "big.bin") == blob
    st = stats(m)
    # each block's bad page failed its check once and the block was fetched again (a refetched block RAM let
    # go of before its SSD copy was written may be fetched once more)
    assert st["cache"]["ssd"]["crc_errors"] == 4 and 4 <= len(bucket.gets()) <= 8
    assert st["mount"]["fuse_ops"]["read_into"] > 0
