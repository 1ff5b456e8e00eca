"""One batch in flight in a :class:`~tiercache.loaders.DataLoader` epoch, and what is done with it as a whole:
default_collate on the tensor its samples were written into, re-raising a worker's error in the consumer; and
the epoch's batch-index iterator with absolute positions (for resume)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.utils.data as tud


class Batch:
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


def collate_slots(batch: Batch) -> Any:
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

def batched_fetch(dataset: Any) -> bool:
    """Whether torch's fetcher would call ``__getitems__`` with a meaningful batched implementation.

    ``Subset.__getitems__`` over a dataset without one is just ``[subset[i] for i in indices]``; loading
    those samples one per task gives the same result with the threads working in parallel.
    """
    while isinstance(dataset, tud.Subset) and type(dataset).__getitems__ is tud.Subset.__getitems__:
        dataset = dataset.dataset
    return bool(getattr(dataset, "__getitems__", None))


def raise_batch_error(batch: Batch) -> None:
    """Raise a worker's error in the consumer: same type (RuntimeError if it cannot be built from a message),
    the sample index in the message, the original as ``__cause__``."""
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


class Positions:
    """The batch-index iterator of an epoch, from absolute position ``start`` on, dropping ``skip`` positions
    (batches handed out before a resume with ``in_order=False``); ``last`` is the position of the last item."""

    def __init__(self, inner: Iterator[Any], skip: set[int], start: int):
        self._inner, self._skip, self._pos = inner, skip, start
        self.last = start - 1

    def __iter__(self) -> Positions:
        return self

    def __next__(self) -> Any:
        while True:
            item = next(self._inner)
            pos, self._pos = self._pos, self._pos + 1
            if pos not in self._skip:
                self.last = pos
                return item
