"""Plan-aware eviction: farthest next use first, not-in-plan first, protected never, fallback without a plan."""

from __future__ import annotations

import random

from tiercache.tiers.base import BlockId
from tiercache.tiers.planned import BeladyPolicy, PlanAwarePolicy, replay_epochs
from tiercache.tiers.policy import LRUPolicy, S3FIFOPolicy


def replay(policy, epochs, capacity, plan_ahead=True):
    hit_rate, peak = replay_epochs(policy, epochs, capacity, plan_ahead)
    assert peak <= capacity
    return hit_rate


def shuffled_epochs(items=600, epochs=4, seed=1):
    rng = random.Random(seed)
    out = []
    for _ in range(epochs):
        order = [f"k{i}" for i in range(items)]
        rng.shuffle(order)
        out.append(order)
    return out


def test_plan_aware_matches_belady_and_beats_lru_and_default():
    epochs = shuffled_epochs()
    for fraction in (0.1, 0.5):
        capacity = int(600 * fraction)
        optimum = replay(_belady(epochs), epochs, capacity)
        planned = replay(PlanAwarePolicy(), epochs, capacity)
        assert planned >= 0.95 * optimum
        assert planned > replay(S3FIFOPolicy(), epochs, capacity) > replay(LRUPolicy(), epochs, capacity)


def _belady(epochs):
    policy = BeladyPolicy()
    policy.set_plan([k for order in epochs for k in order])
    return policy


def test_victims_farthest_next_use_first_and_unplanned_before_planned():
    policy = PlanAwarePolicy(slack=0)
    policy.set_plan(["a", "b", "c", "d"])
    for key in ("x", "d", "b", "a", "c"):
        policy.on_insert(BlockId(key, "e", 0), 10)
    assert [b.key for b in policy.victims(10)] == ["x"]
    assert [b.key for b in policy.victims(20)] == ["d", "c"]
    policy.observe_read("a")
    assert policy.next_use("a") == float("inf") and policy.next_use("b") == 1
    assert [b.key for b in policy.victims(1)] == ["a"]
    assert len(policy) == 1 and policy.tracked_bytes == 10


def test_protected_blocks_are_never_victims():
    policy = PlanAwarePolicy(slack=0)
    policy.set_plan(["a", "b"])
    pinned = BlockId("zzz", "e", 0)
    policy.on_insert(pinned, 5)
    policy.on_insert(BlockId("a", "e", 0), 5)
    out = policy.victims(100, protected=lambda block: block == pinned)
    assert pinned not in out and pinned in policy
    assert [b.key for b in out] == ["a"]


def test_without_a_plan_it_is_the_fallback_and_stays_in_step():
    policy, reference = PlanAwarePolicy(), S3FIFOPolicy()
    rng = random.Random(3)
    for _ in range(3000):
        key = f"k{rng.randrange(200)}"
        for p in (policy, reference):
            if key in p:
                p.on_access(key)
            else:
                if p.tracked_bytes >= 50:
                    p.victims(1)
                p.on_insert(key, 1)
        assert (key in policy) == (key in reference)
    assert len(policy) == len(reference)
    policy.set_plan([f"k{i}" for i in range(200)])
    policy.victims(10)
    policy.set_plan([])
    assert policy.tracked_bytes == policy.fallback.tracked_bytes


def test_out_of_order_readers_within_slack_do_not_lose_their_blocks():
    policy = PlanAwarePolicy(slack=8)
    order = [f"k{i}" for i in range(100)]
    policy.set_plan(order + order)
    for key in order[:20]:
        policy.on_insert(key, 1)
    policy.observe_read("k5")  # a fast thread ran ahead; k0..k4 are still about to be read
    assert all(policy.next_use(f"k{i}") == i for i in range(5))
    assert policy.next_use("k5") == 105


def test_note_read_is_applied_at_the_next_eviction():
    policy = PlanAwarePolicy(slack=0)
    policy.set_plan(["a", "b", "c"])
    for key in ("a", "b", "c"):
        policy.on_insert(BlockId(key, "e", 0), 1)
    policy.note_read("a")  # from a reader thread, without the tier's lock
    assert policy.next_use("a") == 0  # not applied yet
    assert [b.key for b in policy.victims(1)] == ["a"]  # applied: "a" is never read again


# ---------------------------------------------------------------- the prefetcher in a cache


def _local_cache(tmp_path, files: dict[str, bytes], **options):
    import tiercache

    src = tmp_path / "src"
    for key, data in files.items():
        (src / key).parent.mkdir(parents=True, exist_ok=True)
        (src / key).write_bytes(data)
    return tiercache.open(f"file://{src}", ssd=str(tmp_path / "cache"), ssd_size="0", **options)


def _settle(cache) -> dict:
    assert cache.prefetcher.wait_idle(30), "the prefetcher did not settle"
    return cache.prefetcher.stats()


def test_readahead_window_grows_on_sequential_reads_and_resets_on_seek(tmp_path):
    bs = 64 << 10
    blob = random.Random(1).randbytes(64 * bs)
    with _local_cache(tmp_path, {"big.bin": blob}, ram="64M", block_size="64K") as cache:
        windows = []
        for i in range(5):
            assert cache.read("big.bin", i * bs, bs) == blob[i * bs:(i + 1) * bs]
            windows.append(cache.prefetcher._streams["big.bin"][1])
            _settle(cache)  # each window is fetched before the next read, so the counts below are exact
        assert windows == [bs, 2 * bs, 4 * bs, 8 * bs, 16 * bs]
        blocks = cache._block_ids(cache.namespace.info("big.bin"))
        ahead = [i for i, block in enumerate(blocks) if cache._in_tier(block, "ram")]
        assert ahead == list(range(5 + 16)), "the blocks of the window are fetched ahead of the reader"
        assert cache.read("big.bin", 40 * bs, bs) == blob[40 * bs:41 * bs]  # a seek
        assert cache.prefetcher._streams["big.bin"][1] == bs
        pre = _settle(cache)
        assert [i for i, block in enumerate(blocks) if cache._in_tier(block, "ram")] == [*ahead, 40, 41]
        assert pre["readahead_bytes"] == (20 + 1) * bs and pre["prefetched_read_bytes"] == 4 * bs


def test_plan_prefetch_stays_within_the_ram_budget(tmp_path):
    files = {f"f{i:02d}": random.Random(i).randbytes(100_000) for i in range(40)}
    with _local_cache(tmp_path, files, ram="1M", block_size="128K") as cache:
        plan = sorted(files, reverse=True)
        cache.set_plan(plan)
        pre = _settle(cache)
        assert pre["lead_files"] == 6, "ahead by at most half the RAM tier (and one file)"
        assert cache.ram.used() <= cache.ram.capacity()
        for n, key in enumerate(plan, 1):
            assert cache.read(key) == files[key]
            assert cache.ram.used() <= cache.ram.capacity()
            pre = _settle(cache)  # a reader slower than the store: every read finds its file prefetched
            assert pre["plan_position"] == n and pre["lead_bytes"] <= (512 << 10) + 100_000
        stats = cache.stats()
        assert stats["plan"]["hit_rate"] == 1.0 and stats["prefetcher"]["prefetched_unread_bytes"] == 0
