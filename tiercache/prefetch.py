"""Prefetch: plan prefetch by deadline within one lead budget, and hinted whole-file prefetch.

The prefetcher never sees the store, the tiers or the cache: the composition root hands it callables
(``resident(block)``, ``load(info, blocks)``, ``lookup(key)``) and the shared PlanBook. Sequential
read-ahead per file is :mod:`.readahead`.

- **Plans**: a background thread starts whole-file fetches for the live plans, always the entry with the
  nearest predicted next use over all plans (deadline first), at most ``threads`` at a time. Each plan's
  lead (:class:`PlanLead`: its own cursor, at or past the reader's position) is at most ``lead_files``
  files, and all leads together at most ``lead_bytes`` (default half the RAM tier): prefetched blocks land
  in the RAM tier and plan-aware eviction keeps them because their next use is near.

Counters: prefetched bytes, those read since (and those never read), and each plan's lead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .blocks import BlockMap
from .plans import Plan, PlanBook
from .store import ObjectInfo
from .tiers.base import BlockId

log = logging.getLogger(__name__)

__all__ = ["HintedPrefetch", "PlanLead", "Prefetcher"]


@dataclass
class PlanLead:
    """The prefetcher's cursor in one plan: ``plan.position <= next_index``; files fetched ahead."""

    plan: Plan
    next_index: int
    ahead: deque = field(default_factory=deque)  # (plan index, bytes) of files fetched ahead, oldest first
    ahead_bytes: int = 0

    def trim(self) -> None:
        """Forget the files the reader has passed."""
        position = self.plan.position
        while self.ahead and self.ahead[0][0] < position:
            self.ahead_bytes -= self.ahead.popleft()[1]
        self.next_index = max(self.next_index, position)


