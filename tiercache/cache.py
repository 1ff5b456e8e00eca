"""TieredCache: objects as blocks, the read path RAM → SSD → store with single-flight fetches, and the API.

Blocks are ``config.block_size`` slices of an object, identified by (key, etag, index); an object smaller
than a block is one block and one GET. A miss is fetched once however many threads want it (the others
wait on the same future), admitted to RAM and written through to the SSD tier, so a restart finds it.
An SSD hit is promoted to RAM; RAM evictions are demoted to SSD when it lacks them.

Freshness: object infos come from the namespace (listing cached with a TTL). A fetch is a conditional GET
(If-Match the cached etag): if the object changed, its info is refreshed with a HEAD and the read retried
once with the new etag — new block ids, so stale bytes are never served. A read served entirely from the
tiers after the TTL expired revalidates with a HEAD first.

Pins (``pin``/``unpin``, persisted in LMDB) protect blocks in the lowest configured tier (SSD when there is
one, else RAM): they are never victims of eviction there.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy

from .blocks import BlockMap
from .config import CacheConfig
from .errors import ConfigError, NotFound, StoreError
from .lock import CacheDirLock
from .namespace import Entry, Namespace, normalize
from .plans import PlanBook
from .prefetch import Prefetcher
from .store import ObjectInfo, ObjectStore, open_store
from .tiers.base import BlockId, key_prefix
from .tiers.budget import MemoryBudget
from .tiers.meta import Meta
from .tiers.policy import Policy, make_policy
from .tiers.ram import RamTier

log = logging.getLogger(__name__)

TIERS = ("ram", "ssd")


class _Stale(Exception):
    """The object changed (or vanished) under a conditional GET."""


class _Counters:
    """Thread-safe integer counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.values: dict[str, int] = {}

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self.values[name] = self.values.get(name, 0) + amount

    def get(self, name: str) -> int:
        return self.values.get(name, 0)


class _Rate:
    """Events and bytes per second over the last ``window`` whole seconds (one bucket per second)."""

    def __init__(self, window: int = 5) -> None:
        self.window = window
        self._lock = threading.Lock()
        self._buckets: dict[int, list[int]] = {}

    def add(self, nbytes: int) -> None:
        now = int(time.monotonic())
        with self._lock:
            bucket = self._buckets.get(now)
            if bucket is None:
                bucket = self._buckets[now] = [0, 0]
                for old in [t for t in self._buckets if t < now - self.window]:
                    del self._buckets[old]
            bucket[0] += 1
            bucket[1] += nbytes

    def rates(self) -> tuple[float, float]:
        """(events/s, bytes/s) over the last ``window`` complete seconds."""
        now = int(time.monotonic())
        with self._lock:
            recent = [b for t, b in self._buckets.items() if now - self.window <= t < now]
        return sum(b[0] for b in recent) / self.window, sum(b[1] for b in recent) / self.window


def _under(prefix: str) -> Callable[[str], bool]:
    """Predicate: is a key at or below path ``prefix`` ("" matches everything)?"""
    if not prefix:
        return lambda _key: True
    sub = prefix + "/"
    return lambda key: key == prefix or key.startswith(sub)


