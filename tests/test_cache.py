"""TieredCache end to end against a real HTTP S3 server (moto) and local directories."""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import tiercache
from tiercache.errors import (
    BucketNotFound,
    CacheDirLocked,
    ConfigError,
    EndpointUnreachable,
    IsADirectory,
    NotFound,
    TiercacheError,
)
from tiercache.store.base import ObjectInfo

pytestmark = pytest.mark.timeout(60)

BS = 64 << 10


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def open_s3(bucket, tmp_path, **options):
    opts = {"ram": "8M", "ssd": str(tmp_path / "cache"), "ssd_size": "32M", "block_size": BS,
            "endpoint_url": bucket.server.endpoint, "threads": 8}
    opts.update(options)
    return tiercache.open(bucket.url, **opts)


def region_files(cache_dir) -> list[str]:
    regions = os.path.join(cache_dir, "regions")
    return sorted(os.path.join(regions, n) for n in os.listdir(regions) if n.endswith(".region"))


@pytest.fixture
def objects(bucket):
    """Small, block-aligned and unaligned large objects in the bucket."""
    rng = random.Random(3)
    data = {
        "small/a.bin": rng.randbytes(1000),
        "small/b.bin": rng.randbytes(BS - 1),
        "empty.bin": b"",
        "large/aligned.bin": rng.randbytes(4 * BS),
        "large/unaligned.bin": rng.randbytes(5 * BS + 12345),
    }
    for key, blob in data.items():
        bucket.put(key, blob)
    return data


def test_every_byte_read_equals_the_source(bucket, objects, tmp_path):
    with open_s3(bucket, tmp_path) as cache:
        for key, blob in objects.items():
            assert sha(cache.read(key)) == sha(blob), key
        rng = random.Random(5)
        for _ in range(60):
            key = rng.choice(sorted(objects))
            size = len(objects[key])
            off = rng.randrange(size + 10)
            n = rng.choice([None, 0, 1, rng.randrange(1, 3 * BS)])
            want = objects[key][off:] if n is None else objects[key][off:off + n]
            assert cache.read(key, off, n) == want, (key, off, n)
        gets = len(bucket.gets())
        assert gets == 1 + 1 + 4 + 6  # one GET per block, never a second one (the empty object needs none)
        assert cache.read("large/unaligned.bin", len(objects["large/unaligned.bin"]) - 5, 100) == \
            objects["large/unaligned.bin"][-5:]
        stats = cache.stats()
        json.dumps(stats)
        assert stats["backend"]["gets"] == gets and stats["ram"]["hits"] > 0
        assert set(stats["ram"]) >= {"used", "capacity", "hits", "misses", "hit_rate", "bytes_served"}
        assert set(stats["ssd"]) >= {"used", "capacity", "hits", "misses", "hit_rate", "bytes_served"}


def test_listdir_stat_exists(bucket, objects, tmp_path):
    with open_s3(bucket, tmp_path) as cache:
        assert cache.listdir() == ["empty.bin", "large", "small"]
        assert cache.listdir("large") == ["aligned.bin", "unaligned.bin"]
        entry = cache.stat("large/unaligned.bin")
        assert entry.size == 5 * BS + 12345 and not entry.is_dir and entry.name == "unaligned.bin"
        assert entry.etag
        assert cache.stat("small").is_dir and cache.exists("small/a.bin") and not cache.exists("small/zz")
        with pytest.raises(NotFound, match="zz"):
            cache.read("small/zz")
        with pytest.raises(IsADirectory):
            cache.read("small")


def test_single_flight_one_get_per_block(bucket, tmp_path):
    blob = os.urandom(6 * BS + 7)
    bucket.put("shared.bin", blob)
    with open_s3(bucket, tmp_path) as cache:
        cache.stat("shared.bin")
        barrier = threading.Barrier(8)

        def reader(_i: int) -> str:
            barrier.wait()
            return sha(cache.read("shared.bin"))

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(reader, range(8))) == {sha(blob)}
        assert len(bucket.gets("shared.bin")) == 7
        assert cache.stats()["backend"]["gets"] == 7


