"""Plan-aware eviction: with the loader's read plan, evict the block whose next use is farthest away.

The DataLoader knows the order in which this epoch (and the next) will read files; given that plan,
the optimal choice is Belady's: drop the block needed last. Blocks of keys not in the plan go first.
The reader's position in the plan is learned from reads (``observe_read`` under the tier's lock, or
``note_read`` from any thread: queued and applied at the next insert or eviction), with a slack window
because parallel loader threads read a little out of order. Without a plan the policy behaves exactly
like its fallback (the scan-resistant default), which it keeps in step at all times.
"""

from __future__ import annotations

import heapq
import itertools
import math
from bisect import bisect_left
from collections import defaultdict, deque
from collections.abc import Callable, Hashable, Sequence

from .policy import Policy, Protected, S3FIFOPolicy, _never, register_policy


def key_of(block: Hashable) -> str:
    """The object key of a block id (BlockId.key), or the block itself for plain traces."""
    return getattr(block, "key", block)


class PlanCursor:
    """A reader's position in a plan, learned from its reads; answers "when is this key read next?".

    Reading a key consumes its first occurrence not yet consumed near the position; the position only
    moves forward. ``slack`` tolerates readers (parallel loader threads) running a little out of order:
    occurrences up to ``slack`` behind the position still count as upcoming until consumed.
    """

    def __init__(self, slack: int = 256) -> None:
        self.slack = slack
        self.plan: tuple[str, ...] = ()
        self.position = 0
        self._occurrences: dict[str, list[int]] = {}
        self._consumed: dict[str, int] = {}

    def set_plan(self, keys_in_order: Sequence[str]) -> None:
        """Start following a new plan from its beginning."""
        self.plan = tuple(keys_in_order)
        occurrences: dict[str, list[int]] = defaultdict(list)
        for index, key in enumerate(self.plan):
            occurrences[key].append(index)
        self._occurrences = dict(occurrences)
        self._consumed = {}
        self.position = 0

    def observe(self, key: str) -> tuple[int, int] | None:
        """The reader read ``key``; returns (old, new) position, or None if the read is not in the plan."""
        positions = self._occurrences.get(key)
        if not positions:
            return None
        i = self._next_index(key, positions)
        if i == len(positions) or positions[i] >= self.position + 4 * self.slack + 64:
            return None  # not near the reader: a stray read, not progress through the plan
        self._consumed[key] = positions[i]
        old = self.position
        self.position = max(old, positions[i] + 1)
        return old, self.position

    def _next_index(self, key: str, positions: list[int]) -> int:
        floor = max(self.position - self.slack, self._consumed.get(key, -1) + 1)
        return bisect_left(positions, floor)

    def next_use(self, key: str) -> float:
        """Plan index of the next read of ``key`` (inf if none)."""
        positions = self._occurrences.get(key)
        if not positions:
            return math.inf
        i = self._next_index(key, positions)
        return positions[i] if i < len(positions) else math.inf


