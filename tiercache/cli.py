"""The ``tiercache`` command: mount, unmount, flush, stats (and the control commands built on them).

Each subcommand is two small functions registered with ``@command``: one adds its arguments, one runs it.
Every user error is one line on stderr (``tiercache: error: ...``) and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from typing import Any

from . import __version__
from .errors import ConfigError, TiercacheError
from .mount_command import build_spec, run_mount, split_ssd
from .mounts import FSTYPE, Mount, find_mount, list_mounts, mount_table, pid_alive, unregister_mount

EXIT_ERROR = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"tiercache: error: {message} (see: {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


Runner = Callable[[argparse.Namespace], int | None]
_COMMANDS: list[tuple[str, str, Callable[[argparse.ArgumentParser], None], Runner]] = []


def command(
    name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None]
) -> Callable[[Runner], Runner]:
    """Register a subcommand: ``arguments(parser)`` declares its options, the decorated function runs it."""

    def register(run: Runner) -> Runner:
        _COMMANDS.append((name, help, arguments, run))
        return run

    return register


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every registered subcommand."""
    parser = _Parser(prog="tiercache", description="Tiered RAM/SSD/write cache for training data in S3.")
    parser.add_argument("--version", action="version", version=f"tiercache {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, help_text, arguments, run in _COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        arguments(p)
        p.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except TiercacheError as exc:
        return _fail(str(exc))
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        return _fail(f"{exc.strerror or exc}{where}")
    except KeyboardInterrupt:
        sys.stderr.write("tiercache: interrupted\n")
        return 130


def _fail(message: str) -> int:
    sys.stderr.write(f"tiercache: error: {' '.join(message.split())}\n")
    return EXIT_ERROR


def _mount_of(path: str) -> Mount:
    """The tiercache mount at or above ``path``, or one clear error."""
    import os

    if not os.path.lexists(path):
        raise ConfigError(f"{path}: no such file or directory")
    mount = find_mount(path)
    if mount is None:
        raise ConfigError(f"{path} is not inside a tiercache mount")
    return mount


# ---------------------------------------------------------------- mount


def _mount_args(p: argparse.ArgumentParser) -> None:
    # defaults are None here: an option not given comes from TIERCACHE_* or the config file (mount_options)
    p.epilog = ("Options not given come from TIERCACHE_<OPTION> environment variables, then the config file "
                "($TIERCACHE_CONFIG, ~/.config/tiercache/config.toml, /etc/tiercache/config.toml), then the "
                "defaults shown.")
    p.add_argument("source", metavar="SOURCE", help="s3://BUCKET[/PREFIX] or file:///DIR")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing empty directory")
    p.add_argument("--ram", metavar="SIZE", help="RAM tier size (default 1G)")
    p.add_argument("--ssd", metavar="DIR[:SIZE]",
                   help="cache dir on local SSD (default $XDG_CACHE_HOME/tiercache/SOURCE, ~/.cache/tiercache/...)")
    p.add_argument("--ssd-size", metavar="SIZE", help="SSD tier size (default: half the free space; 0: none)")
    p.add_argument("--write-dir", metavar="DIR",
                   help="durable staging dir for writes (default: CACHE_DIR/write — durable only if that is)")
    p.add_argument("--mode", choices=("writeback", "writethrough", "readonly"), help="(default writeback)")
    p.add_argument("--endpoint-url", metavar="URL", help="S3-compatible endpoint URL")
    p.add_argument("--block-size", metavar="SIZE", help="cache block size (default 4M)")
    p.add_argument("--metadata-ttl", metavar="0|SECONDS|inf",
                   help="how long listings and attributes are trusted (default 60; inf: immutable data, "
                        "kernel caching)")
    p.add_argument("--threads", type=int, metavar="N", help="parallel requests to the store (default 16)")
    p.add_argument("--write-limit", metavar="SIZE", help="hard limit of the write dir (ENOSPC past it)")
    p.add_argument("--foreground", "-f", action="store_true", help="stay in the foreground, log to stderr")
    p.add_argument("--allow-other", action="store_true", default=None, help="let other users access the mount")
    p.add_argument("--nonempty", action="store_true", default=None,
                   help="allow mounting over a non-empty directory")
    p.add_argument("--drain-timeout", type=float, metavar="SECONDS",
                   help="on SIGTERM, wait this long for pending uploads (default 30; the rest resumes at the "
                        "next mount)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="(default info)")
    p.add_argument("--metrics-port", metavar="PORT",
                   help="serve Prometheus metrics on this port (127.0.0.1; ADDR:PORT for another address)")
    p.add_argument("--memory-target", metavar="SIZE",
                   help="the daemon's total memory: the RAM tier and its buffers are sized to it (default: fit "
                        "in half the cgroup memory limit, if any)")
    p.add_argument("--listing", metavar="FILE",
                   help="start from this listing file (tiercache listing export) instead of LISTing the bucket")


_split_ssd = split_ssd  # tests and older callers


@command("mount", "mount SOURCE at MOUNTPOINT (returns once the mount is ready)", _mount_args)
def cmd_mount(args: argparse.Namespace) -> int:
    flags = {k: v for k, v in vars(args).items() if k not in ("source", "mountpoint", "foreground", "run",
                                                               "command")}
    return run_mount(build_spec(args.source, args.mountpoint, flags), foreground=args.foreground)


# ---------------------------------------------------------------- flush / unmount


def _drain(mount: Mount, timeout: float | None, what: str) -> dict:
    """Ask the daemon to upload everything now, showing what is left; returns the flush report."""
    from tqdm import tqdm

    client = mount.client(timeout=None)
    start = client.request("drain_status")
    total = int(start.get("dirty_bytes") or 0)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=what, disable=None, leave=False)
    last_line = [time.monotonic()]

    def progress(status: dict) -> None:
        left = int(status.get("dirty_bytes") or 0)
        if bar.disable:
            if time.monotonic() - last_line[0] >= 5:
                last_line[0] = time.monotonic()
                sys.stderr.write(f"tiercache: {what}: {status.get('pending_files', 0)} file(s), "
                                 f"{_human(left)} left to upload\n")
            return
        bar.total = max(bar.total or 0, left + bar.n)
        bar.update(max(0, (bar.total - left) - bar.n))
        bar.set_postfix(files=status.get("pending_files", 0))

    try:
        report = client.request("flush", on_progress=progress, reply_timeout=None, timeout=timeout)
    finally:
        bar.close()
    return report


def _report_left(report: dict, mountpoint: str) -> str | None:
    left, failed = report.get("left") or [], report.get("failed") or []
    lost = report.get("lost") or []
    if lost:
        shown = ", ".join(lost[:5]) + (f" and {len(lost) - 5} more" if len(lost) > 5 else "")
        return (f"{len(lost)} written file(s) LOST, not uploaded (their staging bytes were damaged; kept in the "
                f"write dir's corrupt/): {shown}; they read EIO in the mount until removed (rm) or rewritten")
    if not left:
        return None
    why = f"; last error: {report['last_error']}" if report.get("last_error") else ""
    return (f"{len(left)} change(s) not uploaded yet ({len(failed)} failing, e.g. {left[0]}){why}")


def _flush_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="give up waiting after this long")


