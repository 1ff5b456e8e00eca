"""The SSD tier's read path keeps recent index entries in memory (issue 13: a hot block's read costs no LMDB
transaction). A cached entry is never staler than the index: a block evicted, discarded, rewritten or moved by
a region's compaction is never read at its old place, and a bad page is still a miss (the entry dropped, the
block refetched). Real SSD tier region files and a real LMDB index; the last test through a cache over a real
HTTP S3 server."""

from __future__ import annotations

import os
import random
import threading

import pytest

import tiercache
from tiercache.tiers.base import BlockId
from tiercache.tiers.meta import Meta
from tiercache.tiers.ssd import SsdTier
from tiercache.tiers.ssd_format import PAGE_SIZE
from tiercache.tiers.ssd_index import DB, SsdIndex, block_key

pytestmark = pytest.mark.timeout(120)

MiB = 1 << 20


def region_paths(directory) -> list[str]:
    return sorted(os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".region"))


def read_page(ssd: SsdTier, block: BlockId, page: int) -> bytes | None:
    out = memoryview(bytearray(PAGE_SIZE))
    return bytes(out) if ssd.read_into(block, page * PAGE_SIZE, out) else None


def committed(meta: Meta, ssd: SsdTier, block: BlockId) -> bytes | None:
    ssd.flush()
    return meta.get(DB, block_key(block))


@pytest.fixture
def meta(tmp_path):
    m = Meta(tmp_path / "meta")
    yield m
    m.close()


def test_a_cached_entry_follows_eviction_discard_and_rewrite(tmp_path, meta):
    ssd = SsdTier(tmp_path / "regions", 16 * MiB, meta, policy="lru")  # the block read is evicted first
    try:
        assert ssd.validated(30)
        block = BlockId("big", "e1", 0)
        first, second = random.Random(1).randbytes(8 * PAGE_SIZE), random.Random(2).randbytes(8 * PAGE_SIZE)
        assert ssd.put(block, first)
        ssd.flush()
        assert read_page(ssd, block, 3) == first[3 * PAGE_SIZE:4 * PAGE_SIZE]
        assert ssd.index.cached() >= 1  # the entry now comes from memory
        for i in range(2000):  # other blocks until the policy evicts it: a miss, not the old record
            ssd.put(BlockId(f"cold{i}", "e", 0), b"c" * 4 * PAGE_SIZE)
            if not ssd.contains(block):
                break
        assert not ssd.contains(block) and ssd.stats()["evictions"] > 0, ssd.stats()
        assert read_page(ssd, block, 3) is None
        assert ssd.get_range(block, 0, PAGE_SIZE) is None
        assert ssd.put(block, second)  # rewritten elsewhere, other bytes: those are read, never the first
        ssd.flush()
        assert read_page(ssd, block, 3) == second[3 * PAGE_SIZE:4 * PAGE_SIZE]
        for page in (0, 3, 7):
            assert read_page(ssd, block, page) == second[page * PAGE_SIZE:(page + 1) * PAGE_SIZE]
        assert ssd.get_range(block, PAGE_SIZE, 2 * PAGE_SIZE) == second[PAGE_SIZE:2 * PAGE_SIZE]
        assert ssd.discard(block) > 0  # discarded
        assert read_page(ssd, block, 0) is None and ssd.get(block) is None
        assert ssd.put(block, first)
        assert read_page(ssd, block, 7) == first[7 * PAGE_SIZE:]
        assert ssd.index.get(block_key(block)) == committed(meta, ssd, block)
        assert ssd.stats()["crc_errors"] == 0
    finally:
        ssd.close()


def test_a_hot_block_moved_by_compaction_is_read_at_its_new_place(tmp_path, meta):
    ssd = SsdTier(tmp_path / "regions", 8 * MiB, meta)  # 256 KiB regions: the churn below compacts them
    try:
        assert ssd.validated(30)
        hot, data = BlockId("hot", "e", 0), random.Random(3).randbytes(2 * PAGE_SIZE + 100)
        assert ssd.put(hot, data)
        places = {ssd.index.get(block_key(hot))}
        for i in range(3000):
            ssd.put(BlockId(f"cold{i}", "e", 0), b"c" * 4096)
            if i % 10 == 0:  # read often: the policy keeps it, and its entry stays in the read cache
                page = i % 3
                out = memoryview(bytearray(len(data[page * PAGE_SIZE:(page + 1) * PAGE_SIZE])))
                assert ssd.read_into(hot, page * PAGE_SIZE, out) and out == data[page * PAGE_SIZE:][:len(out)]
                places.add(ssd.index.get(block_key(hot)))
        assert ssd.stats()["relocated_bytes"] > 0 and len(places) > 1  # it did move, and was read after
        assert ssd.index.get(block_key(hot)) == committed(meta, ssd, hot)
        assert ssd.get(hot) == data and ssd.stats()["crc_errors"] == 0
    finally:
        ssd.close()


