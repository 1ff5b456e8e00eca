"""A fixed set of worker threads, all started up front, off the caller's thread.

``concurrent.futures.ThreadPoolExecutor`` starts a thread on a ``submit`` that finds none idle, and the
submitting thread waits until that thread is up: at a stream's first reads the reader submitted read-ahead
GETs and waited for one thread start after another (27 ms on two loaded cores, measured). A
:class:`WorkerPool` starts its ``count`` threads from a starter thread of its own when it is made;
``submit`` only queues (tasks wait for a thread, a caller never does) and gives up the GIL once, so a
worker starts on it at once. No futures: a task's errors are
its own to handle (an escaping one is logged).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

__all__ = ["WorkerPool"]

_STOP = None


class WorkerPool:
    """``count`` worker threads named ``name_N`` running submitted calls in submission order."""

    def __init__(self, count: int, name: str):
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._threads = [threading.Thread(target=self._run, name=f"{name}_{i}", daemon=True) for i in range(count)]
        self._starter = threading.Thread(target=self._start_all, name=f"{name}-start", daemon=True)
        self._starter.start()

    def _start_all(self) -> None:
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., object], *args: object) -> None:
        """Queue ``fn(*args)``; RuntimeError once the pool is shut down."""
        with self._lock:
            if self._closed:
                raise RuntimeError("worker pool is shut down")
            self._tasks.put((fn, args))
        time.sleep(0)  # let a worker take it up now (the caller's GIL hold would delay its start)

    def _run(self) -> None:
        while True:
            task = self._tasks.get()
            if task is _STOP:
                return
            fn, args = task
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - a task handles its own errors; an escaped one is only logged
                log.exception("worker task failed")

    def shutdown(self) -> int:
        """Drop the calls not started, wait for the running ones, stop the threads; how many were dropped."""
        with self._lock:
            if self._closed:
                return 0
            self._closed = True
        dropped = 0
        while True:
            try:
                self._tasks.get_nowait()
            except queue.Empty:
                break
            dropped += 1
        self._starter.join()
        for _ in self._threads:
            self._tasks.put(_STOP)
        for thread in self._threads:
            thread.join()
        return dropped
