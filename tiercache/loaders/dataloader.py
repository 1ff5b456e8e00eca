"""Drop-in ``torch.utils.data.DataLoader`` that loads with threads, stages batches to the GPU and plans the cache.

Same arguments, same batches, same order as torch's DataLoader with ``num_workers=0``: this class subclasses
torch's, so argument checks, default samplers, ``BatchSampler``, ``default_collate``/``default_convert`` and
``len()`` are torch's own code, and each epoch consumes the generator exactly as torch's iterator does (the
``iter(sampler)`` call, then one int64 draw for the base seed, then the sampler's own draws as it runs).

Differences, all documented on :class:`DataLoader`:

* ``num_workers`` threads (not processes) fetch samples; ``num_workers=0`` loads in the calling thread.
* Up to ``prefetch_factor * num_workers`` batches are in flight (torch's meaning of the argument); their
  samples are spread over all threads, so one slow sample does not hold a whole batch on one worker.
* ``torch.utils.data.get_worker_info()`` is ``None`` inside the threads; use :func:`worker_id`.
* An ``IterableDataset`` is read in order by one producer thread (its iterator is not thread-safe in general);
  the other threads stay idle. Use a map-style dataset for parallel decode.
* ``multiprocessing_context`` is accepted and ignored (no processes). ``persistent_workers`` keeps the thread
  pool across epochs. ``timeout`` is honoured with ``num_workers > 0`` and ignored with ``num_workers=0``.
* ``pin_memory`` pins when CUDA is available and warns like torch otherwise.
* ``persistent_workers=True`` draws the base seed once, like torch's persistent iterator, so epochs match
  torch run with the same arguments.
* The sampler is pulled up to the prefetch window ahead of the consumer. A sampler that draws lazily from a
  shared generator (``RandomSampler(replacement=True, generator=g)``) therefore leaves ``g`` further advanced
  when an epoch is abandoned half-way than a ``num_workers=0`` torch run would (as torch's workers do too).
* A worker's exception is raised in the consumer with the same type (RuntimeError if that type cannot be
  built from a message), the sample index in the message and the original as ``__cause__``.
* Python 3.11 and the GIL: decode (simplejpeg, Pillow), file reads and torch ops release it; the per-sample
  Python around them holds it, which is what limits scaling past a few threads per core.

Extras: ``device=`` (batches arrive on that CUDA device via pinned staging buffers and a side stream),
``gpu_augment=`` (an :class:`~tiercache.loaders.augment.Augment` applied per batch on the device),
``plans=`` (send each epoch's file order to the tiercache behind the dataset), :meth:`DataLoader.state_dict` /
:meth:`DataLoader.load_state_dict` (resume mid-epoch), :meth:`DataLoader.stats` (stall attribution).

This module holds the loader and the start of each epoch (torch's RNG sequence, resume, plan, pool); the
epoch's iterator is in :mod:`.epoch_iter`, the pipeline that loads its batches in :mod:`.pipeline` (a batch
in flight in :mod:`.batches`, the ``gpu_augment`` path in :mod:`.batch_augment`, stats in :mod:`.epochstats`);
the thread pool and per-thread context live in :mod:`.workers`, pinned buffers and device copies in
:mod:`.staging`, RNG snapshots and sampler replay (for plans and resume) in :mod:`.replay`.
"""


from __future__ import annotations

import collections.abc
import inspect
import itertools
import logging
import threading
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.utils.data as tud
from torch.utils.data import IterableDataset

from . import plans as _plans
from .epoch_iter import EpochIterator
from .epochstats import STAGES, EpochStats  # noqa: F401 - STAGES importable from here as before
from .orders import EpochOrder, epoch_order
from .pipeline import EpochPipeline
from .replay import restore_rng, snapshot_rng
from .staging import DeviceStager
from .workers import WorkerPool, current_epoch, output_slot, stage_timer, worker_id

__all__ = ["DataLoader", "current_epoch", "output_slot", "stage_timer", "worker_id"]

