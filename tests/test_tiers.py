"""Block ids, eviction policies, the RAM tier and the SSD tier (region files + LMDB index)."""

from __future__ import annotations

import os
import random
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tiercache.tiers.base import BlockId, Tier, key_prefix
from tiercache.tiers.policy import LRUPolicy, S3FIFOPolicy, make_policy
from tiercache.tiers.ram import RamTier
from tiercache.tiers.ssd import SsdTier
from tiercache.tiers.ssd_format import record_size

sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))
from traces import simulate  # noqa: E402

pytestmark = pytest.mark.timeout(60)


def shuffled_epochs(n: int, epochs: int, seed: int = 7) -> list[int]:
    rng = random.Random(seed)
    trace = []
    for _ in range(epochs):
        order = list(range(n))
        rng.shuffle(order)
        trace += order
    return trace


# ---------------------------------------------------------------------------------------------- block ids


def test_block_id_encoding_round_trips_and_groups_by_key():
    ids = [BlockId("a/b.jpg", "etag1", 0), BlockId("a/b.jpg", "etag2", 7), BlockId("ünï/ç", "x", 2**40)]
    for block in ids:
        assert BlockId.decode(block.encode()) == block
    assert ids[0].encode().startswith(key_prefix("a/b.jpg"))
    assert not BlockId("a/b.jpgx", "e", 0).encode().startswith(key_prefix("a/b.jpg"))
    assert BlockId("k", "e", 1).encode() < BlockId("k", "e", 2).encode() < BlockId("k", "e", 256).encode()


# ---------------------------------------------------------------------------------------------- policies


@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_default_policy_beats_lru_on_shuffled_epochs(fraction):
    n = 4000
    trace = shuffled_epochs(n, epochs=5)
    lru = simulate(LRUPolicy(), trace, int(n * fraction))
    default = simulate(make_policy("default"), trace, int(n * fraction))
    assert default > lru * 1.5
    assert default > 0.8 * fraction * 4 / 5  # close to keeping a stable set: the first epoch is all misses


