"""``tiercache stats``, ``warm``, ``evict``, ``pin``, ``unpin`` and ``plan``: the control commands, each one
request (or a few) to the daemons of the mounts named."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from .cli_format import format_stats, human
from .cli_registry import EXIT_ERROR, command, fail, mount_of
from .errors import ConfigError
from .mounts import Mount, find_mount, list_mounts


def _stats_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?", help="default: every tiercache mount")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--watch", action="store_true", help="refresh in place until Ctrl-C")
    p.add_argument("--interval", type=float, default=1.0, metavar="SECONDS", help="--watch refresh period (1 s)")


@command("stats", "bytes per tier, hit rates, backend rates, prefetch lead and upload backlog", _stats_args)
def cmd_stats(args: argparse.Namespace) -> int:
    if not args.interval > 0:
        raise ConfigError(f"--interval: {args.interval} is not a positive number of seconds")
    mounts = [mount_of(args.mountpoint)] if args.mountpoint else list_mounts()
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
    groups: dict[str, tuple[Mount, list[str]]] = {}
    for path in paths:
        if check_exists:
            mount = mount_of(path)
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
        from .profiles import read_profile

        keys = read_profile(args.from_profile)
        if len(paths) != 1:
            raise ConfigError("warm --from-profile FILE MOUNTPOINT: name the mount point, once")
        mount = mount_of(paths[0])
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
        where = f"{mount.mountpoint} ({report['files']:,} file(s), {human(report['bytes'])})"
        tier = report.get("tier") or args.tier
        if tier != args.tier:
            tier = f"{tier} (the mount has no {args.tier} tier)"
        if report.get("complete"):
            sys.stderr.write(f"tiercache: warm complete: {where} resident in {tier}; fetched "
                             f"{human(report['fetched_bytes'])} from the store, "
                             f"{human(report['skipped_bytes'])} was already there\n")
            continue
        incomplete += 1
        why = f"{report['errors']} file(s) failed, e.g. {report['error']}" if report.get("errors") else (
            f"the {tier} tier is too small for it (see: tiercache stats {mount.mountpoint})")
        fail(f"warm incomplete: {where}: {human(report['missing_bytes'])} not resident in {tier}; {why}")
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
        done = f"{human(state.get('done_bytes', 0))} of {human(state.get('bytes', 0))}" if state else "nothing"
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
        sys.stdout.write(f"evicted {human(report['freed'])} from {args.tier} in {mount.mountpoint}{note}\n")
    return 0


def _pin_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", metavar="PATH", nargs="+", help="files or directories inside a tiercache mount")


@command("pin", "never evict PATHs from the cache (persisted; use warm to fetch them)", _pin_args)
def cmd_pin(args: argparse.Namespace) -> int:
    for mount, keys in _targets(args):
        report = mount.client().request("pin", paths=keys)
        sys.stdout.write(f"pinned {len(keys)} path(s) in {mount.mountpoint}: {human(report['resident_bytes'])} of "
                         f"{human(report['bytes'])} resident in {report['tier']}\n")
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
    if not args.end and not args.from_list:
        raise ConfigError("plan: --from-list FILE is required (or --end)")
    mount = mount_of(args.mountpoint)
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
