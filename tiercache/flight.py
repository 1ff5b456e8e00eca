"""Single-flight: concurrent calls for one key run once; the others wait for that call's result.

``execute(key, fn)`` runs one call; ``claim``/``settle`` let one caller own several keys at once (read-ahead's
ranged GET of consecutive blocks, tiercache/stagerun.py), settling each as its result arrives, so a reader
waiting on the second block wakes as soon as that block's bytes are in, not when the whole GET ends."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any

__all__ = ["SingleFlight"]


class SingleFlight:
    """``execute(key, fn)``: the first caller runs ``fn``; callers arriving meanwhile get its result or error."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[Hashable, Future] = {}
        self.waits = 0  # calls that waited on another's

    def execute(self, key: Hashable, fn: Callable[[], Any]) -> tuple[Any, bool]:
        """(result, shared): ``shared`` is True when another caller's run produced it."""
        with self._lock:
            future = self._calls.get(key)
            owner = future is None
            if owner:
                future = self._calls[key] = Future()
            else:
                self.waits += 1
        if not owner:
            return future.result(), True
        try:
            result = fn()
        except BaseException as exc:
            self.settle(key, future, error=exc)
            raise
        self.settle(key, future, result)
        return result, False

    def claim(self, key: Hashable) -> Future | None:
        """Own the call for ``key``: a Future the caller must ``settle``; None when a call is in flight."""
        with self._lock:
            if key in self._calls:
                return None
            future = self._calls[key] = Future()
            return future

    def settle(self, key: Hashable, future: Future, result: Any = None, error: BaseException | None = None) -> None:
        """End an owned call: its waiters get ``result`` (or ``error``), later callers start a new one."""
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
        with self._lock:
            if self._calls.get(key) is future:
                del self._calls[key]

    def __len__(self) -> int:
        return len(self._calls)
