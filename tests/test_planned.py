"""Plan-aware eviction over the PlanBook: farthest next use across every live plan, not-in-plan first,
protected never, fallback without plans; and the prefetcher in a cache."""

from __future__ import annotations

import random
import sys
from pathlib import Path

from tiercache.plans import PlanBook
from tiercache.tiers.base import BlockId
from tiercache.tiers.planned import PlanAwarePolicy
from tiercache.tiers.policy import LRUPolicy, S3FIFOPolicy

sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))
from traces import belady, merged_trace, replay, replay_readers, shard_epochs  # noqa: E402


def replay_epochs(policy, epochs, capacity):
    """One reader: the plan (this epoch + the next) sent at each epoch start, as the DataLoader does."""
    trace = [k for order in epochs for k in order]
    starts = {sum(len(o) for o in epochs[:e]): e for e in range(len(epochs))}

    def plans(i):
        e = starts.get(i)
        if e is None:
            return []
        return [("loader", [*epochs[e], *(epochs[e + 1] if e + 1 < len(epochs) else [])])]

    hit_rate, peak = replay(policy, trace, capacity, plans)
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
    trace = [k for order in epochs for k in order]
    for fraction in (0.1, 0.5):
        capacity = int(600 * fraction)
        optimum = replay(belady(trace), trace, capacity)[0]
        planned = replay_epochs(PlanAwarePolicy(), epochs, capacity)
        assert planned >= 0.95 * optimum
        assert planned > replay_epochs(S3FIFOPolicy(), epochs, capacity) > replay_epochs(LRUPolicy(), epochs, capacity)


def test_k_readers_with_their_own_plans_match_belady_on_the_merged_trace():
    for readers in (2, 8):
        shards = shard_epochs(800, 3, readers, seed=readers)
        trace, _ = merged_trace(shards, jitter=0.5, seed=1)
        for fraction in (0.1, 0.5):
            capacity = int(800 * fraction)
            optimum = replay(belady(trace), trace, capacity)[0]
            planned, _ = replay_readers(PlanAwarePolicy(), shards, capacity, jitter=0.5, seed=1)
            assert planned >= 0.95 * optimum, (readers, fraction, planned, optimum)


def test_one_plan_for_all_readers_is_what_the_old_single_plan_lost():
    # the old cache kept one plan, the last sender's: with 2 readers that halves what eviction knows
    shards = shard_epochs(800, 3, 2, seed=3)
    trace, where = merged_trace(shards)
    per_client, _ = replay_readers(PlanAwarePolicy(), shards, 200)

    def last_writer_wins(i):
        rank, epoch, index = where[i]
        nxt = shards[epoch + 1][rank] if epoch + 1 < len(shards) else []
        return [("one", [*shards[epoch][rank], *nxt])] if index == 0 else []

    single = replay(PlanAwarePolicy(), trace, 200, last_writer_wins)[0]
    assert per_client > single + 0.02


def test_victims_farthest_next_use_first_and_unplanned_before_planned():
    policy = PlanAwarePolicy(PlanBook(slack=0))
    policy.set_plan(["a", "b", "c", "d"])
    for key in ("x", "d", "b", "a", "c"):
        policy.on_insert(BlockId(key, "e", 0), 10)
    assert [b.key for b in policy.victims(10)] == ["x"]
    assert [b.key for b in policy.victims(20)] == ["d", "c"]
    policy.observe_read("a")
    assert policy.next_use("a") == float("inf") and policy.next_use("b") == 1
    assert [b.key for b in policy.victims(1)] == ["a"]
    assert len(policy) == 1 and policy.tracked_bytes == 10


def test_two_tiers_share_one_book_and_each_client_replaces_only_its_own_plan():
    book = PlanBook(slack=0)
    ram, ssd = PlanAwarePolicy(book), PlanAwarePolicy(book)
    book.set_plan(["t1", "t2", "t3"], "train")
    book.set_plan(["v1", "v2"], "val")
    for policy in (ram, ssd):
        for key in ("t1", "t2", "t3", "v1", "v2", "other"):
            policy.on_insert(key, 1)
    assert ram.victims(1) == ["other"] and ssd.victims(1) == ["other"]
    book.set_plan(["t3"], "train")  # train's new plan: val's stays
    assert {p.client for p in book.plans()} == {"train", "val"}
    assert set(ram.victims(2)) == {"t1", "t2"}, "no plan reads t1, t2 any more"
    book.end("val")
    assert [p.client for p in book.plans()] == ["train"]
    assert set(ssd.victims(4)) == {"t1", "t2", "v1", "v2"}


