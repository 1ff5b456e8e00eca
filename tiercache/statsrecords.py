"""Typed records of the ``stats`` reply, for its readers (cli_format.py, metrics.py, handlers.py, cli_mount.py,
demo.py): fields by attribute.

The daemon sends stats as JSON (``tiercache stats --json`` prints that reply as it is: its field names are a
contract). A reader turns it into records once (``StatsReply.from_reply(reply)``), so a renamed or missing
field fails in one place, not in every f-string. A field the reply lacks is None (numbers) or empty; fields a
record does not name are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

__all__ = ["BackendStats", "CacheStats", "MountInfo", "PlanRow", "PrefetchStats", "StatsReply", "TierRow",
           "WriteStats"]

R = TypeVar("R")


def _known(cls: type[R], raw: Any, **extra: Any) -> R:
    """``cls`` from the fields of ``raw`` (a dict) it names; others ignored, missing ones defaulted."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    values = {k: v for k, v in raw.items() if k in names} if isinstance(raw, dict) else {}
    return cls(**{**values, **extra})


@dataclass(frozen=True)
class PlanRow:
    """One live plan: its client, size, reader position, prefetch lead and hit rate since it started."""

    client: str = "?"
    files: int = 0
    position: int = 0
    lead_files: int = 0
    lead_bytes: int = 0
    reads: int = 0
    hits: int = 0
    hit_rate: float = 0.0
    started: float = 0.0
    idle_s: float = 0.0
    bound: bool = False
    rate: float = 0.0
    note: str = ""

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PlanRow:
        """A record from one entry of ``stats["cache"]["plans"]`` (unknown fields ignored, missing ones default)."""
        return _known(cls, raw)

    @classmethod
    def rows(cls, cache_stats: dict[str, Any]) -> list[PlanRow]:
        """The plans of a cache stats dict (``stats["cache"]``), by client."""
        plans = cache_stats.get("plans")
        if not isinstance(plans, list):
            return []
        return [cls.from_dict(p) for p in plans if isinstance(p, dict)]


@dataclass(frozen=True)
class TierRow:
    """One cache tier (``stats["cache"]["ram"]`` / ``["ssd"]``): bytes held, budget, block lookups."""

    name: str
    used: int | None = None
    capacity: int | None = None
    hits: int | None = None
    misses: int | None = None
    hit_rate: float | None = None
    evicted_bytes: int | None = None
    bytes_served: int | None = None

    @classmethod
    def from_dict(cls, name: str, raw: dict[str, Any]) -> TierRow:
        """A tier's record (``used_bytes``/``capacity_bytes`` accepted for ``used``/``capacity``); its hit
        rate from hits and misses when the tier gives none."""
        row = _known(cls, raw, name=name)
        used = row.used if row.used is not None else raw.get("used_bytes")
        capacity = row.capacity if row.capacity is not None else raw.get("capacity_bytes")
        rate = row.hit_rate
        if rate is None and isinstance(row.hits, int) and isinstance(row.misses, int) and row.hits + row.misses:
            rate = row.hits / (row.hits + row.misses)
        return cls(name, used, capacity, row.hits, row.misses, rate, row.evicted_bytes, row.bytes_served)

    @property
    def present(self) -> bool:
        """Whether the tier exists (an SSD tier of size 0 does not)."""
        return bool(self.capacity)


@dataclass(frozen=True)
class BackendStats:
    """Requests to the object store (``stats["cache"]["backend"]``)."""

    gets: int | None = None
    bytes: int | None = None
    errors: int | None = None
    heads: int | None = None
    lists: int | None = None
    gets_per_s: float | None = None
    bytes_per_s: float | None = None


@dataclass(frozen=True)
class PrefetchStats:
    """Read-ahead and plan prefetch (``stats["cache"]["prefetcher"]``)."""

    lead_files: int | None = None
    lead_bytes: int | None = None
    prefetched_bytes: int | None = None
    prefetched_unread_bytes: int | None = None


