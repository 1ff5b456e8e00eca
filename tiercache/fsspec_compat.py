"""What the fsspec filesystem needs around fsspec itself: engine errors as the builtin OSErrors fsspec users
catch, and an ``s3`` URL parser for ``tiercache::s3://`` chains where s3fs is not installed."""

from __future__ import annotations

import importlib.util
from typing import Any

from fsspec import AbstractFileSystem

from .errors import NotFound, TiercacheError


def os_error(exc: TiercacheError) -> OSError:
    """The builtin OSError subclass fsspec users expect (FileNotFoundError, ...), with the one-line message."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, NotFound):
        return FileNotFoundError(str(exc))
    if isinstance(exc, ValueError):
        return ValueError(str(exc))  # type: ignore[return-value]
    code = getattr(exc, "errno", None)
    return OSError(code, str(exc)) if code else OSError(str(exc))


def register_s3_parser() -> None:
    """fsspec needs a class for every protocol of a chain, only to split its URL: without s3fs,
    ``tiercache::s3://bucket/key`` would fail with "Install s3fs". Registers ``S3UrlOnly`` then; never when
    an s3 implementation is installed or registered."""
    import fsspec

    if "s3" in fsspec.registry or importlib.util.find_spec("s3fs") is not None:
        return
    for name in ("s3", "s3a"):
        fsspec.register_implementation(name, S3UrlOnly, clobber=True)


class S3UrlOnly(AbstractFileSystem):
    """Registered as ``s3`` only where s3fs is not installed (see ``register_s3_parser``); opening s3://
    directly still asks for s3fs."""

    protocol = ("s3", "s3a")

    def __init__(self, *args: Any, **kwargs: Any):
        raise ImportError("Install s3fs to access S3 directly (tiercache::s3://... works without it)")
