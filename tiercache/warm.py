"""Warm jobs: make every byte of a set of files resident in a tier, with progress and cancellation."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

from .blocks import BlockMap
from .counters import Counters
from .errors import ConfigError, NotFound
from .fetcher import Fetcher
from .namespace import Namespace
from .readpath import BlockReader
from .store import ObjectInfo
from .tierstack import TIERS, TierStack

log = logging.getLogger(__name__)

__all__ = ["Warmer"]


class Warmer:
    """Warm jobs over one cache's parts (namespace, blocks, tiers, the read path)."""

    IN_FLIGHT_PER_THREAD = 4  # files submitted ahead of the workers, per worker thread

    def __init__(self, namespace: Namespace, blocks: BlockMap, tiers: TierStack, reader: BlockReader,
                 fetcher: Fetcher, counters: Counters, threads: int):
        self.namespace, self.blocks, self.tiers = namespace, blocks, tiers
        self.reader, self.fetcher, self.counters, self.threads = reader, fetcher, counters, threads

    def resident(self, info: ObjectInfo, offset: int, size: int | None, tier: str) -> bool:
        """Whether bytes [offset, offset+size) of ``info`` are all in ``tier``."""
        return all(self.tiers.contains(b, tier) for b in self.blocks.ids(info, offset, size))

    def missing_bytes(self, info: ObjectInfo, tier: str) -> int:
        """Bytes of ``info`` not resident in ``tier``."""
        return sum(self.blocks.length(info, b) for b in self.blocks.ids(info) if not self.tiers.contains(b, tier))

    def load(self, info: ObjectInfo, tier: str) -> None:
        """Make ``info`` resident in ``tier`` (refetching once if it changed)."""
        self.fetcher.fresh(info, lambda i: self.reader.get_blocks(self.blocks.ids(i), i, tier, want=False))

    def targets(self, paths: Iterable[str], recursive: bool = True,
                display: Callable[[str], str] = lambda p: p or "/") -> list[ObjectInfo]:
        """Infos of the files named by ``paths`` (directories expanded when ``recursive``), deduplicated.

        NotFound for a missing path; ConfigError for a directory without ``recursive``; errors name a path
        as ``display(path)``.
        """
        paths = list(paths)
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
            if len(paths) == 1:
                return list(found)  # nothing to deduplicate (no dict of a million names)
            for info in found:
                infos.setdefault(info.key, info)
        return list(infos.values())

    def files(
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
        if self.tiers.ssd is not None:
            self.tiers.ssd.validated()  # a warm may need eviction, which waits for the SSD index's validation
        before = self.counters.get("backend_bytes")
        state = {"files": len(infos), "bytes": sum(i.size for i in infos), "done_files": 0, "done_bytes": 0,
                 "skipped_files": 0, "skipped_bytes": 0, "fetched_bytes": 0}
        errors: list[str] = []
        lock = threading.Lock()
        workers = max(1, threads or self.threads)
        in_flight = threading.BoundedSemaphore(self.IN_FLIGHT_PER_THREAD * workers)

        def report(info: ObjectInfo, skipped: bool) -> None:
            with lock:
                state["done_files"] += 1
                state["done_bytes"] += info.size
                if skipped:
                    state["skipped_files"] += 1
                    state["skipped_bytes"] += info.size
                state["fetched_bytes"] = self.counters.get("backend_bytes") - before
                snapshot = dict(state)
            if progress is not None:
                progress(snapshot)

        def one(info: ObjectInfo) -> None:
            try:
                if cancel is not None and cancel.is_set():
                    return
                self.load(info, tier)
            except Exception as exc:  # noqa: BLE001 - reported in the result
                with lock:
                    errors.append(f"{info.key}: {exc}")
            finally:
                in_flight.release()
            report(info, False)

        if progress is not None:
            progress(dict(state))
        # Files are submitted as workers free up (a bounded number in flight), never all at once: memory
        # stays flat however many files there are.
        with ThreadPoolExecutor(workers, thread_name_prefix="tiercache-warm") as pool:
            for info in infos:
                if cancel is not None and cancel.is_set():
                    break
                if self.resident(info, 0, None, tier):
                    report(info, True)
                    continue
                in_flight.acquire()
                pool.submit(one, info)
        missing = sum(self.missing_bytes(info, tier) for info in infos)
        cancelled = cancel is not None and cancel.is_set()
        if errors:
            log.warning("warm: %d file(s) failed, e.g. %s", len(errors), errors[0])
        state["fetched_bytes"] = self.counters.get("backend_bytes") - before
        return {**state, "complete": not errors and not cancelled and missing == 0, "missing_bytes": missing,
                "errors": len(errors), "error": errors[0] if errors else None, "cancelled": cancelled}