@dataclass(frozen=True)
class CacheStats:
    """The read engine's part (``stats["cache"]``): tiers, overall hit rate, plans, backend, prefetch."""

    tiers: list[TierRow] = field(default_factory=list)
    read_hit_rate: float | None = None
    reads: int | None = None
    plans: list[PlanRow] = field(default_factory=list)
    plan_keys: int | None = None
    backend: BackendStats | None = None
    prefetcher: PrefetchStats | None = None

    def tier(self, name: str) -> TierRow | None:
        """The tier called ``name`` ("ram", "ssd"), None if the reply has none."""
        return next((tier for tier in self.tiers if tier.name == name), None)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CacheStats:
        """The records of ``stats["cache"]`` (``tiers``: a dict of tiers where the reply has one, else ram, ssd)."""
        tiers = raw.get("tiers") if isinstance(raw.get("tiers"), dict) else {
            name: raw[name] for name in ("ram", "ssd") if isinstance(raw.get(name), dict)}
        backend, pre = raw.get("backend"), raw.get("prefetcher")
        rate = raw.get("read_hit_rate", raw.get("hit_rate"))
        return cls(
            tiers=[TierRow.from_dict(name, tier) for name, tier in tiers.items() if isinstance(tier, dict)],
            read_hit_rate=rate, reads=raw.get("reads"), plans=PlanRow.rows(raw), plan_keys=raw.get("plan_keys"),
            backend=_known(BackendStats, backend) if isinstance(backend, dict) else None,
            prefetcher=_known(PrefetchStats, pre) if isinstance(pre, dict) else None,
        )


DRAIN_FIELDS = ("dirty_bytes", "pending_files", "pending_ops", "open_files", "in_flight",
                "oldest_pending_age_s", "uploaded_files", "uploaded_bytes", "failed_uploads", "last_error")


@dataclass(frozen=True)
class WriteStats:
    """The write-back front (``stats["writes"]``, ``WriteTier.stats()``): backlog, uploads, failures, space."""

    mode: str = ""
    dirty_bytes: int | None = None
    pending_files: int | None = None
    pending_ops: int | None = None
    open_files: int | None = None
    in_flight: int | None = None
    oldest_pending_age_s: float | None = None
    uploaded_files: int | None = None
    uploaded_bytes: int | None = None
    failed_uploads: int | None = None
    upload_errors: int | None = None
    local_errors: int | None = None
    last_error: str = ""
    corrupt_files: int | None = None
    lost_files: list[str] = field(default_factory=list)
    backpressure_waits: int | None = None
    write_dir_used: int | None = None
    limit: int | None = None
    high_watermark_bytes: int | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> WriteStats:
        """The record of a write tier's stats dict."""
        return _known(cls, raw or {})

    def drain_status(self) -> dict[str, Any]:
        """The ``drain_status`` reply (its fields are what ``flush``/``unmount`` read)."""
        return {name: getattr(self, name) for name in DRAIN_FIELDS}


@dataclass(frozen=True)
class MountInfo:
    """The mount itself (``stats["mount"]``)."""

    mountpoint: str = ""
    source: str = "?"
    mode: str = "?"
    pid: int | str = "?"
    cache_dir: str = ""
    write_dir: str = ""
    started: float | None = None


@dataclass(frozen=True)
class StatsReply:
    """A whole ``stats`` reply as records: the mount, the cache, the write tier (None without one), jobs."""

    mount: MountInfo
    cache: CacheStats
    writes: WriteStats | None
    jobs: dict[str, int]

    @classmethod
    def from_reply(cls, reply: dict[str, Any]) -> StatsReply:
        """The records of one reply (what the control socket's ``stats`` op returns)."""
        writes = reply.get("writes")
        jobs = reply.get("jobs")
        return cls(
            mount=_known(MountInfo, reply.get("mount")),
            cache=CacheStats.from_dict(reply.get("cache") or {}),
            writes=WriteStats.from_dict(writes) if writes else None,
            jobs={k: v for k, v in jobs.items() if isinstance(v, int)} if isinstance(jobs, dict) else {},
        )
