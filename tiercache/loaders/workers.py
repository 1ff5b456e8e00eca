"""The loader's threads: a daemon thread pool, and what code running on a loader thread can ask of it.

Dataset code calls :func:`stage_timer`, :func:`current_epoch`, :func:`worker_id` and :func:`output_slot`;
the pipeline wraps each dataset call in :func:`loading` so that those answer for the epoch and batch at hand.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = [
    "WorkerPool",
    "check_worker_init",
    "current_epoch",
    "loading",
    "output_slot",
    "stage_timer",
    "worker_id",
]

# ----------------------------------------------------------------------------------------------------------
# Per-thread context: which epoch is loading (for deterministic augmentation) and where time goes.

_local = threading.local()


@contextlib.contextmanager
def stage_timer(stage: str) -> Iterator[None]:
    """Attribute the enclosed time to ``stage`` ("read", "decode", "augment", ...) in :meth:`DataLoader.stats`.

    Datasets wrap their file read and decode in this; outside a tiercache loader it costs two clock reads.
    """
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timers = getattr(_local, "timers", None)
        if timers is not None:
            timers[stage] = timers.get(stage, 0.0) + time.perf_counter() - t0


def current_epoch() -> int | None:
    """The epoch being loaded by the tiercache loader on this thread, or None outside one."""
    return getattr(_local, "epoch", None)


def worker_id() -> int | None:
    """The id (0..num_workers-1) of the loader thread running this code, or None outside one."""
    return getattr(_local, "worker_id", None)


def output_slot(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | None:
    """Memory inside the batch for the sample being loaded on this thread, or None.

    A dataset that produces its sample tensor itself (``ImageFolder`` with ``augment=``) may write it here,
    as the tensor or as the first element of a tuple sample; when every sample of a batch did so, default
    collation returns the batch tensor as is instead of stacking copies. None outside a tiercache loader,
    with a custom ``collate_fn``, or when the shape/dtype differs from the batch's first sample.
    """
    slot = getattr(_local, "slot", None)
    if slot is None:
        return None
    pipe, batch, pos = slot
    return pipe.slot(batch, pos, tuple(shape), dtype)


@contextlib.contextmanager
def loading(
    epoch: int, record: Callable[[dict[str, float]], None], slot: tuple[Any, Any, int] | None = None
) -> Iterator[None]:
    """Run the enclosed dataset call on this thread as part of ``epoch``.

    Inside, :func:`current_epoch` returns ``epoch`` and :func:`output_slot` asks ``slot`` (a
    ``(pipeline, batch, position)`` whose ``pipeline.slot(batch, position, shape, dtype)`` answers). The
    :func:`stage_timer` times, plus the untimed rest as "other", are passed to ``record`` at the end.
    """
    prev_epoch = getattr(_local, "epoch", None)
    _local.epoch = epoch
    _local.slot = slot
    _local.timers = timers = {}
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timers["other"] = timers.get("other", 0.0) + max(0.0, time.perf_counter() - t0 - sum(timers.values()))
        record(timers)
        _local.timers = None
        _local.slot = None
        _local.epoch = prev_epoch


def check_worker_init() -> None:
    """Raise RuntimeError (from the original) if ``worker_init_fn`` failed on this loader thread."""
    init_error = getattr(_local, "init_error", None)
    if init_error is not None:
        raise RuntimeError(f"worker_init_fn failed in loader thread {worker_id()}") from init_error


# ----------------------------------------------------------------------------------------------------------
# Worker threads.

_live_pools: set[WorkerPool] = set()  # pools whose threads may still run; pruned as they finish
_pool_ids = itertools.count()


def _stop_all_pools(timeout: float = 3.0) -> None:
    """At interpreter exit: signal every pool, then give the threads a moment to finish their current task.

    On Python 3.11 a daemon thread that wakes up inside a torch op after finalization has started is killed
    through a C++ frame, which aborts the process; letting workers finish their sample first avoids that.
    A worker still stuck (say, in a hung read) after ``timeout`` seconds is left behind as a daemon.
    """
    pools = list(_live_pools)
    for pool in pools:
        pool.stop(join=False)
    deadline = time.monotonic() + timeout
    for pool in pools:
        for t in pool.threads:
            t.join(max(0.0, deadline - time.monotonic()))


atexit.register(_stop_all_pools)


def _worker_main(tasks: queue.SimpleQueue, stop: threading.Event, wid: int, init_fn: Callable | None) -> None:
    _local.worker_id = wid
    _local.init_error = None
    if init_fn is not None:
        try:
            init_fn(wid)
        except BaseException as exc:  # reported with every task this worker runs
            _local.init_error = exc
    while not stop.is_set():
        task = tasks.get()
        if task is None:
            break
        fn, args = task
        fn(*args)
        del task, fn, args


class WorkerPool:
    """``n`` daemon threads running tasks from one queue; ``worker_init_fn(id)`` runs once in each."""

    def __init__(self, n: int, init_fn: Callable[[int], None] | None):
        self.tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        pid = next(_pool_ids)
        self.threads = [
            threading.Thread(
                target=_worker_main, args=(self.tasks, self._stop, i, init_fn),
                name=f"tiercache-loader-{pid}-{i}", daemon=True,
            )
            for i in range(n)
        ]
        for t in self.threads:
            t.start()
        for pool in [p for p in list(_live_pools) if not any(t.is_alive() for t in p.threads)]:
            _live_pools.discard(pool)
        _live_pools.add(self)

    def submit(self, fn: Callable, *args: Any) -> None:
        """Queue ``fn(*args)`` for the next free thread."""
        self.tasks.put((fn, args))

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` has been called."""
        return self._stop.is_set()

    def stop(self, join: bool = True, timeout: float = 5.0) -> None:
        """Stop the threads after their current task; wait up to ``timeout`` s for them when ``join``."""
        if self._stop.is_set() and not join:
            return
        if not self._stop.is_set():
            self._stop.set()
            for _ in self.threads:
                self.tasks.put(None)
        if join:
            deadline = time.monotonic() + timeout
            me = threading.current_thread()
            for t in self.threads:
                if t is not me:
                    t.join(max(0.0, deadline - time.monotonic()))
            if not any(t.is_alive() for t in self.threads):
                _live_pools.discard(self)