def test_default_policy_adapts_when_the_workload_moves_on():
    n = 2000
    first = shuffled_epochs(n, epochs=4, seed=1)
    second = [b + n for b in shuffled_epochs(n, epochs=4, seed=2)]
    policy = make_policy("default")
    simulate(policy, first, n // 2)
    last_epoch = simulate(policy, second[: 3 * n], n // 2), simulate(policy, second[3 * n:], n // 2)
    assert last_epoch[1] > 0.3


@pytest.mark.parametrize("policy_cls", [LRUPolicy, S3FIFOPolicy])
def test_policies_never_pick_protected_blocks_and_forget_victims(policy_cls):
    policy = policy_cls()
    for i in range(100):
        policy.on_insert(i, 10)
    for i in range(0, 100, 3):
        policy.on_access(i)
    protected = {i for i in range(100) if i % 2 == 0}
    victims = policy.victims(10_000, protected.__contains__)
    assert set(victims) == set(range(100)) - protected
    assert len(policy) == 50 and policy.tracked_bytes == 500
    assert all(v not in policy for v in victims)
    assert policy.victims(10_000, protected.__contains__) == []
    policy.on_remove(0)
    assert 0 not in policy and policy.tracked_bytes == 490


def test_policy_plan_extension_point():
    policy = make_policy("lru")
    seen = []
    policy._plan_changed = lambda: seen.append(policy.plan)
    policy.set_plan(["a", "b"])
    assert policy.plan == ("a", "b") and seen == [("a", "b")]
    with pytest.raises(ValueError, match="unknown eviction policy"):
        make_policy("nope")


# ---------------------------------------------------------------------------------------------- RAM tier


def test_ram_tier_basics_and_demotion():
    demoted = []
    ram = RamTier(1000, high=1.0, low=0.5, on_evict=demoted.extend)
    assert isinstance(ram, Tier)
    assert ram.put(BlockId("a", "e", 0), b"x" * 400)
    assert ram.put(BlockId("b", "e", 0), b"y" * 400)
    assert ram.get(BlockId("a", "e", 0)) == b"x" * 400
    assert ram.put(BlockId("c", "e", 0), b"z" * 400)  # over the high mark: evicts down to 500 bytes
    assert ram.used() <= 1000 and demoted
    assert not ram.put(BlockId("big", "e", 0), b"q" * 1001)
    assert ram.discard(BlockId("c", "e", 0)) == 400 and ram.discard(BlockId("c", "e", 0)) == 0
    assert ram.stats()["hits"] == 1


def test_ram_tier_quota_holds_under_threaded_churn():
    cap = 64 << 10
    ram = RamTier(cap)
    violations = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for i in range(2000):
            block = BlockId(f"k{rng.randrange(300)}", "e", 0)
            if rng.random() < 0.5:
                ram.get(block)
            else:
                size = rng.randrange(100, 4000)
                ram.put(block, os.urandom(size) if i % 50 == 0 else b"z" * size)
            if ram.used() > cap:
                violations.append(ram.used())

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(worker, range(8)))
    assert not violations
    assert 0 < ram.used() <= cap and ram.stats()["evictions"] > 0


# ---------------------------------------------------------------------------------------------- SSD tier


def region_files(path) -> list:
    return sorted(p for p in os.listdir(path) if p.endswith(".region"))


def test_ssd_round_trip_and_restart(tmp_path, meta):
    ssd = SsdTier(tmp_path / "regions", 10 << 20, meta)
    blobs = {BlockId(f"f{i}", "e", i % 3): os.urandom(1000 + i) for i in range(200)}
    for block, data in blobs.items():
        assert ssd.put(block, data)
    assert all(ssd.get(b) == d for b, d in blobs.items())  # readable before the index is committed
    ssd.close()
    again = SsdTier(tmp_path / "regions", 10 << 20, meta)
    assert all(again.get(b) == d for b, d in blobs.items())
    assert again.used() == sum(record_size(b, len(d)) for b, d in blobs.items())  # each block's id, its bytes
    assert again.get(BlockId("f0", "other-etag", 0)) is None
    again.close()


def test_ssd_crc_mismatch_is_a_miss_and_drops_the_entry(tmp_path, meta):
    ssd = SsdTier(tmp_path / "regions", 10 << 20, meta)
    block = BlockId("victim", "e", 0)
    ssd.put(BlockId("before", "e", 0), b"a" * 500)
    ssd.put(block, b"b" * 500)
    ssd.flush()
    [name] = region_files(tmp_path / "regions")
    with open(tmp_path / "regions" / name, "r+b") as f:
        f.seek(700)
        f.write(b"X")
    assert ssd.get(block) is None
    assert not ssd.contains(block) and ssd.stats()["crc_errors"] == 1
    assert ssd.get(BlockId("before", "e", 0)) == b"a" * 500
    ssd.close()


def test_ssd_open_drops_entries_past_region_end_and_unknown_files(tmp_path, meta):
    ssd = SsdTier(tmp_path / "regions", 10 << 20, meta)
    for i in range(10):
        ssd.put(BlockId(f"k{i}", "e", 0), bytes([i]) * 1000)
    ssd.close()
    [name] = region_files(tmp_path / "regions")
    os.truncate(tmp_path / "regions" / name, 5500)  # a crash lost the tail
    (tmp_path / "regions" / "00000099.region").write_bytes(b"orphan")
    again = SsdTier(tmp_path / "regions", 10 << 20, meta)
    present = [i for i in range(10) if again.get(BlockId(f"k{i}", "e", 0)) == bytes([i]) * 1000]
    assert present == [0, 1, 2, 3, 4]
    assert again.stats()["dropped_at_open"] == 5
    assert region_files(tmp_path / "regions") == [name]
    again.close()


def test_ssd_hundred_thousand_small_objects_need_few_files(tmp_path, meta):
    ssd = SsdTier(tmp_path / "regions", 1 << 30, meta)
    payload = b"p" * 300
    for i in range(100_000):
        ssd.put(BlockId(f"train/{i:06d}.jpg", "etag", 0), payload)
    ssd.close()
    files = sum(len(names) for _, _, names in os.walk(tmp_path))
    assert files < 100
    again = SsdTier(tmp_path / "regions", 1 << 30, meta)
    assert again.get(BlockId("train/099999.jpg", "etag", 0)) == payload
    assert again.stats()["blocks"] == 100_000
    again.close()


def test_ssd_eviction_frees_whole_regions_and_keeps_pinned_and_hot_blocks(tmp_path, meta):
    pinned = {BlockId("pinned", "e", 0)}
    ssd = SsdTier(tmp_path / "regions", 4 << 20, meta, protected=pinned.__contains__)
    assert ssd.region_size == 128 << 10
    ssd.put(BlockId("pinned", "e", 0), b"P" * 4096)
    hot = BlockId("hot", "e", 0)
    ssd.put(hot, b"H" * 4096)
    for i in range(3000):
        ssd.put(BlockId(f"cold{i}", "e", 0), b"c" * 4096)
        assert ssd.used() <= ssd.capacity()
        if i % 20 == 0:
            assert ssd.get(hot) == b"H" * 4096
    assert ssd.get(BlockId("pinned", "e", 0)) == b"P" * 4096
    assert ssd.get(hot) == b"H" * 4096
    stats = ssd.stats()
    assert stats["evictions"] > 2000 and stats["relocated_bytes"] > 0
    assert len(region_files(tmp_path / "regions")) == stats["regions"] <= 34
    on_disk = sum(os.path.getsize(tmp_path / "regions" / n) for n in region_files(tmp_path / "regions"))
    assert on_disk == ssd.used()
    ssd.close()


def test_ssd_quota_holds_under_threaded_churn(tmp_path, meta):
    cap = 2 << 20
    ssd = SsdTier(tmp_path / "regions", cap, meta)
    violations = []
    expected = {}

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(600):
            i = rng.randrange(2000)
            block = BlockId(f"k{i}", "e", 0)
            data = bytes([i % 251]) * (1000 + i * 7 % 9000)
            expected[block] = data
            if rng.random() < 0.4:
                got = ssd.get(block)
                assert got is None or got == data
            else:
                ssd.put(block, data)
            if ssd.used() > cap:
                violations.append(ssd.used())

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(worker, range(8)))
    assert not violations
    assert ssd.stats()["evictions"] > 0
    for block, data in expected.items():
        got = ssd.get(block)
        assert got is None or got == data
    ssd.close()


