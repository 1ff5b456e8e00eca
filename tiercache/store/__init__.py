"""Object stores: where the data really lives. ``open_store`` picks one from a source URL."""

from __future__ import annotations

import os

from ..errors import ConfigError
from .base import ObjectInfo, ObjectStore

__all__ = ["ObjectInfo", "ObjectStore", "open_store", "parse_source"]


def parse_source(source: str) -> str:
    """Return the scheme ("s3" or "file") of a source URL, or raise a clear ConfigError."""
    if not isinstance(source, str) or "://" not in source:
        raise ConfigError(f"source {source!r}: expected s3://BUCKET[/PREFIX] or file:///DIR")
    scheme = source.split("://", 1)[0].lower()
    if scheme == "synthetic" and os.environ.get("TIERCACHE_SYNTHETIC_STORE") == "1":
        return scheme  # benches and tests only: see store/synthetic.py
    if scheme not in ("s3", "file"):
        raise ConfigError(f"source {source!r}: unsupported scheme {scheme!r} (use s3:// or file://)")
    if scheme == "s3":
        from .s3 import parse_s3_url

        parse_s3_url(source)
    elif not source[len("file://"):].startswith("/"):
        raise ConfigError(f"source {source!r}: file:// URLs need an absolute path, e.g. file:///data/train")
    return scheme


def open_store(source: str, endpoint_url: str | None = None, threads: int = 16) -> ObjectStore:
    """Open the store a source URL names: ``s3://bucket/prefix`` or ``file:///dir``."""
    scheme = parse_source(source)
    if scheme == "synthetic":
        from .synthetic import synthetic_store_from_url

        return synthetic_store_from_url(source)
    if scheme == "s3":
        from .s3 import S3Store

        return S3Store(source, endpoint_url=endpoint_url, threads=threads)
    from .local import local_store_from_url

    return local_store_from_url(source)