@command("flush", "upload every pending write now and wait for it", _flush_args)
def cmd_flush(args: argparse.Namespace) -> int:
    mount = _mount_of(args.mountpoint)
    report = _drain(mount, args.timeout, "flushing")
    problem = _report_left(report, mount.mountpoint)
    if problem:
        return _fail(f"flush {mount.mountpoint}: {problem}")
    uploaded = len(report.get("uploaded") or [])
    sys.stderr.write(f"tiercache: flushed {mount.mountpoint}: {uploaded} change(s) uploaded, none pending\n")
    return 0


def _unmount_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--force", action="store_true",
                   help="unmount without waiting for uploads (they resume at the next mount)")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="stop waiting for uploads then")


@command("unmount", "drain pending uploads, then unmount", _unmount_args)
def cmd_unmount(args: argparse.Namespace) -> int:
    import os

    from .fuse.mount import MountBusy, unmount

    real = os.path.realpath(args.mountpoint)
    entry = next((m for m in mount_table() if m[0] == real), None)
    if entry is None:
        raise ConfigError(f"{args.mountpoint} is not a mount")
    if entry[1] != FSTYPE:
        raise ConfigError(f"{args.mountpoint} is not a tiercache mount (it is {entry[1]})")
    mount = find_mount(real)
    alive = mount is not None and mount.mountpoint == real and mount.daemon_alive()
    lost: list[str] = []
    if alive and not args.force:
        report = _drain(mount, args.timeout, "uploading before unmount")
        problem = _report_left(report, real)
        if problem:
            return _fail(f"not unmounting {real}: {problem}; retry, or use --force "
                         f"(uploads resume at the next mount)")
        mount.client().request("shutdown", drain=True)
    elif alive:
        try:
            lost = (mount.client().request("stats").get("writes") or {}).get("lost_files") or []
            mount.client().request("shutdown", drain=False)
        except TiercacheError as exc:
            sys.stderr.write(f"tiercache: warning: {exc}\n")
    elif not args.force:
        raise ConfigError(f"the daemon of {real} is not running (killed?); use: tiercache unmount --force "
                          f"{real} (pending uploads resume at the next mount)")
    try:
        unmount(real)
    except MountBusy:
        if not args.force:
            raise
        unmount(real, lazy=True)
        sys.stderr.write(f"tiercache: {real} was busy; detached it lazily (gone once no longer used)\n")
    if mount is not None and mount.pid is not None:
        _wait_exit(mount.pid)
        unregister_mount(real, mount.pid)
    if lost:
        return _fail(f"unmounted {real}, but {len(lost)} written file(s) are LOST (staging bytes damaged, kept in "
                     f"the write dir's corrupt/): {', '.join(lost[:5])}")
    sys.stderr.write(f"tiercache: unmounted {real}\n")
    return 0


