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

This module holds the loader, its per-epoch iterator and the pipeline that loads one epoch's batches; the
thread pool and per-thread context live in :mod:`.workers`, pinned buffers and device copies in
:mod:`.staging`, RNG snapshots and sampler replay (for plans and resume) in :mod:`.replay`.
"""

from __future__ import annotations

import collections.abc
import contextlib
import inspect
import itertools
import logging
import math
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.utils.data as tud
from torch.utils.data import IterableDataset

from . import plans as _plans
from .orders import EpochOrder, epoch_order
from .replay import restore_rng, snapshot_rng
from .staging import DeviceStager, advise_huge_pages, map_tensors, tensors_in
from .workers import WorkerPool, check_worker_init, current_epoch, loading, output_slot, stage_timer, worker_id

__all__ = ["DataLoader", "current_epoch", "output_slot", "stage_timer", "worker_id"]

log = logging.getLogger(__name__)

STAGES = ("read", "decode", "augment", "collate", "h2d", "other")

# ----------------------------------------------------------------------------------------------------------
# One epoch.


class _EpochStats:
    """Counts and per-stage worker seconds of one epoch; what :meth:`DataLoader.stats` reports."""

    def __init__(self, epoch: int):
        self.epoch = epoch
        self.batches = 0
        self.samples = 0
        self.wait_s = 0.0
        self.stage_s = dict.fromkeys(STAGES, 0.0)
        self.started = time.perf_counter()
        self.ended: float | None = None
        self.lock = threading.Lock()
        self.plan: dict[str, Any] = {"epochs": 0, "files": 0, "reason": "plans off or no tiercache behind the data"}

    def add(self, timers: dict[str, float]) -> None:
        with self.lock:
            for k, v in timers.items():
                self.stage_s[k] = self.stage_s.get(k, 0.0) + v

    def as_dict(self) -> dict[str, Any]:
        with self.lock:
            stage = {k: round(v, 6) for k, v in self.stage_s.items()}
        busy = sum(stage.values())
        wall = (self.ended or time.perf_counter()) - self.started
        split = {k: round(self.wait_s * v / busy, 6) if busy else 0.0 for k, v in stage.items()}
        return {
            "epoch": self.epoch,
            "batches": self.batches,
            "samples": self.samples,
            "wall_s": round(wall, 6),
            "wait_s": round(self.wait_s, 6),
            "worker_s": stage,
            "wait_split_s": split,
            "plan": dict(self.plan),
        }


class _Batch:
    """One batch in flight: its indices, the samples loaded so far, then the collated data or the error."""

    __slots__ = (
        "seq", "indices", "samples", "remaining", "done", "data", "error", "event", "nsamples", "buffer", "staging",
    )

    def __init__(self, seq: int, indices: Any, n: int):
        self.seq = seq
        self.indices = indices
        self.samples: list[Any] = [None] * n
        self.remaining = n
        self.done = False
        self.data: Any = None
        self.error: tuple[Any, BaseException, int | None] | None = None
        self.event: Any = None
        self.nsamples = n
        self.buffer: torch.Tensor | None = None
        self.staging: torch.Tensor | None = None


class _Pipeline:
    """The loading state of one epoch. Worker tasks reference this object, never the user's iterator."""

    def __init__(self, loader: DataLoader, epoch: int, stats: _EpochStats):
        self.epoch = epoch
        self.dataset = loader.dataset
        self.iterable = isinstance(loader.dataset, IterableDataset)
        self.auto_collation = loader._auto_collation
        self.batch_size = loader.batch_size
        self.drop_last = loader.drop_last
        self.collate_fn = loader.collate_fn
        self.augment = loader.gpu_augment
        self.device = loader.device
        self.stager = loader._stager()
        self.pin = loader.pin_memory and torch.cuda.is_available() and self.device is None
        self.in_order = loader.in_order if loader.num_workers > 0 else True
        self.timeout = loader.timeout if loader.num_workers > 0 else 0
        self.pool: WorkerPool | None = None
        self.window = max(1, (loader.prefetch_factor or 1) * max(1, loader.num_workers))
        self.stats = stats
        self.cond = threading.Condition()
        self.inflight: dict[int, _Batch] = {}
        self.next_submit = 0
        self.next_yield = 0
        self.yielded: set[int] = set()
        self.exhausted = False
        self.stopped = False
        self.use_getitems = self.auto_collation and _batched_fetch(self.dataset)
        self.slots = (
            self.auto_collation and self.collate_fn is tud.default_collate and not self.use_getitems
            and self.augment is None
        )
        self.index_iter: Iterator[Any] | None = None
        self.dataset_iter: Iterator[Any] | None = None
        self.positions: dict[int, int] = {}  # seq -> absolute batch position in the epoch
        self.done_before: set[int] = set()  # positions handed out before a resume

    # -- fetching ------------------------------------------------------------------------------------------

    def _fetch_one(self, index: Any, batch: _Batch | None = None, pos: int = 0) -> Any:
        """dataset[index] with this epoch in the thread context; returns the sample, records timings."""
        with loading(self.epoch, self.stats.add, (self, batch, pos) if self.slots and batch is not None else None):
            check_worker_init()
            if self.use_getitems:
                return self.dataset.__getitems__(index)
            return self.dataset[index]

    def slot(self, batch: _Batch, pos: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | None:
        """Row ``pos`` of the batch tensor (allocated by the first sample that asks), if shape/dtype fit."""
        with self.cond:
            buf = batch.buffer
            if buf is None:
                buf = batch.buffer = self._batch_buffer(batch, (batch.nsamples, *shape), dtype)
        if tuple(buf.shape[1:]) != shape or buf.dtype != dtype:
            return None
        return buf[pos]

    def _batch_buffer(self, batch: _Batch, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """Memory for a batch built in place: pooled pinned staging (device=), pinned (pin_memory), else paged."""
        if self.stager is not None:
            nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            batch.staging = self.stager.pool.acquire(nbytes)
            return batch.staging[:nbytes].view(dtype).view(shape)
        if self.pin:
            return torch.empty(shape, dtype=dtype, pin_memory=True)
        return advise_huge_pages(torch.empty(shape, dtype=dtype))

    @staticmethod
    def _collate_slots(batch: _Batch) -> Any:
        """default_collate's result built on the batch tensor the samples were written into, or None."""
        buf, samples = batch.buffer, batch.samples
        kind = type(samples[0])
        if kind not in (tuple, torch.Tensor) or len(samples) != len(buf):
            return None
        for pos, s in enumerate(samples):
            if type(s) is not kind:
                return None
            t = s[0] if kind is tuple and len(s) else s
            if not (isinstance(t, torch.Tensor) and t.data_ptr() == buf[pos].data_ptr() and t.shape == buf.shape[1:]
                    and t.dtype == buf.dtype and t.is_contiguous()):
                return None
        if kind is torch.Tensor:
            return buf
        columns = list(zip(*samples, strict=True))
        return [buf, *(tud.default_collate(list(col)) for col in columns[1:])]

    def run_sample(self, batch: _Batch, pos: int, index: Any) -> None:
        """Worker task: load one sample (or a whole batch via ``__getitems__``) into ``batch``."""
        if self.stopped or batch.error is not None:
            return
        try:
            sample = self._fetch_one(index, batch, pos)
        except BaseException as exc:
            with self.cond:
                if batch.error is None:
                    batch.error = (index, exc, worker_id())
                self.cond.notify_all()
            return
        with self.cond:
            if self.use_getitems:
                batch.samples = list(sample)
                batch.remaining = 0
            else:
                batch.samples[pos] = sample
                batch.remaining -= 1
            last = batch.remaining == 0
        if last:
            self.finish(batch)

    def finish(self, batch: _Batch) -> None:
        """Collate (+ augment, pin, stage to device) a batch whose samples are all loaded; mark it done."""
        try:
            data = self._finalize(batch)
        except BaseException as exc:
            with self.cond:
                batch.error = (("collate", batch.indices), exc, worker_id())
                self.cond.notify_all()
            return
        with self.cond:
            batch.data = data
            batch.samples = []
            batch.buffer = batch.staging = None  # pooled staging memory is the pool's again
            batch.done = True
            self.cond.notify_all()

    def _finalize(self, batch: _Batch) -> Any:
        timers: dict[str, float] = {}
        t0 = time.perf_counter()
        samples = batch.samples if self.auto_collation else batch.samples[0]
        if self.augment is not None:
            data = self._augment(batch, samples, timers)
        else:
            data = self._collate_slots(batch) if batch.buffer is not None else None
            if data is None:
                data = self.collate_fn(samples)
            t1 = time.perf_counter()
            timers["collate"] = t1 - t0
            if self.pin:
                data = tud._utils.pin_memory.pin_memory(data)
                timers["h2d"] = time.perf_counter() - t1
            elif self.stager is not None:
                moved, batch.event = self.stager.to_device(tensors_in(data), staging=batch.staging)
                it = iter(moved)
                data = map_tensors(data, lambda _t: next(it))
                timers["h2d"] = time.perf_counter() - t1
        self.stats.add(timers)
        return data

    def _augment(self, batch: _Batch, samples: list[Any], timers: dict[str, float]) -> Any:
        """Batch path of ``gpu_augment``: samples are (uint8 HWC image or encoded bytes, *rest)."""
        from .decode import decode_image, decode_jpeg_cuda, image_size

        t0 = time.perf_counter()
        images = [s[0] for s in samples]
        rest = [tuple(s[1:]) for s in samples]
        encoded = [im.dim() == 1 for im in images]
        sizes = [
            image_size(memoryview(im.numpy())) if enc else (int(im.shape[0]), int(im.shape[1]))
            for im, enc in zip(images, encoded, strict=True)
        ]
        boxes, flips = self.augment.params_batch(self.epoch, batch.indices, sizes)
        t_params = time.perf_counter()  # header reads + crop/flip draws count as augment, not decode
        if any(encoded):
            on_gpu = self.device is not None and self.device.type == "cuda"
            if on_gpu and all(encoded):
                try:
                    with torch.cuda.stream(self.stager.stream):  # ordered before the augment on that stream
                        images = decode_jpeg_cuda(images, self.device)
                except RuntimeError as exc:
                    on_gpu = False
                    cause = f" ({type(exc.__cause__).__name__}: {exc.__cause__})" if exc.__cause__ else ""
                    warnings.warn(f"GPU JPEG decode failed, decoding on the CPU instead: {exc}{cause}",
                                  RuntimeWarning, stacklevel=1)
            if not on_gpu or not all(encoded):
                images = [
                    decode_image(memoryview(im.numpy())) if enc else im
                    for im, enc in zip(images, encoded, strict=True)
                ]
        t1 = time.perf_counter()
        timers["decode"] = t1 - t_params
        rest_data = self.collate_fn(rest) if rest and rest[0] else None
        t2 = time.perf_counter()
        timers["collate"] = t2 - t1
        if self.stager is not None:
            host = [im for im in images if im.device.type == "cpu"]
            extra = tensors_in(rest_data) if rest_data is not None else []
            moved, event, dev_buf, offsets = self.stager.to_device_packed([*host, *extra])
            moved_iter = iter(moved)
            if len(host) == len(images):
                from tiercache.kernels import PackedImages

                meta = [(off, *im.shape) for off, im in zip(offsets, images, strict=False)]
                packed: Any = PackedImages(dev_buf, torch.tensor(meta, dtype=torch.int64))
                for _ in host:
                    next(moved_iter)
            else:
                packed = [next(moved_iter) if im.device.type == "cpu" else im for im in images]
            if rest_data is not None:
                rest_data = map_tensors(rest_data, lambda _t: next(moved_iter))
            t3 = time.perf_counter()
            timers["h2d"] = t3 - t2
            with torch.cuda.stream(self.stager.stream):
                self.stager.stream.wait_event(event)
                out = self.augment.apply_batch(packed, boxes, flips)
                batch.event = torch.cuda.Event()
                batch.event.record(self.stager.stream)
            timers["augment"] = time.perf_counter() - t3 + (t_params - t0)
        else:
            out = self.augment.apply_batch(images, boxes, flips)
            timers["augment"] = time.perf_counter() - t2 + (t_params - t0)
        self.stats.add(timers)
        if rest_data is None:
            return out
        return (out, *rest_data) if isinstance(rest_data, (tuple, list)) else (out, rest_data)

    # -- scheduling ----------------------------------------------------------------------------------------

    def _next_indices(self, seq: int) -> Any:
        """The next batch of indices from the sampler, remembering its absolute position in the epoch."""
        assert self.index_iter is not None
        indices = next(self.index_iter)
        self.positions[seq] = getattr(self.index_iter, "last", seq)
        return indices

    def _new_batch(self, seq: int, indices: Any) -> tuple[_Batch, list[tuple[int, Any]]]:
        """A batch for ``indices`` and its ``(position, index)`` tasks: one per sample, or one for the batch."""
        if self.auto_collation and not self.use_getitems:
            return _Batch(seq, indices, len(indices)), list(enumerate(indices))
        batch = _Batch(seq, indices, 1)
        if self.use_getitems:
            batch.nsamples = len(indices)
        return batch, [(0, indices)]

    def handed_out(self) -> set[int]:
        """Absolute positions (in the epoch's batch order) of every batch handed out, resumed ones included."""
        return self.done_before | {self.positions.get(s, s) for s in self.yielded}

    def fill(self) -> None:
        """Submit batches until ``window`` are in flight or the sampler is exhausted (consumer thread)."""
        if self.iterable or self.pool is None:
            return
        while not self.exhausted and not self.stopped and len(self.inflight) < self.window:
            seq = self.next_submit
            try:
                indices = self._next_indices(seq)
            except StopIteration:
                self.exhausted = True
                break
            self.next_submit += 1
            batch, tasks = self._new_batch(seq, indices)
            with self.cond:
                self.inflight[seq] = batch
            if not tasks:
                self.pool.submit(self.finish, batch)
            for pos, idx in tasks:
                self.pool.submit(self.run_sample, batch, pos, idx)

    def produce_iterable(self, skip: int) -> None:
        """Worker task for an IterableDataset: read it in order, batch, collate, respect the window."""
        seq = skipped = 0
        try:
            while not self._halted():
                with self.cond:
                    while len(self.inflight) >= self.window and not self._halted():
                        self.cond.wait(0.5)
                    if self._halted():
                        return
                batch = self._read_iterable_batch(seq)
                if batch is None:
                    return
                if skipped < skip and batch.error is None:
                    skipped += 1
                    continue
                if batch.error is None:
                    self.finish(batch)
                with self.cond:
                    self.inflight[seq] = batch
                    self.cond.notify_all()
                seq += 1
                if batch.error is not None:
                    return
        finally:
            with self.cond:
                self.exhausted = True
                self.cond.notify_all()

    def _halted(self) -> bool:
        return self.stopped or (self.pool is not None and self.pool.stopping)

    def _read_iterable_batch(self, seq: int) -> _Batch | None:
        """Next batch from the dataset iterator with torch's fetcher rules, or None at the end."""
        assert self.dataset_iter is not None
        try:
            if self.auto_collation:
                samples = []
                for _ in range(self.batch_size):
                    try:
                        samples.append(self._timed_next())
                    except StopIteration:
                        break
                if not samples or (self.drop_last and len(samples) < self.batch_size):
                    return None
            else:
                try:
                    samples = [self._timed_next()]
                except StopIteration:
                    return None
        except BaseException as exc:
            batch = _Batch(seq, None, 0)
            batch.error = (f"#{seq} (iterable batch)", exc, worker_id())
            return batch
        batch = _Batch(seq, None, len(samples))
        batch.samples = samples
        batch.remaining = 0
        return batch

    def _timed_next(self) -> Any:
        with loading(self.epoch, self.stats.add):
            return next(self.dataset_iter)

    def next_ready(self) -> _Batch:
        """Wait for the next batch to hand out (in order, or any finished one with ``in_order=False``)."""
        deadline = time.monotonic() + self.timeout if self.timeout else None
        with self.cond:
            while True:
                if self.stopped:
                    raise StopIteration
                batch = self._pick()
                if batch is not None:
                    del self.inflight[batch.seq]
                    self.cond.notify_all()
                    return batch
                if self.exhausted and not self.inflight:
                    raise StopIteration
                if deadline is None:
                    self.cond.wait(1.0)
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise RuntimeError(f"DataLoader timed out after {self.timeout} seconds")
                    self.cond.wait(min(left, 1.0))

    def _pick(self) -> _Batch | None:
        if self.in_order:
            b = self.inflight.get(self.next_yield)
            if b is not None and (b.done or b.error is not None):
                self.next_yield += 1
                return b
            return None
        ready = [b for b in self.inflight.values() if b.done or b.error is not None]
        if not ready:
            return None
        b = min(ready, key=lambda x: x.seq)
        return b

    def load_inline(self) -> _Batch:
        """num_workers=0: load the next batch in the calling thread."""
        if self.exhausted:
            raise StopIteration
        seq = self.next_submit
        self.next_submit += 1
        if self.iterable:
            batch = self._read_iterable_batch(seq)
            if batch is None:
                self.exhausted = True
                raise StopIteration
            if batch.error is None:
                self.finish(batch)
            return batch
        try:
            indices = self._next_indices(seq)
        except StopIteration:
            self.exhausted = True
            raise
        batch, tasks = self._new_batch(seq, indices)
        for pos, idx in tasks:
            self.run_sample(batch, pos, idx)
            if batch.error is not None:
                return batch
        if not tasks:
            self.finish(batch)
        return batch

    def shutdown(self) -> None:
        with self.cond:
            self.stopped = True
            self.inflight.clear()
            self.cond.notify_all()


def _batched_fetch(dataset: Any) -> bool:
    """Whether torch's fetcher would call ``__getitems__`` with a meaningful batched implementation.

    ``Subset.__getitems__`` over a dataset without one is just ``[subset[i] for i in indices]``; loading
    those samples one per task gives the same result with the threads working in parallel.
    """
    while isinstance(dataset, tud.Subset) and type(dataset).__getitems__ is tud.Subset.__getitems__:
        dataset = dataset.dataset
    return bool(getattr(dataset, "__getitems__", None))


def _raise_batch_error(batch: _Batch) -> None:
    index, exc, wid = batch.error
    where = f"loader thread {wid}" if wid is not None else "the calling thread"
    if isinstance(index, tuple) and index[:1] == ("collate",):
        what = f"collating the batch of sample indices {index[1]}" if index[1] is not None else "collating a batch"
    else:
        what = f"loading sample index {index}"
    msg = f"Caught {type(exc).__name__} in {where} while {what}: {exc}"
    if isinstance(exc, KeyError):
        new: BaseException = RuntimeError(msg)
    else:
        try:
            new = type(exc)(msg)
        except Exception:
            new = RuntimeError(msg)
    raise new from exc


# ----------------------------------------------------------------------------------------------------------
# The loader.

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
        self._current: weakref.ref[_LoaderIter] | None = None
        self._epoch_stats: list[_EpochStats] = []
        self._device_stager: DeviceStager | None = None
        self._plan_sender: Any = None
        self._plan_resolved = False
        self._plan_lock = threading.Lock()

    def check_worker_number_rationality(self) -> None:
        """No-op: threads are cheap, and the torch warning speaks of processes."""

    # -- iteration -----------------------------------------------------------------------------------------

    def __iter__(self) -> _LoaderIter:  # type: ignore[override]
        return _LoaderIter(self)

    def _get_iterator(self) -> _LoaderIter:  # type: ignore[override]
        return _LoaderIter(self)

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
            current._shutdown()
        if self._pool is not None:
            self._pool.stop()
            self._pool = None

    # -- plans ---------------------------------------------------------------------------------------------

    def _plan_target(self) -> Any:
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
        target = self._plan_target()
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
        if current is not None and not current._finished:
            return current._state()
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


class _LoaderIter:
    """One epoch over a :class:`DataLoader` (what ``iter(loader)`` returns)."""

    def __init__(self, loader: DataLoader):
        if loader.pin_memory and not torch.cuda.is_available():
            warnings.warn(
                "'pin_memory' argument is set as true but no accelerator is found, "
                "then device pinned memory won't be used.",
                stacklevel=3,
            )
        loader._stager()  # fails early when device= names an unavailable device
        previous = loader._current() if loader._current is not None else None
        if previous is not None and loader.persistent_workers:
            previous._shutdown()  # torch resets its single persistent iterator the same way
        resume, loader._resume = loader._resume, None
        if resume is not None:
            restore_rng(loader, resume["rng"])
        self._loader_ref = weakref.ref(loader)
        self._epoch = loader._epoch
        loader._epoch += 1
        self._rng_at_start = snapshot_rng(loader)
        self._skip = int(resume["batches_yielded"]) if resume else 0
        skip_seqs = set(resume.get("yielded_seqs", ())) if resume else set()
        self._finished = False
        self._owns_pool = False
        self._pool: WorkerPool | None = None
        self._stats = _EpochStats(self._epoch)
        loader._epoch_stats.append(self._stats)
        pipe = self._pipe = _Pipeline(loader, self._epoch, self._stats)
        self._finalizer = weakref.finalize(self, _Pipeline.shutdown, pipe)

        # The RNG sequence of torch's _BaseDataLoaderIter.__init__: [datapipe seed], iter(sampler), base seed.
        if _is_iter_datapipe(pipe.dataset):
            pipe.dataset = _seed_datapipe(loader)
        index_iter = None if pipe.iterable else iter(loader._index_sampler)
        self._draw_base_seed = (
            resume["draw_base_seed"] if resume else not (loader.persistent_workers and loader._base_seed_drawn)
        )
        if self._draw_base_seed:
            torch.empty((), dtype=torch.int64).random_(generator=loader.generator)
        loader._base_seed_drawn = True  # (a resumed persistent epoch had drawn it in the original run)

        if index_iter is not None:
            if loader.plans:
                try:
                    order = loader._send_plan(self._skip, not loader.persistent_workers, skip_seqs, index_iter)
                except Exception:  # a plan is a hint; loading must not fail because of it
                    log.debug("plan computation failed", exc_info=True)
                    order = None
                if order is not None:
                    self._stats.plan = order.describe()
                    if order.materialized is not None:
                        index_iter = iter(order.materialized)
            for _ in range(self._skip):
                next(index_iter, None)
            pipe.index_iter = _Positions(index_iter, skip_seqs, self._skip)
            pipe.done_before = set(range(self._skip)) | skip_seqs
        else:
            pipe.dataset_iter = iter(pipe.dataset)

        pool, self._owns_pool = loader._get_pool()
        self._pool = pipe.pool = pool
        if pool is not None and self._owns_pool:
            weakref.finalize(self, pool.stop, False)
        loader._current = weakref.ref(self)
        if pool is None:
            if pipe.iterable:
                for _ in range(self._skip):
                    if pipe._read_iterable_batch(0) is None:
                        pipe.exhausted = True
                        break
        elif pipe.iterable:
            pool.submit(pipe.produce_iterable, self._skip)
        else:
            pipe.fill()

    def __iter__(self) -> _LoaderIter:
        return self

    def __len__(self) -> int:
        loader = self._loader_ref()
        return len(loader) if loader is not None else 0

    def __next__(self) -> Any:
        pipe = self._pipe
        if self._finished:
            raise StopIteration
        t0 = time.perf_counter()
        try:
            if pipe.pool is None:
                batch = pipe.load_inline()
            else:
                batch = pipe.next_ready()
                pipe.fill()
        except StopIteration:
            self._end()
            raise
        except BaseException:
            self._shutdown(join=False)  # a worker may be stuck (timeout): do not wait for it
            raise
        finally:
            self._stats.wait_s += time.perf_counter() - t0
        if batch.error is not None:
            self._shutdown(join=False)
            _raise_batch_error(batch)
        pipe.yielded.add(batch.seq)
        self._stats.batches += 1
        self._stats.samples += batch.nsamples
        data = batch.data
        if batch.event is not None:
            stream = torch.cuda.current_stream(pipe.device)
            stream.wait_event(batch.event)
            map_tensors(data, lambda t: t.record_stream(stream) if t.is_cuda else None)
        return data

    def _state(self) -> dict[str, Any]:
        pipe = self._pipe
        done = set(range(self._skip + len(pipe.yielded))) if pipe.iterable else pipe.handed_out()
        contiguous = _contiguous_prefix(done)
        return {
            "epoch": self._epoch,
            "rng": self._rng_at_start,
            "draw_base_seed": self._draw_base_seed,
            "batches_yielded": contiguous,
            "yielded_seqs": sorted(p for p in done if p >= contiguous),
        }

    def _end(self) -> None:
        self._finished = True
        self._stats.ended = time.perf_counter()
        self._shutdown()

    def _shutdown(self, join: bool = True) -> None:
        """Stop this epoch; stop its own threads, waiting briefly (they finish their current sample) if ``join``."""
        self._finished = True
        self._pipe.shutdown()
        if self._owns_pool and self._pool is not None:
            self._pool.stop(join=join, timeout=2.0)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._shutdown()


_loader_numbers = itertools.count(1)


def _default_client(loader: DataLoader) -> str:
    """A plan client name unique to this loader: pid, a counter, and the sampler's rank when it has one."""
    import os

    sampler = getattr(loader, "sampler", None)
    rank = getattr(getattr(loader, "batch_sampler", None), "sampler", sampler)
    rank = getattr(rank, "rank", getattr(sampler, "rank", None))
    name = f"pid{os.getpid()}-loader{next(_loader_numbers)}"
    return f"{name}-rank{rank}" if isinstance(rank, int) else name


def _contiguous_prefix(seqs: set[int]) -> int:
    n = 0
    while n in seqs:
        n += 1
    return n


class _Positions:
    """The batch-index iterator of an epoch, from absolute position ``start`` on, dropping ``skip`` positions
    (batches handed out before a resume with ``in_order=False``); ``last`` is the position of the last item."""

    def __init__(self, inner: Iterator[Any], skip: set[int], start: int):
        self._inner, self._skip, self._pos = inner, skip, start
        self.last = start - 1

    def __iter__(self) -> _Positions:
        return self

    def __next__(self) -> Any:
        while True:
            item = next(self._inner)
            pos, self._pos = self._pos, self._pos + 1
            if pos not in self._skip:
                self.last = pos
                return item


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
