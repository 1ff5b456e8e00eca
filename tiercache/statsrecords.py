"""Typed records of the ``stats`` reply, for its readers (cli.py, metrics.py): fields by attribute.

The daemon sends stats as JSON; a reader turns the parts it shows into these records once
(``PlanRow.rows(reply["cache"])``), so a renamed or missing field fails in one place, not in every f-string.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

__all__ = ["PlanRow"]


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
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

    @classmethod
    def rows(cls, cache_stats: dict[str, Any]) -> list[PlanRow]:
        """The plans of a cache stats dict (``stats["cache"]``), by client."""
        plans = cache_stats.get("plans")
        if not isinstance(plans, list):
            return []
        return [cls.from_dict(p) for p in plans if isinstance(p, dict)]