def _wait_exit(pid: int, timeout: float = 120.0) -> None:
    """Wait for the daemon to finish closing (it drains what is left, closes the cache)."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            sys.stderr.write(f"tiercache: warning: daemon pid {pid} still running after {timeout:.0f} s\n")
            return
        time.sleep(0.05)


# ---------------------------------------------------------------- stats


def _stats_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?", help="default: every tiercache mount")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--watch", action="store_true", help="refresh in place until Ctrl-C")
    p.add_argument("--interval", type=float, default=1.0, metavar="SECONDS", help="--watch refresh period (1 s)")


@command("stats", "bytes per tier, hit rates, backend rates, prefetch lead and upload backlog", _stats_args)
def cmd_stats(args: argparse.Namespace) -> int:
    if not args.interval > 0:
        raise ConfigError(f"--interval: {args.interval} is not a positive number of seconds")
    mounts = [_mount_of(args.mountpoint)] if args.mountpoint else list_mounts()
    if not mounts:
        raise ConfigError("no tiercache mounts")
    if not args.watch:
        _print_stats(mounts, args)
        return 0
    tty = sys.stdout.isatty()
    try:
        while True:
            if tty:
                sys.stdout.write("\x1b[H\x1b[J")  # cursor home, clear: refresh in place
            _print_stats(mounts, args)
            if not tty:
                sys.stdout.write("\n")
            sys.stdout.flush()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


def _print_stats(mounts: list[Mount], args: argparse.Namespace) -> None:
    results = {m.mountpoint: m.client().request("stats") for m in mounts}
    if args.json:
        out: Any = results[mounts[0].mountpoint] if args.mountpoint else results
        sys.stdout.write(json.dumps(out, indent=None if args.watch else 2, default=str) + "\n")
        return
    for mountpoint, stats in results.items():
        sys.stdout.write(format_stats(mountpoint, stats) + "\n")


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
        lines.append(f"  {name:<6}{_human(tier.get('used', tier.get('used_bytes'))):>12}"
                     f"{_human(tier.get('capacity', tier.get('capacity_bytes'))):>12}"
                     f"{_pct(rate):>10}{_num(hits):>10}{_num(misses):>10}")
    overall = cache.get("read_hit_rate", cache.get("hit_rate"))
    if overall is not None:
        lines.append(f"  hit rate {_pct(overall)} overall")
    lines.extend(_plan_lines(cache))
    backend = cache.get("backend")
    if isinstance(backend, dict):
        rates = ""
        if "gets_per_s" in backend:
            rates = f" now {backend['gets_per_s']:.1f} GET/s, {_human(backend.get('bytes_per_s'))}/s;"
        lines.append(f"  backend:{rates} {_num(backend.get('gets'))} GETs, {_human(backend.get('bytes'))}, "
                     f"{_num(backend.get('heads'))} HEADs, {_num(backend.get('lists'))} LISTs, "
                     f"{_num(backend.get('errors'))} errors")
    pre = cache.get("prefetcher")
    if isinstance(pre, dict):
        lines.append(f"  prefetch: lead {_num(pre.get('lead_files'))} file(s) / {_human(pre.get('lead_bytes'))} "
                     f"ahead of the readers; {_human(pre.get('prefetched_bytes'))} prefetched, "
                     f"{_human(pre.get('prefetched_unread_bytes'))} never read")
    if writes:
        age = writes.get("oldest_pending_age_s") or 0
        lines.append(f"  writes: {writes.get('mode', '')}, dirty {_human(writes.get('dirty_bytes'))} in "
                     f"{_num(writes.get('pending_files'))} file(s), oldest pending {age:.0f} s, uploaded "
                     f"{_num(writes.get('uploaded_files'))} file(s) / {_human(writes.get('uploaded_bytes'))},"
                     " "
                     f"failing {_num(writes.get('failed_uploads'))}")
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


# ---------------------------------------------------------------- warm / evict / pin / unpin / plan


def _read_list(path: str) -> list[str]:
    """Non-empty, non-comment lines of a list file ("-" for stdin)."""
    try:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()  # noqa: SIM115
    except OSError as exc:
        raise ConfigError(f"--from-list {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--from-list {path}: not a UTF-8 text file") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _group_by_mount(paths: list[str], check_exists: bool = True) -> list[tuple[Mount, list[str]]]:
    """Paths → (mount, mount-relative keys) in first-seen order; one clear error for a bad path."""
    import os

    groups: dict[str, tuple[Mount, list[str]]] = {}
    for path in paths:
        if check_exists:
            mount = _mount_of(path)
        else:
            mount = find_mount(os.path.dirname(os.path.abspath(path)) or "/")
            if mount is None:
                raise ConfigError(f"{path} is not inside a tiercache mount")
        groups.setdefault(mount.mountpoint, (mount, []))[1].append(mount.relpath(path))
    return list(groups.values())


def _targets(args: argparse.Namespace) -> list[tuple[Mount, list[str]]]:
    """PATH arguments plus the lines of ``--from-list`` (if the command has it), grouped by mount."""
    paths = list(args.paths)
    if getattr(args, "from_profile", None):
        import os

        from .profiles import read_profile

        keys = read_profile(args.from_profile)
        if len(paths) != 1:
            raise ConfigError("warm --from-profile FILE MOUNTPOINT: name the mount point, once")
        mount = _mount_of(paths[0])
        if os.path.realpath(paths[0]) != mount.mountpoint:
            raise ConfigError(f"warm --from-profile: {paths[0]} is not the mount point ({mount.mountpoint})")
        if not keys:
            raise ConfigError(f"--from-profile {args.from_profile}: the profile is empty")
        return [(mount, keys)]
    from_list = getattr(args, "from_list", None)
    listed = _read_list(from_list) if from_list else []
    if not paths and not listed:
        raise ConfigError(f"{args.command}: no paths given" + (" (the list is empty)" if from_list else ""))
    groups = _group_by_mount(paths) if paths else []
    if listed:
        # listed files are resolved by the daemon (metadata in one pass), not stat()ed one by one here
        for mount, keys in _group_by_mount(listed, check_exists=False):
            for known, known_keys in groups:
                if known.mountpoint == mount.mountpoint:
                    known_keys.extend(keys)
                    break
            else:
                groups.append((mount, keys))
    return groups


def _warm_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", metavar="PATH", nargs="*", help="files or directories inside a tiercache mount")
    p.add_argument("--recursive", "-r", action="store_true", help="warm everything below directories")
    p.add_argument("--tier", choices=("ram", "ssd"), default="ssd", help="where to put the data (default ssd)")
    p.add_argument("--from-list", metavar="FILE", help="also warm the paths listed in FILE, one a line (- for stdin)")
    p.add_argument("--from-profile", metavar="FILE",
                   help="warm the files of a profile (tiercache profile save), in its order; PATH is the mount")
    p.add_argument("--threads", type=int, metavar="N", help="parallel fetches (default: the mount's --threads)")


@command("warm", "fetch files into the cache ahead of use (re-run to resume; resident data is skipped)", _warm_args)
def cmd_warm(args: argparse.Namespace) -> int:
    if args.threads is not None and not 1 <= args.threads <= 1024:
        raise ConfigError(f"--threads: {args.threads} is not a number from 1 to 1024")
    incomplete = 0
    for mount, keys in _targets(args):
        report = _warm_one(mount, keys, args)
        where = f"{mount.mountpoint} ({report['files']:,} file(s), {_human(report['bytes'])})"
        tier = report.get("tier") or args.tier
        if tier != args.tier:
            tier = f"{tier} (the mount has no {args.tier} tier)"
        if report.get("complete"):
            sys.stderr.write(f"tiercache: warm complete: {where} resident in {tier}; fetched "
                             f"{_human(report['fetched_bytes'])} from the store, "
                             f"{_human(report['skipped_bytes'])} was already there\n")
            continue
        incomplete += 1
        why = f"{report['errors']} file(s) failed, e.g. {report['error']}" if report.get("errors") else (
            f"the {tier} tier is too small for it (see: tiercache stats {mount.mountpoint})")
        _fail(f"warm incomplete: {where}: {_human(report['missing_bytes'])} not resident in {tier}; {why}")
    return EXIT_ERROR if incomplete else 0


_WARM_BAR = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}{postfix} [{rate_fmt}, ETA {remaining}]"


def _warm_one(mount: Mount, keys: list[str], args: argparse.Namespace) -> dict:
    """One mount's warm request, with a progress bar (files, bytes, rate, ETA) fed by the daemon."""
    from tqdm import tqdm

    bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, desc="warming", disable=None, leave=False,
               bar_format=_WARM_BAR)
    state: dict = {}

    def progress(msg: dict) -> None:
        if msg.get("phase") == "metadata":
            bar.set_description_str("reading metadata")
            return
        state.update(msg)
        if bar.total != msg["bytes"]:
            bar.reset(total=msg["bytes"])
            bar.set_description_str("warming", refresh=False)
        bar.set_postfix_str(f"{msg['done_files']:,}/{msg['files']:,} files", refresh=False)
        bar.update(max(0, msg["done_bytes"] - bar.n))
        if msg["done_files"] == msg["files"]:
            bar.refresh()

    try:
        report = mount.client(timeout=None).request(
            "warm", on_progress=progress, reply_timeout=None, paths=keys, recursive=args.recursive,
            tier=args.tier, threads=args.threads)
    except KeyboardInterrupt:
        bar.close()
        done = f"{_human(state.get('done_bytes', 0))} of {_human(state.get('bytes', 0))}" if state else "nothing"
        sys.stderr.write(f"tiercache: warm interrupted: {done} done; run it again to resume "
                         f"(resident data is skipped)\n")
        raise SystemExit(130) from None
    finally:
        bar.close()
    return report


