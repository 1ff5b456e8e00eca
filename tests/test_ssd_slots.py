"""The SSD tier's compact per-block state (issue 12): slot policies decide as the dict-based ones do, a block
costs bytes in numpy arrays (no Python object), a restart opens the index instead of loading it, and the
background validation never resurrects a block dropped before it got there."""

from __future__ import annotations

import random
import sys

import pytest

from tiercache.plans import PlanBook
from tiercache.tiers.base import BlockId
from tiercache.tiers.policy import LRUPolicy, S3FIFOPolicy
from tiercache.tiers.slot_lru import SlotLRU
from tiercache.tiers.slot_plans import SlotPlanPolicy, make_slot_policy
from tiercache.tiers.slot_policy import SlotS3FIFO
from tiercache.tiers.ssd import SsdTier
from tiercache.tiers.ssd_format import record_size
from tiercache.tiers.ssd_validate import Validator

pytestmark = pytest.mark.timeout(120)


def replay(policy, trace, sizes, capacity, protected=None, scans=frozenset()):
    """A tier's calls into a policy for ``trace`` (evicting to ``capacity``); every victim list, in order.
    Blocks in ``scans`` are inserted as a stream's one-shot blocks."""
    chosen = []
    for i, block in enumerate(trace):
        if block in policy:
            policy.on_access(block)
        else:
            policy.on_insert(block, sizes[block], scan=block in scans)
            if policy.tracked_bytes > capacity:
                chosen.append(policy.victims(policy.tracked_bytes - capacity, protected))
        if i % 97 == 0 and block in policy and block % 5 == 0:
            policy.on_remove(block)
    return chosen


