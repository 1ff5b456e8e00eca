"""RNG snapshots and sampler replay, so a loader can compute an epoch's order (for plans) or resume it.

Replaying means: snapshot the RNG states the sampler draws from, run the sampler, restore the states; the
real epoch then draws the same numbers and yields the same order.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.utils.data as tud
from torch.utils.data import BatchSampler

__all__ = ["flatten", "replayable", "restore_rng", "snapshot_rng"]


def _base_sampler(s: Any) -> Any:
    return s.sampler if isinstance(s, BatchSampler) else s


def _sampler_generators(loader: tud.DataLoader) -> list[torch.Generator]:
    gens = []
    if loader.generator is not None:
        gens.append(loader.generator)
    g = getattr(_base_sampler(loader._index_sampler), "generator", None)
    if isinstance(g, torch.Generator) and all(g is not x for x in gens):
        gens.append(g)
    return gens


def _uses_global_rng(loader: tud.DataLoader) -> bool:
    base = _base_sampler(loader._index_sampler)
    return loader.generator is None or (hasattr(base, "generator") and base.generator is None)


def snapshot_rng(loader: tud.DataLoader) -> dict[str, Any]:
    """The states of the loader's and its sampler's generators, and torch's global RNG if either draws from it."""
    return {
        "generators": [g.get_state() for g in _sampler_generators(loader)],
        "global": torch.get_rng_state() if _uses_global_rng(loader) else None,
    }


def restore_rng(loader: tud.DataLoader, snap: dict[str, Any]) -> None:
    """Put back the RNG states of a :func:`snapshot_rng`."""
    for g, state in zip(_sampler_generators(loader), snap["generators"], strict=False):
        g.set_state(state)
    if snap.get("global") is not None:
        torch.set_rng_state(snap["global"])


_REPLAYABLE = (
    tud.SequentialSampler, tud.RandomSampler, tud.SubsetRandomSampler, tud.WeightedRandomSampler, range, list, tuple,
)


def replayable(index_sampler: Any) -> bool:
    """True when re-running the sampler after restoring torch RNG states reproduces its order."""
    return type(_base_sampler(index_sampler)) in _REPLAYABLE and (
        not isinstance(index_sampler, BatchSampler) or type(index_sampler) is BatchSampler
    )


def flatten(order: Iterable[Any]) -> list[int]:
    """The sample indices of an index sampler's output (batches of indices, or indices), in order."""
    out: list[int] = []
    for item in order:
        if isinstance(item, (list, tuple)):
            out.extend(int(i) for i in item)
        else:
            out.append(int(item))
    return out
