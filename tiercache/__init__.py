"""tiercache: a tiered (RAM / SSD / durable write) cache for training data in object stores.

Library mode, no FUSE::

    import tiercache
    with tiercache.open("s3://bucket/prefix", ram="1G", ssd="/nvme/cache", ssd_size="50G") as cache:
        data = cache.read("train/x.jpg")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import CacheConfig, parse_size
from .errors import (
    AccessDenied,
    BucketNotFound,
    CacheDirLocked,
    ConfigError,
    EndpointUnreachable,
    NotFound,
    StoreError,
    TiercacheError,
)

if TYPE_CHECKING:
    from .cache import TieredCache

__version__ = "0.1.0"

__all__ = [
    "AccessDenied",
    "BucketNotFound",
    "CacheConfig",
    "CacheDirLocked",
    "ConfigError",
    "EndpointUnreachable",
    "NotFound",
    "StoreError",
    "TieredCache",
    "TiercacheError",
    "open",
    "parse_size",
]


def __getattr__(name: str):
    if name == "TieredCache":
        from .cache import TieredCache

        return TieredCache
    raise AttributeError(name)


def open(source: str, **options) -> TieredCache:  # noqa: A001 - mirrors builtins.open on purpose
    """Open a TieredCache over ``source`` (``s3://bucket/prefix`` or ``file:///dir``); see CacheConfig.build."""
    from .cache import TieredCache

    return TieredCache(CacheConfig.build(source, **options))
