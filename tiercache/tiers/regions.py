"""The SSD tier's region files and the space they take: ``NNNNNNNN.region`` files, append-only, listed in
the LMDB sub-database ``regions``; private (0600 in a 0700 directory). Appends go to an active region per
write stream. A freed region's file is unlinked at once; its fd stays open until the last reader inside it
is done.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from ..private import open_private, private_dir
from .meta import Meta

log = logging.getLogger(__name__)

SUFFIX = ".region"
_RID = struct.Struct(">I")


@dataclass(eq=False)
class Region:
    """One region file and what the tier knows of it."""

    id: int
    path: Path
    fd: int
    end: int = 0  # bytes appended (or reserved for writes in flight)
    live: int = 0  # bytes of blocks the index points at
    count: int = 0  # blocks the index points at (which ones: the SSD tier's SlotTable)
    readers: int = 0
    inflight: int = 0
    dead: bool = False


class RegionFiles:
    """The region files of one directory: ``regions`` by id, ``physical`` bytes (the sum of their ends),
    the active region of each write stream. Not thread-safe: the tier serializes calls under its lock."""

    def __init__(self, directory: str | os.PathLike, meta: Meta, region_size: int):
        self.dir = private_dir(directory)
        self.meta = meta
        self.region_size = region_size
        self.regions: dict[int, Region] = {}
        self.active: dict[str, Region] = {}  # write streams: "new" blocks and "old" (copied forward) ones
        self.physical = 0
        self._next_id = 1
        self._disk_size: int | None = None
        self._free_sample: tuple[float, int, int] | None = None  # (when, free bytes, physical then)

    def listed(self) -> set[int]:
        """Region ids the LMDB list knows."""
        return {_RID.unpack(k)[0] for k, _ in self.meta.scan("regions")}

    def load(self) -> None:
        """Open the listed region files; delete unlisted ones and unlist missing ones."""
        known = self.listed()
        files = {}
        for path in self.dir.glob(f"*{SUFFIX}"):
            try:
                files[int(path.name[: -len(SUFFIX)])] = path
            except ValueError:
                continue
        for rid, path in files.items():
            if rid not in known:
                log.info("ssd tier: removing unindexed region %s", path)
                path.unlink(missing_ok=True)
                continue
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            os.fchmod(fd, 0o600)
            region = self.regions[rid] = Region(rid, path, fd, end=os.fstat(fd).st_size)
            self.physical += region.end
        self.unlist([r for r in known if r not in self.regions])
        self._next_id = max([*known, *files, 0]) + 1

    def remove_files(self) -> int:
        """Delete every region file of the directory (before ``load``: an index of another format); the
        number deleted."""
        removed = 0
        for path in self.dir.glob(f"*{SUFFIX}"):
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    def unlist(self, rids: list[int]) -> None:
        """Remove ids from the LMDB list."""
        self.meta.delete_many("regions", [_RID.pack(r) for r in rids])

    def reserve(self, length: int, stream: str, align: int = 1) -> tuple[Region, int]:
        """Room for ``length`` bytes at the end of the stream's active region (a new one when full), at an
        offset that is a multiple of ``align`` (the gap before it is garbage)."""
        region = self.active.get(stream)
        pad = -region.end % align if region is not None else 0
        if region is None or (region.end > 0 and region.end + pad + length > self.region_size):
            region = self.active[stream] = self._create()
            pad = 0
        off = region.end + pad
        region.end = off + length
        self.physical += pad + length
        return region, off

    def unreserve(self, region: Region, off: int, length: int) -> None:
        """A failed write: give its room back (behind later reservations, leave it) and retire the region."""
        if region.end == off + length and not region.dead:
            region.end = off
            self.physical -= length
            try:
                os.ftruncate(region.fd, off)
            except OSError:
                pass
        self.unset_active(region)
        if region.count <= 0 and region.inflight == 0 and not region.dead:
            self.free(region)

    def _create(self) -> Region:
        rid = self._next_id
        self._next_id += 1
        path = self.dir / f"{rid:08d}{SUFFIX}"
        self.meta.put("regions", _RID.pack(rid), str(time.time()).encode())
        region = self.regions[rid] = Region(rid, path, open_private(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC))
        return region

    def unset_active(self, region: Region) -> None:
        """Take no more appends into ``region``."""
        for stream, active in list(self.active.items()):
            if active is region:
                del self.active[stream]

    def free(self, region: Region) -> None:
        """Delete a region's file and listing; its fd closes now or when its last reader leaves."""
        self.regions.pop(region.id, None)
        self.unset_active(region)
        self.physical -= region.end
        region.dead = True
        self.unlist([region.id])
        region.path.unlink(missing_ok=True)
        if region.readers == 0:
            os.close(region.fd)

    def close(self) -> None:
        """Close every region file."""
        for region in self.regions.values():
            os.close(region.fd)
        self.regions.clear()
        self.active.clear()

    FREE_RECHECK_S = 0.25  # how long a statvfs sample of the free space is reused

    def disk_free(self) -> int:
        """Bytes the filesystem holding the regions can still give this user: a statvfs sample at most
        ``FREE_RECHECK_S`` old, less what the region files grew by since (a put does not pay a syscall)."""
        now = time.monotonic()
        if self._free_sample is None or now - self._free_sample[0] > self.FREE_RECHECK_S:
            st = os.statvfs(self.dir)
            self._free_sample = (now, st.f_bavail * st.f_frsize, self.physical)
        _at, free, physical = self._free_sample
        return max(0, free - max(0, self.physical - physical))

    def disk_size(self) -> int:
        """Size of the filesystem holding the regions (looked up once)."""
        if self._disk_size is None:
            st = os.statvfs(self.dir)
            self._disk_size = st.f_blocks * st.f_frsize
        return self._disk_size
