"""Offline trace replay for the eviction policies: ``simulate``, Belady's MIN, and training-epoch replays.

Not part of the engine: the benchmarks (hit_rate.py, engine.py) and the policy tests use these to compare
policies on traces of unit-size items, without I/O.

- :func:`simulate`: a plain trace through any policy.
- :func:`belady`: Belady's MIN (the optimum) for a trace known in full.
- :func:`shard_epochs`: K readers' orders per epoch the way torch's DistributedSampler makes them
  (a seeded permutation per epoch, padded to a multiple of K, ``rank::K``).
- :func:`replay_readers`: K readers read their shards concurrently (interleaved); a plan-aware policy gets
  each reader's plan (this epoch and the next) as its own client at each of that reader's epoch starts,
  as the DataLoader sends them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Iterable, Sequence

from tiercache.plans import PlanBook
from tiercache.tiers.planned import PlanAwarePolicy
from tiercache.tiers.policy import Policy, Protected

__all__ = ["belady", "merged_trace", "replay", "replay_readers", "shard_epochs", "simulate"]


def simulate(
    policy: Policy,
    trace: Iterable[Hashable],
    capacity: int,
    size: Callable[[Hashable], int] | int = 1,
    protected: Protected | None = None,
) -> float:
    """Replay ``trace`` through ``policy`` over a tier of ``capacity`` bytes; returns the hit rate."""
    sizer = size if callable(size) else (lambda _b, _s=size: _s)
    hits = total = 0
    for block in trace:
        total += 1
        if block in policy:
            hits += 1
            policy.on_access(block)
            continue
        need = sizer(block)
        if need > capacity:
            continue
        over = policy.tracked_bytes + need - capacity
        if over > 0:
            policy.victims(over, protected)
            if policy.tracked_bytes + need > capacity:
                continue
        policy.on_insert(block, need)
    return hits / total if total else 0.0


def belady(trace: Sequence[Hashable]) -> PlanAwarePolicy:
    """Belady's MIN for ``trace``: one plan that is the whole future, followed exactly (no slack)."""
    policy = PlanAwarePolicy(PlanBook(slack=0))
    policy.set_plan(list(trace), "trace")
    return policy


def replay(policy: Policy, trace: Sequence[Hashable], capacity: int,
           plans: Callable[[int], Iterable[tuple[str, Sequence[str]]]] | None = None) -> tuple[float, int]:
    """Unit-size ``trace`` through ``policy`` over ``capacity`` items; plan-aware policies see every read.

    ``plans(i)`` lists the (client, keys) plans to send just before read ``i``. Returns (hit rate, the most
    items ever held).
    """
    planned = isinstance(policy, PlanAwarePolicy)
    hits = peak = 0
    for i, key in enumerate(trace):
        if planned and plans is not None:
            for client, keys in plans(i):
                policy.set_plan(keys, client)
        hit = key in policy
        if planned:
            policy.book.observe(key, hit)
        if hit:
            hits += 1
            policy.on_access(key)
            continue
        if policy.tracked_bytes + 1 > capacity:
            policy.victims(policy.tracked_bytes + 1 - capacity)
        policy.on_insert(key, 1)
        peak = max(peak, policy.tracked_bytes)
    return (hits / len(trace) if len(trace) else 0.0), peak


def shard_epochs(items: int, epochs: int, readers: int, seed: int = 0, prefix: str = "train/") -> list[list[list[str]]]:
    """``[epoch][rank]`` orders: a seeded permutation per epoch, padded to a multiple of ``readers`` with
    its head, each rank taking ``rank::readers`` (torch's DistributedSampler with shuffle, drop_last=False)."""
    keys = [f"{prefix}{i:07d}.jpg" for i in range(items)]
    out = []
    for epoch in range(epochs):
        order = list(keys)
        random.Random(seed * 1000003 + epoch).shuffle(order)
        total = -(-items // readers) * readers
        order += order[:total - items]
        out.append([order[rank::readers] for rank in range(readers)])
    return out


def merged_trace(shards: list[list[list[str]]], jitter: float = 0.0, seed: int = 0) -> tuple[list[str], list[tuple]]:
    """The readers' shards interleaved round-robin (each reader at its own pace with ``jitter``), epoch
    after epoch per reader; returns the trace and, per read, (rank, epoch, index in that epoch)."""
    rng = random.Random(seed)
    readers = len(shards[0])
    cursors = [(0, 0)] * readers  # (epoch, index)
    clocks = [0.0] * readers
    trace, where = [], []
    while True:
        live = [r for r in range(readers) if cursors[r][0] < len(shards)]
        if not live:
            return trace, where
        rank = min(live, key=lambda r: clocks[r])
        epoch, index = cursors[rank]
        trace.append(shards[epoch][rank][index])
        where.append((rank, epoch, index))
        clocks[rank] += 1.0 + (rng.uniform(-jitter, jitter) if jitter else 0.0)
        index += 1
        cursors[rank] = (epoch + 1, 0) if index == len(shards[epoch][rank]) else (epoch, index)


def replay_readers(policy: Policy, shards: list[list[list[str]]], capacity: int, jitter: float = 0.0,
                   seed: int = 0) -> tuple[float, list[str]]:
    """The K readers of ``shards`` through ``policy`` (plans as the loaders send them); (hit rate, trace)."""
    trace, where = merged_trace(shards, jitter, seed)

    def plans(i: int) -> list[tuple[str, Sequence[str]]]:
        rank, epoch, index = where[i]
        if index:
            return []
        following = shards[epoch + 1][rank] if epoch + 1 < len(shards) else []
        return [(f"rank{rank}", [*shards[epoch][rank], *following])]

    return replay(policy, trace, capacity, plans)[0], trace
