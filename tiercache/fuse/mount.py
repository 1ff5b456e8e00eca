"""The mount daemon: checks, FUSE options, start-up in the background with a readiness handshake, signals,
clean unmount with a drain of pending uploads.

``start_daemon(spec)`` (what ``tiercache mount`` runs) spawns ``python -m tiercache.fuse.mount`` as a
detached process (a new session; no fork of a process holding threads or LMDB) and waits on a pipe until the
daemon says ``ready`` — the mount answers and its control socket listens — or reports its one-line error.
``MountDaemon.run`` is the daemon itself (also what ``--foreground`` runs in-process):

    cache (TieredCache, owns the cache dir) → write tier (replays its journal) → control socket + registry
    → FUSE loop (libfuse handles SIGINT/SIGTERM/SIGHUP by unmounting) → drain uploads (bounded) → close

Logs go to CACHE_DIR/mount.log (the daemon's stdout/stderr too, so libfuse's own messages land there).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .. import control, handlers, mounts, profiles  # noqa: F401 - importing registers the control ops
from ..config import CacheConfig
from ..errors import ConfigError, TiercacheError
from ..private import open_private, private_dir
from ..tiers.budget import return_freed_memory_to_the_os

log = logging.getLogger("tiercache.mount")

DEV_FUSE = "/dev/fuse"
FUSE_CONF = "/etc/fuse.conf"
LONG_TIMEOUT = 3600.0
READY_TIMEOUT = 120.0


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


# ---------------------------------------------------------------- the daemon


def setup_logging(log_path: Path | None, level: str, to_stderr: bool) -> None:
    """Log tiercache (and mfusepy) to ``log_path`` and optionally stderr."""
    numeric = getattr(logging, str(level).upper(), None)
    if not isinstance(numeric, int):
        raise ConfigError(f"log level: {level!r} is not one of debug, info, warning, error")
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    for name in ("tiercache", "mfusepy"):
        logging.getLogger(name).setLevel(numeric if name == "tiercache" else max(numeric, logging.INFO))
    if log_path is not None:
        private_dir(log_path.parent)
        os.close(open_private(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND))
        handler = logging.FileHandler(log_path)
        handler.setFormatter(fmt)
        root.addHandler(handler)
    if to_stderr:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(fmt)
        root.addHandler(handler)


class MountDaemon:
    """One mount: owns the cache, the write tier, the control socket and the FUSE loop (see ``run``)."""

    def __init__(self, spec: MountSpec):
        self.spec = spec
        self.config = spec.config()
        self.cache: Any = None
        self.writes: Any = None
        self.info: dict = {}
        self._drain = True
        self._drain_timeout: float | None = spec.drain_timeout
        self._ready_sent = False

    # control.Daemon
    def request_shutdown(
        self, drain: bool = True, timeout: float | None = None, unmount: bool = False
    ) -> None:
        """How to exit: drain uploads (bounded by ``timeout``) or leave them journaled; optionally unmount."""
        self._drain = drain
        if timeout is not None:
            self._drain_timeout = float(timeout)
        log.info("shutdown requested (drain=%s, timeout=%s, unmount=%s)", drain, self._drain_timeout, unmount)
        if unmount:
            threading.Thread(target=self._unmount_self, name="tc-unmount", daemon=True).start()

    def _unmount_self(self) -> None:
        try:
            unmount(self.spec.mountpoint)
        except TiercacheError as exc:
            log.error("unmount requested over the control socket failed: %s", exc)

    def run(self, ready: Callable[[str | None], None]) -> int:
        """Mount and serve until unmounted; ``ready(None)`` once usable, ``ready(msg)`` on early failure."""
        from ..cache import TieredCache
        from ..tiers.write import WriteTier
        from . import binding

        spec, config = self.spec, self.config
        mountpoint = check_mountpoint(spec.mountpoint, spec.nonempty)
        check_fuse_access(spec.allow_other)
        binding()  # fail early, with a clear error, if libfuse cannot be loaded
        log.info("mounting %s at %s (mode %s, cache dir %s, write dir %s)", config.source, mountpoint,
                 config.mode, config.cache_dir, config.write_dir)
        stack = contextlib.ExitStack()
        try:
            self.cache = TieredCache(config)
            stack.callback(self.cache.close)
            self.writes = WriteTier(self.cache.store, config.write_dir, cache=self.cache, mode=config.mode,
                                    limit_bytes=config.write_limit)
            stack.callback(self._close_writes)
            sock = mounts.socket_path_for(config.cache_dir, mountpoint)
            self.info = {
                "mountpoint": mountpoint, "source": config.source, "socket_path": sock, "pid": os.getpid(),
                "uid": os.geteuid(), "cache_dir": str(config.cache_dir), "write_dir": str(config.write_dir),
                "mode": config.mode, "log": str(Path(config.cache_dir) / "mount.log"), "started": time.time(),
            }
            server = control.ControlServer(sock, self).start()
            stack.callback(server.stop)
            if spec.metrics_port:
                from ..metrics import serve

                stack.callback(serve(lambda: control.HANDLERS["stats"](self, {}, lambda _msg: True), mountpoint,
                                     spec.metrics_port))
                log.info("Prometheus metrics on %s", spec.metrics_port)
            mounts.register_mount(self.info)
            stack.callback(mounts.unregister_mount, mountpoint, os.getpid())
            from .opened import TiercacheFUSE
            from .ops import make_ops

            ops = make_ops(self.cache, self.writes, readonly=config.mode == "readonly",
                           immutable=math.isinf(config.metadata_ttl),
                           statfs_dir=str(config.write_dir),
                           on_init=lambda: self._announce(mountpoint, ready))
            options = fuse_options(config, spec)
            log.info("FUSE options: %s", options)
            log_offset = _log_size(self.info["log"])
            try:
                TiercacheFUSE(ops, mountpoint, **options)
            except RuntimeError as exc:
                if not self._ready_sent:
                    hint = _fuse_error_hint(self.info["log"], log_offset)
                    raise MountError(f"FUSE could not mount {mountpoint}: {hint or exc}") from None
                log.info("FUSE loop ended with status %s (a signal); unmounting", exc)
            if not self._ready_sent:
                raise MountError(f"FUSE exited before {mountpoint} was mounted (see {self.info['log']})")
            log.info("unmounted %s", mountpoint)
        finally:
            stack.close()
        return 0

    def _close_writes(self) -> None:
        if self._drain and self.writes.stats().get("pending_ops"):
            log.info("draining pending uploads (up to %s s)", self._drain_timeout)
        # without a drain, uploads in flight are abandoned (their journal entries redo them at the next start)
        self.writes.close(drain=self._drain, timeout=self._drain_timeout if self._drain else 2.0)
        left = self.writes.stats().get("pending_ops", 0) if not self._drain else 0
        if left:
            log.info("%d change(s) left in the write journal; they resume at the next mount", left)

    def _announce(self, mountpoint: str, ready: Callable[[str | None], None]) -> None:
        """From FUSE init: wait (in a thread) until the kernel shows the mount, tune read-ahead, say ready."""

        def wait() -> None:
            deadline = time.monotonic() + 30
            while not os.path.ismount(mountpoint) and time.monotonic() < deadline:
                time.sleep(0.01)
            _tune_read_ahead(mountpoint, self.spec.read_ahead_kb)
            self._ready_sent = True
            log.info("mounted %s at %s", self.config.source, mountpoint)
            ready(None)

        threading.Thread(target=wait, name="tc-ready", daemon=True).start()


def _tune_read_ahead(mountpoint: str, kb: int) -> None:
    """Raise the mount's kernel read-ahead (root only; best effort): FUSE reads then come in 1 MiB."""
    if kb <= 0:
        return
    try:
        dev = os.stat(mountpoint).st_dev
        path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
        with open(path, "w") as fh:
            fh.write(str(kb))
    except OSError as exc:
        log.debug("read-ahead not tuned: %s", exc)


