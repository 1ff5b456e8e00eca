"""READDIRPLUS through the binding: directory entries that carry their attributes.

mfusepy (3.1) hands libfuse only each entry's type and inode number, whatever ``readdir`` returns, so the
kernel then sends a LOOKUP (and libfuse a getattr) for every name ``ls -l`` stats: 100 K round trips into
Python for a 100 K directory. libfuse 3's high-level API can do better: when the kernel asks with
FUSE_READDIR_PLUS, a filler called with FUSE_FILL_DIR_PLUS and a full ``struct stat`` makes libfuse create
the entry's node and send name, inode and attributes together (``fuse_add_direntry_plus``); the kernel
keeps them for ``entry_timeout`` / ``attr_timeout``, so ``stat`` of each entry is answered by the kernel.

``ReaddirPlus`` is a mixin of the binding's FUSE class (opened.TiercacheFUSE). It asks the operations'
``readdir_plus(path, fh, offset)`` for a reply whose ``chunk(start)`` gives the entries from ``start`` on, a
chunk at a time: their encoded names, their attributes as columns (``STAT``: one numpy row per entry) and
whether each is complete (the entry goes out with FUSE_FILL_DIR_PLUS) or carries only its type and inode
number (the entry goes out plain: the kernel looks it up itself, e.g. a file whose attributes would take a
HEAD). A chunk's columns become ``struct stat`` rows of the binding's layout at once (``stat_rows``), and
each entry is one call of libfuse's filler with a pointer to its row: nothing per entry in Python but that
call. Offsets are never 0: with libfuse 3.14 only the filler's offset mode sends the entries' node ids (the
buffered mode, offset 0, drops them, and the kernel then ignores the attributes); so each READDIRPLUS request
(up to the reader's getdents buffer, 128 KiB for ls) is one call, resuming at the offset the kernel names.
``want_readdirplus`` turns off the kernel's adaptive mode (READDIRPLUS_AUTO), which would send plain
READDIRs after the first buffer whenever no LOOKUP happened in between, which is exactly what a readdir that
carried the attributes brings about.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable
from typing import Any, Protocol

import numpy

from . import binding

fuse = binding()

FUSE_READDIR_PLUS = 1 << 0  # readdir's flags: the kernel asked for READDIRPLUS
FUSE_FILL_DIR_PLUS = 1 << 1  # the filler's flags: this entry's stat is complete
CAP_READDIRPLUS = 1 << 13  # fuse_conn_info.want / capable
CAP_READDIRPLUS_AUTO = 1 << 14

# libfuse's filler with the stat pointer as a plain address (a row of a numpy buffer)
RAW_FILLER = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int64,
                              ctypes.c_int)

# an entry's attributes as columns, one row per entry (times in ns); ``stat_rows`` lays them out for the binding
STAT = numpy.dtype([("st_ino", "<u8"), ("st_nlink", "<u8"), ("st_mode", "<u4"), ("st_uid", "<u4"),
                    ("st_gid", "<u4"), ("st_rdev", "<u8"), ("st_size", "<i8"), ("st_blksize", "<i8"),
                    ("st_blocks", "<i8"), ("st_atime", "<i8"), ("st_mtime", "<i8"), ("st_ctime", "<i8")])


def want_readdirplus(conn: Any) -> None:
    """At init: READDIRPLUS for every READDIR when the kernel offers it, not the adaptive mode."""
    if conn is None:
        return
    if conn.capable & CAP_READDIRPLUS:
        conn.want |= CAP_READDIRPLUS
    conn.want &= ~CAP_READDIRPLUS_AUTO


_INTS = ("st_ino", "st_nlink", "st_mode", "st_uid", "st_gid", "st_rdev", "st_size", "st_blksize", "st_blocks")
_SIGNED = ("st_size", "st_blksize", "st_blocks")
_TIMES = ("st_atime", "st_mtime", "st_ctime")
_NS = 1_000_000_000


def put_attrs(columns: numpy.ndarray, row: int, attrs: dict) -> None:
    """Row ``row`` of ``STAT`` columns from a getattr dict (a missing field is 0)."""
    get = attrs.get
    columns[row] = tuple(get(name, 0) for name in STAT.names)


def stat_dtype(c_stat: Any) -> numpy.dtype:
    """The binding's ``struct stat`` as a numpy dtype: the ``STAT`` fields at their offsets (each time as
    ``_sec`` and ``_nsec``), every other byte padding. A field of another size than 4 or 8 bytes, or fields
    that overlap, raise (a layout this does not know)."""
    names, formats, offsets = [], [], []
    for name in _INTS:
        field = getattr(c_stat, name)
        names.append(name)
        formats.append(("<i" if name in _SIGNED else "<u") + str(field.size))
        offsets.append(field.offset)
    for name in _TIMES:
        spec = getattr(c_stat, name + "spec")
        half = spec.size // 2
        names += [name + "_sec", name + "_nsec"]
        formats += [f"<i{half}", f"<i{half}"]
        offsets += [spec.offset, spec.offset + half]
    spans = sorted((offset, int(fmt[2:])) for offset, fmt in zip(offsets, formats, strict=True))
    if any(size not in (4, 8) for _offset, size in spans) or any(
            a + size > b for (a, size), (b, _) in zip(spans, spans[1:], strict=False)):
        raise RuntimeError(f"unexpected struct stat layout: {list(zip(names, offsets, formats, strict=True))}")
    return numpy.dtype({"names": names, "formats": formats, "offsets": offsets,
                        "itemsize": ctypes.sizeof(c_stat)})


def stat_rows(columns: numpy.ndarray, layout: numpy.dtype) -> numpy.ndarray:
    """``STAT`` columns as ``struct stat`` rows of ``layout`` (``stat_dtype``), every other byte zeroed."""
    rows = numpy.zeros(len(columns), layout)
    for name in _INTS:
        rows[name] = columns[name]
    for name in _TIMES:
        sec, nsec = numpy.divmod(columns[name], _NS)
        rows[name + "_sec"], rows[name + "_nsec"] = sec, nsec
    return rows


@functools.cache
def _layout() -> numpy.dtype:
    return stat_dtype(fuse.c_stat)


class DirReply(Protocol):
    """What ``readdir_plus`` answers: the entries of one open directory, a chunk at a time."""

    def chunk(self, start: int) -> tuple[list[str], numpy.ndarray, list[bool]] | None:
        """(names, ``STAT`` columns, complete flags) of entries ``start``, ``start + 1``, ...; None
        past the end. Entry ``i``'s offset (where the next request resumes) is ``i + 1``."""


