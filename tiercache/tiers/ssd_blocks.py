"""The SSD tier's bookkeeping of resident blocks and the space they take: index entries, slots, region
counts, eviction and compaction. Not thread-safe: ``SsdTier`` calls everything here under its lock.

A resident block is its record in a region file (its id, then its bytes), an index entry (``ssd_index``:
digest → location and slot), its slot's region, record size and digest in the ``SlotTable`` and its place
in the policy. ``link`` and ``drop`` keep them in step. A damaged index may hold entries whose slot another
entry owns: dropping one only frees the slot when no live entry points at it any more. Sizes here (region
counts, the policy's) are record sizes, what the block takes on disk.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

import numpy as np

from .base import BlockId
from .policy import Policy, Protected
from .regions import Region, RegionFiles
from .slot_plans import SlotPlanPolicy
from .slot_policy import SlotPolicy
from .ssd_format import Location, header_size, id_length, verify
from .ssd_index import SsdIndex, block_key, ident, key_part
from .ssd_slots import SlotTable

log = logging.getLogger(__name__)

HEAD_READ = 512  # bytes read to learn a record's id (a longer id takes a second read)


class SsdBlocks:
    """Resident blocks of one SSD tier (see the module docstring)."""

    def __init__(self, files: RegionFiles, index: SsdIndex, slots: SlotTable, policy: Policy,
                 protected: Protected | None, region_size: int):
        self.files, self.index, self.slots, self.policy = files, index, slots, policy
        self.protected = protected
        self.region_size = region_size
        self._ident_aware = isinstance(policy, (SlotPolicy, SlotPlanPolicy))
        self._linking: tuple[int, BlockId] | None = None  # the block being linked (its id, without a read)
        self.evictions = self.evicted_bytes = self.relocated_bytes = self.crc_errors = self.dropped = 0

    # ------------------------------------------------------------------ one block

    def block_of(self, slot: int) -> BlockId | None:
        """The block a slot holds (its id read from its record), or None."""
        if self._linking is not None and self._linking[0] == slot:
            return self._linking[1]
        key = self.slots.key_of(slot)
        raw = None if key is None else self.index.get(key)
        if raw is None:
            return None
        loc = Location.unpack(raw)
        region = self.files.regions.get(loc.region)
        ident_ = None if region is None or region.dead or loc.slot != slot else self.record_id(region.fd, loc)
        return None if ident_ is None else BlockId.decode(ident_)

    @staticmethod
    def record_id(fd: int, loc: Location) -> bytes | None:
        """The encoded id a record at ``loc`` names (None when it is cut short or cannot be read)."""
        try:
            head = os.pread(fd, min(loc.size, HEAD_READ), loc.offset)
            if len(head) < 2:
                return None
            n = id_length(head)
            if 2 + n > len(head):
                head = os.pread(fd, 2 + n, loc.offset)
        except OSError:
            return None
        ident_ = head[2:2 + n]
        return ident_ if len(ident_) == n and 2 + n <= loc.size else None

    def owned(self, key: bytes, ident_: bytes | None) -> bool:
        """Whether the record id ``ident_`` found through index entry ``key`` is the entry's own block
        (else the entry is damaged: it points at another block's record)."""
        return ident_ is not None and _decodable(ident_) and block_key(BlockId.decode(ident_)) == key

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

    def link(self, block: BlockId, region: Region, loc: Location, key: bytes | None = None,
             scan: bool = False) -> None:
        """Make a block whose record was written at ``loc`` (its slot allocated) resident (``key``: its
        ``block_key``, if known; ``scan``: see ``track``)."""
        key = block_key(block) if key is None else key
        self.index.next_slot = self.slots.next_slot
        self.index.set(key, loc.pack())
        self.slots.claim(loc.slot, region.id, loc.size, key)
        region.count += 1
        region.live += loc.size
        self._linking = (loc.slot, block)
        try:
            self.track(loc.slot, loc.size, ident(key), scan)
        finally:
            self._linking = None

    def drop(self, key: bytes, raw: bytes, forget: bool = True) -> int:
        """Remove the index entry ``key`` (whose current value is ``raw``) and, unless another entry still
        points at its slot, the slot's block; ``forget``: tell the policy (not for its own victims).
        Returns the record's size."""
        loc = Location.unpack(raw)
        self.index.set(key, None)
        if loc.slot < 0:
            return 0  # not an entry at all (too short to name a slot)
        owner = self.slots.key_of(loc.slot)
        if owner != key and owner is not None:
            other = self.index.get(owner)
            if other is not None and Location.unpack(other).slot == loc.slot:
                return 0  # a damaged entry pointing at a live block's slot: that block stays
        self.free_slot(loc.slot, forget)
        return loc.size

    def resident_ids(self, prefix: bytes, lock: AbstractContextManager) -> list[BlockId]:
        """Ids of the indexed blocks whose encoded id starts with ``prefix``, read from their records (by
        region, outside ``lock``, the tier's, which this takes only to pin each region): for a key's prefix
        (``base.key_prefix``) the index entries of that key's digest, else every entry."""
        key = _one_key(prefix)
        if key is not None:
            batches: Iterable[list[tuple[bytes, bytes]]] = [self.index.scan(key_part(key))]
        else:
            self.index.flush()
            batches = self.index.committed_batches(4096)
        out = []
        for batch in batches:
            by_region: dict[int, list[tuple[bytes, Location]]] = {}
            for key_, raw in batch:
                loc = Location.unpack(raw)
                by_region.setdefault(loc.region, []).append((key_, loc))
            for rid, entries in sorted(by_region.items()):
                with lock:
                    region = self.files.regions.get(rid)
                    if region is None or region.dead:
                        continue
                    region.readers += 1
                try:
                    idents = [(key_, self.record_id(region.fd, loc)) for key_, loc in sorted(entries, key=_at)]
                finally:
                    with lock:
                        region.readers -= 1
                        if region.dead and region.readers == 0:
                            os.close(region.fd)
                out += [BlockId.decode(i) for k, i in idents if self.owned(k, i) and i.startswith(prefix)]
        return out

    def free_slot(self, slot: int, forget: bool = True) -> None:
        """Free a slot and take its block out of its region's counts."""
        rid = self.slots.state(slot)
        if rid < 0:
            self.slots.release(slot)
            return
        length = int(self.slots.length[slot])
        self.slots.release(slot)
        if forget:
            self.policy.on_remove(slot)
        region = self.files.regions.get(rid)
        if region is not None:
            region.count -= 1
            region.live -= length
            if region.count <= 0 and region not in self.files.active.values() and region.inflight == 0:
                self.files.free(region)

    def valid(self, loc: Location) -> bool:
        """Whether an entry could be a block's and lies inside a known region."""
        region = self.files.regions.get(loc.region)
        return region is not None and loc.offset + loc.size <= region.end and loc.plausible()

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
            elif files.physical + need <= high * capacity:
                break  # no region can be compacted now (being written, or too live for the disk): live blocks
                # are evicted only to make the block fit, not to reach the low watermark
            elif not self.evict(chunk):
                break
        return files.physical + need <= capacity

    def evict(self, nbytes: int) -> bool:
        """Drop the policy's victims for ``nbytes``; False if it had none to give."""
        if nbytes <= 0:
            return True
        victims = self.policy.victims(nbytes, self.protected_slot())
        for slot in victims:
            key = self.slots.key_of(slot)
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
            key = self.slots.key_of(slot)
            raw = None if key is None else self.index.get(key)
            loc = None if raw is None else Location.unpack(raw)
            if loc is None or loc.slot != slot or loc.region != region.id:
                self.free_slot(slot)  # nothing live points at it
                continue
            members.append((loc.offset, key, loc))
        members.sort()
        files.unset_active(region)
        data = memoryview(os.pread(region.fd, region.end, 0) if members else b"")
        for _off, key, loc in members:
            record = data[loc.offset:loc.offset + loc.size]
            block = _record_block(record, key)
            if block is None or not verify(block, loc, record[header_size(block.encode()):]):
                self.crc_errors += 1
                self.drop(key, loc.pack())
                continue
            target, new_off = files.reserve(loc.size, "old")
            os.pwrite(target.fd, record, new_off)
            region.count -= 1
            region.live -= loc.size
            target.count += 1
            target.live += loc.size
            self.slots.claim(loc.slot, target.id, loc.size, key)
            self.index.set(key, loc.moved(target.id, new_off).pack())
            self.relocated_bytes += loc.size
        if region.id in files.regions:
            files.free(region)


def _at(entry: tuple[bytes, Location]) -> int:
    return entry[1].offset


def _one_key(prefix: bytes) -> str | None:
    """The object key whose blocks ``prefix`` (``base.key_prefix``) selects, or None for another prefix."""
    if not prefix.endswith(b"\0") or prefix.count(b"\0") != 1:
        return None
    try:
        return prefix[:-1].decode()
    except UnicodeDecodeError:
        return None


def _decodable(ident_: bytes) -> bool:
    try:
        BlockId.decode(ident_)
    except (ValueError, UnicodeDecodeError, struct.error):
        return False
    return True


def _record_block(record: memoryview, key: bytes) -> BlockId | None:
    """The block a whole record holds, if its id is index entry ``key``'s own."""
    if len(record) < 2:
        return None
    n = id_length(record)
    ident_ = bytes(record[2:2 + n])
    if len(ident_) != n or not _decodable(ident_):
        return None
    block = BlockId.decode(ident_)
    return block if block_key(block) == key else None