def test_fetch_errors_reach_every_waiter_and_do_not_poison(bucket, tmp_path):
    blob = os.urandom(BS)
    bucket.put("flaky.bin", blob)
    with open_s3(bucket, tmp_path) as cache:
        cache.stat("flaky.bin")
        real = cache.store.get_range
        gate = threading.Event()
        calls = []

        def failing(key, start, end, etag=None):
            calls.append(key)
            gate.wait(5)
            raise tiercache.StoreError("boom")

        cache.store.get_range = failing
        results = []

        def reader() -> None:
            try:
                cache.read("flaky.bin")
                results.append("ok")
            except tiercache.StoreError as exc:
                results.append(str(exc))

        threads = [threading.Thread(target=reader) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.2)
        gate.set()
        for t in threads:
            t.join()
        assert results == ["boom"] * 4 and len(calls) == 1
        cache.store.get_range = real
        assert cache.read("flaky.bin") == blob


def test_restart_finds_ssd_blocks_without_backend_gets(bucket, objects, tmp_path):
    with open_s3(bucket, tmp_path) as cache:
        for key in objects:
            cache.read(key)
    bucket.server.reset_log()
    with open_s3(bucket, tmp_path, ram="1M") as cache:
        for key, blob in objects.items():
            assert cache.read(key) == blob
        assert cache.stats()["ssd"]["hits"] > 0
    assert bucket.gets() == []


def test_crc_corruption_is_detected_and_refetched(bucket, tmp_path):
    blob = os.urandom(3000)
    bucket.put("c.bin", blob)
    with open_s3(bucket, tmp_path) as cache:
        cache.read("c.bin")
    [region] = region_files(tmp_path / "cache")
    with open(region, "r+b") as f:
        f.seek(1234)
        byte = f.read(1)
        f.seek(1234)
        f.write(bytes([byte[0] ^ 0xFF]))
    bucket.server.reset_log()
    with open_s3(bucket, tmp_path) as cache:
        assert cache.read("c.bin") == blob
        assert cache.stats()["ssd"]["crc_errors"] == 1
        assert len(bucket.gets("c.bin")) == 1
        assert cache.read("c.bin") == blob  # now from RAM
    with open_s3(bucket, tmp_path, ram=0) as cache:
        assert cache.read("c.bin") == blob  # the refetched copy went to SSD
    assert len(bucket.gets("c.bin")) == 1


def test_ssd_only_multi_block_reads_land_in_one_buffer_and_survive_corruption(bucket, tmp_path):
    blob = os.urandom(6 * BS + 777)
    bucket.put("m.bin", blob)
    with open_s3(bucket, tmp_path, ram=0) as cache:
        assert cache.warm("m.bin", tier="ssd")["complete"]
    [region] = region_files(tmp_path / "cache")
    with open(region, "r+b") as f:  # flip a byte inside one whole block of the object (records lead with ids)
        f.seek(3 * BS + BS // 2)
        byte = f.read(1)
        f.seek(3 * BS + BS // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    bucket.server.reset_log()
    with open_s3(bucket, tmp_path, ram=0) as cache:
        whole = cache.read("m.bin")
        assert isinstance(whole, memoryview) and whole == blob
        assert cache.stats()["ssd"]["crc_errors"] == 1
        assert len(bucket.gets("m.bin")) == 1  # only the corrupt block was fetched again
        for off, n in ((BS - 3, 2 * BS + 5), (5, 6 * BS), (2 * BS, 3 * BS), (6 * BS - 1, 10_000)):
            assert cache.read("m.bin", off, n) == blob[off:off + n], (off, n)
        assert len(bucket.gets("m.bin")) == 1


def test_changed_object_is_never_served_stale(bucket, tmp_path):
    bucket.put("v.bin", b"version one")
    with open_s3(bucket, tmp_path, metadata_ttl=0) as cache:
        assert cache.read("v.bin") == b"version one"
        bucket.put("v.bin", b"version two, longer")
        assert cache.read("v.bin") == b"version two, longer"
        assert cache.stat("v.bin").size == len(b"version two, longer")


def test_conditional_get_catches_a_change_within_the_ttl(bucket, tmp_path):
    old = os.urandom(3 * BS)
    bucket.put("big.bin", old)
    with open_s3(bucket, tmp_path, metadata_ttl="inf") as cache:
        assert cache.read("big.bin", 0, 10) == old[:10]  # block 0 cached, info trusted forever
        new = os.urandom(3 * BS)
        bucket.put("big.bin", new)
        assert cache.read("big.bin", 2 * BS, 10) == new[2 * BS:2 * BS + 10]  # If-Match fails: refresh, retry
        assert cache.read("big.bin", 0, 10) == new[:10]  # the old block 0 is not served
        assert cache.stats()["stale_retries"] == 1


def test_second_open_of_a_cache_dir_is_refused(bucket, tmp_path):
    with open_s3(bucket, tmp_path), pytest.raises(CacheDirLocked, match="in use by pid"):
        open_s3(bucket, tmp_path)
    open_s3(bucket, tmp_path).close()  # released on close


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"source": "s3://b", "ram": "12Q"}, ConfigError),
        ({"source": "s3://b", "ssd_size": "lots"}, ConfigError),
        ({"source": "ftp://host/x"}, ConfigError),
        ({"source": "s3:///nobucket"}, ConfigError),
        ({"source": "s3://no-such-bucket-tc"}, BucketNotFound),
        ({"source": "s3://b", "endpoint_url": "http://127.0.0.1:1"}, EndpointUnreachable),
    ],
)
def test_bad_input_gives_one_clear_error(s3_server, tmp_path, kwargs, error):
    options = {"ram": "1M", "ssd": str(tmp_path / "c"), "ssd_size": "1M", "endpoint_url": s3_server.endpoint}
    options.update(kwargs)
    source = options.pop("source")
    with pytest.raises(error) as info:
        tiercache.open(source, **options)
    assert isinstance(info.value, TiercacheError)
    assert "\n" not in str(info.value) and str(info.value)
    # a failed open leaves the cache dir free
    if (tmp_path / "c").exists():
        from tiercache.lock import CacheDirLock

        CacheDirLock(tmp_path / "c").acquire().release()


