"""The pending changes in memory (``Changes``): the write journal's records in log order per key, and
which change may run next. The records on disk are ``journal.Journal``'s."""

from __future__ import annotations

import heapq
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable

from .journal import COPY, DELETE, PENDING, PUT, Record


class Changes:
    """The pending changes in memory, in log (sequence) order per key, and which change may run next.

    Every change touching a key runs after the older changes touching it, so the store ends as the log says.
    A newer change writing a key retires older ones writing it, unless a copy reads the key in between; a
    rename re-points a pending upload (it holds its bytes locally) but chains copies (a copy reads its source
    at its place in the log, so copies are never moved).

    Not locked itself: call every method with ``cond`` (the owner's lock) held. ``on_live(path, +1/-1)``
    reports a path starting or ceasing to be written by a pending upload or copy (for listings).
    """

    def __init__(self, cond: threading.Condition, on_live: Callable[[str, int], None]):
        self.cond = cond
        self.on_live = on_live
        self.records: dict[str, Record] = {}
        self.index: dict[str, list[Record]] = {}  # key → changes touching it, oldest first
        self.queue: OrderedDict[str, None] = OrderedDict()  # ids waiting to run
        self.delayed: list[tuple[float, int, str]] = []  # heap of (due, seq, id) after failures
        self.busy: Counter[str] = Counter()  # keys with a store operation in flight
        self.inflight = 0
        self.seq = 0
        self.put_bytes = 0  # bytes of staging files held by records
        self.progress = 0  # bumps whenever a change leaves
        self._live: set[str] = set()

    def new_id(self) -> str:
        """A fresh record/staging id (ids increase)."""
        self.seq += 1
        return f"{self.seq:016x}"

    def next_seq(self) -> int:
        """A fresh sequence number (the newest so far)."""
        self.seq += 1
        return self.seq

    def add(self, op: str, key: str, rid: str = "", **fields) -> Record:
        """A new newest change of ``key``, queued; the caller supersedes older ones first and journals it."""
        self.seq += 1
        rec = Record(id=rid or f"{self.seq:016x}", op=op, key=key, seq=self.seq, **fields)
        self.insert(rec)
        return rec

    def insert(self, rec: Record) -> None:
        """Index and queue a record (new, or loaded from the journal in sequence order)."""
        self.seq = max(self.seq, rec.seq, int(rec.id, 16))
        self.records[rec.id] = rec
        for key in rec.keys():
            self.index.setdefault(key, []).append(rec)
        self._refresh(rec.key)
        if rec.op == PUT:
            self.put_bytes += rec.charged
        self.queue[rec.id] = None
        self.cond.notify_all()

    def rekey(self, rec: Record, new: str) -> None:
        """Point a pending upload at ``new`` (rename): it becomes the newest change of ``new``."""
        assert rec.op == PUT
        old = rec.key
        self._unindex(rec)
        self.seq += 1
        rec.key, rec.seq, rec.state = new, self.seq, PENDING
        self.index.setdefault(new, []).append(rec)
        self._refresh(old)
        self._refresh(new)

    def current(self, path: str, before: int | None = None) -> Record | None:
        """The newest change writing ``path`` (older than sequence ``before``, if given)."""
        for rec in reversed(self.index.get(path, ())):
            if rec.key == path and (before is None or rec.seq < before):
                return rec
        return None

    def supersede(self, key: str) -> list[Record]:
        """Retire the changes writing ``key`` that a newer one makes moot (no copy reads ``key`` after them);
        returns them, for the caller to drop from the journal with the newer change. One in flight stays in
        memory until its runner returns (``Journal.discard`` leaves its staging file alone until then)."""
        retired, recs = [], self.index.get(key, [])
        for i, rec in enumerate(list(recs)):
            if rec.key != key or any(r.op == COPY and r.src == key for r in recs[i + 1:]):
                continue
            rec.superseded = True
            self._unindex(rec)
            self.queue.pop(rec.id, None)
            if not rec.inflight:
                self.forget(rec)
            retired.append(rec)
        self._refresh(key)
        return retired

    def forget(self, rec: Record) -> Record:
        """Remove a finished or dropped record from memory (not from the journal)."""
        if not rec.done:
            rec.done = True
            self._unindex(rec)
            self._refresh(rec.key)
            self.queue.pop(rec.id, None)
            self.records.pop(rec.id, None)
            if rec.op == PUT:
                self.put_bytes -= rec.charged
            self.progress += 1
            self.cond.notify_all()
        return rec

    def runnable(self, rec: Record) -> bool:
        """No store operation in flight on ``rec``'s keys and nothing ordered before it."""
        return all(not self.busy[k] and self.index.get(k, [None])[0] is rec for k in rec.keys())

    def claim(self, rec: Record, extra: str = "") -> None:
        """Mark ``rec`` running (or, with ``extra``, one more key it now writes)."""
        keys = [extra] if extra else list(rec.keys())
        if not extra:
            self.queue.pop(rec.id, None)
            rec.inflight = True
            self.inflight += 1
        rec.claimed += keys
        self.busy.update(keys)

    def unclaim(self, rec: Record) -> None:
        """``rec`` stopped running."""
        self.busy.subtract(rec.claimed)
        self.busy = +self.busy
        rec.inflight, rec.claimed = False, []
        self.inflight -= 1
        self.cond.notify_all()

    def next_ready(self, now: float) -> Record | None:
        """Claim and return the oldest change that may run now, or None."""
        while self.delayed and self.delayed[0][0] <= now:
            rec = self.records.get(heapq.heappop(self.delayed)[2])
            if rec is not None and not rec.inflight and not rec.superseded:
                self.queue[rec.id] = None
        for rid in self.queue:
            rec = self.records[rid]
            if rec.next_try <= now and self.runnable(rec):
                self.claim(rec)
                return rec
        return None

    def next_due(self) -> float | None:
        """When the earliest delayed change becomes due (monotonic), if any."""
        return self.delayed[0][0] if self.delayed else None

    def delay(self, rec: Record, due: float) -> None:
        """Retry ``rec`` no sooner than ``due`` (monotonic)."""
        rec.next_try = due
        self.queue.pop(rec.id, None)
        heapq.heappush(self.delayed, (due, rec.seq, rec.id))

    def retry_now(self, recs: list[Record]) -> None:
        """Make delayed changes due now, queue order kept by sequence."""
        for rec in recs:
            if not rec.inflight and not rec.done:
                rec.next_try = 0.0
                self.queue[rec.id] = None
        self.queue = OrderedDict(sorted(self.queue.items(), key=lambda kv: self.records[kv[0]].seq))
        self.cond.notify_all()

    def blocked_by_failure(self, rec: Record) -> bool:
        """A change ordered before ``rec`` failed and waits for its retry."""
        for key in rec.keys():
            for before in self.index.get(key, ()):
                if before is rec:
                    break
                if before.fails and not before.inflight:
                    return True
        return False

    def _unindex(self, rec: Record) -> None:
        for key in rec.keys():
            recs = self.index.get(key, [])
            if rec in recs:
                recs.remove(rec)
                if not recs:
                    del self.index[key]

    def _refresh(self, path: str) -> None:
        """Report ``path`` to ``on_live`` when whether its newest change writes it (upload or copy) flips."""
        rec = self.current(path)
        live = rec is not None and rec.op != DELETE
        if live != (path in self._live):
            if live:
                self._live.add(path)
            else:
                self._live.discard(path)
            self.on_live(path, +1 if live else -1)
