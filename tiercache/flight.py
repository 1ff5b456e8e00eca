"""Single-flight: concurrent calls for one key run once; the others wait for that call's result."""

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
            future.set_result(result)
            return result, False
        except BaseException as exc:
            future.set_exception(exc)
            raise
        finally:
            with self._lock:
                self._calls.pop(key, None)

    def __len__(self) -> int:
        return len(self._calls)
