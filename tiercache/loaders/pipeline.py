"""The loading state of one :class:`~tiercache.loaders.DataLoader` epoch: samples fetched by worker threads (or
inline), batches collated (in place when they can be), pinned or staged to the device, handed out in order.

Worker tasks reference this object, never the user's iterator (:mod:`.epoch_iter`), so dropping the iterator
stops the epoch.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.utils.data as tud
from torch.utils.data import IterableDataset

from .batch_augment import augment_batch
from .batches import Batch, Positions, batched_fetch, collate_slots
from .epochstats import EpochStats
from .staging import DeviceStager, advise_huge_pages, map_tensors, tensors_in
from .workers import WorkerPool, check_worker_init, loading, worker_id

if TYPE_CHECKING:
    from .dataloader import DataLoader


class EpochPipeline:
    """The loading state of one epoch. Worker tasks reference this object, never the user's iterator."""

    def __init__(self, loader: DataLoader, epoch: int, stats: EpochStats, stager: DeviceStager | None,
                 auto_collation: bool):
        self.epoch = epoch
        self.dataset = loader.dataset
        self.iterable = isinstance(loader.dataset, IterableDataset)
        self.auto_collation = auto_collation
        self.batch_size = loader.batch_size
        self.drop_last = loader.drop_last
        self.collate_fn = loader.collate_fn
        self.augment = loader.gpu_augment
        self.device = loader.device
        self.stager = stager
        self.pin = loader.pin_memory and torch.cuda.is_available() and self.device is None
        self.in_order = loader.in_order if loader.num_workers > 0 else True
        self.timeout = loader.timeout if loader.num_workers > 0 else 0
        self.pool: WorkerPool | None = None
        self.window = max(1, (loader.prefetch_factor or 1) * max(1, loader.num_workers))
        self.stats = stats
        self.cond = threading.Condition()
        self.inflight: dict[int, Batch] = {}
        self.next_submit = 0
        self.next_yield = 0
        self.yielded: set[int] = set()
        self.exhausted = False
        self.stopped = False
        self.use_getitems = self.auto_collation and batched_fetch(self.dataset)
        self.slots = (
            self.auto_collation and self.collate_fn is tud.default_collate and not self.use_getitems
            and self.augment is None
        )
        self.index_iter: Iterator[Any] | None = None
        self.dataset_iter: Iterator[Any] | None = None
        self.positions: dict[int, int] = {}  # seq -> absolute batch position in the epoch
        self.done_before: set[int] = set()  # positions handed out before a resume

    # -- starting ------------------------------------------------------------------------------------------

    def set_indices(self, index_iter: Iterator[Any], skip_seqs: set[int], skip: int) -> None:
        """The sampler's batch iterator, already advanced past the first ``skip`` batches; ``skip_seqs``: later
        positions handed out before a resume (``in_order=False``), dropped as they come."""
        self.index_iter = Positions(index_iter, skip_seqs, skip)
        self.done_before = set(range(skip)) | skip_seqs

    def start(self, skip: int) -> None:
        """Begin loading (after the pool is set): ``skip`` batches of an IterableDataset are read and dropped."""
        if self.pool is None:
            if self.iterable:
                for _ in range(skip):
                    if self._read_iterable_batch(0) is None:
                        self.exhausted = True
                        break
        elif self.iterable:
            self.pool.submit(self.produce_iterable, skip)
        else:
            self.fill()

    # -- fetching ------------------------------------------------------------------------------------------

    def _fetch_one(self, index: Any, batch: Batch | None = None, pos: int = 0) -> Any:
        """dataset[index] with this epoch in the thread context; returns the sample, records timings."""
        with loading(self.epoch, self.stats.add, (self, batch, pos) if self.slots and batch is not None else None):
            check_worker_init()
            if self.use_getitems:
                return self.dataset.__getitems__(index)
            return self.dataset[index]

    def slot(self, batch: Batch, pos: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | None:
        """Row ``pos`` of the batch tensor (allocated by the first sample that asks), if shape/dtype fit."""
        with self.cond:
            buf = batch.buffer
            if buf is None:
                buf = batch.buffer = self._batch_buffer(batch, (batch.nsamples, *shape), dtype)
        if tuple(buf.shape[1:]) != shape or buf.dtype != dtype:
            return None
        return buf[pos]

    def _batch_buffer(self, batch: Batch, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """Memory for a batch built in place: pooled pinned staging (device=), pinned (pin_memory), else paged."""
        if self.stager is not None:
            nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            batch.staging = self.stager.pool.acquire(nbytes)
            return batch.staging[:nbytes].view(dtype).view(shape)
        if self.pin:
            return torch.empty(shape, dtype=dtype, pin_memory=True)
        return advise_huge_pages(torch.empty(shape, dtype=dtype))

    def run_sample(self, batch: Batch, pos: int, index: Any) -> None:
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

    def finish(self, batch: Batch) -> None:
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

    def _finalize(self, batch: Batch) -> Any:
        timers: dict[str, float] = {}
        t0 = time.perf_counter()
        samples = batch.samples if self.auto_collation else batch.samples[0]
        if self.augment is not None:
            data = augment_batch(batch, samples, timers, augment=self.augment, epoch=self.epoch, device=self.device,
                                 stager=self.stager, collate_fn=self.collate_fn)
        else:
            data = collate_slots(batch) if batch.buffer is not None else None
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

    # -- scheduling ----------------------------------------------------------------------------------------

    def _next_indices(self, seq: int) -> Any:
        """The next batch of indices from the sampler, remembering its absolute position in the epoch."""
        assert self.index_iter is not None
        indices = next(self.index_iter)
        self.positions[seq] = getattr(self.index_iter, "last", seq)
        return indices

    def _new_batch(self, seq: int, indices: Any) -> tuple[Batch, list[tuple[int, Any]]]:
        """A batch for ``indices`` and its ``(position, index)`` tasks: one per sample, or one for the batch."""
        if self.auto_collation and not self.use_getitems:
            return Batch(seq, indices, len(indices)), list(enumerate(indices))
        batch = Batch(seq, indices, 1)
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

    def _read_iterable_batch(self, seq: int) -> Batch | None:
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
            batch = Batch(seq, None, 0)
            batch.error = (f"#{seq} (iterable batch)", exc, worker_id())
            return batch
        batch = Batch(seq, None, len(samples))
        batch.samples = samples
        batch.remaining = 0
        return batch

    def _timed_next(self) -> Any:
        with loading(self.epoch, self.stats.add):
            return next(self.dataset_iter)

    def next_ready(self) -> Batch:
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

    def _pick(self) -> Batch | None:
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

    def load_inline(self) -> Batch:
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
        """Stop handing out and submitting; drop the batches in flight."""
        with self.cond:
            self.stopped = True
            self.inflight.clear()
            self.cond.notify_all()
