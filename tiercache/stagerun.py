"""Read-ahead's fetch of a run of consecutive blocks: staged with as few GETs as possible.

:func:`stage_run` hands a lone block, and any block a tier holds by now, to the read path's own ``stage``
(an SSD-resident block is only advised into the page cache there). The other blocks it claims in the read
path's single-flight (a block a reader is already fetching is left to that reader, who admits it) and
fetches each stretch of consecutive ones with one ranged GET (``Fetcher.get_run``). Every block is handed
to ``keep`` (the staging area) and its single-flight call settled as soon as its own bytes are in, so a
reader waiting on the second block of a GET does not wait for the rest. A failure settles the blocks not
yet delivered with the error (their waiting readers retry as for a failed GET of their own).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Protocol

from .fetcher import Fetcher
from .flight import SingleFlight
from .store import ObjectInfo
from .tiers.base import BlockId
from .tierstack import TierStack

__all__ = ["stage_run"]


class _Reader(Protocol):
    """What stage_run needs of the read path (``readpath.BlockReader``'s public parts)."""

    flights: SingleFlight
    fetcher: Fetcher
    tiers: TierStack

    def stage(self, block: BlockId, info: ObjectInfo, keep: Callable[[BlockId, bytes], None]) -> None: ...


def stage_run(reader: _Reader, run: list[BlockId], info: ObjectInfo, keep: Callable[[BlockId, bytes], None]) -> None:
    """Stage ``run`` (blocks of ``info`` in index order) through ``keep``; see the module docstring."""
    if len(run) == 1:
        reader.stage(run[0], info, keep)
        return
    flights, tiers = reader.flights, reader.tiers
    owned: dict[BlockId, Future] = {}  # claimed, not settled yet
    try:
        stretch: list[BlockId] = []
        for block in run:
            if tiers.contains(block):  # a tier got it meanwhile: the read path's own staging, if any
                stretch = _fetch(reader, owned, stretch, info, keep)
                if not tiers.contains(block, "ram"):
                    reader.stage(block, info, keep)
                continue
            future = flights.claim(block)
            if future is None:  # a reader's own fetch of it is under way: that reader admits it
                stretch = _fetch(reader, owned, stretch, info, keep)
                continue
            owned[block] = future
            if stretch and stretch[-1].index + 1 != block.index:
                stretch = _fetch(reader, owned, stretch, info, keep)
            stretch.append(block)
        _fetch(reader, owned, stretch, info, keep)
    except BaseException as exc:
        for block, future in owned.items():
            flights.settle(block, future, error=exc)
        raise


def _fetch(reader: _Reader, owned: dict[BlockId, Future], stretch: list[BlockId], info: ObjectInfo,
           keep: Callable[[BlockId, bytes], None]) -> list[BlockId]:
    """One GET of a stretch of consecutive claimed blocks, each settled as it lands; an empty stretch."""
    if stretch:
        for block, data in reader.fetcher.get_run(stretch, info):
            keep(block, data)
            reader.flights.settle(block, owned.pop(block), data)
    return []