def _evict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", metavar="PATH", nargs="+", help="files or directories inside a tiercache mount")
    p.add_argument("--tier", choices=("ram", "ssd", "all"), default="all", help="which tier to free (default all)")


@command("evict", "drop clean cached data of PATHs (never dirty or pinned data); reports bytes freed", _evict_args)
def cmd_evict(args: argparse.Namespace) -> int:
    for mount, keys in _targets(args):
        report = mount.client().request("evict", paths=keys, tier=args.tier)
        kept = report.get("pinned_kept") or []
        note = f" (kept pinned: {', '.join('/' + k for k in kept)})" if kept else ""
        sys.stdout.write(f"evicted {_human(report['freed'])} from {args.tier} in {mount.mountpoint}{note}\n")
    return 0


def _pin_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", metavar="PATH", nargs="+", help="files or directories inside a tiercache mount")


@command("pin", "never evict PATHs from the cache (persisted; use warm to fetch them)", _pin_args)
def cmd_pin(args: argparse.Namespace) -> int:
    for mount, keys in _targets(args):
        report = mount.client().request("pin", paths=keys)
        sys.stdout.write(f"pinned {len(keys)} path(s) in {mount.mountpoint}: {_human(report['resident_bytes'])} of "
                         f"{_human(report['bytes'])} resident in {report['tier']}\n")
    return 0