def test_missing_key_is_not_found(bucket, objects, tmp_path):
    with open_s3(bucket, tmp_path) as cache:
        with pytest.raises(NotFound) as info:
            cache.read("small/missing.bin")
        assert "\n" not in str(info.value)
        with pytest.raises(ConfigError):
            cache.read("small/a.bin", -1)


def test_warm_evict_pin_resident(bucket, objects, tmp_path):
    seen = []
    with open_s3(bucket, tmp_path) as cache:
        report = cache.warm("large", progress=lambda done, total: seen.append((done, total)))
        total = len(objects["large/aligned.bin"]) + len(objects["large/unaligned.bin"])
        assert report == {"files": 2, "bytes": total, "fetched_bytes": total, "complete": True, "errors": 0}
        assert seen[-1] == (total, total)
        assert cache.resident("large/unaligned.bin", "ssd") == len(objects["large/unaligned.bin"])
        assert cache.resident("large/unaligned.bin", "ram") == 0  # warm(tier="ssd") leaves RAM alone
        again = cache.warm("large")
        assert again["fetched_bytes"] == 0 and again["complete"]
        cache.pin("large/aligned.bin")
        freed = cache.evict("large")
        assert freed == len(objects["large/unaligned.bin"])
        assert cache.resident("large/aligned.bin", "ssd") == 4 * BS
        assert cache.resident("large/unaligned.bin") == 0
        assert cache.pins() == ["large/aligned.bin"]
        cache.read("small/a.bin")
        assert cache.resident("small/a.bin", "ram") == 1000
        assert cache.evict("small", tier="ram") == 1000 and cache.resident("small/a.bin", "ssd") == 1000
        ram_report = cache.warm("small", tier="ram")
        assert ram_report["complete"] and cache.resident("small/b.bin", "ram") == BS - 1
    with open_s3(bucket, tmp_path) as cache:
        assert cache.pins() == ["large/aligned.bin"]  # persisted
        cache.unpin("large/aligned.bin")
        assert cache.evict("") > 0 and cache.resident("large/aligned.bin") == 0
        assert cache.stats()["ssd"]["used"] == 0