def _log_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _fuse_error_hint(log_path: str, offset: int) -> str:
    """libfuse's own error line ("fuse: ..."), which it wrote to stderr (the log in daemon mode)."""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(offset)
            lines = fh.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    hits = [ln.strip() for ln in lines if ln.startswith(("fuse:", "fusermount"))]
    return hits[-1] if hits else ""


# ---------------------------------------------------------------- starting in the background


def start_daemon(spec: MountSpec, timeout: float = READY_TIMEOUT) -> int:
    """Start the daemon detached; its pid once the mount is ready, else MountError with the reason."""
    config = spec.config()
    check_mountpoint(spec.mountpoint, spec.nonempty)
    check_fuse_access(spec.allow_other)
    private_dir(config.cache_dir)
    log_path = Path(config.cache_dir) / "mount.log"
    read_fd, write_fd = os.pipe()
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "tiercache.fuse.mount", "--ready-fd", str(write_fd),
           "--spec", spec.to_json()]
    try:
        with os.fdopen(open_private(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "ab") as log_file:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                                    pass_fds=(write_fd,), start_new_session=True, cwd="/", env=env)
    finally:
        os.close(write_fd)
    try:
        message = _read_ready(read_fd, timeout)
    finally:
        os.close(read_fd)
    if message == "ready":
        return proc.pid
    if message is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        raise MountError(f"the mount daemon (pid {proc.pid}) was not ready after {timeout:.0f} s; "
                         f"stopped it (see {log_path})")
    try:
        status = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        status = None
    if message:
        raise MountError(message.removeprefix("error: "))
    tail = _last_line(log_path)
    raise MountError(f"the mount daemon exited (status {status}) before the mount was ready"
                     + (f": {tail}" if tail else "") + f" (log: {log_path})")


