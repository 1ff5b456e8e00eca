"""The ObjectStore protocol ("under storage") and ObjectInfo."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

# POSIX attributes in user metadata, named as s3fs (x-amz-meta-mode/-uid/-gid/-mtime) and rclone
# (x-amz-meta-mtime) name them: mode is the decimal st_mode (file type bits included, e.g. 33188 for a 0644
# file, 41471 for a symlink, whose body is its target), uid and gid decimal, mtime seconds since the epoch
# with an optional fraction ("1700000000" or "1700000000.123456789").
META_MODE, META_UID, META_GID, META_MTIME = "mode", "uid", "gid", "mtime"


@dataclass(frozen=True, slots=True)
class Attrs:
    """POSIX attributes to store with an object; 0 / -1 / None: not stored (the mount's defaults apply)."""

    mode: int = 0
    uid: int = -1
    gid: int = -1
    mtime: float | None = None

    def metadata(self) -> dict[str, str]:
        """As S3 user metadata (boto3 ``Metadata``: names without the x-amz-meta- prefix)."""
        out: dict[str, str] = {}
        if self.mode:
            out[META_MODE] = str(self.mode)
        if self.uid >= 0:
            out[META_UID] = str(self.uid)
        if self.gid >= 0:
            out[META_GID] = str(self.gid)
        if self.mtime is not None:
            out[META_MTIME] = format_mtime(self.mtime)
        return out


def format_mtime(mtime: float) -> str:
    """Seconds since the epoch as s3fs and rclone read them: whole, or with up to 9 decimals."""
    ns = round(mtime * 1e9)
    sec, frac = divmod(ns, 1_000_000_000)
    return str(sec) if not frac else f"{sec}.{frac:09d}".rstrip("0")


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def attrs_from_metadata(metadata: dict[str, str] | None) -> Attrs:
    """The POSIX attributes in an object's user metadata (keys case-insensitive); unparsable ones ignored."""
    meta = {k.lower(): v for k, v in (metadata or {}).items()}
    mtime: float | None
    try:
        mtime = float(meta[META_MTIME]) if META_MTIME in meta else None
    except ValueError:
        mtime = None
    mode = _int(meta.get(META_MODE), 0)
    return Attrs(mode if 0 < mode < 1 << 32 else 0, _int(meta.get(META_UID), -1), _int(meta.get(META_GID), -1),
                 mtime)


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What the store says of one object. ``etag`` changes whenever the content does.

    ``mtime`` is the stored mtime (x-amz-meta-mtime) when there is one, else the store's LastModified.
    ``mode``/``uid``/``gid`` are the stored attributes (0 / -1: none stored). ``meta``: whether the object's
    user metadata was read at all (HEAD, upload); a LIST does not return it, so after a LIST it is False.
    """

    key: str
    size: int
    etag: str
    mtime: float
    mode: int = 0
    uid: int = -1
    gid: int = -1
    meta: bool = False

    def attrs(self) -> Attrs:
        """The stored attributes (mtime only when the metadata was read)."""
        return Attrs(self.mode, self.uid, self.gid, self.mtime if self.meta else None)

    def with_metadata(self, metadata: dict[str, str] | None) -> ObjectInfo:
        """This info completed by the object's user metadata (from a HEAD or GET)."""
        attrs = attrs_from_metadata(metadata)
        return ObjectInfo(self.key, self.size, self.etag, self.mtime if attrs.mtime is None else attrs.mtime,
                          attrs.mode, attrs.uid, attrs.gid, True)


@runtime_checkable
class ObjectStore(Protocol):
    """A flat namespace of immutable-per-etag objects. Keys are relative to the store's prefix.

    Implementations are thread-safe: the cache calls them from many threads at once.
    """

    url: str

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order."""
        ...

    def head(self, key: str) -> ObjectInfo:
        """Info of one object; raises NotFound."""
        ...

    def get_range(self, key: str, start: int, end: int, etag: str | None = None) -> bytes:
        """Bytes [start, end) of an object. With ``etag``, raises NotFound if the object changed."""
        ...

    def put_file(self, key: str, path: str, attrs: Attrs | None = None) -> ObjectInfo:
        """Upload a local file (multipart above a threshold), with ``attrs`` in its metadata; returns the new
        object's info."""
        ...

    def put_bytes(self, key: str, data: bytes, attrs: Attrs | None = None) -> ObjectInfo:
        """Upload a small object from memory."""
        ...

    def set_attrs(self, key: str, attrs: Attrs) -> ObjectInfo:
        """Change an existing object's stored POSIX attributes: the fields of ``attrs`` that are set replace
        the stored ones, the others (and all other metadata, and the bytes) stay; returns the new info."""
        ...

    def delete(self, key: str) -> None:
        """Remove an object; removing a missing one is not an error."""
        ...

    def copy(self, src_key: str, dst_key: str) -> ObjectInfo:
        """Server-side copy."""
        ...

    def check(self) -> None:
        """Raise a clear StoreError subclass if the store is unusable (missing bucket, bad credentials)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