def test_a_bad_page_of_a_cached_entry_is_a_miss_and_the_entry_goes(tmp_path, meta):
    ssd = SsdTier(tmp_path / "regions", 64 * MiB, meta)
    try:
        block, data = BlockId("big", "e1", 0), random.Random(4).randbytes(16 * PAGE_SIZE)
        assert ssd.put(block, data)
        ssd.flush()
        for page in (2, 5):
            assert read_page(ssd, block, page) == data[page * PAGE_SIZE:(page + 1) * PAGE_SIZE]
        [path] = region_paths(tmp_path / "regions")
        with open(path, "r+b") as fh:  # page 5's last byte (the record's id comes first)
            fh.seek(os.path.getsize(path) - 10 * PAGE_SIZE - 1)
            byte = fh.read(1)
            fh.seek(-1, os.SEEK_CUR)
            fh.write(bytes([byte[0] ^ 0x5A]))
        assert read_page(ssd, block, 2) == data[2 * PAGE_SIZE:3 * PAGE_SIZE]  # an intact page still serves
        assert read_page(ssd, block, 5) is None
        assert ssd.stats()["crc_errors"] == 1 and not ssd.contains(block)
        assert ssd.get_range(block, 2 * PAGE_SIZE, 3 * PAGE_SIZE) is None  # the entry went, cached or not
        assert committed(meta, ssd, block) is None
    finally:
        ssd.close()


def test_the_read_cache_never_holds_a_value_older_than_the_index(tmp_path, meta):
    index = SsdIndex(meta, flush_interval=0.0005)  # the background flusher races the readers too
    keys = [bytes([i]) * 12 for i in range(8)]
    stop, seen = threading.Event(), []

    def reader() -> None:
        while not stop.is_set():
            for key in keys:
                value = index.get(key)
                if value is not None:
                    seen.append(value)

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for thread in readers:
        thread.start()
    stale = []
    try:
        for n in range(400):  # every key changed, committed, then read back while the readers read it
            for i, key in enumerate(keys):
                index.set(key, None if (n + i) % 7 == 0 else (n * 8 + i).to_bytes(4, "little"))
            index.flush()
            for key in keys:
                if index.get(key) != meta.get(DB, key):
                    stale.append((n, key))
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    assert stale == []
    assert seen and {int.from_bytes(v, "little") for v in seen} <= set(range(400 * 8))  # only values set
    for key in keys:  # read twice: the second time from the cache
        assert index.get(key) == index.get(key) == meta.get(DB, key)
    assert index.cached() == sum(1 for key in keys if meta.get(DB, key) is not None) > 0
    index.close()


def test_a_block_evicted_from_the_ssd_tier_is_fetched_again_through_the_cache(bucket, tmp_path):
    blob = random.Random(5).randbytes(8 * MiB)
    bucket.put("big.bin", blob)
    with tiercache.open(bucket.url, ram="4M", ssd=str(tmp_path / "cache"), ssd_size="256M", block_size=4 * MiB,
                        endpoint_url=bucket.server.endpoint, metadata_ttl="inf") as cache:
        assert cache.warm("big.bin", "ssd")["complete"]
        bucket.server.reset_log()
        for offset in (0, 5 * MiB, 64 << 10, 6 * MiB):
            assert bytes(cache.read("big.bin", offset, 64 << 10)) == blob[offset:offset + (64 << 10)]
        assert bucket.gets() == []  # the SSD tier served them
        cache.evict("big.bin", tier="all")
        for offset in (5 * MiB, 0):
            assert bytes(cache.read("big.bin", offset, 64 << 10)) == blob[offset:offset + (64 << 10)]
        assert len(bucket.gets()) >= 1  # refetched, not read at the evicted entries' places


def test_asking_whether_blocks_are_resident_leaves_the_read_cache_empty(tmp_path, meta):
    """A warm asks ``contains`` (and ``put`` looks) of every block: those looks must not fill the read cache
    (at a million blocks it would hold thousands of entries nobody reads); a read fills it."""
    ssd = SsdTier(tmp_path / "regions", 64 * MiB, meta)
    try:
        assert ssd.validated(30)
        blocks = [BlockId(f"f{i}", "e", 0) for i in range(200)]
        for block in blocks:
            assert not ssd.contains(block)  # a miss
            assert ssd.put(block, b"x" * PAGE_SIZE)
        ssd.flush()
        assert all(ssd.contains(block) for block in blocks)
        assert all(ssd.put(block, b"x" * PAGE_SIZE) for block in blocks)  # already resident
        assert ssd.index.cached() == 0
        assert read_page(ssd, blocks[7], 0) == b"x" * PAGE_SIZE
        assert ssd.index.cached() == 1
    finally:
        ssd.close()
