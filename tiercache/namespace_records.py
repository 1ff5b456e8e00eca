"""What the namespace is made of: path rules (which keys can be POSIX paths) and the compact LMDB record of
one object's info (size, mtime, fetch time, mode, uid, gid, flags, etag)."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy

from .errors import NotFound
from .store.base import ObjectInfo

# size, mtime, fetched_at, mode, uid, gid, flags (bit 0: user metadata read); then the etag
INFO = struct.Struct("<QddIiiB")
FORMAT = b"3"  # of the "objects" and "listings" records; others are dropped (relisted) at start
_META_READ = 1
TIME = struct.Struct("<d")
# INFO's fields as one numpy record (packed, little-endian): a directory's records decoded at once
RECORD = numpy.dtype([("size", "<u8"), ("mtime", "<f8"), ("fetched", "<f8"), ("mode", "<u4"), ("uid", "<i4"),
                      ("gid", "<i4"), ("flags", "u1")])
assert RECORD.itemsize == INFO.size


@dataclass(frozen=True, slots=True)
class Entry:
    """What ``stat`` returns: a file (with size, mtime, etag) or a directory (etag None)."""

    path: str
    name: str
    is_dir: bool
    size: int
    mtime: float
    etag: str | None


def normalize(path: str) -> str:
    """Strip surrounding slashes; NotFound for paths that could escape the root or cannot be keys."""
    path = path.strip("/")
    if path and key_problem(path):
        raise NotFound(f"{path!r}: not a valid path")
    return path


def _plain(joined: str, longest: int) -> bool:
    """Whether "/"-joined keys, the longest ``longest`` characters, have no empty, "." or ".." segment, no
    NUL and no segment that could reach 255 bytes (UTF-8: 4 bytes a character at most): a few C scans."""
    if longest > 63 and (longest > 255 or not joined.isascii()):
        return False
    bracketed = f"/{joined}/"
    return "//" not in bracketed and "/./" not in bracketed and "/../" not in bracketed and "\0" not in joined


def plain_keys(keys: list[str], joined: str) -> bool:
    """Whether every key of ``keys`` is a plain path (``key_problem`` None) and none is a folder marker,
    checked on ``joined``, the keys joined by NULs, as one string (a segment "", "." or ".." lies inside
    one key, and a key holds a NUL if the string holds more than the separators)."""
    if not keys:
        return True
    return joined.count("\0") == len(keys) - 1 and _plain(joined.replace("\0", "/"), max(map(len, keys)))


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot be a POSIX path below the root, or None if it can."""
    if _plain(key, len(key)):  # the common case
        return None
    if "\0" in key:
        return "contains NUL"
    for segment in key.split("/"):
        if segment == "":
            return "has an empty path segment"
        if segment in (".", ".."):
            return f"has a {segment!r} segment"
        if len(segment.encode()) > 255:
            return "has a path segment over 255 bytes"
    return None


def parent_of(path: str) -> str:
    return path.rpartition("/")[0]


def ancestors(path: str) -> Iterator[str]:
    """Every directory above ``path``, nearest first, ending with the root."""
    while path:
        path = parent_of(path)
        yield path


def encode(info: ObjectInfo, fetched: float) -> bytes:
    flags = _META_READ if info.meta else 0
    return INFO.pack(info.size, info.mtime, fetched, info.mode, info.uid, info.gid, flags) + info.etag.encode()


def encode_many(infos: list[ObjectInfo], fetched: float) -> list[bytes]:
    """``encode`` of each info, in one comprehension (a listing's batch)."""
    pack = INFO.pack
    return [pack(i.size, i.mtime, fetched, i.mode, i.uid, i.gid, i.meta) + i.etag.encode() for i in infos]


def decode(path: str, raw: bytes) -> tuple[ObjectInfo, float]:
    size, mtime, fetched, mode, uid, gid, flags = INFO.unpack_from(raw)
    etag = bytes(raw[INFO.size:]).decode()
    return ObjectInfo(path, size, etag, mtime, mode, uid, gid, bool(flags & _META_READ)), fetched


def record_columns(raws: list[bytes]) -> numpy.ndarray:
    """The fixed part of each record (``RECORD``: size, mtime, fetched, mode, uid, gid, flags), decoded as one
    array; ``meta_read(columns)`` is each one's "user metadata read" flag."""
    return numpy.frombuffer(b"".join([raw[:INFO.size] for raw in raws]), RECORD)


def meta_read(columns: numpy.ndarray) -> numpy.ndarray:
    """Whether each record of ``record_columns`` holds the object's user metadata (mode, uid, gid)."""
    return (columns["flags"] & _META_READ).astype(bool)


def keep_metadata(old: bytes | None, listed: ObjectInfo) -> ObjectInfo:
    """A LIST entry completed by the metadata already read for the same version (LIST returns none)."""
    if old is None:
        return listed
    info = decode(listed.key, old)[0]
    if not info.meta or info.etag != listed.etag or info.size != listed.size:
        return listed
    return info


