"""Mounting checks and options: ``MountSpec`` (what ``tiercache mount`` was asked for), the mountpoint and
/dev/fuse checks, the libfuse options, and ``unmount``.

The daemon itself (``MountDaemon``, ``start_daemon``, its ``main``) lives in fuse/daemon.py; its names stay
importable from here, and ``python -m tiercache.fuse.mount`` still runs the daemon (what ``start_daemon``
spawns).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .. import mounts
from ..config import CacheConfig
from ..errors import TiercacheError

DEV_FUSE = "/dev/fuse"
FUSE_CONF = "/etc/fuse.conf"
LONG_TIMEOUT = 3600.0


class MountError(TiercacheError):
    """The mount could not be made (mountpoint, permissions, FUSE, or the daemon failed to start)."""


class MountBusy(MountError):
    """The mountpoint is already a mount, is not empty, or is in use."""


@dataclass
class MountSpec:
    """Everything ``tiercache mount`` was asked for, as plain values (travels to the daemon as JSON)."""

    source: str
    mountpoint: str
    ram: str = "1G"
    ssd: str | None = None
    ssd_size: str | None = None
    write_dir: str | None = None
    mode: str = "writeback"
    endpoint_url: str | None = None
    block_size: str = "4M"
    metadata_ttl: str = "60"
    threads: int = 16
    write_limit: str | None = None
    allow_other: bool = False
    nonempty: bool = False
    log_level: str = "info"
    drain_timeout: float = 30.0
    read_ahead_kb: int = 1024
    metrics_port: str | None = None  # [ADDR:]PORT for Prometheus metrics (tiercache.metrics)
    listing: str | None = None  # a listing file (tiercache.listing): the start-up listing without a LIST
    memory_target: str | None = None  # the daemon's total (tiercache.memory sized ram to it)
    plan_idle_timeout: str = "600"  # seconds (or inf) after which an idle plan not tied to a session ends

    def __post_init__(self) -> None:
        self.mountpoint = os.path.abspath(os.path.expanduser(self.mountpoint))
        for name in ("ssd", "write_dir", "listing"):
            value = getattr(self, name)
            if value:
                setattr(self, name, os.path.abspath(os.path.expanduser(value)))

    def config(self) -> CacheConfig:
        """The validated CacheConfig (ConfigError with one clear line on bad input); write dir resolved."""
        config = CacheConfig.build(
            self.source, ram=self.ram, ssd=self.ssd, ssd_size=self.ssd_size, block_size=self.block_size,
            endpoint_url=self.endpoint_url, threads=self.threads, metadata_ttl=self.metadata_ttl,
            write_dir=self.write_dir, write_limit=self.write_limit, mode=self.mode, listing=self.listing,
            plan_idle_timeout=self.plan_idle_timeout,
        )
        if config.write_dir is None:
            config.write_dir = Path(config.cache_dir) / "write"
        return config

    def to_json(self) -> str:
        """Serialized for the daemon's command line."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> MountSpec:
        """Inverse of ``to_json`` (unknown keys ignored)."""
        data = json.loads(text)
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# ---------------------------------------------------------------- checks


def check_mountpoint(path: str, nonempty: bool = False) -> str:
    """The mountpoint's real path, or MountError/MountBusy with one clear line."""
    if not os.path.lexists(path):
        raise MountError(f"mountpoint {path} does not exist (create it with: mkdir -p {path})")
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno in (107, 103):  # ENOTCONN, ECONNABORTED: a dead FUSE mount
            raise MountBusy(f"mountpoint {path} is a dead FUSE mount; run: tiercache unmount --force {path}"
                            ) from None
        raise MountError(f"mountpoint {path}: {exc.strerror}") from None
    if not os.path.isdir(path):
        raise MountError(f"mountpoint {path} is not a directory")
    real = os.path.realpath(path)
    for mountpoint, fstype, source in mounts.mount_table():
        if mountpoint == real and real != "/":
            raise MountBusy(f"mountpoint {path} is busy: {fstype} from {source} is already mounted there "
                            f"(unmount it first)")
    if os.path.ismount(real):
        raise MountBusy(f"mountpoint {path} is busy: already a mount (unmount it first)")
    if not nonempty:
        with os.scandir(real) as it:
            if any(True for _ in it):
                raise MountBusy(f"mountpoint {path} is not empty (its files would be hidden by the mount); "
                                f"use an empty directory or pass --nonempty")
    if not os.access(real, os.W_OK | os.X_OK) and os.geteuid() != 0 and st.st_uid != os.geteuid():
        raise MountError(f"mountpoint {path}: permission denied (you must own it or be root)")
    return real


