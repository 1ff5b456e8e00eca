"""Write tier + TieredCache: uploads read back warm; copy-on-write and renames through it."""

from __future__ import annotations

import os

import pytest

from tiercache.cache import TieredCache
from tiercache.config import CacheConfig
from tiercache.errors import NotFound
from tiercache.store.s3 import S3Store
from tiercache.writeback.front import WriteTier


@pytest.fixture
def cached(bucket, s3_server, tmp_path):
    """(cache, tier) over the test bucket; both closed at teardown."""
    store = S3Store(bucket.url, endpoint_url=s3_server.endpoint)
    config = CacheConfig.build(bucket.url, ram="64M", ssd=tmp_path / "cache", ssd_size=0,
                               endpoint_url=s3_server.endpoint, metadata_ttl=0)
    cache = TieredCache(config, store=store)
    tier = WriteTier(store, tmp_path / "wd", cache=cache)
    yield cache, tier
    tier.close(timeout=30)
    cache.close()


def test_uploaded_file_reads_back_warm(cached, bucket):
    cache, tier = cached
    data = os.urandom(5 * (1 << 20) + 3)
    fh = tier.create("out/model.bin")
    tier.write(fh, data, 0)
    tier.release(fh)
    tier.flush_all(timeout=60)
    assert bucket.get("out/model.bin") == data
    gets = len(bucket.gets("out/model.bin"))
    assert cache.stat("out/model.bin").size == len(data)
    assert cache.read("out/model.bin") == data
    assert "model.bin" in cache.listdir("out")
    assert len(bucket.gets("out/model.bin")) == gets, "read after upload went to the store"


def test_overwrite_through_cache_serves_new_bytes(cached, bucket):
    cache, tier = cached
    old = os.urandom(300_000)
    bucket.put("cow/x", old)
    assert cache.read("cow/x") == old  # cached now
    fh = tier.open("cow/x")
    tier.write(fh, b"PATCH", 1000)
    tier.release(fh)
    new = old[:1000] + b"PATCH" + old[1005:]
    # None once the uploader has already finished: the change is then in the bucket, checked below.
    assert tier.read_pending("cow/x", 0, len(new)) in (new, None)
    tier.flush_all(timeout=60)
    assert bucket.get("cow/x") == new
    assert cache.read("cow/x") == new


def test_rename_and_unlink_update_the_cache(cached, bucket):
    cache, tier = cached
    bucket.put("r/a", b"AAA")
    bucket.put("r/z", b"ZZZ")
    assert cache.read("r/a") == b"AAA" and cache.read("r/z") == b"ZZZ"
    tier.rename("r/a", "r/b")
    tier.unlink("r/z")
    tier.flush_all(timeout=60)
    assert cache.read("r/b") == b"AAA"
    for gone in ("r/a", "r/z"):
        with pytest.raises(NotFound):
            cache.stat(gone)
    assert cache.listdir("r") == ["b"]
