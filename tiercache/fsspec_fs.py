"""tiercache as an fsspec filesystem (protocol ``tiercache``): pandas, pyarrow, Hugging Face datasets, Dask,
zarr and Lightning read through the same engine and tiers as library mode, without FUSE.

    fs = fsspec.filesystem("tiercache", target="s3://bucket/prefix", ram="4G", ssd="/nvme/cache")
    fs.ls("train"); fs.cat_file("train/x.jpg", start=0, end=1024); fs.find("train")
    pd.read_csv("tiercache::s3://bucket/prefix/table.csv")          # URL chaining, as with simplecache::

Paths: with ``target=`` they are relative to the target (``train/x.jpg``); through a chained URL the target is
the bucket and paths are ``bucket/key``, as for s3fs. Options are those of ``tiercache.open`` (``ram``, ``ssd``,
``ssd_size``, ``block_size``, ``endpoint_url``, ``metadata_ttl``, ``write_dir``, ``mode``, ``threads``); in a
chain they go in ``tiercache={...}`` and an ``endpoint_url`` among the ``s3={...}`` options is used too.
Reads check written-but-not-uploaded files first; ``open(path, "wb")``, ``pipe``, ``rm``, ``mkdir``, ``mv``
go through the durable write tier (a journal under ``write_dir``, default CACHE_DIR/write): a file is
acknowledged when it is closed, uploaded in the background (``mode="writethrough"``: before close returns).
"""

from __future__ import annotations

from typing import Any

from fsspec import AbstractFileSystem
from fsspec.spec import AbstractBufferedFile

try:  # fsspec gives a ChainedFileSystem the path of a chained URL (tiercache::s3://bucket/key)
    from fsspec.implementations.chained import ChainedFileSystem as _Base
except ImportError:  # older fsspec
    _Base = AbstractFileSystem
from fsspec.utils import stringify_path

from .config import CacheConfig
from .errors import DirectoryNotEmpty, TiercacheError
from .fsspec_compat import os_error, register_s3_parser
from .fsspec_engine import DRAIN_TIMEOUT, Engine, engine_for
from .merged_view import Node

PROTOCOL = "tiercache"
_OPTIONS = ("ram", "ssd", "ssd_size", "block_size", "endpoint_url", "metadata_ttl", "write_dir", "write_limit",
            "mode", "threads", "policy", "listing")


