"""``tiercache mount``, ``flush`` and ``unmount``: subcommands of the ``tiercache`` command."""

from __future__ import annotations

import argparse
import os
import sys
import time

from .cli_format import human
from .cli_registry import command, fail, mount_of
from .errors import ConfigError, TiercacheError
from .mount_command import build_spec, run_mount
from .mounts import FSTYPE, Mount, find_mount, mount_table, pid_alive, unregister_mount
from .statsrecords import WriteStats


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
    p.add_argument("--plan-idle-timeout", metavar="SECONDS|inf",
                   help="a plan not tied to a loader's session (tiercache plan) ends after its reader read "
                        "nothing for this long (default 600)")
    p.add_argument("--listing", metavar="FILE",
                   help="start from this listing file (tiercache listing export) instead of LISTing the bucket")



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
    start = WriteStats.from_dict(client.request("drain_status"))
    total = int(start.dirty_bytes or 0)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=what, disable=None, leave=False)
    last_line = [time.monotonic()]

    def progress(reply: dict) -> None:
        status = WriteStats.from_dict(reply)
        left = int(status.dirty_bytes or 0)
        files = status.pending_files or 0
        if bar.disable:
            if time.monotonic() - last_line[0] >= 5:
                last_line[0] = time.monotonic()
                sys.stderr.write(f"tiercache: {what}: {files} file(s), "
                                 f"{human(left)} left to upload\n")
            return
        bar.total = max(bar.total or 0, left + bar.n)
        bar.update(max(0, (bar.total - left) - bar.n))
        bar.set_postfix(files=files)

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
    mount = mount_of(args.mountpoint)
    report = _drain(mount, args.timeout, "flushing")
    problem = _report_left(report, mount.mountpoint)
    if problem:
        return fail(f"flush {mount.mountpoint}: {problem}")
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
            return fail(f"not unmounting {real}: {problem}; retry, or use --force "
                         f"(uploads resume at the next mount)")
        mount.client().request("shutdown", drain=True)
    elif alive:
        try:
            lost = WriteStats.from_dict(mount.client().request("stats").get("writes")).lost_files
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
        return fail(f"unmounted {real}, but {len(lost)} written file(s) are LOST (staging bytes damaged, kept in "
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
