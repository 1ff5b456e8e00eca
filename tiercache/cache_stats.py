"""The read engine's stats: one JSON-serializable dict of a TieredCache's counters and occupancy per tier,
backend requests, plans, prefetch and namespace counts (``TieredCache.stats``; the ``cache`` part of the
``stats`` reply, whose field names are a contract: statsrecords.py reads them, ``stats --json`` prints them).
Built from the cache's public parts."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from .statsrecords import PlanRow

if TYPE_CHECKING:
    from .cache import TieredCache
    from .plans import PlanBook

NO_SSD = {"used": 0, "capacity": 0, "hits": 0, "misses": 0, "hit_rate": 0.0, "bytes_served": 0}


def cache_stats(cache: TieredCache) -> dict:
    """The stats dict of ``cache``."""
    c = cache.counters.get
    ram = cache.ram.stats()
    ssd = cache.ssd.stats() if cache.ssd is not None else dict(NO_SSD)
    served = ram["bytes_served"] + ssd["bytes_served"]
    lookups, misses = cache.tiers.reader_lookups()
    gets_per_s, bytes_per_s = cache.fetcher.rate.rates()
    return {
        "source": cache.config.source,
        "cache_dir": str(cache.config.cache_dir),
        "block_size": cache.config.block_size,
        "ram": ram,
        "ssd": ssd,
        "memory": cache.memory.stats(),
        "backend": {
            "gets": c("backend_gets"), "bytes": c("backend_bytes"), "errors": c("backend_errors"),
            "heads": cache.namespace.heads, "lists": cache.namespace.lists,
            "gets_per_s": gets_per_s, "bytes_per_s": bytes_per_s,
        },
        "read_hit_rate": 1 - misses / lookups if lookups else 0.0,
        "plans": cache.plan_stats(),
        "reads": c("reads"),
        "bytes_read": c("bytes_read"),
        "cache_bytes_served": served,
        "hit_rate": served / (served + c("backend_bytes")) if served + c("backend_bytes") else 0.0,
        "single_flight_waits": cache.reader.flights.waits,
        "stale_retries": c("stale_retries"),
        "demotions": c("demotions"),
        "ssd_admission_dropped": c("ssd_admission_dropped"),
        "evicted_bytes": c("evicted_bytes"),
        "prefetch": cache.hinted.stats(),
        "prefetcher": prefetch_stats(cache),
        "pins": cache.pins(),
        "plan_keys": sum(len(p) for p in cache.plans.plans()),
        "plan_bytes": cache.plans.nbytes,
        "namespace": cache.namespace.stats(),
    }


def prefetch_stats(cache: TieredCache) -> dict:
    """Plan prefetch and read-ahead together (prefetched = both) and each one's own counters."""
    plan, ahead = cache.prefetcher.stats(), cache.readahead.stats()
    return {**plan, **ahead,
            "prefetched_bytes": plan["prefetched_bytes"] + ahead["readahead_bytes"],
            "prefetched_read_bytes": plan["prefetched_read_bytes"] + ahead["readahead_read_bytes"],
            "prefetched_unread_bytes": plan["prefetched_unread_bytes"] + ahead["readahead_unread_bytes"]}


def plan_rows(plans: PlanBook, leads: dict[str, tuple[int, int]]) -> list[dict]:
    """Each live plan of ``plans`` with the prefetcher's lead for it (files, bytes ahead), as one typed record
    on both sides of the JSON (statsrecords.PlanRow)."""
    out = []
    for plan in plans.stats():
        files, nbytes = leads.get(plan.client, (0, 0))
        out.append(dataclasses.asdict(PlanRow(**dataclasses.asdict(plan), lead_files=files, lead_bytes=nbytes)))
    return out