@command("unpin", "undo pin for PATHs (their data becomes evictable again)", _pin_args)
def cmd_unpin(args: argparse.Namespace) -> int:
    for mount, keys in _targets(args):
        mount.client().request("unpin", paths=keys)
        sys.stdout.write(f"unpinned {len(keys)} path(s) in {mount.mountpoint}\n")
    return 0


def _plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--client", default="cli", metavar="NAME",
                   help="whose plan this is (default: cli); it replaces only that client's plan")
    p.add_argument("--from-list", metavar="FILE",
                   help="the files in read order, one a line (- for stdin): relative to MOUNTPOINT, or absolute")
    p.add_argument("--end", action="store_true", help="end the client's plan instead of sending one")


@command("plan", "send a read plan (files in the order they will be read), as the DataLoader does", _plan_args)
def cmd_plan(args: argparse.Namespace) -> int:
    import os

    if not args.end and not args.from_list:
        raise ConfigError("plan: --from-list FILE is required (or --end)")
    mount = _mount_of(args.mountpoint)
    if args.end:
        report = mount.client().request("plan", client=args.client, end=True)
        done = "ended" if report.get("ended") else "had no plan to end"
        sys.stdout.write(f"client {args.client!r} {done} in {mount.mountpoint}\n")
        return 0
    keys = []
    for line in _read_list(args.from_list):
        path = line if os.path.isabs(line) else os.path.join(mount.mountpoint, line)
        keys.append(mount.relpath(os.path.normpath(path)) if os.path.isabs(line) else os.path.normpath(line))
    if not keys:
        raise ConfigError(f"--from-list {args.from_list}: no paths in it")
    for key in keys:
        if key == ".." or key.startswith("../"):
            raise ConfigError(f"{key}: outside the mount {mount.mountpoint}")
    report = mount.send_plan(keys, args.client)
    sys.stdout.write(f"plan of {report['planned']:,} file(s) for client {args.client!r} sent to "
                     f"{mount.mountpoint}\n")
    return 0


