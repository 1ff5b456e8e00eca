"""Where a dataset's files are: the local filesystem (plain paths, a tiercache mount included) or a
TieredCache (keys, library mode), behind the same few operations (list, walk, read, size)."""

from __future__ import annotations

import os
import posixpath
from typing import Any

__all__ = ["CacheFS", "LocalFS", "open_source"]


class LocalFS:
    """Directory walking and reads on the local filesystem (a tiercache mount is just a directory here)."""

    join = staticmethod(os.path.join)

    def list_dirs(self, path: str) -> list[str]:
        """Names of the subdirectories of ``path``."""
        with os.scandir(path) as it:
            return [e.name for e in it if e.is_dir()]

    def isdir(self, path: str) -> bool:
        """Whether ``path`` is a directory."""
        return os.path.isdir(path)

    def walk(self, top: str) -> list[tuple[str, list[str], list[str]]]:
        """``os.walk(top, followlinks=True)``'s triples, as a list."""
        return list(os.walk(top, followlinks=True))

    def read(self, path: str, offset: int = 0, size: int | None = None) -> bytes:
        """``size`` bytes (all when None) from ``offset``; fewer at the end of the file."""
        # Unbuffered on purpose: a buffered open() probes isatty() with an ioctl, which FUSE forwards to the
        # mount daemon, one extra round trip per file on a tiercache mount (~3x the cost of a warm read).
        with open(path, "rb", buffering=0) as f:
            if offset:
                f.seek(offset)
            if size is None:
                return f.readall()
            parts, left = [], size
            while left > 0:
                part = f.read(left)
                if not part:
                    break
                parts.append(part)
                left -= len(part)
            return b"".join(parts)

    def size(self, path: str) -> int:
        """The file's size in bytes."""
        return os.path.getsize(path)


class CacheFS:
    """The same operations on a TieredCache (library mode): paths are keys relative to the cache's source."""

    join = staticmethod(posixpath.join)

    def __init__(self, cache: Any):
        self.cache = cache

    def _entries(self, path: str) -> tuple[list[str], list[str]]:
        dirs, files = [], []
        for name in self.cache.listdir(path):
            (dirs if self.cache.stat(posixpath.join(path, name)).is_dir else files).append(name)
        return dirs, files

    def list_dirs(self, path: str) -> list[str]:
        """Names of the subdirectories of ``path``."""
        return self._entries(path)[0]

    def isdir(self, path: str) -> bool:
        """Whether ``path`` is a directory."""
        try:
            return bool(self.cache.stat(path).is_dir) if path else True
        except (FileNotFoundError, KeyError):
            return False
        except Exception as exc:  # the engine's NotFound
            if type(exc).__name__ == "NotFound":
                return False
            raise

    def walk(self, top: str) -> list[tuple[str, list[str], list[str]]]:
        """``os.walk(top, followlinks=True)``'s triples, as a list."""
        out, stack = [], [top]
        while stack:
            d = stack.pop()
            dirs, files = self._entries(d)
            out.append((d, dirs, files))
            stack.extend(posixpath.join(d, x) for x in reversed(dirs))
        return out

    def read(self, path: str, offset: int = 0, size: int | None = None) -> bytes:
        """``size`` bytes (all when None) from ``offset``; fewer at the end of the file."""
        return self.cache.read(path, offset, size)

    def size(self, path: str) -> int:
        """The file's size in bytes."""
        return int(self.cache.stat(path).size)


def open_source(
    root: str, cache: Any, endpoint_url: str | None, cache_options: dict[str, Any] | None
) -> tuple[Any, Any, str, bool]:
    """(fs, cache or None, path of root inside fs, whether we own the cache) for a path or URL ``root``."""
    if cache is not None:
        return CacheFS(cache), cache, root.strip("/") if "://" not in root else "", False
    if "://" in root:
        import tiercache

        opts = dict(cache_options or {})
        if endpoint_url is not None:
            opts["endpoint_url"] = endpoint_url
        opened = tiercache.open(root, **opts)
        return CacheFS(opened), opened, "", True
    return LocalFS(), None, os.path.expanduser(root), False

