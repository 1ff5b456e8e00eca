"""Prometheus metrics of a mount (``tiercache mount --metrics-port PORT``): the numbers ``tiercache stats`` shows.

A custom collector reads the daemon's stats reply (the same dict the control socket's ``stats`` op returns)
at every scrape, so the two never disagree and nothing is updated on the read path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .errors import ConfigError
from .statsrecords import BackendStats, PlanRow, PrefetchStats, StatsReply, WriteStats

StatsFn = Callable[[], dict]


def parse_listen(value: str) -> tuple[str, int]:
    """``PORT`` or ``ADDR:PORT`` → (addr, port); a bare port listens on 127.0.0.1. ConfigError if malformed."""
    addr, _, port = str(value).rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 1 <= number <= 65535:
        raise ConfigError(f"--metrics-port: {value!r} is not a port (1-65535) or ADDR:PORT")
    return (addr.strip("[]") or "127.0.0.1"), number


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


class StatsCollector:
    """Turns one stats reply into Prometheus metric families (labels: mountpoint, tier)."""

    def __init__(self, stats: StatsFn, mountpoint: str):
        self.stats = stats
        self.mountpoint = mountpoint

    def _one(self, kind: type, name: str, doc: str, value: Any) -> Metric | None:
        number = _num(value)
        if number is None:
            return None
        family = kind(name, doc, labels=["mountpoint"])
        family.add_metric([self.mountpoint], number)
        return family

    def _gauge(self, name: str, doc: str, value: Any) -> Metric | None:
        return self._one(GaugeMetricFamily, name, doc, value)

    def _counter(self, name: str, doc: str, value: Any) -> Metric | None:
        return self._one(CounterMetricFamily, name, doc, value)

    def _plans(self, plans: list[PlanRow]) -> Iterator[Metric]:
        """Per plan (labels: mountpoint, client): files, position, lead, reads and hit ratio since it started."""
        fields = [
            ("tiercache_plan_files", "Files in the client's read plan", "files", GaugeMetricFamily),
            ("tiercache_plan_position", "Files of the plan the client has read", "position", GaugeMetricFamily),
            ("tiercache_plan_lead_files", "Files prefetched ahead of the client", "lead_files", GaugeMetricFamily),
            ("tiercache_plan_lead_bytes", "Bytes prefetched ahead of the client", "lead_bytes", GaugeMetricFamily),
            ("tiercache_plan_reads", "Planned files read since the plan started", "reads", CounterMetricFamily),
            ("tiercache_plan_hit_ratio", "Planned reads served without the store since the plan started",
             "hit_rate", GaugeMetricFamily),
        ]
        for name, doc, attr, kind in fields:
            family = kind(name, doc, labels=["mountpoint", "client"])
            for plan in plans:
                number = _num(getattr(plan, attr))
                if number is not None:
                    family.add_metric([self.mountpoint, plan.client], number)
            yield family

    def collect(self) -> Iterator[Metric]:
        """One scrape: the current stats as metrics."""
        reply = StatsReply.from_reply(self.stats())
        cache = reply.cache
        writes = reply.writes if reply.writes is not None else WriteStats()
        per_tier = [
            ("tiercache_tier_used_bytes", "Bytes the tier holds", "used", GaugeMetricFamily),
            ("tiercache_tier_capacity_bytes", "The tier's byte budget", "capacity", GaugeMetricFamily),
            ("tiercache_tier_hits", "Block lookups the tier served", "hits", CounterMetricFamily),
            ("tiercache_tier_misses", "Block lookups the tier missed", "misses", CounterMetricFamily),
            ("tiercache_tier_evicted_bytes", "Bytes evicted from the tier", "evicted_bytes", CounterMetricFamily),
        ]
        tiers = [tier for tier in cache.tiers if tier.name in ("ram", "ssd")]
        for name, doc, attr, kind in per_tier:
            family = kind(name, doc, labels=["mountpoint", "tier"])
            for tier in tiers:
                number = _num(getattr(tier, attr))
                if number is not None:
                    family.add_metric([self.mountpoint, tier.name], number)
            yield family
        yield from self._plans(cache.plans)
        backend = cache.backend if cache.backend is not None else BackendStats()
        pre = cache.prefetcher if cache.prefetcher is not None else PrefetchStats()
        single = [
            self._gauge("tiercache_hit_ratio", "Reader block lookups served without the store, overall",
                        cache.read_hit_rate),
            self._gauge("tiercache_plans", "Live read plans (one per client)", len(cache.plans)),
            self._counter("tiercache_backend_gets", "GETs sent to the object store", backend.gets),
            self._counter("tiercache_backend_bytes", "Bytes fetched from the object store", backend.bytes),
            self._counter("tiercache_backend_errors", "Failed object store requests", backend.errors),
            self._gauge("tiercache_backend_gets_per_second", "Recent GETs per second", backend.gets_per_s),
            self._gauge("tiercache_backend_bytes_per_second", "Recent bytes fetched per second", backend.bytes_per_s),
            self._gauge("tiercache_prefetch_lead_files", "Files prefetched ahead of the reader", pre.lead_files),
            self._gauge("tiercache_prefetch_lead_bytes", "Bytes prefetched ahead of the reader", pre.lead_bytes),
            self._counter("tiercache_prefetched_bytes", "Bytes fetched by read-ahead and plan prefetch",
                          pre.prefetched_bytes),
            self._gauge("tiercache_prefetched_unread_bytes", "Prefetched bytes not read (yet)",
                        pre.prefetched_unread_bytes),
            self._gauge("tiercache_dirty_bytes", "Written bytes not uploaded yet", writes.dirty_bytes),
            self._gauge("tiercache_pending_files", "Files waiting for upload", writes.pending_files),
            self._gauge("tiercache_oldest_pending_age_seconds", "Age of the oldest change not uploaded",
                        writes.oldest_pending_age_s),
            self._counter("tiercache_uploaded_bytes", "Bytes uploaded", writes.uploaded_bytes),
            self._gauge("tiercache_failing_uploads", "Pending changes whose upload failed", writes.failed_uploads),
        ]
        yield from (family for family in single if family is not None)


def serve(stats: StatsFn, mountpoint: str, listen: str) -> Callable[[], None]:
    """Serve the metrics on ``listen`` ([ADDR:]PORT) in a background thread; returns a stop function.

    ConfigError (one line) when the address is taken or cannot be bound.
    """
    addr, port = parse_listen(listen)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats, mountpoint))
    try:
        server, thread = start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        raise ConfigError(f"--metrics-port {listen}: cannot listen on {addr}:{port}: {exc.strerror or exc}") from None

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop
