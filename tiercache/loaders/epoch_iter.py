"""The iterator of one :class:`~tiercache.loaders.DataLoader` epoch (what ``iter(loader)`` returns): hands out
the pipeline's batches, makes the consumer's stream wait on their device copies, says where the epoch stands
for ``state_dict()``, and stops the epoch's threads when it ends or is dropped."""

from __future__ import annotations

import contextlib
import time
import weakref
from typing import TYPE_CHECKING, Any

import torch

from .batches import raise_batch_error
from .epochstats import EpochStats
from .pipeline import EpochPipeline
from .staging import map_tensors
from .workers import WorkerPool

if TYPE_CHECKING:
    from .dataloader import DataLoader


class EpochIterator:
    """One epoch over a :class:`~tiercache.loaders.DataLoader`, over a started (or about to start) pipeline.

    ``rng_at_start``, ``draw_base_seed`` and ``skip`` (batches handed out before a resume) are what
    :meth:`state` reports; ``owned_pool`` is the epoch's own thread pool (None when there is none or it is the
    loader's persistent one), stopped with the epoch.
    """

    def __init__(self, loader: DataLoader, pipe: EpochPipeline, stats: EpochStats, *, epoch: int,
                 rng_at_start: dict[str, Any], draw_base_seed: bool, skip: int, owned_pool: WorkerPool | None):
        self._loader_ref = weakref.ref(loader)
        self._pipe = pipe
        self._stats = stats
        self._epoch = epoch
        self._rng_at_start = rng_at_start
        self._draw_base_seed = draw_base_seed
        self._skip = skip
        self._owned_pool = owned_pool
        self.finished = False
        self._finalizer = weakref.finalize(self, EpochPipeline.shutdown, pipe)
        if owned_pool is not None:
            weakref.finalize(self, owned_pool.stop, False)

    def __iter__(self) -> EpochIterator:
        return self

    def __len__(self) -> int:
        loader = self._loader_ref()
        return len(loader) if loader is not None else 0

    def __next__(self) -> Any:
        pipe = self._pipe
        if self.finished:
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
            self.shutdown(join=False)  # a worker may be stuck (timeout): do not wait for it
            raise
        finally:
            self._stats.wait_s += time.perf_counter() - t0
        if batch.error is not None:
            self.shutdown(join=False)
            raise_batch_error(batch)
        pipe.yielded.add(batch.seq)
        self._stats.batches += 1
        self._stats.samples += batch.nsamples
        data = batch.data
        if batch.event is not None:
            stream = torch.cuda.current_stream(pipe.device)
            stream.wait_event(batch.event)
            map_tensors(data, lambda t: t.record_stream(stream) if t.is_cuda else None)
        return data

    def state(self) -> dict[str, Any]:
        """Where this epoch stands, as :meth:`DataLoader.state_dict` returns it."""
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
        self.finished = True
        self._stats.ended = time.perf_counter()
        self.shutdown()

    def shutdown(self, join: bool = True) -> None:
        """Stop this epoch; stop its own threads, waiting briefly (they finish their current sample) if ``join``."""
        self.finished = True
        self._pipe.shutdown()
        if self._owned_pool is not None:
            self._owned_pool.stop(join=join, timeout=2.0)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.shutdown()


def _contiguous_prefix(seqs: set[int]) -> int:
    n = 0
    while n in seqs:
        n += 1
    return n