class TiercacheFileSystem(_Base):
    """fsspec filesystem over a TieredCache (see the module docstring)."""

    protocol = (PROTOCOL,)
    root_marker = ""
    async_impl = False

    def __init__(
        self,
        target: str | None = None,
        *,
        target_protocol: str | None = None,
        target_options: dict | None = None,
        fo: str | None = None,
        **kwargs: Any,
    ):
        options = {name: kwargs.pop(name) for name in _OPTIONS if name in kwargs}
        super().__init__(**kwargs)
        self.chained = target is None
        if target is None:
            target = _target_of_chain(target_protocol, fo)
            endpoint = _endpoint_of(target_options or {})
            if endpoint and "endpoint_url" not in options:
                options["endpoint_url"] = endpoint
        self.target = str(target).rstrip("/")
        # the paths a chained URL gives: "bucket/prefix/..." (the target without its scheme)
        self._root = self.target.split("://", 1)[1].strip("/") if self.chained else ""
        try:
            self.config = CacheConfig.build(self.target, **options)
            engine_for(self.config)  # opens it now: a bad bucket or a locked cache dir fails here
        except TiercacheError as exc:
            raise os_error(exc) from None
        self.blocksize = self.config.block_size

    @property
    def engine(self) -> Engine:
        """The process's engine of this cache dir (reopened if ``fsspec_engine.close_all`` closed it)."""
        try:
            return engine_for(self.config)
        except TiercacheError as exc:
            raise os_error(exc) from None

    # ---------------------------------------------------------------- paths

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        path = stringify_path(path)
        if isinstance(path, list | tuple):
            return [cls._strip_protocol(p) for p in path]  # type: ignore[return-value]
        for head in (f"{PROTOCOL}::", f"{PROTOCOL}://"):
            if path.startswith(head):
                path = path[len(head):]
        if "://" in path:  # s3://bucket/key in a chain: bucket-rooted, as s3fs names it
            path = path.split("://", 1)[1]
        return path.strip("/")

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict:
        return {}

    def _key(self, path: Any) -> str:
        """The cache key of an fsspec path (relative to the target, or bucket-rooted when chained)."""
        path = self._strip_protocol(path)
        if not self.chained:
            return path
        if path == self._root:
            return ""
        if self._root and not path.startswith(self._root + "/"):
            raise FileNotFoundError(f"{path}: outside {self.target}")
        return path[len(self._root) + 1:] if self._root else path

    def _name(self, key: str) -> str:
        """The fsspec path of a cache key (inverse of ``_key``)."""
        if not self.chained:
            return key
        return f"{self._root}/{key}" if key else self._root

    def unstrip_protocol(self, name: str) -> str:
        """The full URL of a path: ``tiercache::s3://bucket/key`` when chained, else ``tiercache://key``."""
        if self.chained:
            return f"{PROTOCOL}::{self.target.split('://', 1)[0]}://{name}"
        return f"{PROTOCOL}://{name}"

    # ---------------------------------------------------------------- metadata

    def _entry(self, node: Node) -> dict:
        entry = {"name": self._name(node.key), "size": node.size,
                 "type": "directory" if node.is_dir else "file", "mtime": node.mtime}
        if node.etag is not None:
            entry["ETag"] = node.etag
        return entry

    def _node(self, path: Any) -> Node:
        try:
            return self.engine.view.node(self._key(path))
        except TiercacheError as exc:
            raise os_error(exc) from None

    def info(self, path: Any, **kwargs: Any) -> dict:
        """name, size, type ("file"/"directory"), mtime (and ETag) of a path; FileNotFoundError if none."""
        return self._entry(self._node(path))

    def ls(self, path: Any, detail: bool = True, **kwargs: Any) -> list:
        """A directory's entries (a file's own entry for a file), sorted by name."""
        node = self._node(path)
        if not node.is_dir:
            return [self._entry(node)] if detail else [self._name(node.key)]
        try:
            children = self.engine.view.children(node.key)
        except TiercacheError as exc:
            raise os_error(exc) from None
        return [self._entry(c) for c in children] if detail else [self._name(c.key) for c in children]

    def find(self, path: Any, maxdepth: int | None = None, withdirs: bool = False, detail: bool = False,
             **kwargs: Any) -> Any:
        """Every file below ``path`` (directories too with ``withdirs``) from one pass over the cached listing."""
        if maxdepth is not None:
            return super().find(path, maxdepth=maxdepth, withdirs=withdirs, detail=detail, **kwargs)
        key = self._key(path)
        try:
            nodes = {n.key: n for n in self.engine.view.files(key)}
            if withdirs:
                dirs = {d for k in nodes for d in _parents(k, key)} | set(self.engine.view.empty_dirs(key))
                root = self.engine.view.node(key) if key else None
                if root is not None and root.is_dir:
                    dirs.add(key)
                for d in dirs - set(nodes):
                    nodes[d] = Node(d, True, 0, self.engine.started)
        except TiercacheError as exc:
            raise os_error(exc) from None
        entries = {self._name(k): self._entry(nodes[k]) for k in sorted(nodes)}
        return entries if detail else list(entries)

    def modified(self, path: Any) -> Any:
        """Last modification time (a datetime)."""
        import datetime

        return datetime.datetime.fromtimestamp(self._node(path).mtime, tz=datetime.UTC)

    created = modified

    def ukey(self, path: Any) -> str:
        """The object's etag (changes whenever its content does)."""
        node = self._node(path)
        return node.etag or f"{node.size}-{node.mtime}"

    # ---------------------------------------------------------------- reads

    def cat_file(self, path: Any, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        """Bytes [start, end) of a file (negative: from its end), straight from the cache's tiers."""
        if (start is None or start >= 0) and (end is None or end >= 0):  # no size needed: one call
            begin = start or 0
            return self._read(self._key(path), begin, None if end is None else max(0, end - begin))
        node = self._node(path)
        if node.is_dir:
            raise IsADirectoryError(f"{self._name(node.key)}: is a directory")
        begin = 0 if start is None else (max(0, node.size + start) if start < 0 else start)
        stop = node.size if end is None else (max(0, node.size + end) if end < 0 else min(end, node.size))
        if stop <= begin:
            return b""
        return self._read(node.key, begin, stop - begin)

    def _read(self, key: str, offset: int, size: int | None) -> bytes:
        try:
            return self.engine.view.read(key, offset, size)
        except TiercacheError as exc:
            raise os_error(exc) from None

    def _open(self, path: Any, mode: str = "rb", block_size: Any = None, autocommit: bool = True,
              cache_options: dict | None = None, **kwargs: Any) -> TiercacheFile:
        key = self._key(path)
        if "r" in mode:
            node = self._node(path)
            if node.is_dir:
                raise IsADirectoryError(f"{self._name(key)}: is a directory")
            kwargs.setdefault("size", node.size)
        elif "x" in mode and self.exists(path):
            raise FileExistsError(f"{self._name(key)}: file exists")
        return TiercacheFile(self, self._name(key), mode, block_size or self.blocksize,
                             cache_type=kwargs.pop("cache_type", "readahead"), cache_options=cache_options,
                             autocommit=autocommit, **kwargs)

    # ---------------------------------------------------------------- writes (the durable write tier)

    def _writes(self) -> Any:
        try:
            return self.engine.writable()
        except TiercacheError as exc:
            raise os_error(exc) from None

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except TiercacheError as exc:
            raise os_error(exc) from None

    def mkdir(self, path: Any, create_parents: bool = True, **kwargs: Any) -> None:
        """Make a directory (kept in the write journal until a file is written under it)."""
        key = self._key(path)
        if not create_parents and key and not self.isdir(self._name(key.rpartition("/")[0])):
            raise FileNotFoundError(f"{self._name(key)}: parent directory does not exist")
        if key:
            self._call(self._writes().mkdir, key)

    def makedirs(self, path: Any, exist_ok: bool = False) -> None:
        """mkdir -p; FileExistsError for an existing directory unless ``exist_ok``."""
        key = self._key(path)
        if self.exists(path):
            if not exist_ok and key:
                raise FileExistsError(f"{self._name(key)}: exists")
            if not self.isdir(path):
                raise FileExistsError(f"{self._name(key)}: a file exists there")
            return
        self.mkdir(path)

    def rmdir(self, path: Any) -> None:
        """Remove an empty directory (one whose files are deleted but not yet at the store counts as empty)."""
        key, writes = self._key(path), self._writes()
        try:
            writes.rmdir(key)
        except DirectoryNotEmpty as exc:
            if self._call(self.engine.view.children, key):
                raise os_error(exc) from None
            writes.flush_all(timeout=DRAIN_TIMEOUT)  # the write tier holds it until those deletes are done
            self._call(writes.rmdir, key)
        except TiercacheError as exc:
            raise os_error(exc) from None

    def rm_file(self, path: Any) -> None:
        """Delete a file (journaled, then deleted at the store in the background)."""
        self._call(self._writes().unlink, self._key(path))

    def _rm(self, path: Any) -> None:
        if self.isdir(path):
            self.rmdir(path)
            return
        try:
            self.rm_file(path)
        except IsADirectoryError:  # a directory of deleted files, still known to the write tier
            self.rmdir(path)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        """Delete files (and with ``recursive`` whole directories, deepest first)."""
        paths = self.expand_path(path, recursive=recursive, maxdepth=maxdepth)
        for p in sorted(paths, key=lambda p: (p.count("/"), p), reverse=True):
            try:
                self._rm(p)
            except FileNotFoundError:
                pass  # a directory that only existed through the files just deleted

    def cp_file(self, path1: Any, path2: Any, **kwargs: Any) -> None:
        """Copy one file (read through the cache, written through the write tier)."""
        if self.isdir(path1):
            self.makedirs(path2, exist_ok=True)
            return
        with self.open(path1, "rb") as src, self.open(path2, "wb") as dst:
            while chunk := src.read(self.blocksize):
                dst.write(chunk)

    def mv(self, path1: Any, path2: Any, recursive: bool = False, maxdepth: int | None = None,
           **kwargs: Any) -> None:
        """Rename a file or a directory (the write tier's rename: pending uploads follow, objects are copied)."""
        if isinstance(path1, str) and isinstance(path2, str) and maxdepth is None:
            self._call(self._writes().rename, self._key(path1), self._key(path2))
            return
        super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)

    # ---------------------------------------------------------------- the engine

    def cache_stats(self) -> dict:
        """The engine's stats (per tier bytes and hit rates, backend requests)."""
        return self.engine.cache.stats()


