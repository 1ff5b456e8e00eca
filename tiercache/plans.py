"""Plans and positions: every reader's order of files, as integer arrays, and where each reader stands in it.

A :class:`Plan` is one client's order (a DataLoader rank, the val loader, ``tiercache plan --client``):

* ``ids``: the files as KeyTable ids, int32, in read order;
* ``occ``: ``id << 32 | index`` for every entry, sorted (int64): "the next read of this key at or after
  index i" is one binary search;
* ``consumed``: one byte per entry, set when the reader was seen reading it.

That is 13 bytes per entry, built once outside every lock (:meth:`PlanBook.build`) and swapped in by
reference. Cursors, with the invariant ``0 <= position <= len`` and ``position - slack <= every index still
counted as upcoming``:

* ``position`` (the reader): one past the furthest entry consumed; a read consumes the first unconsumed
  occurrence of its key at or after ``position - slack`` (parallel loader threads read a little out of
  order), and only if it lies within ``4 * slack + 64`` of the position (else it is a stray read);
* the prefetcher keeps its own cursor per plan (``prefetch.PlanLead``), at or past ``position``.

:class:`PlanBook` holds the live plans, one per client: a client's new plan replaces only its own; a plan
ends when its client says so, its control connection closes (``bound``), or it is idle past
``idle_timeout``. Plans advance at their own readers' pace. To compare them, the book keeps a clock (one
tick per read that matched a plan) and each plan's rate (entries per tick, a moving estimate); the next use
of a key is the earliest *predicted tick* over all plans: ``clock + (index - position) / rate``. With one
plan that is its index plus a constant, so the ranking is exactly farthest-next-use.

Eviction policies learn what changed from an event log (ids of keys consumed, or passed by a position
without a read) and from ``generation``, which moves whenever the set of plans changes.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .keybatch import KeyBatch
from .keytable import KeyTable

__all__ = ["Plan", "PlanBook", "PlanStats"]

_INDEX_MASK = (1 << 32) - 1
_RATE_WINDOW = 64  # clock ticks between rate updates


@dataclass(frozen=True)
class PlanStats:
    """One plan as ``stats`` shows it."""

    client: str
    files: int
    position: int
    reads: int
    hits: int
    hit_rate: float
    started: float
    idle_s: float
    bound: bool
    rate: float
    note: str


class Plan:
    """One client's read order (see the module docstring); mutated only under the PlanBook's lock."""

    def __init__(self, client: str, ids: np.ndarray, slack: int = 256, bound: object = None, note: str = ""):
        n = len(ids)
        if n >= 1 << 31:
            raise ValueError("a plan holds fewer than 2**31 entries")
        self.client = client
        self.ids = np.ascontiguousarray(ids, dtype=np.int32)
        occ = (self.ids.astype(np.int64) << 32) | np.arange(n, dtype=np.int64)
        occ.sort()
        self.occ = occ
        self.consumed = np.zeros(n, dtype=bool)
        self.slack = slack
        self.bound = bound  # the connection the plan lives and dies with (None: idle timeout only)
        self.note = note
        self.position = 0
        self.started = time.time()
        self.last_active = time.monotonic()
        self.reads = self.hits = 0
        self.rate = 1.0
        self._window_moves = 0

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        """Bytes of the plan's arrays."""
        return self.ids.nbytes + self.occ.nbytes + self.consumed.nbytes

    def _first_from(self, key_id: int, floor: int) -> int:
        """Index of the first unconsumed occurrence of ``key_id`` at or after ``floor``; -1 if none."""
        occ = self.occ
        j = int(occ.searchsorted((key_id << 32) | max(0, floor)))
        while j < len(occ):
            entry = int(occ[j])
            if entry >> 32 != key_id:
                return -1
            index = entry & _INDEX_MASK
            if not self.consumed[index]:
                return index
            j += 1
        return -1

    def next_index(self, key_id: int) -> int:
        """Plan index of the next read of ``key_id`` (-1 if none)."""
        return self._first_from(key_id, self.position - self.slack)

    def observe(self, key_id: int) -> tuple[int, int] | None:
        """The reader read ``key_id``: (old, new) position, or None when the read is not progress here."""
        index = self._first_from(key_id, self.position - self.slack)
        if index < 0 or index >= self.position + 4 * self.slack + 64:
            return None
        self.consumed[index] = True
        old = self.position
        self.position = max(old, index + 1)
        self._window_moves += 1
        self.last_active = time.monotonic()
        return old, self.position

    def passed(self, old: int, new: int) -> np.ndarray:
        """Ids of the entries that left the slack window when the position moved from ``old`` to ``new``."""
        lo, hi = max(0, old - self.slack), max(0, new - self.slack)
        return self.ids[lo:hi][~self.consumed[lo:hi]] if hi > lo else self.ids[:0]

    def predicted(self, index: int, clock: float) -> float:
        """The clock tick at which this plan's reader should reach ``index``."""
        return clock + (index - self.position) / self.rate

    def stats(self) -> PlanStats:
        """A snapshot for ``stats``."""
        return PlanStats(self.client, len(self), self.position, self.reads, self.hits,
                         self.hits / self.reads if self.reads else 0.0, self.started,
                         time.monotonic() - self.last_active, self.bound is not None, self.rate, self.note)


