"""Keys LMDB cannot hold as they are (over 511 bytes; S3 allows 1,024) read, list and cache like any other.

Issue 10 §4: the key format (tiercache.tiers.meta), the library over the real HTTP S3 server, a real mount.
"""

from __future__ import annotations

import os
import random

import pytest

import tiercache
from tiercache.tiers.base import BlockId, key_prefix
from tiercache.tiers.meta import LONG_KEY_LEN, RAW_KEY_MAX
from tiercache.tiers.ssd import SsdTier

from .fusehelpers import needs_fuse

pytestmark = pytest.mark.timeout(90)


def long_key(total: int, top: str = "deep", tail: str = "x") -> str:
    """A key of exactly ``total`` bytes below ``top``/, in 250-byte segments (POSIX names stop at 255)."""
    parts = [top]
    while len("/".join(parts)) + 1 + 250 < total:
        parts.append(chr(ord("a") + len(parts)) * 250)
    rest = total - len("/".join(parts)) - 1
    parts.append((tail * rest)[:rest])
    key = "/".join(parts)
    assert len(key.encode()) == total
    return key


# ---------------------------------------------------------------------------------------------- format


def test_every_key_length_round_trips_and_scans_in_key_order(meta):
    rng = random.Random(5)
    base = b"p/" + b"q" * (RAW_KEY_MAX - 10)
    keys = {base[: rng.randrange(3, len(base))] + rng.randbytes(rng.randrange(0, 1300)) for _ in range(300)}
    keys |= {base + b"/" + bytes([c]) * n for c in b"abc" for n in (1, 300, 900)}
    keys |= {b"k" * n for n in (RAW_KEY_MAX - 1, RAW_KEY_MAX, RAW_KEY_MAX + 1, 511, 512, 1024, 4000)}
    items = {k: b"v:" + k[-20:] for k in keys}
    meta.put_many("objects", list(items.items()))
    assert all(meta.get("objects", k) == v for k, v in items.items())
    assert meta.scan("objects") == sorted(items.items())
    for prefix in (b"", b"p/", base[:RAW_KEY_MAX], base + b"/a", base + b"/b" + b"b" * 400, b"k" * 512):
        want = sorted((k, v) for k, v in items.items() if k.startswith(prefix))
        assert meta.scan("objects", prefix) == want, len(prefix)
    with meta.write() as txn:
        assert txn.get(b"k" * 1024, meta.db("objects")) == items[b"k" * 1024]
        assert txn.delete(b"k" * 1024, meta.db("objects"))
        assert not txn.delete(b"k" * 1025, meta.db("objects"))
    assert meta.get("objects", b"k" * 1024) is None and meta.get("objects", b"k" * 4000) is not None
    assert meta.count("objects") == len(items) - 1
    with meta.env.begin(db=meta.db("objects")) as txn:  # what LMDB holds: never over its limit
        stored = [bytes(k) for k, _ in txn.cursor()]
    assert max(map(len, stored)) == LONG_KEY_LEN <= meta.env.max_key_size()
    assert all(len(k) <= RAW_KEY_MAX or len(k) == LONG_KEY_LEN for k in stored)


def test_ssd_index_holds_blocks_of_a_1024_byte_key_across_restart(tmp_path, meta):
    key = long_key(1024)
    blocks = {BlockId(key, "etag-" + "0" * 32, i): os.urandom(3000 + i) for i in range(5)}
    other = BlockId(key[:-1] + "y", "e", 0)
    ssd = SsdTier(tmp_path / "regions", 10 << 20, meta)
    for block, data in blocks.items():
        assert ssd.put(block, data)
    assert ssd.put(other, b"other")
    ssd.close()  # before: the index flush failed for good (BadValsizeError) and close() raised
    again = SsdTier(tmp_path / "regions", 10 << 20, meta)
    assert all(again.get(b) == d for b, d in blocks.items())
    assert sorted(again.blocks(key_prefix(key))) == sorted(blocks)
    assert again.discard(other) == 5 and again.blocks(key_prefix(key[:-1] + "y")) == []
    again.close()


# ---------------------------------------------------------------------------------------------- library


@pytest.fixture
def long_objects(bucket):
    rng = random.Random(11)
    longest = long_key(1024)
    data = {
        longest: rng.randbytes(300_000),
        long_key(520, tail="m"): rng.randbytes(1000),
        long_key(470, tail="n"): rng.randbytes(70_000),
        "deep/short.bin": b"short",
    }
    sibling_dir = longest.rpartition("/")[0]
    data[f"{sibling_dir}/plain.bin"] = b"plain neighbour"
    for key, value in data.items():
        bucket.put(key, value)
    return data


def test_library_reads_lists_caches_and_pins_long_keys(bucket, long_objects, tmp_path):
    opts = {"ram": "1M", "ssd": str(tmp_path / "cache"), "ssd_size": "64M", "block_size": 64 << 10,
            "endpoint_url": bucket.server.endpoint}
    longest = max(long_objects, key=len)
    parent, _, name = longest.rpartition("/")
    cache = tiercache.open(bucket.url, **opts)
    try:
        assert sorted(cache.listdir(parent)) == sorted([name, "plain.bin"])
        for key, value in long_objects.items():
            assert cache.stat(key).size == len(value)
            assert bytes(cache.read(key)) == value
        cache.pin(parent)
        assert parent in cache.pins()
    finally:
        cache.close()  # before: raised BadValsizeError from the SSD index flush
    bucket.server.reset_log()
    cache = tiercache.open(bucket.url, **opts)
    try:
        assert parent in cache.pins()
        assert all(bytes(cache.read(k)) == v for k, v in long_objects.items())
        assert bucket.gets() == []  # every block came back from the SSD tier
        assert cache.resident(longest, "ssd") == len(long_objects[longest])
        cache.unpin(parent)
        assert parent not in cache.pins()
        assert cache.evict(parent, "ssd") > 0 and cache.resident(longest, "ssd") == 0
    finally:
        cache.close()


# ---------------------------------------------------------------------------------------------- mount


@needs_fuse
@pytest.mark.fuse
def test_mount_lists_and_reads_a_directory_holding_a_1024_byte_key(bucket, long_objects, mounter):
    m = mounter.mount(bucket.url, "--block-size", "64K")
    longest = max(long_objects, key=len)
    parent = longest.rpartition("/")[0]
    seen = {os.path.relpath(os.path.join(root, f), m.path) for root, _d, files in os.walk(m.path) for f in files}
    assert seen == set(long_objects)
    assert sorted(os.listdir(m.path / parent)) == sorted([longest.rpartition("/")[2], "plain.bin"])
    for key, value in long_objects.items():
        with open(m.path / key, "rb") as fh:
            assert fh.read() == value, len(key)
    made = long_key(1000, top="made", tail="z")
    os.makedirs(m.path / made)  # the write journal records it under "dir:" + path
    assert os.path.isdir(m.path / made)
    stats = m.cli("stats", "--json")
    assert stats.returncode == 0, stats.stderr
    assert m.cli("unmount").returncode == 0
    assert "BadValsize" not in m.log and "Traceback" not in m.log
    again = mounter.mount(bucket.url, "--block-size", "64K", cache_dir=m.cache_dir, write_dir=m.write_dir,
                          name="again")
    assert os.path.isdir(again.path / made)
    with open(again.path / longest, "rb") as fh:
        assert fh.read() == long_objects[longest]