def test_ssd_discard_and_blocks_by_prefix(tmp_path, meta):
    ssd = SsdTier(tmp_path / "regions", 10 << 20, meta)
    for key in ("a/x", "a/y", "ab", "b"):
        for idx in range(2):
            ssd.put(BlockId(key, "e", idx), key.encode() * 10)
    assert {b.key for b in ssd.blocks(b"a/")} == {"a/x", "a/y"}
    assert len(ssd.blocks(key_prefix("ab"))) == 2
    assert ssd.discard(BlockId("b", "e", 0)) == 10 and ssd.get(BlockId("b", "e", 0)) is None
    ssd.flush()
    assert len(ssd.blocks()) == 7
    ssd.close()


def test_ssd_concurrent_readers_during_compaction_see_correct_bytes(tmp_path, meta):
    ssd = SsdTier(tmp_path / "regions", 3 << 20, meta, high=0.9, low=0.6)
    stop = threading.Event()
    bad = []

    def reader() -> None:
        rng = random.Random(1)
        while not stop.is_set():
            i = rng.randrange(1500)
            got = ssd.get(BlockId(f"k{i}", "e", 0))
            if got is not None and got != bytes([i % 256]) * 3000:
                bad.append(i)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for rnd in range(3):
            for i in range(1500):
                block = BlockId(f"k{i}", "e", 0)
                if rnd and i % 3 == 0:
                    ssd.get(block)
                ssd.put(block, bytes([i % 256]) * 3000)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not bad
    assert ssd.stats()["crc_errors"] == 0
    ssd.close()


def test_ssd_residency_comes_from_its_own_index_not_the_policy(tmp_path, meta):
    ssd = SsdTier(tmp_path / "regions", 10 << 20, meta, policy=LRUPolicy())
    block = BlockId("a", "e1", 0)
    assert ssd.put(block, b"x" * 1000)
    ssd.drain()
    ssd.policy.on_remove(block)  # the policy's bookkeeping is not the tier's truth
    assert ssd.contains(block), "the index holds the block"
    assert not ssd.contains(BlockId("a", "e2", 0))
    ssd.close()
