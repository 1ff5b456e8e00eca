"""A damaged cache is disposable, not fatal (issue 10 §5): bytes are bound to their block's identity, and a
corrupt cache index is moved aside. Real HTTP S3 server, real mounts; unit tests for the page format."""

from __future__ import annotations

import hashlib
import json
import os
import random

import pytest

from tiercache.tiers.base import BlockId
from tiercache.tiers.meta import Meta
from tiercache.tiers.ssd import SsdTier
from tiercache.tiers.ssd_format import PAGE_SIZE, Location, id_length, record_size
from tiercache.tiers.ssd_index import block_key, key_part

from .fusehelpers import needs_fuse

pytestmark = pytest.mark.timeout(90)

MiB = 1 << 20


def swap_index_entries(cache_dir, key_a: str, key_b: str) -> int:
    """Swap the SSD index entries of equal-size blocks of two objects (what a damaged index can do)."""
    meta = Meta(cache_dir / "meta")
    try:
        blocks = {}
        for key in (key_a, key_b):
            for digest, raw in meta.scan("ssd_index", key_part(key)):
                loc = Location.unpack(raw)
                with open(cache_dir / "regions" / f"{loc.region:08d}.region", "rb") as fh:
                    record = os.pread(fh.fileno(), loc.size, loc.offset)
                blocks[BlockId.decode(record[2:2 + id_length(record)])] = (digest, raw)
        swapped = 0
        for a, (key_of_a, raw_a) in blocks.items():
            if a.key != key_a:
                continue
            for b, (key_of_b, raw_b) in blocks.items():
                if b.key == key_b and b.index == a.index and raw_b[8:12] == raw_a[8:12]:  # same size
                    meta.put("ssd_index", key_of_a, raw_b)
                    meta.put("ssd_index", key_of_b, raw_a)
                    swapped += 1
        return swapped
    finally:
        meta.close()