log = logging.getLogger(__name__)

_TORCH_INIT_PARAMS = set(inspect.signature(tud.DataLoader.__init__).parameters)


class DataLoader(tud.DataLoader):
    """Drop-in for ``torch.utils.data.DataLoader``: threads, pinned staging, CUDA streams, cache plans.

    Every torch argument keeps its meaning (see the module docstring for the thread-specific ones), and for the
    same arguments and generator seed the batches equal torch's ``num_workers=0`` run, epoch after epoch.

    Extra keyword arguments:
        device: a CUDA device (``"cuda"``, ``"cuda:1"``): batches are copied there through reused pinned
            buffers on a side stream; the consumer's current stream waits on the copy's event.
        gpu_augment: an :class:`~tiercache.loaders.augment.Augment` applied per batch by the fused kernel
            (on ``device``, or on the CPU reference when ``device`` is None). Samples must then be
            ``(image, *rest)`` with ``image`` a uint8 HWC tensor (or 1-D encoded JPEG bytes, decoded by nvJPEG
            on the GPU); batches are ``(images [B, C, H, W], *collate_fn(rest))``.
        plans: send each epoch's file order, followed by the next epoch's, to the tiercache serving the
            dataset (library mode or a mount), when the dataset exposes ``samples`` or ``path_of(index)``.
            torch's samplers, ``DistributedSampler`` (this rank's shard) and samplers with ``set_epoch``
            send both epochs; other samplers send this epoch only (``stats()[i]["plan"]`` says which).
        plan_client: this loader's name as a plan client (default: unique per loader, with the sampler's
            rank when it has one); each client's plan replaces only its own, and ends with the loader.
    """

    def __init__(
        self,
        dataset: tud.Dataset,
        batch_size: int | None = 1,
        shuffle: bool | None = None,
        sampler: tud.Sampler | collections.abc.Iterable | None = None,
        batch_sampler: tud.Sampler | collections.abc.Iterable | None = None,
        num_workers: int = 0,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        pin_memory: bool = False,
        drop_last: bool = False,
        timeout: float = 0,
        worker_init_fn: Callable[[int], None] | None = None,
        multiprocessing_context: Any = None,
        generator: torch.Generator | None = None,
        *,
        prefetch_factor: int | None = None,
        persistent_workers: bool = False,
        pin_memory_device: str = "",
        in_order: bool = True,
        device: str | torch.device | None = None,
        gpu_augment: Any = None,
        plans: bool = True,
        plan_client: str | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {
            "prefetch_factor": prefetch_factor,
            "persistent_workers": persistent_workers,
            "pin_memory_device": pin_memory_device,
        }
        if "in_order" in _TORCH_INIT_PARAMS:
            kwargs["in_order"] = in_order
        super().__init__(
            dataset, batch_size, shuffle, sampler, batch_sampler, num_workers, collate_fn, pin_memory, drop_last,
            timeout, worker_init_fn, multiprocessing_context, generator, **kwargs,
        )
        self.in_order = in_order
        self.device = torch.device(device) if device is not None else None
        if self.device is not None and self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
        if gpu_augment is not None and not self._auto_collation:
            raise ValueError("gpu_augment needs automatic batching (batch_size or batch_sampler)")
        self.gpu_augment = gpu_augment
        self.plans = plans
        self.plan_client = plan_client or _default_client(self)
        self._epoch = 0
        self._pool: WorkerPool | None = None
        self._pool_finalizer: weakref.finalize | None = None
        self._base_seed_drawn = False
        self._resume: dict[str, Any] | None = None
        self._current: weakref.ref[EpochIterator] | None = None
        self._epoch_stats: list[EpochStats] = []
        self._device_stager: DeviceStager | None = None
        self._plan_sender: Any = None
        self._plan_resolved = False
        self._plan_lock = threading.Lock()

    def check_worker_number_rationality(self) -> None:
        """No-op: threads are cheap, and the torch warning speaks of processes."""

    # -- iteration -----------------------------------------------------------------------------------------

    def __iter__(self) -> EpochIterator:  # type: ignore[override]
        return self._begin_epoch()

    def _get_iterator(self) -> EpochIterator:  # type: ignore[override]
        return self._begin_epoch()

    def _begin_epoch(self) -> EpochIterator:
        """Start the next epoch: the RNG sequence of torch's ``_BaseDataLoaderIter.__init__`` ([datapipe seed],
        ``iter(sampler)``, base seed), then a resume's skip, the plan, the pool, and the pipeline's first batches."""
        if self.pin_memory and not torch.cuda.is_available():
            warnings.warn(
                "'pin_memory' argument is set as true but no accelerator is found, "
                "then device pinned memory won't be used.",
                stacklevel=3,
            )
        stager = self._stager()  # fails early when device= names an unavailable device
        previous = self._current() if self._current is not None else None
        if previous is not None and self.persistent_workers:
            previous.shutdown()  # torch resets its single persistent iterator the same way
        resume, self._resume = self._resume, None
        if resume is not None:
            restore_rng(self, resume["rng"])
        epoch = self._epoch
        self._epoch += 1
        rng_at_start = snapshot_rng(self)
        skip = int(resume["batches_yielded"]) if resume else 0
        skip_seqs = set(resume.get("yielded_seqs", ())) if resume else set()
        stats = EpochStats(epoch)
        self._epoch_stats.append(stats)
        pipe = EpochPipeline(self, epoch, stats, stager, self._auto_collation)

        if _is_iter_datapipe(pipe.dataset):
            pipe.dataset = _seed_datapipe(self)
        index_iter = None if pipe.iterable else iter(self._index_sampler)
        draw_base_seed = resume["draw_base_seed"] if resume else not (self.persistent_workers and self._base_seed_drawn)
        if draw_base_seed:
            torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        self._base_seed_drawn = True  # (a resumed persistent epoch had drawn it in the original run)

        if index_iter is not None:
            if self.plans:
                try:
                    order = self._send_plan(skip, not self.persistent_workers, skip_seqs, index_iter)
                except Exception:  # a plan is a hint; loading must not fail because of it
                    log.debug("plan computation failed", exc_info=True)
                    order = None
                if order is not None:
                    stats.plan = order.describe()
                    if order.materialized is not None:
                        index_iter = iter(order.materialized)
            for _ in range(skip):
                next(index_iter, None)
            pipe.set_indices(index_iter, skip_seqs, skip)
        else:
            pipe.dataset_iter = iter(pipe.dataset)

        pool, owns_pool = self._get_pool()
        pipe.pool = pool
        iterator = EpochIterator(self, pipe, stats, epoch=epoch, rng_at_start=rng_at_start,
                                 draw_base_seed=draw_base_seed, skip=skip, owned_pool=pool if owns_pool else None)
        self._current = weakref.ref(iterator)
        pipe.start(skip)
        return iterator

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch number the next iterator uses (augmentation seeds, stats); it counts up from there."""
        self._epoch = int(epoch)

    def _stager(self) -> DeviceStager | None:
        if self.device is None or self.device.type == "cpu":
            return None
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise RuntimeError(f"device={str(self.device)!r} requested but CUDA is not available")
        if self._device_stager is None:
            self._device_stager = DeviceStager(self.device)
        return self._device_stager

    def _get_pool(self) -> tuple[WorkerPool | None, bool]:
        """The thread pool for a new epoch and whether the epoch owns it (non-persistent)."""
        if self.num_workers == 0:
            return None, False
        if not self.persistent_workers:
            return WorkerPool(self.num_workers, self.worker_init_fn), True
        if self._pool is None:
            self._pool = WorkerPool(self.num_workers, self.worker_init_fn)
            self._pool_finalizer = weakref.finalize(self, self._pool.stop, False)
        return self._pool, False

    def shutdown(self) -> None:
        """Stop the current epoch and the persistent thread pool, if any (also happens on garbage collection)."""
        current = self._current() if self._current is not None else None
        if current is not None:
            current.shutdown()
        if self._pool is not None:
            self._pool.stop()
            self._pool = None

    # -- plans ---------------------------------------------------------------------------------------------

    def plan_target(self) -> Any:
        """Where this loader's plans go: a sender (``describe``, ``wait(timeout)``, ``sent``) to the cache or
        mount under its dataset, made at the first call; None when no plan goes (plans off, or the data is
        not under a tiercache)."""
        with self._plan_lock:
            if not self._plan_resolved:
                self._plan_resolved = True
                self._plan_sender = _plans.plan_sender(self.dataset, self.plan_client) if self.plans else None
                if self._plan_sender is not None:
                    weakref.finalize(self, self._plan_sender.close)  # the plan ends with the loader
            return self._plan_sender

    def _send_plan(self, skip_batches: int, draw_next_base_seed: bool, skip_seqs: set[int] | None = None,
                   index_iter: Any = None) -> EpochOrder | None:
        """Compute this epoch's remaining order and the next epoch's without disturbing any RNG; send async.

        Returns the order (its ``materialized`` items must then be the epoch's), or None when no plan goes.
        """
        if isinstance(self.dataset, IterableDataset):
            return None
        target = self.plan_target()
        if target is None:
            return None
        order = epoch_order(self, skip_batches, skip_seqs, draw_next_base_seed, index_iter)
        if order.epochs:
            target.send_async(order.indices)
        else:
            log.debug("plan not sent: %s", order.reason)
        return order

    # -- resume --------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Where loading stands: epoch, RNG states at that epoch's start, batches already handed out."""
        current = self._current() if self._current is not None else None
        if current is not None and not current.finished:
            return current.state()
        return {
            "epoch": self._epoch,
            "rng": snapshot_rng(self),
            "draw_base_seed": not (self.persistent_workers and self._base_seed_drawn),
            "batches_yielded": 0,
            "yielded_seqs": [],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`: the next ``iter()`` yields exactly the remaining batches of that epoch.

        RNG states are restored into this loader's generator (and torch's global RNG when the sampler draws
        from it, i.e. ``generator=None``). Exactness needs the same dataset, sampler type and arguments.
        """
        self._resume = dict(state)
        self._epoch = int(state["epoch"])

    # -- stats ---------------------------------------------------------------------------------------------

    def stats(self) -> list[dict[str, Any]]:
        """Per epoch: batches, samples, wall and consumer-wait seconds, worker seconds per stage
        (read, decode, augment, collate, h2d, other) and the wait split proportionally over those stages."""
        return [s.as_dict() for s in self._epoch_stats]


_loader_numbers = itertools.count(1)


def _default_client(loader: DataLoader) -> str:
    """A plan client name unique to this loader: pid, a counter, and the sampler's rank when it has one."""
    import os

    sampler = getattr(loader, "sampler", None)
    rank = getattr(getattr(loader, "batch_sampler", None), "sampler", sampler)
    rank = getattr(rank, "rank", getattr(sampler, "rank", None))
    name = f"pid{os.getpid()}-loader{next(_loader_numbers)}"
    return f"{name}-rank{rank}" if isinstance(rank, int) else name



def _is_iter_datapipe(dataset: Any) -> bool:
    try:
        from torch.utils.data.datapipes.datapipe import IterDataPipe
    except ImportError:  # pragma: no cover - datapipes removed from torch
        return False
    return isinstance(dataset, IterDataPipe)


def _seed_datapipe(loader: DataLoader) -> Any:
    """torch draws a shared seed for an IterDataPipe before the base seed; do the same."""
    import torch.utils.data.graph_settings as gs

    shared_seed = torch.empty((), dtype=torch.int64).random_(generator=loader.generator).item()
    rng = torch.Generator()
    rng.manual_seed(shared_seed)
    return gs.apply_random_seed(loader.dataset, rng)