def _plan_lines(cache: dict) -> list[str]:
    """The per-client plan table of ``stats``."""
    from .statsrecords import PlanRow

    plans = PlanRow.rows(cache)
    if not plans:
        return ["  plans: none"]
    lines = [f"  {'plan (client)':<24}{'position':>20}{'lead':>16}{'hit rate':>10}{'age':>8}"]
    now = time.time()
    for plan in plans:
        age = max(0.0, now - float(plan.started or now))
        where = f"{_num(plan.position)} of {_num(plan.files)}"
        lead = f"{_num(plan.lead_files)} / {_human(plan.lead_bytes)}"
        note = f"  {plan.note}" if plan.note else ""
        lines.append(f"  {plan.client[:23]:<24}{where:>20}{lead:>16}{_pct(plan.hit_rate):>10}{age:>7.0f}s{note}")
    return lines


def _human(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    value = float(value)
    for unit in ("B", "K", "M", "G", "T", "P"):
        if abs(value) < 1024 or unit == "P":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return "-"


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, int | float) and math.isfinite(value) else "-"


def _num(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else "-"


from . import cli_profiles  # noqa: E402, F401 - registers the profile and listing commands

if __name__ == "__main__":
    from tiercache import cli as _cli  # the module proper, where cli_profiles registered its commands too

    sys.exit(_cli.main())
