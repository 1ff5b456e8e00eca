"""The ObjectStore protocol ("under storage") and ObjectInfo."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What the store says of one object. ``etag`` changes whenever the content does."""

    key: str
    size: int
    etag: str
    mtime: float


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

    def put_file(self, key: str, path: str) -> ObjectInfo:
        """Upload a local file (multipart above a threshold); returns the new object's info."""
        ...

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """Upload a small object from memory."""
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
