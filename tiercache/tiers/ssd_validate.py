"""The SSD tier's background validation after open: the index is opened, not loaded (issue 12).

Readers are served from the first moment: a read looks its block up in the LMDB index, checks the entry
against its region and the bytes against their page checksums. Meanwhile this thread walks the committed
index in short batches, each under the tier's lock for a few milliseconds: it drops entries that point past
their region (or are not well formed, or name a slot above the committed high-water mark) and records each
valid entry's slot, record size and digest in the ``SlotTable`` and its region's counts (the first entry to
claim a slot owns it; later ones are left to fail their id check when read). It reads no region file. Then
it hands the resident slots to the policy in slot order (about the order they were written) and lets the
slot table reuse free slots; when the last close saved the policy's state (``ssd_order.py``), that state
comes back instead, reconciled with what the walk found, so the eviction order survives a restart. Until it
is done (``done`` set), the tier admits new blocks only while they
fit without evicting.

Between batches the walk hands the GIL over; when another thread takes it, the walk rests three times the
batch's own time, so readers and FUSE requests are not slowed by it. The walk reads every page of the index
once; every ``RELEASE_EVERY`` entries, and at the end, it lets go of the mapped pages (``Meta.release_pages``)
so that they do not stay in the process's RSS (issue 12).
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np

from . import ssd_order
from .meta import trim_heap
from .ssd_blocks import SsdBlocks
from .ssd_format import Location
from .ssd_index import KEY_LEN, RELEASE_EVERY, ident
from .ssd_slots import FREE

log = logging.getLogger(__name__)

BATCH = 2048
CONTENDED_S = 0.0005  # a hand-over of the GIL that took longer than this: another thread had work
BACKOFF = 3.0  # then rest this many times the batch's own time (the walk takes at most a quarter)


class Validator:
    """One background walk of the index (see the module docstring)."""

    def __init__(self, blocks: SsdBlocks, lock: AbstractContextManager, batch: int = BATCH,
                 order: tuple[Path, int | None] | None = None):
        self.blocks, self.lock, self.batch = blocks, lock, batch
        self.order = order  # (directory, generation) of a saved eviction order
        self.restored = 0  # blocks whose place in the eviction order came back from the saved state
        self.mark = blocks.slots.next_slot  # committed high-water mark: every slot on disk is below it
        self.done = threading.Event()
        self.seen = 0
        self.rests = 0  # times the walk rested because another thread had work
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
            meta = self.blocks.index.meta
            released = 0
            started = time.perf_counter()
            for batch in self.blocks.index.committed_batches(self.batch):
                if self._stop:
                    return
                locs = [Location.unpack(raw) for _key, raw in batch]
                with self.lock:
                    for (key, raw), loc in zip(batch, locs, strict=True):
                        self._one(key, raw, loc, idents)
                self.seen += len(batch)
                if self.seen - released >= RELEASE_EVERY:
                    meta.release_pages()
                    released = self.seen
                started = self._give_way(started)
            meta.release_pages()
            self._to_policy(idents)
            trim_heap()
        except Exception:  # noqa: BLE001 - the tier keeps serving; eviction stays off
            log.exception("ssd tier: background validation failed")

    def _give_way(self, started: float) -> float:
        """Between two batches: hand the GIL over, and when another thread took it (a reader, a FUSE request,
        a listing), rest a while so that a core-bound walk does not slow them (``ls -l`` of a 100 K directory
        during the walk at 1 M: 4.0 s with only the hand-over, 1.6–2.1 s with the rest, 0.7–1.6 s after the
        walk). An idle daemon walks at full speed. Returns when the next batch starts."""
        before = time.perf_counter()
        worked = before - started
        time.sleep(0)
        if time.perf_counter() - before > CONTENDED_S:
            self.rests += 1
            time.sleep(worked * BACKOFF)
        return time.perf_counter()

    def _one(self, key: bytes, raw: bytes, loc: Location, idents: np.ndarray) -> None:
        blocks = self.blocks
        if loc.slot >= 0 and blocks.slots.state(loc.slot) != FREE:
            return  # written since open, dropped since the batch was read (GONE), or held by another entry
        if len(key) != KEY_LEN:  # not an entry of this format at all
            blocks.index.set(key, None)
            blocks.dropped += 1
            return
        if not blocks.valid(loc) or not 0 <= loc.slot < self.mark:
            if blocks.index.get(key) == raw:
                blocks.drop(key, raw)
                blocks.dropped += 1
            return
        region = blocks.files.regions[loc.region]
        blocks.slots.claim(loc.slot, region.id, loc.size, key)
        region.count += 1
        region.live += loc.size
        idents[loc.slot] = ident(key)

    def _restore(self, idents: np.ndarray) -> None:
        """Put the saved eviction order back (if there is one for this index), minus what the walk did not
        find, plus what was linked since open; the caller then adds the found slots it lacks."""
        state = None if self.order is None else ssd_order.load(*self.order)
        if state is None:
            return
        blocks = self.blocks
        with self.lock:
            target = ssd_order.compact(blocks.policy)
            if target is None:
                return
            since, before = target.resident(), target.state()  # linked since open: nothing handed over yet
            try:
                target.load_state(state)
            except ValueError as exc:
                log.info("ssd tier: saved eviction order not used: %s", exc)
                return
            held = target.resident()
            known = held < len(idents)
            stale = held[~known | (idents[np.where(known, held, 0)] == 0)]
            if 2 * len(stale) > len(held):  # not this index's order after all (the index was dropped)
                target.load_state(before)
                return
            for slot in stale.tolist():
                target.on_remove(slot)
            self.restored = len(target)
            for slot in since.tolist():
                key = blocks.slots.key_of(slot)
                if key is not None and slot not in target:
                    blocks.track(slot, int(blocks.slots.length[slot]), ident(key))
        log.info("ssd tier: eviction order of %d blocks kept from the last close", self.restored)

    def _to_policy(self, idents: np.ndarray) -> None:
        self._restore(idents)
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
