"""The daemon's memory: ``--memory-target`` sizes the RAM tier (and the buffers it shares one budget with:
fetches and SSD reads in flight, the SSD write queue; tiers/budget.py) so that the whole process stays within
a total, and the cgroup memory limit (v2 ``memory.max``, v1 ``memory.limit_in_bytes``) caps it by default, so
a mount in a container is not OOM-killed.

    RAM tier = memory target - overhead,  overhead = BASE_OVERHEAD + PER_THREAD x threads

BASE_OVERHEAD covers the interpreter, boto3, LMDB and FUSE (an idle daemon measured about 70 MB RSS here);
PER_THREAD a store connection's buffers and stack. Without ``--memory-target`` the target is CGROUP_SHARE of the
cgroup's limit (the training job usually shares the container): the RAM tier asked for (``--ram``, default 1G)
is lowered to fit, with a warning, never raised.
"""

from __future__ import annotations

from pathlib import Path

from .config import parse_size
from .errors import ConfigError

BASE_OVERHEAD = 128 << 20
PER_THREAD = 2 << 20
MIN_RAM = 16 << 20
CGROUP_SHARE = 0.5
_V1_UNLIMITED = 1 << 60  # v1 reports "no limit" as a huge number (0x7FFFFFFFFFFFF000)


def cgroup_memory_limit(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> int | None:
    """The tightest memory limit of this process's cgroup and its ancestors, in bytes; None without one."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # v2 (unified)
            for base in (Path(root), Path(root) / "unified"):
                limits += _walk(base, path, "memory.max")
        elif "memory" in controllers.split(","):  # v1
            limits += _walk(Path(root) / "memory", path, "memory.limit_in_bytes")
    limits = [n for n in limits if 0 < n < _V1_UNLIMITED]
    return min(limits) if limits else None


def _walk(base: Path, path: str, name: str) -> list[int]:
    """``name`` in the cgroup dir of ``path`` and each ancestor under ``base`` (as far as they are visible)."""
    out = []
    parts = [p for p in path.strip("/").split("/") if p]
    for depth in range(len(parts), -1, -1):
        value = _read_limit(base.joinpath(*parts[:depth]) / name)
        if value is not None:
            out.append(value)
    return out


def _read_limit(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def overhead(threads: int) -> int:
    """What the daemon holds besides its block budget."""
    return BASE_OVERHEAD + PER_THREAD * max(1, threads)


def size_ram(ram: str | int | None, default_ram: str | int, target: str | int | None, threads: int,
             limit: int | None) -> tuple[int, str | None]:
    """(RAM tier bytes, a note for the user or None).

    ``ram`` is the RAM tier asked for explicitly (None: not given), ``target`` the memory target (None: not
    given), ``limit`` the cgroup limit (None: none). ConfigError when what was asked cannot fit.
    """
    cost = overhead(threads)
    if target is not None:
        total = parse_size(target, "memory target")
        if limit is not None and total > limit:
            raise ConfigError(f"memory target {_h(total)} exceeds this cgroup's memory limit {_h(limit)}")
        fits = total - cost
        if fits < MIN_RAM:
            raise ConfigError(f"memory target {_h(total)} is too small: the daemon itself needs about {_h(cost)} "
                              f"with {threads} threads, plus at least {_h(MIN_RAM)} of RAM tier")
        if ram is None:
            return fits, f"RAM tier {_h(fits)} (memory target {_h(total)})"
        asked = parse_size(ram, "ram")
        if asked > fits:
            raise ConfigError(f"--ram {_h(asked)} does not fit in memory target {_h(total)} (at most {_h(fits)} "
                              f"with {threads} threads)")
        return asked, None
    asked = parse_size(ram if ram is not None else default_ram, "ram")
    if limit is None:
        return asked, None
    fits = max(MIN_RAM, int(limit * CGROUP_SHARE) - cost)
    if asked <= fits:
        return asked, None
    return fits, (f"RAM tier lowered from {_h(asked)} to {_h(fits)} to fit the cgroup memory limit {_h(limit)} "
                  f"(the daemon takes at most {CGROUP_SHARE:.0%} of it; set --memory-target to choose)")


def _h(n: int) -> str:
    for unit in ("B", "K", "M", "G", "T"):
        if n < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}".replace(".0" + unit, unit)
        n /= 1024
    return str(n)