def check_fuse_access(allow_other: bool = False) -> None:
    """/dev/fuse present and usable (root, or the setuid fusermount3); allow_other permitted."""
    if not os.path.exists(DEV_FUSE):
        raise MountError(f"{DEV_FUSE} not found: load the fuse kernel module (modprobe fuse) or give the "
                         f"container the device (--device /dev/fuse --cap-add SYS_ADMIN)")
    if os.geteuid() == 0:
        if not os.access(DEV_FUSE, os.R_OK | os.W_OK):
            raise MountError(f"{DEV_FUSE}: permission denied")
        return
    if shutil.which("fusermount3") is None:
        raise MountError("mounting needs root or the fusermount3 helper (Debian: apt-get install fuse3)")
    if not os.access(DEV_FUSE, os.R_OK | os.W_OK):
        raise MountError(f"{DEV_FUSE}: permission denied for uid {os.geteuid()} (run as root or fix it)")
    if allow_other:
        try:
            conf = Path(FUSE_CONF).read_text()
        except OSError:
            conf = ""
        if not any(line.strip() == "user_allow_other" for line in conf.splitlines()):
            raise MountError(f"--allow-other needs 'user_allow_other' in {FUSE_CONF} (or mount as root)")


def fuse_options(config: CacheConfig, spec: MountSpec) -> dict[str, Any]:
    """libfuse options for this mount.

    Immutable data (``--metadata-ttl inf``): kernel_cache and hour-long attr/entry timeouts, so re-reads are
    served by the kernel without entering Python. Otherwise each open decides whether the kernel keeps the
    file's pages (only while its etag is unchanged: fuse/opened.py) and timeouts equal the metadata TTL.
    Read-only mode mounts ``ro`` so the kernel refuses writes itself (EROFS).
    """
    ttl = config.metadata_ttl
    immutable = math.isinf(ttl)
    timeout = LONG_TIMEOUT if immutable else min(float(ttl), LONG_TIMEOUT)
    opts: dict[str, Any] = {
        "foreground": True,
        "nothreads": False,
        "fsname": "tiercache:" + config.source.replace("\\", "\\\\").replace(",", "\\,"),
        "subtype": "tiercache",
        "default_permissions": True,
        "use_ino": True,  # st_ino as getattr says (ops.py: stable, kept across rename)
        "attr_timeout": timeout,
        "entry_timeout": timeout,
        "negative_timeout": timeout,
    }
    if immutable:
        opts["kernel_cache"] = True
    if config.mode == "readonly":
        opts["ro"] = True
    if spec.allow_other:
        opts["allow_other"] = True
    return opts


def unmount(mountpoint: str, lazy: bool = False) -> None:
    """fusermount3 -u (``-uz`` when lazy), falling back to umount; MountBusy/MountError with its message."""
    if shutil.which("fusermount3"):
        cmd = ["fusermount3", "-uz" if lazy else "-u", mountpoint]
    elif shutil.which("fusermount"):
        cmd = ["fusermount", "-uz" if lazy else "-u", mountpoint]
    else:
        cmd = ["umount", *(["-l"] if lazy else []), mountpoint]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        message = (proc.stderr or proc.stdout).strip().splitlines()
        text = message[-1] if message else f"{cmd[0]} failed with status {proc.returncode}"
        if "busy" in text.lower():
            raise MountBusy(f"{mountpoint} is busy (files open or a process inside it): {text}")
        raise MountError(text)


# the daemon's names, importable from here as before (loaded on first use: fuse/daemon.py imports this module)
_DAEMON_NAMES = frozenset({"MountDaemon", "READY_TIMEOUT", "exit_now", "main", "setup_logging", "start_daemon"})


def __getattr__(name: str) -> Any:
    if name in _DAEMON_NAMES:
        from . import daemon

        return getattr(daemon, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    from tiercache.fuse.daemon import exit_now, main

    exit_now(main())
