"""The Python FUSE ceiling: an in-memory mfusepy filesystem that does nothing but answer.

    python bench/fuse_ceiling.py [--gil-copy] [--releases N] MANIFEST.json MOUNTPOINT   # fusermount3 -u ends it

MANIFEST is ``{"files": {"path/in/tree": size, ...}}``. Every file reads as the same repeating pattern, served
straight out of one preallocated buffer (the only copy is mfusepy's memmove into libfuse's reply buffer), so a
request costs what the binding and the FUSE hop cost and nothing else. It mounts with tiercache's own libfuse
options (``tiercache.fuse.mount.fuse_options`` for a read-only mount with ``--metadata-ttl inf``), so whatever
a tiercache mount gains from its options (kernel_cache, timeouts, max_read) the ceiling has too. bench/fs.py
runs it as one more target: no tiercache mount through mfusepy can beat these figures on this machine.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import stat
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from tiercache.fuse import binding  # noqa: E402

fuse = binding()  # mfusepy on libfuse 3, as tiercache loads it (mfusepy alone may pick libfuse 2)

PATTERN_BYTES = 1 << 20  # repeat period of the file contents
MAX_REQUEST = 16 << 20  # larger than any FUSE read request


class CeilingOps(fuse.Operations):
    """Read-only tree of ``files`` (path -> size); contents are a repeating pattern held in memory."""

    use_ns = True  # times as integer nanoseconds (mfusepy warns on float seconds)

    def __init__(self, files: dict[str, int], releases: int = 0):
        self.releases = releases  # extra GIL releases per read (``--releases N``: what each one costs)
        self.zero = os.open("/dev/zero", os.O_RDONLY)
        self.files = {"/" + p.strip("/"): int(s) for p, s in files.items()}
        self.dirs: dict[str, set[str]] = {"/": set()}
        for path in self.files:
            parts = path.strip("/").split("/")
            for depth in range(len(parts)):
                parent = "/" + "/".join(parts[:depth])
                parent = "/" if parent == "/" else parent
                self.dirs.setdefault(parent, set()).add(parts[depth])
                if depth < len(parts) - 1:
                    self.dirs.setdefault("/" + "/".join(parts[: depth + 1]), set())
        self.inodes = {path: n + 2 for n, path in enumerate(sorted([*self.dirs, *self.files]))}
        self.now = time.time_ns()
        pattern = bytes(range(256)) * (PATTERN_BYTES // 256)
        self.buffer = bytearray(pattern * ((MAX_REQUEST // PATTERN_BYTES) + 2))

    def getattr(self, path: str, fh: int | None = None) -> dict:
        """stat(2) from the manifest."""
        if path in self.files:
            mode, size, nlink = stat.S_IFREG | 0o444, self.files[path], 1
        elif path in self.dirs:
            mode, size, nlink = stat.S_IFDIR | 0o555, 0, 2
        else:
            raise fuse.FuseOSError(errno.ENOENT)
        return {"st_mode": mode, "st_size": size, "st_nlink": nlink, "st_ino": self.inodes[path],
                "st_uid": os.getuid(), "st_gid": os.getgid(), "st_mtime": self.now, "st_ctime": self.now,
                "st_atime": self.now}

    def readdir(self, path: str, fh: int) -> list:
        """The directory's entries, each with its mode and inode (with use_ino an entry without an inode
        number reads as inode 0, which readdir(3) skips)."""
        if path not in self.dirs:
            raise fuse.FuseOSError(errno.ENOTDIR)
        prefix = path.rstrip("/") + "/"
        out = [(".", {"st_mode": stat.S_IFDIR, "st_ino": self.inodes[path]}, 0),
               ("..", {"st_mode": stat.S_IFDIR, "st_ino": 1}, 0)]
        for name in sorted(self.dirs[path]):
            child = prefix + name
            mode = stat.S_IFDIR if child in self.dirs else stat.S_IFREG
            out.append((name, {"st_mode": mode, "st_ino": self.inodes[child]}, 0))
        return out

    def open(self, path: str, flags: int) -> int:
        """Any file of the manifest, read-only."""
        if path not in self.files:
            raise fuse.FuseOSError(errno.ENOENT)
        return 0

    def read(self, path: str, size: int, offset: int, fh: int):
        """``size`` bytes of the pattern at ``offset``: a ctypes view of the buffer, no copy here."""
        for _ in range(self.releases):
            os.pread(self.zero, 1, 0)  # lets the GIL go and takes it back, as an LMDB get or a pread does
        length = max(0, min(size, self.files.get(path, 0) - offset))
        if length == 0:
            return b""
        start = offset % PATTERN_BYTES
        return (ctypes.c_char * length).from_buffer(self.buffer, start)

    def statfs(self, path: str) -> dict:
        """Some numbers, so df works."""
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 1 << 20, "f_bfree": 0, "f_bavail": 0,
                "f_files": len(self.files), "f_ffree": 0, "f_namemax": 255}


# memmove called with the GIL held (a PYFUNCTYPE foreign function does not release it), where mfusepy's
# ``ctypes.memmove`` releases and retakes it around every reply copy
_memmove_holding_gil = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)(
    ctypes.cast(ctypes.memmove, ctypes.c_void_p).value)


class GilCopyFUSE(fuse.FUSE):
    """mfusepy's FUSE with a read that copies the reply into libfuse's buffer without letting the GIL go
    (``--gil-copy``: what one GIL handoff per read costs)."""

    def read(self, path, buf, size, offset, fip):  # noqa: D102 - mfusepy's read, one call changed
        fh = fip.contents if self.raw_fi else fip.contents.fh
        ret = self.operations.read(None if path is None else path.decode(self.encoding, self.errors), size,
                                   offset, fh)
        if not ret:
            return 0
        n = len(ret)
        source = ret if isinstance(ret, bytes) else ctypes.addressof(ret)
        _memmove_holding_gil(buf, source, n)
        return n


def libfuse_options(mountpoint: str) -> dict:
    """tiercache's options for a read-only, immutable mount (plus the ceiling's own fsname)."""
    from tiercache.fuse.mount import MountSpec, fuse_options

    spec = MountSpec(source="s3://ceiling", mountpoint=mountpoint, mode="readonly", metadata_ttl="inf",
                     ssd_size="0")
    options = fuse_options(spec.config(), spec)
    options.update(fsname="fuse-ceiling", subtype="ceiling")
    return options


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    gil_copy = "--gil-copy" in args
    args = [a for a in args if a != "--gil-copy"]
    releases = 0
    if len(args) == 4 and args[0] == "--releases":
        releases, args = int(args[1]), args[2:]
    if len(args) != 2:
        print("usage: fuse_ceiling.py [--gil-copy] [--releases N] MANIFEST.json MOUNTPOINT", file=sys.stderr)
        return 2
    with open(args[0]) as fh:
        files = json.load(fh)["files"]
    (GilCopyFUSE if gil_copy else fuse.FUSE)(CeilingOps(files, releases), args[1], **libfuse_options(args[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