def _read_ready(fd: int, timeout: float) -> str | None:
    """The daemon's one line ("ready" or "error: ..."), "" on EOF without one, None on timeout."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        readable, _, _ = select.select([fd], [], [], left)
        if not readable:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


def _last_line(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(path) - 4096))
            lines = [ln for ln in fh.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


class _PipeNotifier:
    """Tells the waiting ``tiercache mount`` once: "ready" or "error: ..."."""

    def __init__(self, fd: int | None):
        self.fd = fd
        self._lock = threading.Lock()

    def __call__(self, error: str | None) -> None:
        with self._lock:
            if self.fd is None:
                return
            line = "ready\n" if error is None else "error: " + " ".join(error.split()) + "\n"
            with contextlib.suppress(OSError):
                os.write(self.fd, line.encode())
                os.close(self.fd)
            self.fd = None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the detached daemon: ``python -m tiercache.fuse.mount --spec JSON --ready-fd N``."""
    parser = argparse.ArgumentParser(prog="tiercache-mountd")
    parser.add_argument("--spec", required=True)
    parser.add_argument("--ready-fd", type=int)
    args = parser.parse_args(argv)
    notify = _PipeNotifier(args.ready_fd)
    spec = MountSpec.from_json(args.spec)
    try:
        config = spec.config()
        setup_logging(Path(config.cache_dir) / "mount.log", spec.log_level, to_stderr=False)
        return_freed_memory_to_the_os()  # keeps RSS near the memory budget (tiers/budget.py)
        # the log handler writes mount.log itself; stdout/stderr stay on it for libfuse's messages
        return MountDaemon(spec).run(notify)
    except TiercacheError as exc:
        log.error("%s", exc)
        notify(str(exc))
        return 1
    except Exception as exc:  # noqa: BLE001 - one line to the waiting CLI, the traceback to the log
        log.exception("mount daemon failed")
        notify(f"mount daemon failed: {exc}")
        return 1
    finally:
        notify("the mount daemon stopped before the mount was ready")


def exit_now(code: int) -> None:
    """Leave without joining stray non-daemon threads (boto3 transfer workers stuck on a dead endpoint):
    everything acknowledged is in the journal by now, so nothing is lost."""
    logging.shutdown()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
