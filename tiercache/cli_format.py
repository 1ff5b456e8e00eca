"""Human formatting of the ``stats`` reply and its numbers (bytes, rates, counts) for the ``tiercache`` command."""

from __future__ import annotations

import math
import time
from typing import Any


def format_stats(mountpoint: str, stats: dict) -> str:
    """A human table of a stats reply."""
    cache, writes = stats.get("cache") or {}, stats.get("writes") or {}
    info = stats.get("mount") or {}
    head = f"{info.get('source', '?')}, mode {info.get('mode', '?')}, pid {info.get('pid', '?')}"
    lines = [f"{mountpoint}  ({head})",
             f"  {'tier':<6}{'used':>12}{'capacity':>12}{'hit rate':>10}{'hits':>10}{'misses':>10}"]
    tiers = cache.get("tiers") if isinstance(cache.get("tiers"), dict) else {
        name: cache[name] for name in ("ram", "ssd") if isinstance(cache.get(name), dict)
    }
    for name, tier in tiers.items():
        if name == "ssd" and not tier.get("capacity", tier.get("capacity_bytes")):
            lines.append(f"  {name:<6}{'none':>12}  (no SSD tier: --ssd-size 0; the RAM tier holds everything)")
            continue
        hits, misses = tier.get("hits"), tier.get("misses")
        rate = tier.get("hit_rate")
        if rate is None and isinstance(hits, int) and isinstance(misses, int) and hits + misses:
            rate = hits / (hits + misses)
        lines.append(f"  {name:<6}{human(tier.get('used', tier.get('used_bytes'))):>12}"
                     f"{human(tier.get('capacity', tier.get('capacity_bytes'))):>12}"
                     f"{pct(rate):>10}{num(hits):>10}{num(misses):>10}")
    overall = cache.get("read_hit_rate", cache.get("hit_rate"))
    if overall is not None:
        lines.append(f"  hit rate {pct(overall)} overall")
    lines.extend(plan_lines(cache))
    backend = cache.get("backend")
    if isinstance(backend, dict):
        rates = ""
        if "gets_per_s" in backend:
            rates = f" now {backend['gets_per_s']:.1f} GET/s, {human(backend.get('bytes_per_s'))}/s;"
        lines.append(f"  backend:{rates} {num(backend.get('gets'))} GETs, {human(backend.get('bytes'))}, "
                     f"{num(backend.get('heads'))} HEADs, {num(backend.get('lists'))} LISTs, "
                     f"{num(backend.get('errors'))} errors")
    pre = cache.get("prefetcher")
    if isinstance(pre, dict):
        lines.append(f"  prefetch: lead {num(pre.get('lead_files'))} file(s) / {human(pre.get('lead_bytes'))} "
                     f"ahead of the readers; {human(pre.get('prefetched_bytes'))} prefetched, "
                     f"{human(pre.get('prefetched_unread_bytes'))} never read")
    if writes:
        age = writes.get("oldest_pending_age_s") or 0
        lines.append(f"  writes: {writes.get('mode', '')}, dirty {human(writes.get('dirty_bytes'))} in "
                     f"{num(writes.get('pending_files'))} file(s), oldest pending {age:.0f} s, uploaded "
                     f"{num(writes.get('uploaded_files'))} file(s) / {human(writes.get('uploaded_bytes'))},"
                     " "
                     f"failing {num(writes.get('failed_uploads'))}")
        if writes.get("last_error"):
            lines.append(f"  last upload error: {writes['last_error']}")
        if writes.get("lost_files"):
            lost = writes["lost_files"]
            lines.append(f"  LOST (not uploaded, staging damaged; rm or rewrite to clear): {len(lost)} file(s): "
                         + ", ".join(lost[:10]))
    jobs = {k: v for k, v in (stats.get("jobs") or {}).items() if v}
    if jobs:
        lines.append("  running: " + ", ".join(f"{n} {kind} request(s)" for kind, n in jobs.items()))
    return "\n".join(lines)


def plan_lines(cache: dict) -> list[str]:
    """The per-client plan table of ``stats``."""
    from .statsrecords import PlanRow

    plans = PlanRow.rows(cache)
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