class TieredCache:
    """A RAM (+ SSD) cache in front of one object store; thread-safe; see the module docstring."""

    def __init__(self, config: CacheConfig, store: ObjectStore | None = None):
        self.config = config
        self._closed = False
        cache_dir = Path(config.cache_dir)
        self._dir_lock = CacheDirLock(cache_dir).acquire()
        self.meta: Meta | None = None
        self.plans = PlanBook()
        self.blocks = BlockMap(config.block_size)
        self.store: ObjectStore | None = None
        self._own_store = store is None
        try:
            self.meta = Meta(cache_dir / "meta", disposable=True)  # a damaged index is moved aside
            if store is None:
                store = open_store(config.source, config.endpoint_url, config.threads)
            self.store = store
            self.store.check()
            self._check_source()
            self.namespace = Namespace(self.store, self.meta, config.metadata_ttl)
            self.namespace.on_change = self._object_changed
            self._pins = {key.decode()[1:] for key, _ in self.meta.scan("pins")}  # stored as "/" + prefix
            self.protectors: list[Callable[[BlockId], bool]] = []  # e.g. the write tier's "dirty" test
            self.ssd = None
            # blocks in RAM, in flight and queued for the SSD share --ram (at least a few blocks in flight)
            self.memory = MemoryBudget(config.ram_bytes, floor=4 * config.block_size)
            if config.ssd_bytes > 0:
                from .tiers.ssd import SsdTier

                self.ssd = SsdTier(
                    cache_dir / "regions", config.ssd_bytes, self.meta, region_size=config.region_size,
                    policy=self._policy(), high=config.high_watermark, low=config.low_watermark,
                    protected=self._protected, budget=self.memory,
                )
            self.ram = RamTier(
                config.ram_bytes, self._policy(), config.high_watermark, config.low_watermark,
                protected=None if self.ssd is not None else self._protected, on_evict=self._demote,
                budget=self.memory,
            )
        except BaseException:
            self._release()
            raise
        self.counters = _Counters()
        self.on_read: Callable[[str, int], None] | None = None  # (key, offset) after each read
        self._flights: dict[BlockId, Future] = {}
        self._flight_lock = threading.Lock()
        self._fetch_pool = ThreadPoolExecutor(config.threads, thread_name_prefix="tiercache-fetch")
        self._prefetch_pool = ThreadPoolExecutor(
            max(1, config.threads // 2), thread_name_prefix="tiercache-prefetch"
        )
        self._prefetch_pending = 0
        self._backend_rate = _Rate()
        self.prefetcher = Prefetcher(
            self.plans, self.blocks, config.ram_bytes, resident=self.ram.contains,
            load=lambda info, blocks: self._get_blocks(blocks, info, "ram", want=False),
            lookup=lambda key: self.namespace.info(key, revalidate=False), threads=max(1, config.threads // 2),
        )

    def _policy(self) -> Policy:
        """A tier's eviction policy, by its registered name; plan-aware ones read the one PlanBook."""
        return make_policy(self.config.policy, self.plans)

    def _check_source(self) -> None:
        """A cache dir reused for another source starts over (its region files go when the SSD tier opens)."""
        old = self.meta.get("misc", b"source")
        if old is not None and old.decode() != self.config.source:
            log.warning("cache dir %s held %s; starting it over", self.config.cache_dir, old.decode())
            with self.meta.write() as txn:
                for name in ("objects", "listings", "ssd_index", "regions", "pins"):
                    txn.drop(self.meta.db(name), delete=False)
        if old is None or old.decode() != self.config.source:
            self.meta.put("misc", b"source", self.config.source.encode())

    # ------------------------------------------------------------------ namespace

    def stat(self, path: str) -> Entry:
        """Entry of a file or directory; NotFound if neither."""
        return self.namespace.stat(path)

    def listdir(self, path: str = "") -> list[str]:
        """Sorted names in directory ``path``."""
        return self.namespace.listdir(path)

    def exists(self, path: str) -> bool:
        """Whether a file or directory is at ``path``."""
        return self.namespace.exists(path)

    # ------------------------------------------------------------------ reads

    def read(self, path: str, offset: int = 0, size: int | None = None) -> bytes | memoryview:
        """Bytes [offset, offset+size) of the file at ``path`` (to EOF when size is None; short at EOF).

        Within one block the cached bytes object itself comes back (no copy); a range over several
        blocks comes back as a memoryview of one buffer filled with a single copy.
        """
        if offset < 0 or (size is not None and size < 0):
            raise ConfigError(f"read {path!r}: offset and size must not be negative")
        info, expired = self.namespace.lookup(path)
        path = info.key
        if expired and self._resident(info, offset, size, "any"):
            info = self.namespace.refresh(path)
        for attempt in (0, 1):
            try:
                data = self._read(info, offset, size)
                break
            except _Stale:
                self.counters.add("stale_retries")
                if attempt:
                    raise StoreError(f"{path}: the object keeps changing while being read") from None
                info = self.namespace.refresh(path)
        self.counters.add("reads")
        self.counters.add("bytes_read", len(data))
        if self.on_read is not None:  # e.g. a warm profile being recorded (profiles.py)
            self.on_read(path, offset)
        return data

    def _observe(self, info: ObjectInfo, ids: list[BlockId], offset: int, end: int) -> None:
        """Tell the plans and the prefetcher where the reader is (a file's first read moves it in its plan)."""
        if offset == 0 and self.plans:
            hit = all(self._in_tier(b, "any") for b in ids)
            if self.plans.observe(info.key, hit):
                self.prefetcher.wake()
        self.prefetcher.observe(info, offset, end)

    def _block_ids(self, info: ObjectInfo, offset: int = 0, size: int | None = None) -> list[BlockId]:
        end = info.size if size is None else min(info.size, offset + size)
        if offset >= end:
            return []
        bs = self.config.block_size
        return [BlockId(info.key, info.etag, i) for i in range(offset // bs, (end - 1) // bs + 1)]

    def _read(self, info: ObjectInfo, offset: int, size: int | None) -> bytes | memoryview:
        ids = self._block_ids(info, offset, size)
        if not ids:
            return b""
        end = info.size if size is None else min(info.size, offset + size)
        self._observe(info, ids, offset, end)
        if len(ids) > 1:
            out = self._assemble(ids, info, offset, end)
        else:
            start = offset - ids[0].index * self.config.block_size
            out = self._ssd_part(ids[0], info, start, end - offset)
            if out is None:
                data = self._get_blocks(ids, info, "ram")[0]
                out = data if start == 0 and len(data) == end - offset else data[start:start + end - offset]
        for block in ids:
            self.prefetcher.mark_read(block)
        return out

    def _ssd_part(self, block: BlockId, info: ObjectInfo, start: int, length: int) -> bytes | None:
        """Part of a block RAM lacks, from just the SSD pages it needs, while the block has not earned a
        whole read and a place in RAM (``SsdTier.read_part``); None: take the whole-block path."""
        if self.ssd is None or self.ram.contains(block):
            return None
        block_len = min(self.config.block_size, info.size - block.index * self.config.block_size)
        part = self.ssd.read_part(block, start, start + length, block_len)
        if part is not None:
            self.ram.count_miss()
        return part

    def _assemble(self, ids: list[BlockId], info: ObjectInfo, offset: int, end: int) -> memoryview:
        """A multi-block range copied once into one buffer. Without a RAM tier to promote into, whole
        blocks on the SSD are read straight into that buffer (no intermediate bytes object)."""
        bs = self.config.block_size
        view = memoryview(numpy.empty(end - offset, numpy.uint8))  # unlike bytearray(n), not zero-filled

        def target(block: BlockId) -> memoryview:
            lo = block.index * bs - offset
            return view[lo:lo + min(bs, info.size - block.index * bs)]

        rest = ids
        if self.ssd is not None and self.ram.capacity() < bs:
            whole = [b for b in ids if b.index * bs >= offset and min((b.index + 1) * bs, info.size) <= end]
            landed = self._parallel(lambda b: self.ssd.get_into(b, target(b)), whole)
            done = {b for b, ok in zip(whole, landed, strict=True) if ok}
            rest = [b for b in ids if b not in done]
        for block, data in zip(rest, self._get_blocks(rest, info, "ram") if rest else [], strict=True):
            first = block.index * bs
            lo, hi = max(offset, first), min(end, first + len(data))
            view[lo - offset:hi - offset] = memoryview(data)[lo - first:hi - first]
        return view

    def _parallel(self, fn: Callable, items: list) -> list:
        """``fn`` over ``items`` on the fetch pool (the first on this thread); the first error is raised
        once every call has settled, so no call outlives the request."""
        if len(items) <= 1:
            return [fn(item) for item in items]
        futures = [self._fetch_pool.submit(fn, item) for item in items[1:]]
        results: list = [None] * len(items)
        error: BaseException | None = None
        try:
            results[0] = fn(items[0])
        except BaseException as exc:  # noqa: BLE001 - re-raised once the other calls settled
            error = exc
        for i, future in enumerate(futures, 1):
            try:
                results[i] = future.result()
            except BaseException as exc:  # noqa: BLE001
                error = error or exc
        if error is not None:
            raise error
        return results

    def _get_blocks(self, ids: list[BlockId], info: ObjectInfo, into: str, want: bool = True) -> list[bytes]:
        """The blocks' bytes; RAM misses are loaded (SSD or store) in parallel.

        With ``want=False`` the blocks are only made resident in ``into`` (warm, prefetch) and the list
        holds what was loaded.
        """
        out: list[bytes | None] = [None] * len(ids)
        if want:
            for i, block in enumerate(ids):
                out[i] = self.ram.get(block)
            todo = [i for i, data in enumerate(out) if data is None]
        else:
            todo = [i for i, block in enumerate(ids) if not self._in_tier(block, into)]
        load = self._load if want else self._fetch
        for i, data in zip(todo, self._parallel(lambda i: load(ids[i], info, into), todo), strict=True):
            out[i] = data
        return out  # type: ignore[return-value]

    def _load(self, block: BlockId, info: ObjectInfo, into: str) -> bytes:
        """A RAM miss: the SSD tier (promoting a hit to RAM), else a single-flight fetch."""
        if self.ssd is not None:
            data = self.ssd.get(block)
            if data is not None:
                self.ram.put(block, data)
                return data
        return self._fetch(block, info, into)

    def _lookup(self, block: BlockId, count: bool = True) -> bytes | None:
        """RAM, then SSD (promoting a hit to RAM)."""
        data = self.ram.get(block, count)
        if data is None and self.ssd is not None:
            data = self.ssd.get(block, count)
            if data is not None:
                self.ram.put(block, data)
        return data

    def _in_tier(self, block: BlockId, tier: str) -> bool:
        if tier == "ram":
            return self.ram.contains(block)
        if tier == "ssd":
            return self.ssd.contains(block) if self.ssd is not None else self.ram.contains(block)
        return self.ram.contains(block) or (self.ssd is not None and self.ssd.contains(block))

    def _fetch(self, block: BlockId, info: ObjectInfo, into: str) -> bytes:
        """Single-flight: the first caller GETs the block, concurrent callers wait for its result."""
        with self._flight_lock:
            future = self._flights.get(block)
            owner = future is None
            if owner:
                future = self._flights[block] = Future()
        if not owner:
            self.counters.add("single_flight_waits")
            data = future.result()
            if not self._in_tier(block, into):
                self._admit(block, data, into)
            return data
        try:
            data = self._lookup(block, count=False)
            if data is None:
                data = self._get_from_store(block, info)
            self._admit(block, data, into)
            future.set_result(data)
            return data
        except BaseException as exc:
            future.set_exception(exc)
            raise
        finally:
            with self._flight_lock:
                self._flights.pop(block, None)

    def _get_from_store(self, block: BlockId, info: ObjectInfo) -> bytes:
        start = block.index * self.config.block_size
        end = min(info.size, start + self.config.block_size)
        try:
            with self.memory.hold(end - start, "fetches"):
                data = self.store.get_range(info.key, start, end, etag=info.etag)
        except NotFound:
            raise _Stale(info.key) from None
        except StoreError:
            self.counters.add("backend_errors")
            raise
        self.counters.add("backend_gets")
        self.counters.add("backend_bytes", len(data))
        self._backend_rate.add(len(data))
        if len(data) != end - start:
            raise _Stale(info.key)
        self.namespace.confirm(info.key)
        return data

    def _admit(self, block: BlockId, data: bytes, into: str) -> None:
        """Place fetched bytes: "ram" = RAM and (write-through) SSD; "ssd" = SSD only (RAM without one)."""
        in_ram = (into == "ram" or self.ssd is None) and self.ram.put(block, data)
        if self.ssd is None or self.ssd.contains(block):
            return
        if not (in_ram and self.ssd.put_async(block, data)):  # off the read path when RAM holds it
            self.ssd.put(block, data)

    def _demote(self, evicted: list[tuple[BlockId, bytes]]) -> None:
        if self.ssd is None:
            return
        for block, data in evicted:
            if not self.ssd.contains(block):
                self.ssd.put(block, data)
                self.counters.add("demotions")

    # ------------------------------------------------------------------ residency, pins, eviction

    def _protected(self, block: BlockId) -> bool:
        return self._pinned(block.key) or any(test(block) for test in self.protectors)

    def _pinned(self, key: str) -> bool:
        return any(not p or key == p or key.startswith(p + "/") for p in self._pins)

    def _resident(self, info: ObjectInfo, offset: int, size: int | None, tier: str) -> bool:
        return all(self._in_tier(b, tier) for b in self._block_ids(info, offset, size))

    def resident(self, path: str, tier: str = "any") -> int:
        """Bytes of the file at ``path`` resident in ``tier`` ("ram", "ssd" or "any")."""
        if tier not in (*TIERS, "any"):
            raise ConfigError(f"tier {tier!r} is not one of ram, ssd, any")
        info = self.namespace.info(path, revalidate=False)
        bs = self.config.block_size
        return sum(min(bs, info.size - b.index * bs) for b in self._block_ids(info) if self._in_tier(b, tier))

    def pin(self, prefix: str) -> None:
        """Never evict blocks at or below ``prefix`` from the lowest tier (persisted; ``warm`` fetches)."""
        prefix = normalize(prefix)
        self.meta.put("pins", f"/{prefix}".encode(), b"1")
        self._pins = self._pins | {prefix}

    def unpin(self, prefix: str) -> None:
        """Undo ``pin(prefix)``."""
        prefix = normalize(prefix)
        self.meta.delete("pins", f"/{prefix}".encode())
        self._pins = self._pins - {prefix}

    def pins(self) -> list[str]:
        """Pinned prefixes."""
        return sorted(self._pins)

    def _ssd_blocks_under(self, prefix: str) -> list[BlockId]:
        if self.ssd is None:
            return []
        if not prefix:
            return self.ssd.blocks()
        return self.ssd.blocks(key_prefix(prefix)) + self.ssd.blocks(f"{prefix}/".encode())

    def evict(self, prefix: str = "", tier: str = "all") -> int:
        """Drop clean, unpinned blocks at or below ``prefix`` from ``tier`` (ram, ssd, all); bytes freed."""
        if tier not in (*TIERS, "all"):
            raise ConfigError(f"tier {tier!r} is not one of ram, ssd, all")
        prefix = normalize(prefix)
        under = _under(prefix)
        freed = 0
        if tier in ("ram", "all"):
            freed += self.ram.discard_where(lambda b: under(b.key), protected=self._protected)
        if tier in ("ssd", "all") and self.ssd is not None:
            for block in self._ssd_blocks_under(prefix):
                if under(block.key) and not self._protected(block):
                    freed += self.ssd.discard(block)
        self.counters.add("evicted_bytes", freed)
        return freed

    def _drop_blocks(self, key: str, keep_etag: str | None = None) -> None:
        """Forget every cached block of ``key`` except those of ``keep_etag``."""
        self.ram.discard_where(lambda b: b.key == key and b.etag != keep_etag)
        if self.ssd is not None:
            for block in self.ssd.blocks(key_prefix(key)):
                if block.etag != keep_etag:
                    self.ssd.discard(block)

    def _object_changed(self, path: str, info: ObjectInfo | None) -> None:
        self._drop_blocks(path, info.etag if info is not None else None)

    def invalidate(self, path: str) -> None:
        """Drop the cached blocks of ``path`` and distrust its info (the next use revalidates)."""
        path = normalize(path)
        self._drop_blocks(path)
        self.namespace.forget(path)

    def admit_file(self, path: str, info: ObjectInfo, local_file: str) -> None:
        """Record a just-uploaded object and cache its bytes from ``local_file`` (no GET)."""
        path = normalize(path)
        if info.key != path:
            info = ObjectInfo(path, info.size, info.etag, info.mtime)
        self._drop_blocks(path, keep_etag=info.etag)
        self.namespace.add(info)
        bs = self.config.block_size
        with open(local_file, "rb") as f:
            if os.fstat(f.fileno()).st_size != info.size:
                log.warning("admit_file %s: local file size differs from the object's; not cached", path)
                return
            for block in self._block_ids(info):
                data = os.pread(f.fileno(), bs, block.index * bs)
                self._admit(block, data, "ssd")

    # ------------------------------------------------------------------ warm, prefetch, plans

    def warm(
        self, prefix: str = "", tier: str = "ssd", progress: Callable[[int, int], None] | None = None
    ) -> dict:
        """Fetch every block at or below ``prefix`` into ``tier``, skipping resident ones.

        ``progress(done_bytes, total_bytes)`` is called as files complete. Returns
        ``{"files", "bytes", "fetched_bytes", "complete", "errors"}``; complete means every block is
        resident at the end (false when the tier is too small or fetches failed).
        """
        report = self.warm_files(
            list(self.namespace.files(prefix)), tier,
            None if progress is None else (lambda p: progress(p["done_bytes"], p["bytes"])),
        )
        return {name: report[name] for name in ("files", "bytes", "fetched_bytes", "complete", "errors")}

    def warm_targets(
        self, paths: Iterable[str], recursive: bool = True, display: Callable[[str], str] = lambda p: p or "/"
    ) -> list[ObjectInfo]:
        """Infos of the files named by ``paths`` (directories expanded when ``recursive``), deduplicated.

        NotFound for a missing path; ConfigError for a directory without ``recursive``; errors name a path
        as ``display(path)``.
        """
        infos: dict[str, ObjectInfo] = {}
        for path in paths:
            try:
                entry = self.namespace.stat(path)
            except NotFound:
                raise NotFound(f"{display(path)}: no such file or directory") from None
            if entry.is_dir:
                if not recursive:
                    raise ConfigError(f"{display(path)} is a directory (use --recursive to warm what is in it)")
                found = self.namespace.files(entry.path)
            else:
                found = [self.namespace.info(entry.path, revalidate=False)]
            for info in found:
                infos.setdefault(info.key, info)
        return list(infos.values())

    def warm_files(
        self,
        infos: Sequence[ObjectInfo],
        tier: str = "ssd",
        progress: Callable[[dict], None] | None = None,
        threads: int | None = None,
        cancel: threading.Event | None = None,
    ) -> dict:
        """Make every byte of ``infos`` resident in ``tier``; files already resident are skipped.

        ``progress`` receives ``{"files", "bytes", "done_files", "done_bytes", "skipped_files",
        "skipped_bytes", "fetched_bytes"}`` after each file; setting ``cancel`` stops it between files.
        Returns that dict plus ``complete`` (every byte resident in ``tier`` at the end), ``missing_bytes``,
        ``errors``, ``error`` (an example) and ``cancelled``.
        """
        if tier not in TIERS:
            raise ConfigError(f"tier {tier!r} is not one of ram, ssd")
        total = sum(i.size for i in infos)
        before = self.counters.get("backend_bytes")
        skipped = [i for i in infos if self._resident(i, 0, None, tier)]
        todo = [i for i in infos if not self._resident(i, 0, None, tier)]
        state = {"files": len(infos), "bytes": total, "done_files": len(skipped),
                 "done_bytes": sum(i.size for i in skipped), "skipped_files": len(skipped),
                 "skipped_bytes": sum(i.size for i in skipped), "fetched_bytes": 0}
        errors: list[str] = []
        lock = threading.Lock()
        if progress is not None:
            progress(dict(state))

        def one(info: ObjectInfo) -> None:
            if cancel is not None and cancel.is_set():
                return
            try:
                for attempt in (0, 1):
                    try:
                        self._get_blocks(self._block_ids(info), info, tier, want=False)
                        break
                    except _Stale:
                        if attempt:
                            raise StoreError(f"{info.key}: the object keeps changing") from None
                        info = self.namespace.refresh(info.key)
            except Exception as exc:  # noqa: BLE001 - reported in the result
                with lock:
                    errors.append(f"{info.key}: {exc}")
            with lock:
                state["done_files"] += 1
                state["done_bytes"] += info.size
                state["fetched_bytes"] = self.counters.get("backend_bytes") - before
                snapshot = dict(state)
            if progress is not None:
                progress(snapshot)

        with ThreadPoolExecutor(max(1, threads or self.config.threads), thread_name_prefix="tiercache-warm") as pool:
            list(pool.map(one, todo))
        missing = 0
        for info in infos:
            bs = self.config.block_size
            missing += sum(min(bs, info.size - b.index * bs) for b in self._block_ids(info)
                           if not self._in_tier(b, tier))
        cancelled = cancel is not None and cancel.is_set()
        if errors:
            log.warning("warm: %d file(s) failed, e.g. %s", len(errors), errors[0])
        state["fetched_bytes"] = self.counters.get("backend_bytes") - before
        return {**state, "complete": not errors and not cancelled and missing == 0, "missing_bytes": missing,
                "errors": len(errors), "error": errors[0] if errors else None, "cancelled": cancelled}

    def prefetch(self, keys: Iterable[str], deadline: float | None = None) -> None:
        """Fetch whole objects in the background (RAM, written through to SSD).

        ``deadline`` is a ``time.monotonic()`` instant: keys not started by then are skipped.
        """
        for key in keys:
            with self._flight_lock:
                self._prefetch_pending += 1
            try:
                self._prefetch_pool.submit(self._prefetch_one, key, deadline)
            except RuntimeError:  # closed
                return

    def _prefetch_one(self, key: str, deadline: float | None) -> None:
        try:
            if self._closed:
                return
            if deadline is not None and time.monotonic() > deadline:
                self.counters.add("prefetch_expired")
                return
            path = normalize(key)
            info = self.namespace.info(path, revalidate=False)
            try:
                self._get_blocks(self._block_ids(info), info, "ram", want=False)
            except _Stale:
                info = self.namespace.refresh(path)
                self._get_blocks(self._block_ids(info), info, "ram", want=False)
            self.counters.add("prefetched")
        except Exception as exc:  # noqa: BLE001 - prefetch is best effort
            self.counters.add("prefetch_errors")
            log.debug("prefetch %s failed: %s", key, exc)
        finally:
            with self._flight_lock:
                self._prefetch_pending -= 1

    def set_plan(self, keys_in_order: Sequence[str], client: str = "default", bound: object = None,
                 note: str = "") -> int:
        """Set ``client``'s read plan (keys in read order; empty ends it) for eviction and prefetch.

        Other clients' plans stay. The plan is built (numpy arrays) before anything is locked and swapped in
        by reference. ``bound``: a token the plan lives and dies with (``end_bound``); unbound plans end
        when idle past the book's timeout. Returns the number of entries.
        """
        keys = [str(k).strip("/") for k in keys_in_order]
        plan = self.plans.build(keys, str(client), bound, note)
        self.plans.install(plan)
        self.prefetcher.wake()
        return len(plan)

    def end_plan(self, client: str = "default") -> bool:
        """End ``client``'s plan; False when it had none."""
        ended = self.plans.end(str(client))
        self.prefetcher.wake()
        return ended

    def plan_keys(self, client: str = "default") -> list[str]:
        """The keys of ``client``'s live plan, in order (empty when it has none)."""
        plan = self.plans.get(str(client))
        if plan is None:
            return []
        key = self.plans.table.key
        return [key(i) for i in plan.ids.tolist()]

    def end_bound(self, bound: object) -> list[str]:
        """End the plans tied to ``bound`` (a closed control connection); the clients whose plans ended."""
        ended = self.plans.end_bound(bound)
        self.prefetcher.wake()
        return ended

    def plan_stats(self) -> list[dict]:
        """Each live plan: client, files, position, lead (files, bytes ahead), hit rate since it started."""
        leads = self.prefetcher.leads()
        out = []
        for plan in self.plans.stats():
            files, nbytes = leads.get(plan.client, (0, 0))
            out.append({**plan.__dict__, "lead_files": files, "lead_bytes": nbytes})
        return out

    def _reader_lookups(self) -> tuple[int, int]:
        """(block lookups by readers, those that needed the store): warm and prefetch do not count."""
        ram = self.ram.stats()
        lookups = ram["hits"] + ram["misses"]
        if self.ssd is None:
            return lookups, ram["misses"]
        return lookups, self.ssd.stats()["misses"]

    # ------------------------------------------------------------------ stats and lifecycle

    def stats(self) -> dict:
        """Counters and occupancy per tier, backend requests, namespace counts; JSON-serializable."""
        c = self.counters.get
        ram = self.ram.stats()
        ssd = self.ssd.stats() if self.ssd is not None else {
            "used": 0, "capacity": 0, "hits": 0, "misses": 0, "hit_rate": 0.0, "bytes_served": 0,
        }
        served = ram["bytes_served"] + ssd["bytes_served"]
        lookups, misses = self._reader_lookups()
        gets_per_s, bytes_per_s = self._backend_rate.rates()
        return {
            "source": self.config.source,
            "cache_dir": str(self.config.cache_dir),
            "block_size": self.config.block_size,
            "ram": ram,
            "ssd": ssd,
            "memory": self.memory.stats(),
            "backend": {
                "gets": c("backend_gets"), "bytes": c("backend_bytes"), "errors": c("backend_errors"),
                "heads": self.namespace.heads, "lists": self.namespace.lists,
                "gets_per_s": gets_per_s, "bytes_per_s": bytes_per_s,
            },
            "read_hit_rate": 1 - misses / lookups if lookups else 0.0,
            "plans": self.plan_stats(),
            "reads": c("reads"),
            "bytes_read": c("bytes_read"),
            "cache_bytes_served": served,
            "hit_rate": served / (served + c("backend_bytes")) if served + c("backend_bytes") else 0.0,
            "single_flight_waits": c("single_flight_waits"),
            "stale_retries": c("stale_retries"),
            "demotions": c("demotions"),
            "evicted_bytes": c("evicted_bytes"),
            "prefetch": {
                "done": c("prefetched"), "pending": self._prefetch_pending, "expired": c("prefetch_expired"),
                "errors": c("prefetch_errors"),
            },
            "prefetcher": self.prefetcher.stats(),
            "pins": sorted(self._pins),
            "plan_keys": sum(len(p) for p in self.plans.plans()),
            "plan_bytes": self.plans.nbytes,
            "namespace": self.namespace.stats(),
        }

    def close(self) -> None:
        """Finish background work, flush the SSD index, release the cache dir. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.prefetcher.close()
        self._prefetch_pool.shutdown(wait=True, cancel_futures=True)
        self._fetch_pool.shutdown(wait=True)
        self.ram.clear()
        self._release()

    def _release(self) -> None:
        try:
            if getattr(self, "ssd", None) is not None:
                self.ssd.close()
            if self.store is not None and self._own_store:
                self.store.close()
            if self.meta is not None:
                self.meta.close()
        finally:
            self._dir_lock.release()

    def __enter__(self) -> TieredCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TieredCache({self.config.source!r}, cache_dir={str(self.config.cache_dir)!r})"
