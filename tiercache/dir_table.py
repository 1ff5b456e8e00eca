"""One directory's merged listing as columns: a name per entry and numpy arrays for everything else.

``DirTable`` is what ``MergedView.table`` answers for FUSE readdir/READDIRPLUS (fuse/dirs.py): each entry's
kind, whether the write tier has it (pending: its attributes come from there), and, for a file the
namespace's scan listed, its record's fields (size, mtime, fetch time, mode, uid, gid, whether the user
metadata was read), decoded for the whole directory at once (namespace_records.record_columns) rather than
into an ObjectInfo per entry. The only Python object per entry is its name.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

import numpy

from .namespace_records import RECORD, record_columns

FILE, DIRECTORY, SYMLINK = 0, 1, 2
MODES = numpy.array([stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK], numpy.uint32)  # kind -> d_type as st_mode


@dataclass
class DirTable:
    """Entries of one directory, sorted by name (see the module docstring). ``records[i]`` is meaningful
    only where ``listed[i]``: a file with a record from the namespace's scan, not overridden by the write
    tier."""

    names: list[str]
    kinds: numpy.ndarray  # uint8: FILE, DIRECTORY or SYMLINK
    pending: numpy.ndarray  # bool: a pending write or a made directory (attributes from the write tier)
    listed: numpy.ndarray  # bool: a file listed with its record
    records: numpy.ndarray  # namespace_records.RECORD per entry

    def __len__(self) -> int:
        return len(self.names)

    @property
    def modes(self) -> numpy.ndarray:
        """Each entry's d_type as st_mode bits."""
        return MODES[self.kinds]

    @classmethod
    def from_records(cls, names: list[str], raws: list[bytes]) -> DirTable:
        """A table of the namespace's entries: (name, record; b"" for a subdirectory), unsorted."""
        is_file = numpy.fromiter((bool(raw) for raw in raws), bool, len(raws))
        records = numpy.zeros(len(names), RECORD)
        if is_file.any():
            records[is_file] = record_columns([raw for raw in raws if raw])
        kinds = numpy.where(is_file, FILE, DIRECTORY).astype(numpy.uint8)
        kinds[is_file & ((records["mode"] & 0o170000) == stat.S_IFLNK)] = SYMLINK
        return cls(names, kinds, numpy.zeros(len(names), bool), is_file, records)

    def with_pending(self, pending: dict[str, int]) -> DirTable:
        """This table with the write tier's names over it (name -> kind): a listed name takes the pending
        kind and loses its record; a new name is added."""
        if not pending:
            return self
        where = {name: i for i, name in enumerate(self.names)}
        known = [(where[name], kind) for name, kind in pending.items() if name in where]
        added = [(name, kind) for name, kind in pending.items() if name not in where]
        kinds, marked, listed = self.kinds.copy(), self.pending.copy(), self.listed.copy()
        for i, kind in known:
            kinds[i], marked[i], listed[i] = kind, True, False
        n = len(added)
        return DirTable(self.names + [name for name, _ in added],
                        numpy.concatenate([kinds, numpy.array([k for _, k in added], numpy.uint8)]),
                        numpy.concatenate([marked, numpy.ones(n, bool)]),
                        numpy.concatenate([listed, numpy.zeros(n, bool)]),
                        numpy.concatenate([self.records, numpy.zeros(n, RECORD)]))

    def sorted(self) -> DirTable:
        """The same entries sorted by name (the namespace's order sorts a directory as its name + "/")."""
        names = self.names
        if all(a < b for a, b in zip(names, names[1:], strict=False)):
            return self
        order = sorted(range(len(names)), key=names.__getitem__)
        index = numpy.array(order, numpy.int64)
        return DirTable([names[i] for i in order], self.kinds[index], self.pending[index], self.listed[index],
                        self.records[index])
