"""One byte budget for the block data a process holds: the RAM tier's blocks, blocks being fetched or read
from the SSD tier, and the SSD tier's write queue all draw on it, so together they stay within ``--ram``.

``hold(n)`` (reads in flight) waits for room: it first asks the reclaimer (the RAM tier, which evicts and
demotes) and then waits for others to finish, at most ``wait`` seconds, after which it goes ahead and
counts an overdraft rather than fail a read. So that reads never serialize on a tiny budget, the budget is
at least ``floor`` bytes (a few blocks in flight). ``try_reserve`` (RAM admission, the SSD write queue)
never waits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from collections.abc import Callable

Reclaimer = Callable[[int], int]  # asked to free about n bytes; returns bytes freed


class MemoryBudget:
    """A thread-safe byte budget (see the module docstring)."""

    def __init__(self, total: int, floor: int = 0, wait: float = 10.0):
        self.configured = int(total)
        self.total = max(int(total), int(floor))
        self.wait = wait
        self.reclaimer: Reclaimer | None = None
        self._cond = threading.Condition()
        self._used: dict[str, int] = {}
        self._sum = 0  # sum(self._used.values())
        self.peak = 0
        self.waits = self.overdrafts = 0
        self._waiting = 0  # threads in hold's wait for room (release wakes them)

    def used(self, kind: str | None = None) -> int:
        """Bytes reserved (by one kind, or all)."""
        return self._used.get(kind, 0) if kind else self._sum

    def try_reserve(self, nbytes: int, kind: str) -> bool:
        """Reserve ``nbytes`` for ``kind`` if they fit now; never waits."""
        with self._cond:
            if self.used() + nbytes > self.total:
                return False
            self._add(kind, nbytes)
            return True

    def release(self, nbytes: int, kind: str) -> None:
        """Give back what ``try_reserve`` or ``hold`` took."""
        if nbytes:
            with self._cond:
                self._used[kind] = self._used.get(kind, 0) - nbytes
                self._sum -= nbytes
                if self._waiting:
                    self._cond.notify_all()

    def hold(self, nbytes: int, kind: str = "reads") -> _Hold:
        """Reserve ``nbytes`` for the duration of a ``with`` block (waiting for room; see the module
        docstring)."""
        return _Hold(self, nbytes, kind)

    def _reserve(self, nbytes: int, kind: str) -> None:
        deadline = None
        while True:
            with self._cond:
                short = self.used() + nbytes - self.total
                if short <= 0:
                    self._add(kind, nbytes)
                    return
            freed = self.reclaimer(short) if self.reclaimer is not None else 0
            if freed >= short:
                continue
            with self._cond:
                if self.used() + nbytes <= self.total:
                    continue
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.wait
                    self.waits += 1
                if now >= deadline:
                    self.overdrafts += 1
                    self._add(kind, nbytes)
                    return
                self._waiting += 1
                try:
                    self._cond.wait(min(0.05, deadline - now))
                finally:
                    self._waiting -= 1

    def _add(self, kind: str, nbytes: int) -> None:
        self._used[kind] = self._used.get(kind, 0) + nbytes
        self._sum += nbytes
        if self._sum > self.peak:
            self.peak = self._sum

    def stats(self) -> dict:
        """Occupancy by kind, JSON-serializable."""
        with self._cond:
            return {"budget": self.total, "configured": self.configured, "used": self.used(),
                    "peak": self.peak, **{f"used_{k}": v for k, v in self._used.items()},
                    "waits": self.waits, "overdrafts": self.overdrafts}


class _Hold:
    """``MemoryBudget.hold``'s context manager (a plain class: a generator-based one costs several times as
    much, and a 64 KiB read from the SSD tier takes one)."""

    __slots__ = ("budget", "kind", "nbytes")

    def __init__(self, budget: MemoryBudget, nbytes: int, kind: str):
        self.budget, self.nbytes, self.kind = budget, nbytes, kind

    def __enter__(self) -> None:
        self.budget._reserve(self.nbytes, self.kind)  # noqa: SLF001 - this module's own

    def __exit__(self, *exc: object) -> None:
        self.budget.release(self.nbytes, self.kind)


def return_freed_memory_to_the_os(threshold: int = 1 << 20, keep: int | None = None) -> bool:
    """Serve allocations of ``threshold`` bytes and more (blocks, read buffers) straight from mmap, so freed
    ones go back to the OS at once instead of staying in malloc's arenas; ``keep``: free bytes an arena may
    keep on top before giving them back (M_TRIM_THRESHOLD), so buffers allocated and freed over and over
    below the threshold are reused, not faulted in again (glibc only; False elsewhere)."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
        if keep is not None and not libc.mallopt(m_trim_threshold, keep):
            return False
        return bool(libc.mallopt(m_mmap_threshold, threshold)) and bool(libc.mallopt(m_arena_max, 4))
    except (OSError, AttributeError):
        return False