class PlanBook:
    """The live plans, one per client; thread-safe. Readers call ``observe``, policies ``next_use``."""

    def __init__(self, slack: int = 256, idle_timeout: float = 600.0, event_log: int = 1 << 16):
        self.slack = slack
        self.idle_timeout = idle_timeout
        self.table = KeyTable()
        self._plans: dict[str, Plan] = {}  # replaced, never mutated: readers iterate a snapshot
        self._lock = threading.Lock()
        self.clock = 0
        self.generation = 0
        self._events: deque[int] = deque(maxlen=event_log)
        self._seq = 0

    # ---------------------------------------------------------------- plans in, plans out

    def build(self, keys: Sequence[str] | KeyBatch, client: str, bound: object = None, note: str = "") -> Plan:
        """A Plan over ``keys`` (interning them), without taking the book's lock."""
        return Plan(client, self.table.intern(keys), self.slack, bound, note)

    def install(self, plan: Plan) -> Plan | None:
        """Make ``plan`` its client's live plan (an empty one ends it); returns the plan it replaced."""
        with self._lock:
            plans = dict(self._plans)
            old = plans.pop(plan.client, None)
            if len(plan):
                if old is not None:
                    plan.rate = old.rate
                elif plans:
                    plan.rate = 1.0 / (len(plans) + 1)
                plans[plan.client] = plan
            self._plans = plans
            self.generation += 1
            if not plans:
                self.table.clear()
            return old

    def set_plan(self, keys: Sequence[str] | KeyBatch, client: str = "default", bound: object = None,
                 note: str = "") -> Plan:
        """Build and install a plan for ``client`` (keys in read order; empty ends the client's plan)."""
        plan = self.build(keys, client, bound, note)
        self.install(plan)
        return plan

    def end(self, client: str, bound: object = None) -> bool:
        """End ``client``'s plan (only if it is bound to ``bound``, when given); False if there was none."""
        with self._lock:
            plan = self._plans.get(client)
            if plan is None or (bound is not None and plan.bound is not bound):
                return False
            plans = dict(self._plans)
            del plans[client]
            self._plans = plans
            self.generation += 1
            if not plans:
                self.table.clear()
            return True

    def end_bound(self, bound: object) -> list[str]:
        """End every plan bound to ``bound`` (its connection closed); the clients whose plans ended."""
        ended = [p.client for p in self._plans.values() if p.bound is bound]
        return [client for client in ended if self.end(client, bound)]

    def expire(self) -> list[str]:
        """End the unbound plans idle longer than ``idle_timeout``; the clients whose plans ended."""
        now = time.monotonic()
        idle = [p.client for p in self._plans.values() if p.bound is None and now - p.last_active > self.idle_timeout]
        return [client for client in idle if self.end(client)]

    def plans(self) -> list[Plan]:
        """The live plans (a snapshot)."""
        return list(self._plans.values())

    def get(self, client: str) -> Plan | None:
        """``client``'s live plan."""
        return self._plans.get(client)

    def __bool__(self) -> bool:
        return bool(self._plans)

    # ---------------------------------------------------------------- readers

    def observe(self, key: str, hit: bool = True) -> bool:
        """A reader read ``key`` (its first byte): advance the plans it is progress in; True if any."""
        if not self._plans:
            return False
        key_id = self.table.lookup(key)
        if key_id < 0:
            return False
        with self._lock:
            # The read is progress in the plan where it is nearest (in predicted ticks), and in any other
            # plan whose head it is; elsewhere it is a later entry (another rank's next epoch) left alone.
            found = []
            for plan in self._plans.values():
                index = plan.next_index(key_id)
                if index >= 0:
                    found.append((plan.predicted(index, self.clock), index - plan.position, plan))
            if not found:
                return False
            nearest = min(found, key=lambda f: f[0])[2]
            matched = False
            for _, ahead, plan in found:
                if plan is not nearest and ahead >= 8:
                    continue
                moved = plan.observe(key_id)
                if moved is None:
                    continue
                matched = True
                plan.reads += 1
                plan.hits += bool(hit)
                self._log(key_id)
                for passed in plan.passed(*moved).tolist():
                    self._log(passed)
            if matched:
                self.clock += 1
                if self.clock % _RATE_WINDOW == 0:
                    self._update_rates()
        return matched

    def _log(self, key_id: int) -> None:
        self._events.append(key_id)
        self._seq += 1

    def _update_rates(self) -> None:
        floor = 1.0 / (16 * max(1, len(self._plans)))
        for plan in self._plans.values():
            plan.rate = max(floor, 0.5 * plan.rate + 0.5 * plan._window_moves / _RATE_WINDOW)
            plan._window_moves = 0

    # ---------------------------------------------------------------- policies

    def next_use(self, key: str) -> float:
        """The predicted clock tick of the next read of ``key`` over all plans (inf if none)."""
        if not self._plans:
            return math.inf
        return self.next_use_id(self.table.lookup(key))

    def next_use_id(self, key_id: int) -> float:
        """``next_use`` of the key with KeyTable id ``key_id`` (-1: no plan names it)."""
        plans = self._plans
        if key_id < 0 or not plans:
            return math.inf
        best, clock = math.inf, self.clock
        for plan in plans.values():
            index = plan.next_index(key_id)
            if index >= 0:
                best = min(best, plan.predicted(index, clock))
        return best

    def next_use_many(self, keys: Sequence[str]) -> list[float]:
        """``next_use`` of each of ``keys`` (vectorized over the plans' arrays)."""
        if not self._plans or not len(keys):
            return [math.inf] * len(keys)
        return self.next_use_ids(self.table.lookup_many(keys)).tolist()

    def next_use_ids(self, key_ids: np.ndarray) -> np.ndarray:
        """``next_use`` of each KeyTable id in ``key_ids`` (float64; inf for -1), vectorized."""
        plans = list(self._plans.values())
        best = np.full(len(key_ids), np.inf)
        if not plans or not len(key_ids):
            return best
        ids = np.asarray(key_ids).astype(np.int64)
        known = ids >= 0
        clock = self.clock
        for plan in plans:
            floor = max(0, plan.position - plan.slack)
            j = plan.occ.searchsorted((ids << 32) | floor)
            inside = known & (j < len(plan.occ))
            entry = plan.occ[np.minimum(j, len(plan.occ) - 1)]  # installed plans are never empty
            index = entry & _INDEX_MASK
            ok = inside & ((entry >> 32) == ids)
            fresh = ok & ~plan.consumed[index]
            value = clock + (index - plan.position) / plan.rate
            best = np.where(fresh, np.minimum(best, value), best)
            for i in np.flatnonzero(ok & ~fresh).tolist():  # a consumed occurrence: look further (rare)
                later = plan.next_index(int(ids[i]))
                if later >= 0:
                    best[i] = min(best[i], plan.predicted(later, clock))
        return best

    @property
    def seq(self) -> int:
        """Events logged so far."""
        return self._seq

    def events_since(self, seq: int) -> tuple[int, list[int] | None]:
        """(new seq, ids of keys whose next use moved later since ``seq``); None when the log overflowed."""
        with self._lock:
            behind = self._seq - seq
            if behind > len(self._events):
                return self._seq, None
            return self._seq, list(self._events)[len(self._events) - behind:] if behind else []

    def stats(self) -> list[PlanStats]:
        """Every live plan, by client name."""
        with self._lock:
            return [self._plans[c].stats() for c in sorted(self._plans)]

    @property
    def nbytes(self) -> int:
        """Bytes held by the plans' arrays and the key table."""
        return sum(p.nbytes for p in self._plans.values()) + self.table.nbytes
