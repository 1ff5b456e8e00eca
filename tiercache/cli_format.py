"""Human formatting of the ``stats`` reply and its numbers (bytes, rates, counts) for the ``tiercache`` command."""

from __future__ import annotations

import math
import time
from typing import Any

from .statsrecords import PlanRow, StatsReply, WriteStats


def format_stats(mountpoint: str, stats: dict) -> str:
    """A human table of a stats reply."""
    reply = StatsReply.from_reply(stats)
    cache, writes, info = reply.cache, reply.writes, reply.mount
    lines = [f"{mountpoint}  ({info.source}, mode {info.mode}, pid {info.pid})",
             f"  {'tier':<6}{'used':>12}{'capacity':>12}{'hit rate':>10}{'hits':>10}{'misses':>10}"]
    for tier in cache.tiers:
        if tier.name == "ssd" and not tier.present:
            lines.append(f"  {tier.name:<6}{'none':>12}  (no SSD tier: --ssd-size 0; the RAM tier holds everything)")
            continue
        lines.append(f"  {tier.name:<6}{human(tier.used):>12}{human(tier.capacity):>12}"
                     f"{pct(tier.hit_rate):>10}{num(tier.hits):>10}{num(tier.misses):>10}")
    if cache.read_hit_rate is not None:
        lines.append(f"  hit rate {pct(cache.read_hit_rate)} overall")
    lines.extend(plan_lines(cache.plans))
    backend = cache.backend
    if backend is not None:
        rates = ""
        if backend.gets_per_s is not None:
            rates = f" now {backend.gets_per_s:.1f} GET/s, {human(backend.bytes_per_s)}/s;"
        lines.append(f"  backend:{rates} {num(backend.gets)} GETs, {human(backend.bytes)}, "
                     f"{num(backend.heads)} HEADs, {num(backend.lists)} LISTs, {num(backend.errors)} errors")
    pre = cache.prefetcher
    if pre is not None:
        lines.append(f"  prefetch: lead {num(pre.lead_files)} file(s) / {human(pre.lead_bytes)} "
                     f"ahead of the readers; {human(pre.prefetched_bytes)} prefetched, "
                     f"{human(pre.prefetched_unread_bytes)} never read")
    if writes is not None:
        lines.extend(write_lines(writes))
    jobs = {kind: n for kind, n in reply.jobs.items() if n}
    if jobs:
        lines.append("  running: " + ", ".join(f"{n} {kind} request(s)" for kind, n in jobs.items()))
    return "\n".join(lines)


def write_lines(writes: WriteStats) -> list[str]:
    """The write-back lines of ``stats``: backlog, uploads, the last error, lost files."""
    age = writes.oldest_pending_age_s or 0
    lines = [f"  writes: {writes.mode}, dirty {human(writes.dirty_bytes)} in {num(writes.pending_files)} file(s), "
             f"oldest pending {age:.0f} s, uploaded {num(writes.uploaded_files)} file(s) / "
             f"{human(writes.uploaded_bytes)}, failing {num(writes.failed_uploads)}"]
    if writes.last_error:
        lines.append(f"  last upload error: {writes.last_error}")
    if writes.lost_files:
        lost = writes.lost_files
        lines.append(f"  LOST (not uploaded, staging damaged; rm or rewrite to clear): {len(lost)} file(s): "
                     + ", ".join(lost[:10]))
    return lines


def plan_lines(plans: list[PlanRow]) -> list[str]:
    """The per-client plan table of ``stats``."""
    if not plans:
        return ["  plans: none"]
    lines = [f"  {'plan (client)':<24}{'position':>20}{'lead':>16}{'hit rate':>10}{'age':>8}"]
    now = time.time()
    for plan in plans:
        age = max(0.0, now - float(plan.started or now))
        where = f"{num(plan.position)} of {num(plan.files)}"
        lead = f"{num(plan.lead_files)} / {human(plan.lead_bytes)}"
        note = f"  {plan.note}" if plan.note else ""
        lines.append(f"  {plan.client[:23]:<24}{where:>20}{lead:>16}{pct(plan.hit_rate):>10}{age:>7.0f}s{note}")
    return lines


def human(value: Any) -> str:
    """Bytes as 512B, 1.5K, 3.2G; '-' for a missing value."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    value = float(value)
    for unit in ("B", "K", "M", "G", "T", "P"):
        if abs(value) < 1024 or unit == "P":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return "-"


def pct(value: Any) -> str:
    """A fraction as a percentage; '-' if missing."""
    return f"{100 * value:.1f}%" if isinstance(value, int | float) and math.isfinite(value) else "-"


def num(value: Any) -> str:
    """An int with thousands separators; '-' if missing."""
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else "-"
