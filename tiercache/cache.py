"""TieredCache: the composition root of the read engine, and its API.

It owns no algorithm; it builds the parts, wires them with callables, and answers the API by delegating:

- :mod:`.blocks`: block arithmetic and prefix matching (objects as ``block_size`` blocks keyed by
  (key, etag, index); an object smaller than a block is one block, one GET);
- :mod:`.tierstack`: RAM over SSD (lookup, promotion, write-through admission, demotion, residency);
- :mod:`.fetcher`: the only caller of ``store.get_range``, and the one stale-object retry;
- :mod:`.readpath`: ranges through the tier stack, misses fetched once (:mod:`.flight`, single-flight);
- :mod:`.plans`: one compact Plan per client and where each reader stands, shared by both tiers' policies
  (``make_policy(config.policy, book)``) and the prefetcher;
- :mod:`.readahead`: sequential read-ahead per file; :mod:`.prefetch`: plan and hinted prefetch; both are
  given callables (residency, load, lookup), never this class;
- :mod:`.warm`: warm jobs; :mod:`.pins`: pinned prefixes; :mod:`.counters`: counters and rates.

Freshness: object infos come from the namespace (listing cached with a TTL). A fetch is a conditional GET
(If-Match the cached etag): if the object changed, its info is refreshed and the operation retried once
with the new etag (``Fetcher.fresh``), so stale bytes are never served. A read served entirely from the
tiers after the TTL expired revalidates with a HEAD first. Pins protect blocks in the lowest configured
tier (SSD when there is one, else RAM): they are never victims of eviction there.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .blocks import BlockMap, under
from .cache_stats import cache_stats, plan_rows
from .config import CacheConfig
from .counters import Counters
from .errors import ConfigError, StaleVersion
from .fetcher import Fetcher, Stale
from .keybatch import KeyBatch
from .keytable import as_batch
from .lock import CacheDirLock
from .namespace import Entry, Namespace, normalize
from .pins import Pins
from .plans import PlanBook
from .prefetch import HintedPrefetch, Prefetcher
from .readahead import StreamReadAhead
from .readpath import BlockReader, writable
from .stagerun import stage_run
from .store import ObjectInfo, ObjectStore, open_store
from .tiers.base import BlockId
from .tiers.budget import MemoryBudget
from .tiers.meta import Meta
from .tiers.policy import Policy, make_policy
from .tiers.ram import RamTier
from .tierstack import TIERS, TierStack
from .warm import Warmer

log = logging.getLogger(__name__)

__all__ = ["TIERS", "TieredCache"]


class TieredCache:
    """A RAM (+ SSD) cache in front of one object store; thread-safe; see the module docstring."""

    def __init__(self, config: CacheConfig, store: ObjectStore | None = None):
        self.config = config
        self._closed = False
        cache_dir = Path(config.cache_dir)
        self._dir_lock = CacheDirLock(cache_dir).acquire()
        self.meta: Meta | None = None
        self.plans = PlanBook(idle_timeout=config.plan_idle_timeout)
        self.blocks = BlockMap(config.block_size)
        self.counters = Counters()
        self.store: ObjectStore | None = None
        self.ssd = None
        self._own_store = store is None
        try:
            self.meta = Meta(cache_dir / "meta", disposable=True)  # a damaged index is moved aside
            if store is None:
                store = open_store(config.source, config.endpoint_url, config.threads)
                if config.listing is not None:  # the first listing from the file (tiercache listing export)
                    from .listing import SeededStore

                    store = SeededStore(store, config.listing, config.source)
            self.store = store
            self.store.check()
            self._check_source()
            self.namespace = Namespace(self.store, self.meta, config.metadata_ttl)
            self.namespace.on_change = self._object_changed
            self.pinned = Pins(self.meta)
            self.protectors: list[Callable[[BlockId], bool]] = []  # e.g. the write tier's "dirty" test
            # blocks in RAM, in flight and queued for the SSD share --ram (at least a few blocks in flight)
            self.memory = MemoryBudget(config.ram_bytes, floor=4 * config.block_size)
            if config.ssd_bytes > 0:
                from .tiers.slot_plans import make_slot_policy
                from .tiers.ssd import SsdTier

                self.ssd = SsdTier(
                    cache_dir / "regions", config.ssd_bytes, self.meta, region_size=config.region_size,
                    policy=make_slot_policy(config.policy, self.plans), high=config.high_watermark,
                    low=config.low_watermark, protected=self._protected, budget=self.memory,
                )
            self.tiers = TierStack(self.ssd, self.counters)
            self.ram = RamTier(
                config.ram_bytes, self._policy(), config.high_watermark, config.low_watermark,
                protected=None if self.ssd is not None else self._protected, on_evict=self.tiers.demote,
                budget=self.memory)
            self.tiers.attach(self.ram)
        except BaseException:
            self._release()
            raise
        self.fetcher = Fetcher(self.store, self.blocks, self.memory, self.counters,
                               confirm=self.namespace.confirm, refresh=self.namespace.refresh)
        self._fetch_pool = ThreadPoolExecutor(config.threads, thread_name_prefix="tiercache-fetch")
        self.prefetcher = Prefetcher(
            self.plans, self.blocks, config.ram_bytes, resident=self.ram.contains,
            load=lambda info, blocks: self.reader.get_blocks(blocks, info, "ram", want=False),
            lookup=lambda key: self.namespace.info(key, revalidate=False), threads=max(1, config.threads // 2),
        )
        self.readahead = StreamReadAhead(
            self.blocks, resident=self.ram.contains, cold=lambda block: not self.tiers.contains(block),
            fetch=lambda info, run, keep: stage_run(self.reader, run, info, keep),
            budget=self.memory, threads=config.threads, max_window=min(64 << 20, config.ram_bytes // 4),
            max_in_flight=min(64 << 20, self.memory.total // 4), link=getattr(self.store, "link", None),
            run_bytes=getattr(self.store, "run_bytes", 0))  # window, in flight: a quarter of the budget each
        self.reader = BlockReader(self.tiers, self.fetcher, self.blocks, self._fetch_pool, on_read=self._observe,
                                  on_served=self.prefetcher.mark_read, staging=self.readahead)
        self.warmer = Warmer(self.namespace, self.blocks, self.tiers, self.reader, self.fetcher, self.counters,
                             config.threads)
        self.hinted = HintedPrefetch(self._prefetch_key, max(1, config.threads // 2), self.counters)
        self.on_read: Callable[[str, int], None] | None = None  # (key, offset) after each read

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

    def read(self, path: str, offset: int = 0, size: int | None = None, view: bool = False,
             into: memoryview | bytearray | None = None) -> bytes | memoryview | int:
        """Bytes [offset, offset+size) of the file at ``path`` (to EOF when size is None; short at EOF).

        Within one block the cached bytes object itself comes back (no copy), or a part of it as bytes
        (``view``: as a read-only memoryview, no copy); a range over several blocks comes back as a
        memoryview of one buffer filled with a single copy. ``into`` (a writable contiguous buffer): the
        bytes go there, at most its length (and ``size``), and their count comes back; nothing allocated.
        """
        if offset < 0 or (size is not None and size < 0):
            raise ConfigError(f"read {path!r}: offset and size must not be negative")
        into, size = writable(into, size, path) if into is not None else (None, size)
        info, expired = self.namespace.lookup(path)
        if expired and self.warmer.resident(info, offset, size, "any"):
            info = self.namespace.refresh(info.key)
        data = self.fetcher.fresh(info, lambda i: self.reader.read(i, offset, size, view, into))
        self.counters.add_two("reads", 1, "bytes_read", data if into is not None else len(data))
        if self.on_read is not None:  # e.g. a warm profile being recorded (profiles.py)
            self.on_read(info.key, offset)
        return data

    def read_version(self, info: ObjectInfo, offset: int, size: int, view: bool = False,
                     into: memoryview | None = None) -> bytes | memoryview | int:
        """Bytes of exactly the version ``info`` names (an open file's), from the tiers or a GET matching its etag;
        StaleVersion if the store holds another version now (its info is then distrusted). Never another version's
        bytes. ``view`` as for ``read``; ``into`` (a writable byte view): the bytes go there, their count returns."""
        if offset < 0 or size < 0:
            raise ConfigError(f"read {info.key!r}: offset and size must not be negative")
        try:
            data = self.reader.read(info, offset, size, view, into)
        except Stale:
            self.counters.add("stale_reads")
            self.namespace.forget(info.key)
            raise StaleVersion(f"{info.key}: changed in the store since it was opened") from None
        self.counters.add_two("reads", 1, "bytes_read", data if into is not None else len(data))
        if self.on_read is not None:
            self.on_read(info.key, offset)
        return data

    def _observe(self, info: ObjectInfo, ids: list[BlockId], offset: int, end: int) -> bool:
        """Tell the plans and the prefetchers where the reader is (a file's first read moves it in its plan);
        True when the read is part of a sequential stream."""
        if offset == 0 and self.plans:
            hit = all(self.tiers.contains(b, "any") for b in ids)
            if self.plans.observe(info.key, hit):
                self.prefetcher.wake()
        return self.readahead.observe(info, offset, end)

    # ------------------------------------------------------------------ residency, pins, eviction

    def _protected(self, block: BlockId) -> bool:
        return self.pinned.covers(block.key) or any(test(block) for test in self.protectors)

    def resident(self, path: str, tier: str = "any") -> int:
        """Bytes of the file at ``path`` resident in ``tier`` ("ram", "ssd" or "any")."""
        if tier not in (*TIERS, "any"):
            raise ConfigError(f"tier {tier!r} is not one of ram, ssd, any")
        info = self.namespace.info(path, revalidate=False)
        return info.size - self.warmer.missing_bytes(info, tier)

    def pin(self, prefix: str) -> None:
        """Never evict blocks at or below ``prefix`` from the lowest tier (persisted; ``warm`` fetches)."""
        self.pinned.pin(prefix)

    def unpin(self, prefix: str) -> None:
        """Undo ``pin(prefix)``."""
        self.pinned.unpin(prefix)

    def pins(self) -> list[str]:
        """Pinned prefixes."""
        return list(self.pinned)

    def evict(self, prefix: str = "", tier: str = "all") -> int:
        """Drop clean, unpinned blocks at or below ``prefix`` from ``tier`` (ram, ssd, all); bytes freed."""
        if tier not in (*TIERS, "all"):
            raise ConfigError(f"tier {tier!r} is not one of ram, ssd, all")
        freed = self.tiers.evict(normalize(prefix), tier, self._protected) + (  # and what read-ahead staged
            self.readahead.discard(under(normalize(prefix))) if tier in ("ram", "all") else 0)
        self.counters.add("evicted_bytes", freed)
        return freed

    def _object_changed(self, path: str, info: ObjectInfo | None) -> None:
        self.tiers.drop_key(path, info.etag if info is not None else None)

    def invalidate(self, path: str) -> None:
        """Drop the cached blocks of ``path`` and distrust its info (the next use revalidates)."""
        path = normalize(path)
        self.tiers.drop_key(path)
        self.namespace.forget(path)

    def admit_file(self, path: str, info: ObjectInfo, local_file: str) -> None:
        """Record a just-uploaded object and cache its bytes from ``local_file`` (no GET)."""
        path = normalize(path)
        if info.key != path:
            info = dataclasses.replace(info, key=path)
        self.tiers.drop_key(path, keep_etag=info.etag)
        self.namespace.add(info)
        with open(local_file, "rb") as f:
            if os.fstat(f.fileno()).st_size != info.size:
                log.warning("admit_file %s: local file size differs from the object's; not cached", path)
                return
            for block in self.blocks.ids(info):
                data = os.pread(f.fileno(), self.blocks.block_size, self.blocks.start(block))
                self.tiers.admit(block, data, "ssd")

    # ------------------------------------------------------------------ warm, prefetch

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
        """Infos of the files named by ``paths`` (see ``Warmer.targets``)."""
        return self.warmer.targets(paths, recursive, display)

    def warm_files(
        self,
        infos: Sequence[ObjectInfo],
        tier: str = "ssd",
        progress: Callable[[dict], None] | None = None,
        threads: int | None = None,
        cancel: threading.Event | None = None,
    ) -> dict:
        """Make every byte of ``infos`` resident in ``tier`` (see ``Warmer.files``)."""
        return self.warmer.files(infos, tier, progress, threads, cancel)

    def prefetch(self, keys: Iterable[str], deadline: float | None = None) -> None:
        """Fetch whole objects in the background (RAM, written through to SSD).

        ``deadline`` is a ``time.monotonic()`` instant: keys not started by then are skipped.
        """
        if not self._closed:
            self.hinted.submit(keys, deadline)

    def _prefetch_key(self, key: str) -> None:
        if self._closed:
            return
        info = self.namespace.info(normalize(key), revalidate=False)
        self.fetcher.fresh(info, lambda i: self.reader.get_blocks(self.blocks.ids(i), i, "ram", want=False))

    # ------------------------------------------------------------------ plans

    def set_plan(self, keys_in_order: Sequence[str] | KeyBatch, client: str = "default", bound: object = None,
                 note: str = "") -> int:
        """Set ``client``'s read plan (keys in read order; empty ends it) for eviction and prefetch.

        Other clients' plans stay. The plan is built (numpy arrays) before anything is locked and swapped in
        by reference. ``bound``: a token the plan lives and dies with (``end_bound``); unbound plans end
        when idle past the book's timeout. Returns the number of entries.
        """
        keys = as_batch(keys_in_order)  # one buffer and offsets: the list is not copied
        slashed = keys.rows_needing_normalisation(inner=False)
        if len(slashed):
            keys = keys.replaced(slashed, [keys.key(i).strip("/") for i in slashed.tolist()])
        plan = self.plans.build(keys, str(client), bound, note)
        self.plans.install(plan)
        self.prefetcher.wake()
        return len(plan)

    def end_plan(self, client: str = "default") -> bool:
        """End ``client``'s plan; False when it had none."""
        ended = self.plans.end(str(client))
        self.prefetcher.wake()
        return ended

    def end_bound(self, bound: object) -> list[str]:
        """End the plans tied to ``bound`` (a closed control connection); the clients whose plans ended."""
        ended = self.plans.end_bound(bound)
        self.prefetcher.wake()
        return ended

    def plan_keys(self, client: str = "default") -> list[str]:
        """The keys of ``client``'s live plan, in order (empty when it has none)."""
        plan = self.plans.get(str(client))
        if plan is None:
            return []
        key = self.plans.table.key
        return [key(i) for i in plan.ids.tolist()]

    def plan_stats(self) -> list[dict]:
        """Each live plan: client, files, position, lead (files, bytes ahead), hit rate since it started."""
        return plan_rows(self.plans, self.prefetcher.leads())

    # ------------------------------------------------------------------ stats and lifecycle

    def stats(self) -> dict:
        """Counters and occupancy per tier, backend requests, namespace counts; JSON-serializable (see
        cache_stats.py; statsrecords.py reads it)."""
        return cache_stats(self)

    def close(self) -> None:
        """Finish background work, flush the SSD index, release the cache dir. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.namespace.close()  # listings still running stop before the LMDB env closes
        self.readahead.close()
        self.prefetcher.close()
        self.hinted.close()
        self._fetch_pool.shutdown(wait=True)
        self.tiers.keep_ram()  # what the SSD tier dropped under pressure survives the restart
        self.ram.clear()
        self._release()

    def _release(self) -> None:
        try:
            if self.ssd is not None:
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
