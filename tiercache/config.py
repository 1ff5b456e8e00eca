"""CacheConfig and size parsing: every knob of the engine in one validated place."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([KMGTP]?)(I?B)?\s*$", re.IGNORECASE)

WRITE_MODES = ("writeback", "writethrough", "readonly")


def parse_size(value: str | int | float | None, what: str = "size") -> int:
    """Parse "512M", "1G", "1.5T", "4MiB", "1024" (bytes) into bytes; powers of 1024.

    Raises ConfigError with the offending value for anything else.
    """
    if value is None:
        raise ConfigError(f"{what}: a size is required (e.g. 512M, 16G)")
    if isinstance(value, bool):
        raise ConfigError(f"{what}: {value!r} is not a size (e.g. 512M, 16G)")
    if isinstance(value, int | float):
        if value < 0 or not math.isfinite(value):
            raise ConfigError(f"{what}: {value!r} is not a size (e.g. 512M, 16G)")
        return int(value)
    match = _SIZE_RE.match(str(value))
    if not match:
        raise ConfigError(f"{what}: {value!r} is not a size (use a number with K, M, G, T or P, e.g. 512M, 1.5T)")
    number, unit, _suffix = match.groups()
    return int(float(number) * _UNITS[unit.upper()])


def parse_ttl(value: str | float | None) -> float:
    """Parse a metadata TTL: seconds, "0" (always revalidate) or "inf" (never)."""
    if value is None:
        return 60.0
    if isinstance(value, str) and value.strip().lower() in ("inf", "infinity", "forever"):
        return math.inf
    try:
        ttl = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"metadata TTL: {value!r} is not a number of seconds, 0 or inf") from None
    if ttl < 0 or math.isnan(ttl):
        raise ConfigError(f"metadata TTL: {value!r} must be 0, a positive number of seconds, or inf")
    return ttl


def parse_idle_timeout(value: str | float | None) -> float:
    """Parse the plan idle timeout: seconds (> 0), or "inf" (a plan ends only when its client says so)."""
    if value is None:
        return 600.0
    if isinstance(value, str) and value.strip().lower() in ("inf", "infinity", "never"):
        return math.inf
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"plan idle timeout: {value!r} is not a number of seconds or inf") from None
    if not seconds > 0:
        raise ConfigError(f"plan idle timeout: {value!r} must be a positive number of seconds, or inf")
    return seconds


def default_cache_root() -> Path:
    """Where cache dirs go when the user names none: $TIERCACHE_HOME, else $XDG_CACHE_HOME/tiercache, else
    ~/.cache/tiercache."""
    env = os.environ.get("TIERCACHE_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg and os.path.isabs(os.path.expanduser(xdg)) else Path.home() / ".cache"
    return base / "tiercache"


@dataclass
class CacheConfig:
    """Validated settings of one TieredCache. Sizes are bytes; use ``CacheConfig.build`` from user strings."""

    source: str
    cache_dir: Path
    ram_bytes: int = 1 << 30
    ssd_bytes: int = 0
    block_size: int = 4 << 20
    region_size: int = 64 << 20
    endpoint_url: str | None = None
    threads: int = 16
    metadata_ttl: float = 60.0
    write_dir: Path | None = None
    write_limit: int = 0
    mode: str = "writeback"
    policy: str = "default"
    high_watermark: float = 0.95
    low_watermark: float = 0.85
    listing: Path | None = None  # a listing file (tiercache.listing): the start-up listing without a LIST
    plan_idle_timeout: float = 600.0  # an unbound plan whose reader reads nothing for this long ends (s)
    extra: dict = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        source: str,
        *,
        ram: str | int = "1G",
        ssd: str | os.PathLike | None = None,
        ssd_size: str | int | None = None,
        block_size: str | int = "4M",
        endpoint_url: str | None = None,
        threads: int = 16,
        metadata_ttl: str | float | None = 60.0,
        write_dir: str | os.PathLike | None = None,
        write_limit: str | int | None = None,
        mode: str = "writeback",
        policy: str = "default",
        listing: str | os.PathLike | None = None,
        plan_idle_timeout: str | float | None = 600.0,
    ) -> CacheConfig:
        """Build a config from user-facing values (size strings, paths), validating each with a clear message."""
        from .store import parse_source

        parse_source(source)  # validates the URL early
        ram_bytes = parse_size(ram, "ram")
        block = parse_size(block_size, "block size")
        if block < 4096 or block > (256 << 20):
            raise ConfigError(f"block size: {block_size!r} must be between 4K and 256M")
        # no ssd: a cache dir of its own under default_cache_root(); either way the SSD tier defaults to half
        # the free space where the cache dir lives (ssd_size=0: no SSD tier)
        cache_dir = default_cache_root() / _slug(source) if ssd is None else Path(ssd).expanduser()
        ssd_bytes = parse_size(ssd_size, "ssd size") if ssd_size is not None else _default_ssd_size(cache_dir)
        if threads < 1 or threads > 512:
            raise ConfigError(f"threads: {threads} must be between 1 and 512")
        if mode not in WRITE_MODES:
            raise ConfigError(f"mode: {mode!r} is not one of {', '.join(WRITE_MODES)}")
        from .tiers.policy import policy_names

        if policy not in policy_names():
            raise ConfigError(f"policy: {policy!r} is not one of {', '.join(policy_names())}")
        return cls(
            source=source,
            cache_dir=cache_dir,
            ram_bytes=ram_bytes,
            ssd_bytes=ssd_bytes,
            block_size=block,
            endpoint_url=endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None,
            threads=threads,
            metadata_ttl=parse_ttl(metadata_ttl),
            write_dir=Path(write_dir).expanduser() if write_dir else None,
            write_limit=parse_size(write_limit, "write limit") if write_limit is not None else 0,
            mode=mode,
            policy=policy,
            listing=_listing_file(listing, source),
            plan_idle_timeout=parse_idle_timeout(plan_idle_timeout),
        )


def _listing_file(path: str | os.PathLike | None, source: str) -> Path | None:
    """A listing file made for ``source`` (its header checked now: one clear error instead of a LIST)."""
    if path is None:
        return None
    from .listing import read_header

    header = read_header(path)
    if str(header.get("source", "")).rstrip("/") != source.rstrip("/"):
        raise ConfigError(f"listing {path} is of {header.get('source')}, not {source}")
    return Path(path).expanduser()


def _slug(source: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", source).strip("_")[:120] or "default"


def _default_ssd_size(cache_dir: Path) -> int:
    """Half of the free space where the cache dir lives (or would live)."""
    probe = cache_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    stat = os.statvfs(probe)
    return stat.f_bavail * stat.f_frsize // 2
