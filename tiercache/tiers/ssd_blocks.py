"""The SSD tier's bookkeeping of resident blocks and the space they take: index entries, slots, region
counts, eviction and compaction. Not thread-safe: ``SsdTier`` calls everything here under its lock.

A resident block is an index entry (``ssd_index``: key → location and slot), its slot's owner in
``ssd_slots`` (slot → key), the slot's region in the ``SlotTable`` and its place in the policy. ``link`` and
``drop`` keep the four in step. A damaged index may hold entries whose slot another key owns: dropping one
only frees the slot when no live entry points at it any more.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import numpy as np

from .base import BlockId
from .policy import Policy, Protected
from .regions import Region, RegionFiles
from .slot_plans import SlotPlanPolicy
from .slot_policy import SlotPolicy
from .ssd_format import Location, verify
from .ssd_index import SsdIndex
from .ssd_slots import SlotTable

log = logging.getLogger(__name__)


def ident(key: bytes) -> int:
    """The 64-bit identity of an encoded block id the policy's ghost remembers (never 0)."""
    return hash(key) or 1


class SsdBlocks:
    """Resident blocks of one SSD tier (see the module docstring)."""

    def __init__(self, files: RegionFiles, index: SsdIndex, slots: SlotTable, policy: Policy,
                 protected: Protected | None, region_size: int):
        self.files, self.index, self.slots, self.policy = files, index, slots, policy
        self.protected = protected
        self.region_size = region_size
        self._ident_aware = isinstance(policy, (SlotPolicy, SlotPlanPolicy))
        self.evictions = self.evicted_bytes = self.relocated_bytes = self.crc_errors = self.dropped = 0

    # ------------------------------------------------------------------ one block

    def block_of(self, slot: int) -> BlockId | None:
        """The block a slot holds (from the slot map), or None."""
        key = self.index.key_of(slot)
        return None if key is None else BlockId.decode(key)

    def protected_slot(self) -> Callable[[int], bool] | None:
        """``protected`` over slots (the tier's test takes block ids)."""
        if self.protected is None:
            return None
        test = self.protected

        def protected(slot: int) -> bool:
            block = self.block_of(int(slot))
            return block is not None and test(block)

        return protected

    def track(self, slot: int, length: int, identity: int, scan: bool = False) -> None:
        """Tell the policy about a resident block (``identity``: ``ident`` of its encoded id; ``scan``: a
        stream's one-shot block)."""
        if self._ident_aware:
            self.policy.on_insert(slot, length, identity, scan=scan)
        else:
            self.policy.on_insert(slot, length, scan=scan)

    def track_many(self, slots: np.ndarray, idents: np.ndarray) -> None:
        """``track`` the slots (validation found them) still held, with their ``idents[slot]``."""
        slots = slots[self.slots.region[slots] >= 0]
        sizes = self.slots.length[slots]
        if self._ident_aware:
            self.policy.insert_many(slots, sizes, idents[slots])
            return
        for slot, size in zip(slots.tolist(), sizes.tolist(), strict=True):
            if slot not in self.policy:
                self.policy.on_insert(slot, size)

    def link(self, block: BlockId, region: Region, loc: Location, scan: bool = False) -> None:
        """Make a block written at ``loc`` (its slot allocated) resident (``scan``: see ``track``)."""
        key = block.encode()
        self.index.next_slot = self.slots.next_slot
        self.index.set(key, loc.pack())
        self.index.set_slot(loc.slot, key)
        self.slots.claim(loc.slot, region.id, loc.length)
        region.count += 1
        region.live += loc.length
        self.track(loc.slot, loc.length, ident(key), scan)

    def drop(self, key: bytes, raw: bytes, forget: bool = True) -> int:
        """Remove the index entry ``key`` (whose current value is ``raw``) and, unless another entry still
        points at its slot, the slot's block; ``forget``: tell the policy (not for its own victims)."""
        loc = Location.unpack(raw)
        self.index.set(key, None)
        if loc.slot < 0:
            return 0  # not an entry at all (too short to name a slot)
        owner = self.index.key_of(loc.slot)
        if owner != key and owner is not None:
            other = self.index.get(owner)
            if other is not None and Location.unpack(other).slot == loc.slot:
                return 0  # a damaged entry pointing at a live block's slot: that block stays
        self.free_slot(loc.slot, forget)
        return loc.length

    def free_slot(self, slot: int, forget: bool = True) -> None:
        """Free a slot and take its block out of its region's counts."""
        rid = self.slots.state(slot)
        if rid < 0:
            self.slots.release(slot)
            return
        length = int(self.slots.length[slot])
        self.slots.release(slot)
        self.index.set_slot(slot, None)
        if forget:
            self.policy.on_remove(slot)
        region = self.files.regions.get(rid)
        if region is not None:
            region.count -= 1
            region.live -= length
            if region.count <= 0 and region not in self.files.active.values() and region.inflight == 0:
                self.files.free(region)

    def valid(self, loc: Location) -> bool:
        """Whether an entry is well formed and lies inside a known region."""
        region = self.files.regions.get(loc.region)
        return region is not None and loc.offset + loc.length <= region.end and loc.well_formed()

    # ------------------------------------------------------------------ space

    def make_room(self, need: int, capacity: int, high: float, low: float) -> bool:
        """Evict until ``need`` more bytes fit under the low watermark (at least under the hard quota).

        The policy chooses victims (index entries dropped); then regions are freed, most garbage first,
        copying their live blocks forward (into a separate "old" stream, so blocks that survive stay apart
        from new ones). Only when no region's live bytes fit under the quota does the policy evict more:
        evicting beyond the policy's choice to save copying costs far more hits than the copying costs.
        """
        files = self.files
        if files.physical + need <= high * capacity:
            return True
        goal = max(0, int(low * capacity) - need)
        self.evict(self.policy.tracked_bytes - goal)
        chunk = max(self.region_size // 4, need)
        while files.physical > goal:
            for region in [r for r in files.regions.values() if r.count <= 0 and r.inflight == 0]:
                files.free(region)
            if files.physical <= goal:
                break
            candidates = [r for r in files.regions.values() if r.inflight == 0 and r.end > r.live]
            best = max(candidates, key=lambda r: (r.end - r.live, -r.id), default=None)
            if best is not None and files.physical + best.live <= capacity:
                self.compact(best)
            elif not self.evict(chunk):
                break
        return files.physical + need <= capacity

    def evict(self, nbytes: int) -> bool:
        """Drop the policy's victims for ``nbytes``; False if it had none to give."""
        if nbytes <= 0:
            return True
        victims = self.policy.victims(nbytes, self.protected_slot())
        for slot in victims:
            key = self.index.key_of(slot)
            raw = None if key is None else self.index.get(key)
            if raw is not None and Location.unpack(raw).slot == slot:
                self.evicted_bytes += self.drop(key, raw, forget=False)
            else:
                self.free_slot(slot, forget=False)
        self.evictions += len(victims)
        return bool(victims)

    def compact(self, region: Region) -> None:
        """Copy a region's live blocks to the active region and delete it (caller checked they fit)."""
        files = self.files
        members = []
        for slot in self.slots.in_region(region.id).tolist():
            key = self.index.key_of(slot)
            raw = None if key is None else self.index.get(key)
            loc = None if raw is None else Location.unpack(raw)
            if loc is None or loc.slot != slot or loc.region != region.id:
                self.free_slot(slot)  # nothing live points at it
                continue
            members.append((loc.offset, key, loc))
        members.sort()
        files.unset_active(region)
        data = os.pread(region.fd, region.end, 0) if members else b""
        for _off, key, loc in members:
            chunk = data[loc.offset:loc.offset + loc.length]
            if len(chunk) != loc.length or not verify(BlockId.decode(key), loc, chunk):
                self.crc_errors += 1
                self.drop(key, loc.pack())
                continue
            target, new_off = files.reserve(loc.length, "old")
            os.pwrite(target.fd, chunk, new_off)
            region.count -= 1
            region.live -= loc.length
            target.count += 1
            target.live += loc.length
            self.slots.claim(loc.slot, target.id, loc.length)
            self.index.set(key, loc.moved(target.id, new_off).pack())
            self.relocated_bytes += loc.length
        if region.id in files.regions:
            files.free(region)
