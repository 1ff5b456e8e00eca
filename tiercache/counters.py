"""Thread-safe counters and a per-second rate, for the cache's stats."""

from __future__ import annotations

import threading
import time

__all__ = ["Counters", "Rate"]


class Counters:
    """Thread-safe integer counters by name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.values: dict[str, int] = {}

    def add(self, name: str, amount: int = 1) -> None:
        """Add ``amount`` to counter ``name``."""
        with self._lock:
            self.values[name] = self.values.get(name, 0) + amount

    def add_two(self, name: str, amount: int, other: str, other_amount: int) -> None:
        """``add`` to two counters at once (one lock hold: the read path's per-read counts)."""
        with self._lock:
            values = self.values
            values[name] = values.get(name, 0) + amount
            values[other] = values.get(other, 0) + other_amount

    def get(self, name: str) -> int:
        """The counter's value (0 if never added to)."""
        return self.values.get(name, 0)


class Rate:
    """Events and bytes per second over the last ``window`` whole seconds (one bucket per second)."""

    def __init__(self, window: int = 5) -> None:
        self.window = window
        self._lock = threading.Lock()
        self._buckets: dict[int, list[int]] = {}

    def add(self, nbytes: int) -> None:
        """One event of ``nbytes`` bytes, now."""
        now = int(time.monotonic())
        with self._lock:
            bucket = self._buckets.get(now)
            if bucket is None:
                bucket = self._buckets[now] = [0, 0]
                for old in [t for t in self._buckets if t < now - self.window]:
                    del self._buckets[old]
            bucket[0] += 1
            bucket[1] += nbytes

    def rates(self) -> tuple[float, float]:
        """(events/s, bytes/s) over the last ``window`` complete seconds."""
        now = int(time.monotonic())
        with self._lock:
            recent = [b for t, b in self._buckets.items() if now - self.window <= t < now]
        return sum(b[0] for b in recent) / self.window, sum(b[1] for b in recent) / self.window