def test_pinned_blocks_survive_ssd_pressure(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(60):
        (src / f"f{i:03d}").write_bytes(bytes([i]) * 20_000)
    opts = {"ram": 0, "ssd": str(tmp_path / "c"), "ssd_size": "512K", "block_size": BS}
    with tiercache.open(f"file://{src}", **opts) as cache:
        cache.pin("f000")
        for _ in range(3):
            for i in range(60):
                assert cache.read(f"f{i:03d}") == bytes([i]) * 20_000
                assert cache.stats()["ssd"]["used"] <= 512 << 10
        assert cache.resident("f000", "ssd") == 20_000
        assert cache.stats()["ssd"]["evictions"] > 0


def test_prefetch_and_set_plan(bucket, objects, tmp_path):
    with open_s3(bucket, tmp_path) as cache:
        assert cache.set_plan(["small/a.bin", "large/aligned.bin"], client="loader") == 2
        [plan] = cache.plan_stats()
        assert (plan["client"], plan["files"], plan["position"]) == ("loader", 2, 0)
        assert cache.ram.policy.book is cache.plans is cache.ssd.policy.book, "one PlanBook for every part"
        cache.prefetch(["small/a.bin", "large/aligned.bin", "nope"])
        cache.prefetch(["small/b.bin"], deadline=time.monotonic() - 1)
        deadline = time.monotonic() + 20
        while cache.stats()["prefetch"]["pending"] and time.monotonic() < deadline:
            time.sleep(0.01)
        stats = cache.stats()["prefetch"]
        assert stats == {"done": 2, "pending": 0, "expired": 1, "errors": 1}
        assert cache.resident("large/aligned.bin", "ram") == 4 * BS
        gets = len(bucket.gets())
        assert cache.read("large/aligned.bin") == objects["large/aligned.bin"]
        assert len(bucket.gets()) == gets


def test_admit_file_and_invalidate(bucket, objects, tmp_path):
    local = tmp_path / "upload.bin"
    blob = os.urandom(2 * BS + 5)
    local.write_bytes(blob)
    with open_s3(bucket, tmp_path) as cache:
        info = cache.store.put_file("small/new.bin", str(local))
        bucket.server.reset_log()
        cache.admit_file("small/new.bin", info, str(local))
        assert "new.bin" in cache.listdir("small")
        assert cache.read("small/new.bin") == blob
        assert bucket.gets() == []
        assert cache.resident("small/new.bin", "ssd") == len(blob)
        cache.namespace.add(ObjectInfo("small/pending.bin", 3, "local", time.time()))
        assert "pending.bin" in cache.listdir("small")
        cache.namespace.remove("small/pending.bin")
        assert "pending.bin" not in cache.listdir("small")
        bucket.put("small/new.bin", b"overwritten elsewhere")
        cache.invalidate("small/new.bin")
        assert cache.resident("small/new.bin", "any") == 0
        assert cache.read("small/new.bin") == b"overwritten elsewhere"
        bucket.client.delete_object(Bucket=bucket.name, Key="small/a.bin")
        cache.invalidate("small/a.bin")
        with pytest.raises(NotFound):
            cache.read("small/a.bin")
        assert "a.bin" not in cache.listdir("small")


def test_quotas_hold_under_threaded_churn(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(9)
    sizes = {f"d{i % 4}/f{i:04d}": rng.randrange(1000, 3 * BS) for i in range(300)}
    for key, size in sizes.items():
        (src / key).parent.mkdir(exist_ok=True)
        (src / key).write_bytes(hashlib.sha256(key.encode()).digest() * (size // 32) + b"t" * (size % 32))
    violations = []
    with tiercache.open(f"file://{src}", ram="512K", ssd=str(tmp_path / "c"), ssd_size="2M", block_size=BS,
                        threads=4) as cache:
        def worker(seed: int) -> None:
            r = random.Random(seed)
            for _ in range(150):
                key = r.choice(sorted(sizes))
                size = sizes[key]
                off = r.randrange(size)
                got = cache.read(key, off, r.randrange(1, 2 * BS))
                want = (src / key).read_bytes()[off:off + len(got)]
                assert got == want and got
                s = cache.stats()
                if s["ram"]["used"] > s["ram"]["capacity"] or s["ssd"]["used"] > s["ssd"]["capacity"]:
                    violations.append(s)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(worker, range(8)))
        stats = cache.stats()
    assert not violations
    assert stats["ram"]["evictions"] > 0 and stats["ssd"]["evictions"] > 0


def test_library_open_on_a_directory(tmp_path):
    src = tmp_path / "data"
    (src / "x").mkdir(parents=True)
    (src / "x" / "y.txt").write_bytes(b"hello")
    with tiercache.open(f"file://{src}", ram="1M", ssd=str(tmp_path / "c")) as cache:
        assert isinstance(cache, tiercache.TieredCache)
        assert cache.listdir("") == ["x"] and cache.read("x/y.txt") == b"hello"
        assert cache.config.ssd_bytes > 0 and cache.ssd is not None


def test_a_cache_dir_reused_for_another_source_starts_over(tmp_path):
    for name, payload in (("one", b"first source"), ("two", b"second source")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "same.key").write_bytes(payload)
    opts = {"ram": 0, "ssd": str(tmp_path / "c"), "ssd_size": "1M"}
    with tiercache.open(f"file://{tmp_path / 'one'}", **opts) as cache:
        assert cache.read("same.key") == b"first source"
        cache.pin("same.key")
    with tiercache.open(f"file://{tmp_path / 'two'}", **opts) as cache:
        assert cache.pins() == [] and cache.stats()["ssd"]["blocks"] == 0
        assert cache.read("same.key") == b"second source"