class TiercacheFile(AbstractBufferedFile):
    """A file of a TiercacheFileSystem: reads fetch ranges from the cache through fsspec's read-ahead buffer
    (one cache block by default); writes stream into a staging file of the write tier, committed at close."""

    fs: TiercacheFileSystem

    def _fetch_range(self, start: int, end: int) -> bytes:
        return self.fs._read(self.fs._key(self.path), start, max(0, end - start))

    def _initiate_upload(self) -> None:
        writes = self.fs._writes()
        key = self.fs._key(self.path)
        if self.mode == "ab" and self.fs.exists(self.path):
            self._handle = self.fs._call(writes.open, key)
            self.offset = self.fs.size(self.path)
        else:
            self._handle = self.fs._call(writes.create, key)

    def _upload_chunk(self, final: bool = False) -> bool:
        writes = self.fs._writes()
        data = self.buffer.getvalue()
        if data:
            self.fs._call(writes.write, self._handle, data, self.offset)
        if final:
            self.fs._call(writes.release, self._handle)
        return True

    def discard(self) -> None:
        """Drop what was written (the file is left as it was)."""
        handle = getattr(self, "_handle", None)
        if handle is not None:
            self.fs._call(self.fs._writes().release, handle)


def _target_of_chain(protocol: str | None, fo: str | None) -> str:
    """The cache's source for a chained URL: the bucket of ``s3://bucket/key``."""
    if protocol not in ("s3", "s3a") or not fo:
        raise ValueError("tiercache: give target='s3://bucket/prefix', or chain it as tiercache::s3://bucket/key "
                         f"(got {protocol or 'no'} protocol{f' for {fo}' if fo else ''})")
    bucket = TiercacheFileSystem._strip_protocol(fo).split("/", 1)[0]
    return f"s3://{bucket}"


def _endpoint_of(options: dict) -> str | None:
    """An endpoint URL among s3fs-style options (``endpoint_url`` or ``client_kwargs={"endpoint_url": ...}``)."""
    return options.get("endpoint_url") or (options.get("client_kwargs") or {}).get("endpoint_url")


def _parents(key: str, top: str) -> list[str]:
    """Directories strictly between ``top`` and ``key``."""
    out, head = [], key.rpartition("/")[0]
    while head and head != top and (not top or head.startswith(top + "/")):
        out.append(head)
        head = head.rpartition("/")[0]
    return out


def register() -> None:
    """Register the protocol by hand (the ``fsspec.specs`` entry point does it for an installed package)."""
    import fsspec

    fsspec.register_implementation(PROTOCOL, TiercacheFileSystem, clobber=True)
    register_s3_parser()


register_s3_parser()