class PlanAwarePolicy(Policy):
    """Farthest-next-use eviction under a plan; ``fallback`` (S3-FIFO) when there is none."""

    name = "plan"

    def __init__(self, fallback: Callable[[], Policy] = S3FIFOPolicy, slack: int = 256) -> None:
        super().__init__()
        self.fallback = fallback()
        self.cursor = PlanCursor(slack)
        self._sizes: dict[Hashable, int] = {}
        # key → its one resident block, or a set of them (most objects are one block: no set per key)
        self._by_key: dict[str, Hashable | set[Hashable]] = {}
        self._next: dict[Hashable, float] = {}
        self._heap: list[tuple[float, int, Hashable]] = []
        self._seq = itertools.count()
        self._bytes = 0
        self._reads: deque[str] = deque(maxlen=1 << 16)

    # -- plan and position -------------------------------------------------------------------------
    def _plan_changed(self) -> None:
        self._reads.clear()
        self.cursor.set_plan(self.plan)
        self._rebuild()

    def note_read(self, key: str) -> None:
        """Like ``observe_read`` but safe without the tier's lock: applied at the next insert or eviction."""
        if self.plan:
            self._reads.append(key)

    def _apply_reads(self) -> None:
        while self._reads:
            try:
                key = self._reads.popleft()
            except IndexError:
                return
            self.observe_read(key)

    def observe_read(self, key: str) -> None:
        """The reader read ``key``: re-rank the blocks whose next use just moved."""
        moved = self.cursor.observe(key)
        if moved is None:
            return
        slack = self.cursor.slack
        passed = self.plan[max(0, moved[0] - slack):max(0, moved[1] - slack)]
        for passed_key in set(passed) | {key}:
            for block in self._blocks_of(passed_key):
                self._push(block)

    def next_use(self, key: str) -> float:
        """Plan index of the next read of ``key`` at the current position (inf if none)."""
        return self.cursor.next_use(key)

    def _blocks_of(self, key: str) -> tuple[Hashable, ...] | set[Hashable]:
        held = self._by_key.get(key)
        if held is None:
            return ()
        return set(held) if isinstance(held, set) else (held,)

    def _push(self, block: Hashable) -> None:
        nxt = self.next_use(key_of(block))
        self._next[block] = nxt
        heapq.heappush(self._heap, (-nxt, next(self._seq), block))

    def _rebuild(self) -> None:
        """Re-rank every resident block (a new plan): one heapify, not a push per block."""
        entries = []
        for block in self._sizes:
            nxt = self._next[block] = self.next_use(key_of(block))
            entries.append((-nxt, next(self._seq), block))
        heapq.heapify(entries)
        self._heap = entries

    # -- bookkeeping ---------------------------------------------------------------------------------
    def on_insert(self, block: Hashable, size: int) -> None:
        """Track a resident block (and tell the fallback)."""
        old = self._sizes.get(block)
        self._bytes += size - (old or 0)
        self._sizes[block] = size
        key = key_of(block)
        held = self._by_key.get(key)
        if held is None or held == block:
            self._by_key[key] = block
        elif isinstance(held, set):
            held.add(block)
        else:
            self._by_key[key] = {held, block}
        self.fallback.on_insert(block, size)
        if self.plan:
            self._apply_reads()
            self._push(block)

    def on_access(self, block: Hashable) -> None:
        """A hit: only the fallback cares (the plan already says when the block is needed)."""
        self.fallback.on_access(block)

    def on_remove(self, block: Hashable) -> None:
        """Forget a block."""
        self._forget(block)
        self.fallback.on_remove(block)

    def _forget(self, block: Hashable) -> None:
        size = self._sizes.pop(block, None)
        if size is None:
            return
        self._bytes -= size
        self._next.pop(block, None)
        key = key_of(block)
        held = self._by_key.get(key)
        if isinstance(held, set):
            held.discard(block)
            if len(held) == 1:
                self._by_key[key] = next(iter(held))
        elif held == block:
            del self._by_key[key]

    def victims(self, bytes_needed: int, protected: Protected | None = None) -> list[Hashable]:
        """Farthest next use first (keys not in the plan before all others); fallback without a plan."""
        if not self.plan:
            out = self.fallback.victims(bytes_needed, protected)
            for block in out:
                self._forget(block)
            return out
        self._apply_reads()
        protected = protected or _never
        out, kept, freed = [], [], 0
        while freed < bytes_needed and self._heap:
            entry = heapq.heappop(self._heap)
            neg_next, _, block = entry
            if block not in self._sizes or self._next.get(block) != -neg_next:
                continue  # stale entry
            if protected(block):
                kept.append(entry)
                continue
            freed += self._sizes[block]
            out.append(block)
            self._forget(block)
            self.fallback.on_remove(block)
        for entry in kept:
            heapq.heappush(self._heap, entry)
        if len(self._heap) > 4 * len(self._sizes) + 1024:
            self._rebuild()
        return out

    def __contains__(self, block: Hashable) -> bool:
        return block in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    @property
    def tracked_bytes(self) -> int:
        """Bytes of the resident blocks."""
        return self._bytes


class BeladyPolicy(PlanAwarePolicy):
    """Belady's MIN for offline traces: the plan is the whole future trace, read exactly in order.

    Used by bench/hit_rate.py as the optimum; call ``observe_read`` before each access.
    """

    name = "belady"

    def __init__(self) -> None:
        super().__init__(slack=0)


register_policy("plan", PlanAwarePolicy)


def replay_epochs(
    policy: Policy, epochs: Sequence[Sequence[Hashable]], capacity: int, plan_ahead: bool = True
) -> tuple[float, int]:
    """Replay training epochs of unit-size items through ``policy`` over a cache of ``capacity`` items, the
    way the DataLoader drives a mount: with ``plan_ahead``, a plan-aware policy gets this epoch's order plus
    the next at each epoch start (a BeladyPolicy is expected to hold the whole future already). Returns
    (hit rate, the most items ever held)."""
    planned = isinstance(policy, PlanAwarePolicy)
    hits = total = peak = 0
    for e, order in enumerate(epochs):
        if plan_ahead and planned and not isinstance(policy, BeladyPolicy):
            policy.set_plan([*order, *(epochs[e + 1] if e + 1 < len(epochs) else [])])
        for key in order:
            total += 1
            if planned:
                policy.observe_read(key)
            if key in policy:
                hits += 1
                policy.on_access(key)
                continue
            if policy.tracked_bytes + 1 > capacity:
                policy.victims(policy.tracked_bytes + 1 - capacity)
            policy.on_insert(key, 1)
            peak = max(peak, policy.tracked_bytes)
    return (hits / total if total else 0.0), peak
