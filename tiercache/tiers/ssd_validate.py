"""The SSD tier's background validation after open: the index is opened, not loaded (issue 12).

Readers are served from the first moment: a read looks its block up in the LMDB index, checks the entry
against its region and the bytes against their page checksums. Meanwhile this thread walks the committed
index in short batches, each under the tier's lock for a few milliseconds: it drops entries that point past
their region (or are not well formed, or name a slot above the committed high-water mark) and records each
valid entry's slot in the ``SlotTable`` and its region's counts (the first entry to claim a slot owns it:
the slot map is repaired to say so; later ones are left to fail their checksums when read). Then it hands
the resident slots to the policy in slot order (about the order they were written) and lets the slot table
reuse free slots. Until it is done (``done`` set), the tier admits new blocks only while they fit without
evicting.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import AbstractContextManager

import numpy as np

from .ssd_blocks import SsdBlocks, ident
from .ssd_format import Location
from .ssd_slots import FREE

log = logging.getLogger(__name__)

BATCH = 2048


class Validator:
    """One background walk of the index (see the module docstring)."""

    def __init__(self, blocks: SsdBlocks, lock: AbstractContextManager, batch: int = BATCH):
        self.blocks, self.lock, self.batch = blocks, lock, batch
        self.mark = blocks.slots.next_slot  # committed high-water mark: every slot on disk is below it
        self.done = threading.Event()
        self.seen = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="tiercache-ssd-validate", daemon=True)

    def start(self) -> None:
        """Start walking (an empty index is done at once)."""
        if self.mark == 0:
            with self.lock:
                self._finish(np.zeros(0, np.int64))
            return
        self._thread.start()

    def stop(self) -> None:
        """Stop walking (at close)."""
        self._stop = True
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        try:
            idents = np.zeros(self.mark, np.int64)
            for batch in self.blocks.index.committed_batches(self.batch):
                if self._stop:
                    return
                locs = [Location.unpack(raw) for _key, raw in batch]
                owners = self.blocks.index.keys_of([max(0, loc.slot) for loc in locs])
                with self.lock:
                    for (key, raw), loc, owner in zip(batch, locs, owners, strict=True):
                        self._one(key, raw, loc, owner, idents)
                self.seen += len(batch)
                time.sleep(0)  # let a waiting reader have the GIL between batches
            self._to_policy(idents)
        except Exception:  # noqa: BLE001 - the tier keeps serving; eviction stays off
            log.exception("ssd tier: background validation failed")

    def _one(self, key: bytes, raw: bytes, loc: Location, owner: bytes | None, idents: np.ndarray) -> None:
        blocks = self.blocks
        if loc.slot >= 0 and blocks.slots.state(loc.slot) != FREE:
            return  # written since open, dropped since the batch was read (GONE), or held by another entry
        if not blocks.valid(loc) or not 0 <= loc.slot < self.mark:
            if blocks.index.get(key) == raw:
                blocks.drop(key, raw)
                blocks.dropped += 1
            return
        region = blocks.files.regions[loc.region]
        if owner != key:  # a damaged slot map: the entry that claims the slot owns it
            blocks.index.set_slot(loc.slot, key)
        blocks.slots.claim(loc.slot, region.id, loc.length)
        region.count += 1
        region.live += loc.length
        idents[loc.slot] = ident(key)

    def _to_policy(self, idents: np.ndarray) -> None:
        found = np.flatnonzero(idents)
        batch = self.batch * 16  # vectorized: a bigger batch holds the lock about as long
        reserve = getattr(self.blocks.policy, "reserve", None)
        if reserve is not None:
            with self.lock:
                reserve(max(self.blocks.slots.next_slot, self.mark))
        for start in range(0, len(found), batch):
            if self._stop:
                return
            with self.lock:
                self.blocks.track_many(found[start:start + batch], idents)
        with self.lock:
            self._finish(found)

    def _finish(self, _found: np.ndarray) -> None:
        blocks = self.blocks
        blocks.slots.finish()
        files = blocks.files
        for region in [r for r in files.regions.values()
                       if r.count <= 0 and r.inflight == 0 and r not in files.active.values()]:
            files.free(region)
        if blocks.dropped:
            log.warning("ssd tier: dropped %d index entries pointing past their region", blocks.dropped)
        self.done.set()