class ReaddirPlus:
    """``readdir_fuse_3`` that answers READDIRPLUS with complete entries (see the module docstring)."""

    operations: Any
    encoding: str
    errors: str

    def readdir_fuse_3(self, path: bytes | None, buf: Any, filler: Any, offset: int, fip: Any, flags: int) -> int:
        """libfuse's readdir: every entry with its attributes when the kernel asked for READDIRPLUS."""
        entries = getattr(self.operations, "readdir_plus", None)
        if not flags & FUSE_READDIR_PLUS or entries is None:
            return fuse.FUSE.readdir_fuse_3(self, path, buf, filler, offset, fip, flags)  # type: ignore[arg-type]
        decoded = None if path is None else path.decode(self.encoding, self.errors)
        reply = entries(decoded, fip.contents.fh, offset)
        fill_reply(reply, offset, buf, ctypes.cast(filler, RAW_FILLER), self.encoding, self.errors)
        return 0


def fill_reply(reply: DirReply, offset: int, buf: Any, filler: Callable[..., int], encoding: str = "utf-8",
               errors: str = "surrogateescape") -> None:
    """Hand libfuse's ``filler`` the entries of ``reply`` from ``offset`` on until its buffer is full: one
    call per entry, with the address of the entry's ``struct stat`` row."""
    layout = _layout()
    start = offset
    while (chunk := reply.chunk(start)) is not None:
        names, columns, complete = chunk
        rows = stat_rows(columns, layout)
        base, size = rows.ctypes.data, layout.itemsize
        for i, name in enumerate([name.encode(encoding, errors) for name in names]):
            if filler(buf, name, base + i * size, start + i + 1,
                      FUSE_FILL_DIR_PLUS if complete[i] else 0) != 0:
                return
        start += len(names)