@pytest.mark.parametrize("dict_policy, slot_policy", [(S3FIFOPolicy, SlotS3FIFO), (LRUPolicy, SlotLRU)])
def test_slot_policies_choose_exactly_what_the_dict_policies_choose(dict_policy, slot_policy):
    rng = random.Random(3)
    n = 3000
    sizes = {b: rng.randrange(1, 50) for b in range(2 * n)}
    hot = list(range(300))
    trace = []
    for epoch in range(4):  # shuffled epochs, a hot set and a workload that moves on
        order = list(range(n)) if epoch < 3 else list(range(n // 3, 2 * n))
        rng.shuffle(order)
        for b in order:
            trace.append(b)
            if rng.random() < 0.3:
                trace.append(rng.choice(hot))
    def protected(block: int) -> bool:
        return block % 11 == 0

    capacity = sum(sizes.values()) // 8
    want = replay(dict_policy(), trace, sizes, capacity, protected)
    got = replay(slot_policy(), trace, sizes, capacity, protected)
    assert sum(len(v) for v in want) > 1000
    assert got == want


@pytest.mark.parametrize("dict_policy, slot_policy", [(S3FIFOPolicy, SlotS3FIFO), (LRUPolicy, SlotLRU)])
def test_slot_policies_choose_what_the_dict_policies_choose_under_scans(dict_policy, slot_policy):
    """The same with streams: runs of one-shot blocks (scan=True), some read again (they turn normal)."""
    rng = random.Random(5)
    n, stream = 2000, 400
    sizes = {b: rng.randrange(1, 50) for b in range(n + 8 * stream)}
    hot = list(range(200))
    trace, scans = [], set()
    for epoch in range(8):
        order = list(range(n))
        rng.shuffle(order)
        run = list(range(n + epoch * stream, n + (epoch + 1) * stream))
        scans.update(run)
        at = rng.randrange(len(order))
        order[at:at] = run  # a large object read end to end in the middle of the epoch
        for b in order:
            trace.append(b)
            if rng.random() < 0.3:
                trace.append(rng.choice(hot))
            if b in scans and rng.random() < 0.05:
                trace.append(rng.choice(run))  # a streamed block read again

    def protected(block: int) -> bool:
        return block % 11 == 0

    capacity = sum(sizes[b] for b in range(n)) // 8
    want = replay(dict_policy(), trace, sizes, capacity, protected, scans)
    got = replay(slot_policy(), trace, sizes, capacity, protected, scans)
    assert sum(len(v) for v in want) > 1000
    assert got == want


def test_slot_policy_state_is_numpy_arrays_of_bounded_bytes_per_slot():
    policy = SlotS3FIFO()
    allocations = sys.getallocatedblocks()
    for slot in range(200_000):
        policy.on_insert(slot, 100, ident=slot * 7919 + 1)
    for slot in range(0, 200_000, 3):
        policy.on_access(slot)
    policy.victims(2_000_000)
    assert sys.getallocatedblocks() - allocations < 100, "no Python object per slot"
    assert policy.nbytes / 200_000 <= 60  # 34 B per slot, room to grow and the ghost


def test_the_ghost_remembers_identities_not_slots():
    policy = SlotS3FIFO(small_ratio=0.5)
    for slot in range(100):
        policy.on_insert(slot, 1, ident=1000 + slot)
    victims = policy.victims(10)
    assert victims and all(v not in policy for v in victims)
    reused = victims[0]
    policy.on_insert(reused, 1, ident=5_000)  # the slot now holds another block: it is new, not a ghost
    assert reused not in policy.victims(0)
    policy.on_insert(500, 1, ident=1000 + victims[1])  # the evicted block comes back in another slot
    main_before = policy.nbytes
    assert 500 in policy and main_before > 0


@pytest.mark.parametrize("seed_batch", [4096, 3])  # 3: the resident slots are handed over over several calls
def test_plan_aware_slot_policy_keeps_no_plan_state_without_plans_and_ranks_by_key_with_one(seed_batch):
    book = PlanBook()
    keys = {slot: f"k{slot}" for slot in range(10)}
    policy = SlotPlanPolicy(book)
    policy.SEED_BATCH = seed_batch
    policy.key_of = keys.get
    for slot in keys:
        policy.on_insert(slot, 1, ident=slot + 1)
    assert policy.victims(0) == [] and policy._planned is None  # noqa: SLF001 - the state under test
    book.set_plan([f"k{s}" for s in (9, 8, 7, 6, 5, 4, 3)])  # k0..k2 are never read again: they go first
    assert sorted(policy.victims(3)) == [0, 1, 2]
    assert policy.victims(1) == [3] and len(policy) == 6  # k3 is the plan's last read
    for _ in range(4):
        policy.victims(0)
    assert len(policy._planned) == 6  # noqa: SLF001 - every resident slot handed over
    book.set_plan([])
    policy.victims(1)
    assert policy._planned is None and len(policy) == 5  # noqa: SLF001


def test_make_slot_policy_by_name():
    book = PlanBook()
    assert isinstance(make_slot_policy("lru"), SlotLRU) and isinstance(make_slot_policy("s3fifo"), SlotS3FIFO)
    default = make_slot_policy("default", book)
    assert isinstance(default, SlotPlanPolicy) and default.book is book
    assert isinstance(make_slot_policy("plan-lru", book).fallback, SlotLRU)


# ---------------------------------------------------------------------------------------------- the tier


def fill(tmp_path, meta, n: int) -> dict[BlockId, bytes]:
    ssd = SsdTier(tmp_path / "regions", 256 << 20, meta)
    blobs = {BlockId(f"d/f{i:06d}", "e", 0): bytes([i % 251]) * (100 + i % 300) for i in range(n)}
    for block, data in blobs.items():
        assert ssd.put(block, data)
    ssd.close()
    return blobs


@pytest.mark.parametrize("n", [500, 5000])
def test_restart_reads_a_constant_number_of_index_entries_before_serving(tmp_path, meta, n, monkeypatch):
    blobs = fill(tmp_path, meta, n)
    monkeypatch.setattr(Validator, "start", lambda self: None)  # the background walk, held back
    before = dict(meta.reads)
    again = SsdTier(tmp_path / "regions", 256 << 20, meta)
    block = BlockId(f"d/f{n // 2:06d}", "e", 0)
    assert again.get(block) == blobs[block]
    read = {db: meta.reads[db] - before[db] for db in ("ssd_index", "regions")}
    # one index entry for the read; the region list is one entry per region file, not per block
    assert read["ssd_index"] == 1, read
    assert read["regions"] == len(again.files.regions) <= 4
    assert again.stats()["blocks"] == n and not again.stats()["validated"]
    again.close()


def test_validation_rebuilds_the_policy_and_never_resurrects_a_dropped_block(tmp_path, meta, monkeypatch):
    blobs = fill(tmp_path, meta, 3000)
    held = []
    monkeypatch.setattr(Validator, "start", lambda self: held.append(self))
    again = SsdTier(tmp_path / "regions", 256 << 20, meta)
    gone = [b for i, b in enumerate(blobs) if i % 10 == 0]
    for block in gone:  # dropped before the walk gets there
        assert again.discard(block) == len(blobs[block])
    again.flush()
    new = BlockId("new", "e", 0)
    assert again.put(new, b"n" * 1000)  # fits without evicting: admitted before validation
    monkeypatch.undo()
    held[0].start()
    assert again.validated(30)
    stats = again.stats()
    assert stats["blocks"] == len(again.policy) == len(blobs) - len(gone) + 1
    assert stats["live"] == sum(record_size(b, len(d)) for b, d in blobs.items() if b not in gone) + record_size(
        new, 1000)
    assert all(again.get(b) is None for b in gone[:50]) and again.get(new) == b"n" * 1000
    before = again.slots.next_slot
    again.discard(new)
    assert again.put(BlockId("newer", "e", 0), b"m" * 10)
    assert again.slots.next_slot == before, "validated: free slots are reused"
    again.close()


def test_after_restart_eviction_works_from_the_rebuilt_policy(tmp_path, meta, monkeypatch):
    ssd = SsdTier(tmp_path / "regions", 4 << 20, meta)
    for i in range(800):
        ssd.put(BlockId(f"a{i}", "e", 0), b"a" * 4096)
    ssd.close()
    held = []
    monkeypatch.setattr(Validator, "start", lambda self: held.append(self))
    again = SsdTier(tmp_path / "regions", 4 << 20, meta)
    # before validation: cached blocks are served; a block that needs room is refused at once (never waits)
    assert again.get(BlockId("a5", "e", 0)) == b"a" * 4096
    assert not again.put(BlockId("early", "e", 0), b"x" * (1 << 20)) and again.stats()["rejected"] == 1
    monkeypatch.undo()
    held[0].start()
    assert again.validated(30)
    for i in range(800):
        assert again.put(BlockId(f"b{i}", "e", 0), b"b" * 4096)
        assert again.used() <= again.capacity()
    assert again.validated(0) and again.stats()["evictions"] > 0
    assert again.get(BlockId("b799", "e", 0)) == b"b" * 4096
    assert again.stats()["blocks"] == len(again.policy)
    again.close()


@pytest.mark.parametrize("policy_cls", [SlotS3FIFO, SlotLRU])
def test_bulk_insert_at_restart_equals_inserting_one_by_one(policy_cls):
    import numpy as np

    rng = random.Random(5)
    slots = np.array(rng.sample(range(5000), 3000), np.int64)
    sizes = np.array([rng.randrange(1, 90) for _ in slots], np.int64)
    idents = np.array([rng.randrange(1, 1 << 40) for _ in slots], np.int64)
    one, bulk = policy_cls(), policy_cls()
    for policy in (one, bulk):  # a few already there (written since open), one evicted into the ghost
        for slot in (7001, 7002, 7003):
            policy.on_insert(slot, 5, ident=int(idents[0]) if slot == 7001 else slot)
        policy.victims(5)
    for slot, size, ident in zip(slots.tolist(), sizes.tolist(), idents.tolist(), strict=True):
        one.on_insert(slot, size, ident)
    bulk.insert_many(slots, sizes, idents)
    assert len(one) == len(bulk) and one.tracked_bytes == bulk.tracked_bytes
    for need in (500, 3000, 20000):
        assert bulk.victims(need) == one.victims(need)


def test_put_many_loads_in_bulk_and_reads_back_after_restart(tmp_path, meta):
    ssd = SsdTier(tmp_path / "regions", 6 << 20, meta)
    assert ssd.validated(10)
    first = BlockId("x/0", "e", 0)
    assert ssd.put(first, b"0" * 900)
    items = [(BlockId(f"x/{i}", "e", 0), bytes([i % 251]) * (2400 + i % 200)) for i in range(3000)]
    batch = items + items[:5]  # one already resident, five twice; batches well under the capacity
    admitted = ssd.put_many(batch[:1500])  # more buffers than one pwritev takes
    admitted += sum(ssd.put_many(batch[i:i + 500]) for i in range(1500, len(batch), 500))
    assert 2999 <= admitted <= 3004 and ssd.used() <= ssd.capacity() and ssd.stats()["evictions"] > 0
    assert ssd.get(items[-1][0]) == items[-1][1] and ssd.stats()["blocks"] == len(ssd.policy)
    ssd.close()
    again = SsdTier(tmp_path / "regions", 6 << 20, meta)
    assert again.get(items[-1][0]) == items[-1][1]
    assert again.validated(30) and again.stats()["blocks"] == len(again.policy)
    assert all(again.get(b) in (None, d) for b, d in items[::7])
    again.close()