def test_a_plan_advances_at_its_own_readers_pace():
    book = PlanBook(slack=0)
    book.set_plan([f"f{i}" for i in range(100)], "fast")
    book.set_plan([f"s{i}" for i in range(100)], "slow")
    for i in range(60):  # the fast reader reads three files for each of the slow one's
        book.observe(f"f{i}")
        if i % 3 == 2:
            book.observe(f"s{i // 3}")
    fast, slow = book.get("fast"), book.get("slow")
    assert (fast.position, slow.position) == (60, 20)
    assert fast.rate > 2 * slow.rate
    # ten files ahead of the slow reader are due later than ten ahead of the fast one
    assert book.next_use("s30") > book.next_use("f70")


def test_plan_arrays_are_compact():
    book = PlanBook()
    keys = [f"train/{i:07d}.jpg" for i in range(50_000)]
    plan = book.set_plan(keys + keys[::-1], "loader")
    assert plan.nbytes / len(plan) <= 16
    assert book.next_use_many(["train/0000003.jpg", "nope"])[1] == float("inf")


def test_the_heap_is_compacted_when_plans_keep_changing():
    policy = PlanAwarePolicy(PlanBook(slack=0))
    keys = [f"k{i}" for i in range(50)]
    for key in keys:
        policy.on_insert(key, 1)
    for round_ in range(40):  # each new plan re-ranks every resident block: the heap grows, then is compacted
        policy.set_plan(keys[round_ % 7:], "loader")
        policy.on_insert(f"new{round_}", 1)
    unplanned = {f"new{i}" for i in range(40)} | set(keys[:39 % 7])  # what the last plan does not read
    assert set(policy.victims(3)) <= unplanned, "blocks no plan reads go first"


def test_protected_blocks_are_never_victims():
    policy = PlanAwarePolicy(PlanBook(slack=0))
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
    book = PlanBook(slack=8)
    policy = PlanAwarePolicy(book)
    order = [f"k{i}" for i in range(100)]
    policy.set_plan(order + order)
    for key in order[:20]:
        policy.on_insert(key, 1)
    policy.observe_read("k5")  # a fast thread ran ahead; k0..k4 are still about to be read
    plan = book.get("default")
    assert all(plan.next_index(book.table.lookup(f"k{i}")) == i for i in range(5))
    assert plan.next_index(book.table.lookup("k5")) == 105


def test_reads_from_another_thread_are_applied_at_the_next_eviction():
    policy = PlanAwarePolicy(PlanBook(slack=0))
    policy.set_plan(["a", "b", "c"])
    for key in ("a", "b", "c"):
        policy.on_insert(BlockId(key, "e", 0), 1)
    policy.book.observe("a")  # a reader thread, without the tier's lock
    assert [b.key for b in policy.victims(1)] == ["a"]  # "a" is never read again


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
            [plan] = cache.plan_stats()
            assert plan["position"] == n and pre["lead_bytes"] <= (512 << 10) + 100_000
        stats = cache.stats()
        assert stats["plans"][0]["hit_rate"] == 1.0 and stats["prefetcher"]["prefetched_unread_bytes"] == 0


def test_plans_end_when_idle_or_when_their_connection_closes():
    import time

    book = PlanBook(idle_timeout=0.2)
    token = object()
    book.set_plan(["a1", "a2"], "cli")
    book.set_plan(["b1", "b2"], "loader", bound=token)
    book.set_plan(["c1", "c2", "c3"], "reading")
    time.sleep(0.12)
    book.observe("c1")  # a reader keeps its plan alive
    time.sleep(0.12)
    assert book.expire() == ["cli"], "only the idle unbound plan ends"
    assert sorted(p.client for p in book.plans()) == ["loader", "reading"]
    assert book.end_bound(token) == ["loader"]
    assert [p.client for p in book.plans()] == ["reading"]


def test_slot_state_stays_bounded_when_plans_come_and_go():
    book = PlanBook(slack=0)
    policy = PlanAwarePolicy(book)
    keys = [f"k{i}" for i in range(300)]
    for round_ in range(6):
        book.set_plan(keys[round_:], "loader") if round_ % 2 == 0 else book.set_plan([], "loader")
        for i in range(200):
            key = f"r{round_}-{i}"
            if policy.tracked_bytes >= 100:
                assert policy.victims(1), "a victim while anything is unprotected"
            policy.on_insert(key, 1)
    assert len(policy) == 100 and policy.tracked_bytes == 100
    assert policy.nbytes <= 4 * 28 * 128, "slots are reused, not grown per insert"
    assert len(policy._pool) <= 8 * 256 + 200  # noqa: SLF001 - the victim pool stays small