class Prefetcher:
    """Plan prefetch; the cache calls ``wake`` on plan moves and ``mark_read`` on every block served."""

    MAX_TRACKED = 1 << 20  # prefetched-but-unread blocks remembered for the "never read" counter

    def __init__(
        self,
        book: PlanBook,
        blocks: BlockMap,
        ram_bytes: int,
        resident: Callable[[BlockId], bool],
        load: Callable[[ObjectInfo, list[BlockId]], None],
        lookup: Callable[[str], ObjectInfo],
        threads: int = 8,
        lead_files: int = 256,
        lead_bytes: int | None = None,
    ):
        self.book = book
        self.blocks = blocks
        self.resident, self.load, self.lookup = resident, load, lookup
        bs = blocks.block_size
        self.lead_files = lead_files
        self.lead_bytes = lead_bytes if lead_bytes is not None else max(ram_bytes // 2, bs)
        self.parallel = max(1, threads)
        self._pool = ThreadPoolExecutor(self.parallel, thread_name_prefix="tiercache-plan-fetch")
        self._lock = threading.Condition()
        self._unread: dict[BlockId, int] = {}  # prefetched, not read yet (insertion order: oldest first)
        self._forgotten_unread = 0
        self._in_flight = 0
        self._leads: dict[str, PlanLead] = {}
        self._closed = False
        self.prefetched_bytes = self.used_bytes = 0
        self._thread = threading.Thread(target=self._plan_loop, name="tiercache-plan-prefetch", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ called by the cache

    def wake(self) -> None:
        """A plan arrived, ended or moved: look for work."""
        with self._lock:
            self._lock.notify_all()

    def mark_read(self, block: BlockId) -> None:
        """A reader was served ``block``: if it was prefetched, it was worth it."""
        if self._unread:
            with self._lock:
                size = self._unread.pop(block, None)
                if size is not None:
                    self.used_bytes += size

    def _fetch_blocks(self, blocks: list[BlockId], info: ObjectInfo) -> None:
        try:
            missing = [b for b in blocks if not self.resident(b)]
            if missing:
                self.load(info, missing)
                sizes = {b: self.blocks.length(info, b) for b in missing}
                nbytes = sum(sizes.values())
                with self._lock:
                    self.prefetched_bytes += nbytes
                    self._unread.update(sizes)
                    while len(self._unread) > self.MAX_TRACKED:  # bounded memory: the oldest stay unread
                        self._forgotten_unread += self._unread.pop(next(iter(self._unread)))
        except Exception as exc:  # noqa: BLE001 - prefetch is best effort; the reader will fetch itself
            log.debug("prefetch of %s failed: %s", info.key, exc)

    # ------------------------------------------------------------------ plan prefetch

    def _sync_leads(self) -> None:
        """One lead per live plan (a replaced plan starts a new lead at its reader's position)."""
        plans = {p.client: p for p in self.book.plans()}
        leads = {}
        for client, plan in plans.items():
            lead = self._leads.get(client)
            if lead is None or lead.plan is not plan:
                lead = PlanLead(plan, plan.position)
            lead.trim()
            leads[client] = lead
        self._leads = leads

    def _pick(self) -> PlanLead | None:
        """The lead whose next entry is due soonest, if the budget allows one more fetch."""
        self._sync_leads()
        if self._in_flight >= self.parallel:
            return None
        if sum(lead.ahead_bytes for lead in self._leads.values()) >= self.lead_bytes:
            return None
        best, due = None, float("inf")
        clock = self.book.clock
        for lead in self._leads.values():
            plan = lead.plan
            if lead.next_index >= len(plan) or lead.next_index - plan.position >= self.lead_files:
                continue
            when = plan.predicted(lead.next_index, clock)
            if when < due:
                best, due = lead, when
        return best

    def _plan_loop(self) -> None:
        last_expiry = time.monotonic()
        while True:
            with self._lock:
                lead = None
                while not self._closed:
                    if time.monotonic() - last_expiry > 1.0:  # idle plans end (busy or not)
                        last_expiry = time.monotonic()
                        self.book.expire()
                    lead = self._pick()
                    if lead is not None:
                        break
                    self._lock.wait(0.5)
                if self._closed:
                    return
                index = lead.next_index
                lead.next_index += 1
                key = self.book.table.key(int(lead.plan.ids[index]))
                self._in_flight += 1
            try:
                info = self.lookup(key)
            except Exception as exc:  # noqa: BLE001 - a planned file may be gone; skip it
                log.debug("plan prefetch: %s: %s", key, exc)
                self._done()
                continue
            with self._lock:
                lead.ahead.append((index, info.size))
                lead.ahead_bytes += info.size
            try:
                self._pool.submit(self._plan_fetch, info)
            except RuntimeError:  # closed
                return

    def _plan_fetch(self, info: ObjectInfo) -> None:
        try:
            self._fetch_blocks(self.blocks.ids(info), info)
        finally:
            self._done()

    def _done(self) -> None:
        with self._lock:
            self._in_flight -= 1
            self._lock.notify_all()

    # ------------------------------------------------------------------ reporting and lifecycle

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until nothing is in flight and every lead is used up (or its plan done); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._in_flight or self._pick() is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.05))
            return True

    def leads(self) -> dict[str, tuple[int, int]]:
        """Per client: (files, bytes) prefetched ahead of its reader."""
        with self._lock:
            self._sync_leads()
            return {c: (max(0, lead.next_index - lead.plan.position), lead.ahead_bytes)
                    for c, lead in self._leads.items()}

    def stats(self) -> dict:
        """Prefetched bytes, how many were read since, and the leads ahead of the readers (all plans)."""
        leads = self.leads()
        with self._lock:
            return {
                "prefetched_bytes": self.prefetched_bytes,
                "prefetched_read_bytes": self.used_bytes,
                "prefetched_unread_bytes": sum(self._unread.values()) + self._forgotten_unread,
                "in_flight": self._in_flight,
                "lead_files": sum(files for files, _ in leads.values()),
                "lead_bytes": sum(nbytes for _, nbytes in leads.values()),
            }

    def close(self) -> None:
        """Stop the plan thread and its fetch pool."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=True, cancel_futures=True)


class HintedPrefetch:
    """``TieredCache.prefetch``: whole files fetched in the background by key, skipped past a deadline."""

    def __init__(self, load_key: Callable[[str], None], threads: int, counters: object):
        self.load_key = load_key
        self.counters = counters
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="tiercache-prefetch")
        self._lock = threading.Lock()
        self.pending = 0

    def submit(self, keys: Iterable[str], deadline: float | None = None) -> None:
        """Queue ``keys``; ``deadline`` (a ``time.monotonic()`` instant): keys not started by then are skipped."""
        for key in keys:
            with self._lock:
                self.pending += 1
            try:
                self._pool.submit(self._one, key, deadline)
            except RuntimeError:  # closed
                with self._lock:
                    self.pending -= 1
                return

    def _one(self, key: str, deadline: float | None) -> None:
        try:
            if deadline is not None and time.monotonic() > deadline:
                self.counters.add("prefetch_expired")
                return
            self.load_key(key)
            self.counters.add("prefetched")
        except Exception as exc:  # noqa: BLE001 - prefetch is best effort
            self.counters.add("prefetch_errors")
            log.debug("prefetch %s failed: %s", key, exc)
        finally:
            with self._lock:
                self.pending -= 1

    def stats(self) -> dict:
        """Done, pending, expired and failed hinted prefetches."""
        c = self.counters.get
        return {"done": c("prefetched"), "pending": self.pending, "expired": c("prefetch_expired"),
                "errors": c("prefetch_errors")}

    def close(self) -> None:
        """Drop what has not started; wait for what has."""
        self._pool.shutdown(wait=True, cancel_futures=True)
