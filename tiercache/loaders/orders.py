"""A loader's sample order for this epoch and the next, computed without disturbing any RNG (for plans).

Three kinds of samplers:

* torch's built-in samplers (``replay.replayable``): replayed under an RNG snapshot, this epoch then the
  next (the base-seed draw between them included);
* samplers with ``set_epoch`` and an integer ``epoch`` (torch's ``DistributedSampler`` and samplers built
  like it): the order is a function of the epoch, so this epoch is the sampler's own ``__iter__`` and the
  next is a copy's after ``set_epoch(epoch + 1)``, torch's code computing both (``seed + epoch``, padding
  or ``drop_last``, ``rank::num_replicas``). A sampler other than DistributedSampler must give the same
  order twice for its epoch, or it is treated as the third kind;
* any other sampler: its next order cannot be known; the loader sends this epoch only, from the order it
  materializes for the epoch (``EpochOrder.materialized``), and says so in ``loader.stats()``.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils.data as tud
from torch.utils.data import BatchSampler

from .replay import flatten, replayable, restore_rng, snapshot_rng

__all__ = ["EpochOrder", "epoch_order"]


@dataclass
class EpochOrder:
    """The indices a plan should name, and how much of the future they cover."""

    indices: list[int] = field(default_factory=list)
    epochs: int = 0  # 2: this epoch and the next; 1: this epoch only; 0: none
    reason: str = ""  # why fewer than two epochs
    materialized: list[Any] | None = None  # the epoch's index-sampler items, when they had to be drawn now

    def describe(self) -> dict[str, Any]:
        """What ``loader.stats()`` shows."""
        return {"epochs": self.epochs, "files": len(self.indices), "reason": self.reason}


def _base(sampler: Any) -> Any:
    return sampler.sampler if isinstance(sampler, BatchSampler) else sampler


def _remaining(items: Iterable[Any], skip_batches: int, skip_seqs: set[int] | None) -> list[int]:
    if skip_seqs:
        return flatten(b for pos, b in enumerate(items) if pos >= skip_batches and pos not in skip_seqs)
    return flatten(itertools.islice(items, skip_batches, None))


def _rewrap(index_sampler: Any, base: Any) -> Any:
    """``index_sampler`` with ``base`` as its sampler (a plain BatchSampler is rebuilt around it)."""
    if isinstance(index_sampler, BatchSampler):
        return BatchSampler(base, index_sampler.batch_size, index_sampler.drop_last)
    return base


def _epoch_based(index_sampler: Any) -> bool:
    base = _base(index_sampler)
    return (callable(getattr(base, "set_epoch", None)) and isinstance(getattr(base, "epoch", None), int)
            and (not isinstance(index_sampler, BatchSampler) or type(index_sampler) is BatchSampler))


def epoch_order(loader: tud.DataLoader, skip_batches: int = 0, skip_seqs: set[int] | None = None,
                draw_next_base_seed: bool = True, index_iter: Iterable[Any] | None = None) -> EpochOrder:
    """This epoch's remaining order and, when it can be known, the next epoch's (RNG states unchanged).

    ``index_iter`` is the epoch's own iterator over the index sampler: for samplers of the third kind its
    items are drawn now (``materialized``), and the loader must then take the epoch's order from those.
    """
    sampler = loader._index_sampler
    snap = snapshot_rng(loader)
    try:
        if replayable(sampler):
            current = _remaining(iter(sampler), skip_batches, skip_seqs)
            if draw_next_base_seed:
                torch.empty((), dtype=torch.int64).random_(generator=loader.generator)
            return EpochOrder(current + flatten(iter(sampler)), 2)
        if _epoch_based(sampler):
            epoch = _base(sampler).epoch
            this = list(iter(_rewrap(sampler, _twin(sampler, epoch))))
            if isinstance(_base(sampler), tud.DistributedSampler) or flatten(this) == _at_epoch(sampler, epoch):
                return EpochOrder(_remaining(iter(this), skip_batches, skip_seqs) + _at_epoch(sampler, epoch + 1), 2)
    finally:
        restore_rng(loader, snap)
    name = type(_base(sampler)).__name__
    if index_iter is None:
        return EpochOrder(reason=f"{name}: its order cannot be known ahead")
    items = list(index_iter)
    return EpochOrder(_remaining(iter(items), skip_batches, skip_seqs), 1,
                      f"{name} cannot tell its next epoch's order (no set_epoch and epoch, or not deterministic)",
                      materialized=items)


def _twin(sampler: Any, epoch: int) -> Any:
    twin = copy.copy(_base(sampler))
    twin.set_epoch(epoch)
    return twin


def _at_epoch(index_sampler: Any, epoch: int) -> list[int]:
    return flatten(iter(_rewrap(index_sampler, _twin(index_sampler, epoch))))