def read(path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


# ---------------------------------------------------------------------------------------------- format


def test_an_entry_pointing_at_another_blocks_bytes_is_a_miss(tmp_path, meta):
    ssd = SsdTier(tmp_path / "regions", 10 << 20, meta)
    a, b = BlockId("a", "e1", 0), BlockId("b", "e1", 0)
    same_bytes = BlockId("a", "e2", 0)  # same key, another version: equal bytes must still not match
    ssd.put(a, b"A" * 5000)
    ssd.put(b, b"B" * 5000)
    ssd.put(same_bytes, b"A" * 5000)
    ssd.flush()
    raw_a, raw_b = meta.get("ssd_index", block_key(a)), meta.get("ssd_index", block_key(b))
    ssd.close()
    meta.put("ssd_index", block_key(a), raw_b)
    meta.put("ssd_index", block_key(b), raw_a)
    meta.put("ssd_index", block_key(same_bytes), raw_a)
    again = SsdTier(tmp_path / "regions", 10 << 20, meta)
    assert again.get(a) is None and again.get(b) is None and again.get(same_bytes) is None
    assert again.stats()["crc_errors"] == 3 and not again.contains(a)
    again.close()


def test_range_reads_check_only_their_pages_and_a_bad_page_is_a_miss(tmp_path, meta):
    ssd = SsdTier(tmp_path / "regions", 10 << 20, meta)
    block = BlockId("big", "e", 3)
    data = random.Random(1).randbytes(5 * PAGE_SIZE + 123)
    ssd.put(block, data)
    for start, end in [(0, 1), (PAGE_SIZE - 1, PAGE_SIZE + 1), (3 * PAGE_SIZE, len(data)), (17, 10**9)]:
        assert ssd.get_range(block, start, end) == data[start:end]
    assert ssd.get_range(block, len(data), len(data) + 5) == b""
    ssd.drain()
    [name] = [n for n in os.listdir(tmp_path / "regions") if n.endswith(".region")]
    with open(tmp_path / "regions" / name, "r+b") as fh:  # damage page 4 only
        fh.seek(record_size(block, 0) + 4 * PAGE_SIZE + 10)  # past the record's id
        fh.write(b"\xff")
    assert ssd.get_range(block, 0, 2 * PAGE_SIZE) == data[:2 * PAGE_SIZE]  # pages 0-1 are intact
    assert ssd.get_range(block, 4 * PAGE_SIZE, 4 * PAGE_SIZE + 1) is None  # never served
    assert not ssd.contains(block) and ssd.get(block) is None
    ssd.close()


def test_a_garbage_cache_index_is_moved_aside_but_a_journal_is_not(tmp_path):
    for name in ("cache", "journal"):
        m = Meta(tmp_path / name)
        m.put("objects", b"k", b"v")
        m.close()
        (tmp_path / name / "data.mdb").write_bytes(os.urandom(1 << 20))
    fresh = Meta(tmp_path / "cache", disposable=True)
    assert "not an LMDB file" in fresh.reset_reason and fresh.get("objects", b"k") is None
    fresh.put("objects", b"k2", b"v2")
    fresh.close()
    assert (tmp_path / "cache.corrupt" / "data.mdb").exists()
    import lmdb

    with pytest.raises(lmdb.Error):
        Meta(tmp_path / "journal")


# ---------------------------------------------------------------------------------------------- mounts


@pytest.fixture
def pair(bucket):
    rng = random.Random(4)
    data = {"d/a.bin": rng.randbytes(3 * MiB + 100), "d/b.bin": rng.randbytes(3 * MiB + 100)}
    for key, value in data.items():
        bucket.put(key, value)
    return data


@needs_fuse
@pytest.mark.fuse
def test_swapped_ssd_index_entries_serve_the_right_bytes_after_remount(bucket, pair, mounter):
    opts = ("--block-size", "1M")
    m = mounter.mount(bucket.url, *opts, name="first")
    assert all(read(m.path / k) == v for k, v in pair.items())
    assert m.cli("unmount").returncode == 0
    assert swap_index_entries(m.cache_dir, "d/a.bin", "d/b.bin") == 4
    bucket.server.reset_log()
    again = mounter.mount(bucket.url, *opts, cache_dir=m.cache_dir, write_dir=m.write_dir, name="second")
    for key, value in pair.items():  # before: 3 MiB of the other file, no error
        assert hashlib.sha256(read(again.path / key)).hexdigest() == hashlib.sha256(value).hexdigest(), key
    assert {r.key for r in bucket.gets()} == set(pair)  # the swapped blocks were refetched
    stats = json.loads(again.cli("stats", "--json").stdout)
    assert stats["cache"]["ssd"]["crc_errors"] >= 8  # each swapped entry failed its check
    assert all(read(again.path / k) == v for k, v in pair.items())


@needs_fuse
@pytest.mark.fuse
def test_mount_starts_over_a_garbage_cache_index(bucket, pair, mounter):
    m = mounter.mount(bucket.url, "--block-size", "1M", name="first")
    assert all(read(m.path / k) == v for k, v in pair.items())
    assert m.cli("unmount").returncode == 0
    data_mdb = m.cache_dir / "meta" / "data.mdb"
    data_mdb.write_bytes(os.urandom(data_mdb.stat().st_size))
    # before: the mount refused to start ("not an LMDB file") until the cache dir was deleted by hand
    again = mounter.mount(bucket.url, "--block-size", "1M", cache_dir=m.cache_dir, write_dir=m.write_dir,
                          name="second")
    assert sorted(os.listdir(again.path / "d")) == ["a.bin", "b.bin"]
    assert all(read(again.path / k) == v for k, v in pair.items())
    assert "damaged" in again.log and (m.cache_dir / "meta.corrupt").is_dir()
    assert again.cli("unmount").returncode == 0
    third = mounter.mount(bucket.url, "--block-size", "1M", cache_dir=m.cache_dir, write_dir=m.write_dir,
                          name="third")
    bucket.server.reset_log()
    assert all(read(third.path / k) == v for k, v in pair.items())
    assert bucket.gets() == []  # the rebuilt cache works as a cache again
