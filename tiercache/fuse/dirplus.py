"""READDIRPLUS through the binding: directory entries that carry their attributes.

mfusepy (3.1) hands libfuse only each entry's type and inode number, whatever ``readdir`` returns, so the
kernel then sends a LOOKUP (and libfuse a getattr) for every name ``ls -l`` stats: 100 K round trips into
Python for a 100 K directory. libfuse 3's high-level API can do better: when the kernel asks with
FUSE_READDIR_PLUS, a filler called with FUSE_FILL_DIR_PLUS and a full ``struct stat`` makes libfuse create
the entry's node and send name, inode and attributes together (``fuse_add_direntry_plus``); the kernel
keeps them for ``entry_timeout`` / ``attr_timeout``, so ``stat`` of each entry is answered by the kernel.

``ReaddirPlus`` is a mixin of the binding's FUSE class (opened.TiercacheFUSE). It asks the operations'
``readdir_plus(path, fh, offset)`` for ``(name, attrs, next_offset)`` from entry ``offset`` on: ``attrs`` a
complete getattr dict (the entry goes out with FUSE_FILL_DIR_PLUS) or a dict of ``st_mode``/``st_ino`` only
(the entry goes out plain: the kernel looks it up itself, e.g. a file whose attributes would take a HEAD).
Offsets are never 0: with libfuse 3.14 only the filler's offset mode sends the entries' node ids (the
buffered mode, offset 0, drops them, and the kernel then ignores the attributes); so each READDIRPLUS request
(a few KiB of entries) is one call, resuming at the offset the kernel names. ``want_readdirplus`` turns off the
kernel's adaptive mode (READDIRPLUS_AUTO), which would send plain READDIRs after the first buffer whenever
no LOOKUP happened in between, which is exactly what a readdir that carried the attributes brings about.
"""

from __future__ import annotations

import ctypes
import functools
import struct
from collections.abc import Callable, Iterable
from typing import Any

from . import binding

fuse = binding()

FUSE_READDIR_PLUS = 1 << 0  # readdir's flags: the kernel asked for READDIRPLUS
FUSE_FILL_DIR_PLUS = 1 << 1  # the filler's flags: this entry's stat is complete
CAP_READDIRPLUS = 1 << 13  # fuse_conn_info.want / capable
CAP_READDIRPLUS_AUTO = 1 << 14

COMPLETE = "st_nlink"  # a getattr dict has it; a type-and-inode-only dict does not


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


def stat_packer(c_stat: Any) -> Callable[[Any, dict], None]:
    """``fill(buffer, attrs)``: a getattr dict (integer times in ns) written over a whole ``struct stat`` of
    the binding's layout, every other byte zeroed, in one ``struct.pack_into``. The layouts of Linux (x86_64,
    aarch64 and the like) keep the integer fields before atime, mtime and ctime; another raises."""
    slots = []  # (offset, size, signed, field)
    for name in _INTS:
        field = getattr(c_stat, name)
        slots.append((field.offset, field.size, name in _SIGNED, name))
    for name in _TIMES:
        spec = getattr(c_stat, name + "spec")
        half = spec.size // 2
        slots += [(spec.offset, half, True, name + ".sec"), (spec.offset + half, half, True, name + ".nsec")]
    slots.sort()
    order = [name for _offset, _size, _signed, name in slots]
    ints = order[:len(_INTS)]
    if sorted(ints) != sorted(_INTS) or order[len(_INTS):] != [f"{t}.{p}" for t in _TIMES for p in ("sec", "nsec")]:
        raise RuntimeError(f"unexpected struct stat layout: {order}")
    fmt, at = "=", 0
    for offset, size, signed, _name in slots:
        if offset < at or size not in (4, 8):
            raise RuntimeError(f"unexpected struct stat layout at offset {offset}")
        code = {4: "I", 8: "Q"}[size]
        fmt += (f"{offset - at}x" if offset > at else "") + (code.lower() if signed else code)
        at = offset + size
    pack_into = struct.Struct(fmt + f"{ctypes.sizeof(c_stat) - at}x").pack_into

    def fill(buffer: Any, attrs: dict) -> None:
        get = attrs.get
        atime, mtime, ctime = (divmod(get(name, 0), _NS) for name in _TIMES)
        pack_into(buffer, 0, *[get(name, 0) for name in ints], *atime, *mtime, *ctime)

    return fill


@functools.cache
def _packer() -> Callable[[Any, dict], None]:
    return stat_packer(fuse.c_stat)


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
        self._fill(entries(decoded, fip.contents.fh, offset), buf, filler)
        return 0

    def _fill(self, entries: Iterable[tuple[str, dict, int]], buf: Any, filler: Any) -> None:
        st = fuse.c_stat()
        fill = _packer()
        encoding, errors = self.encoding, self.errors
        for name, attrs, next_offset in entries:
            fill(st, attrs)
            flag = FUSE_FILL_DIR_PLUS if COMPLETE in attrs else 0
            if filler(buf, name.encode(encoding, errors), st, next_offset, flag) != 0:
                break
