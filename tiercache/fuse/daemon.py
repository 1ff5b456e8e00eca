"""The mount daemon: start-up in the background with a readiness handshake, signals, clean unmount with a
drain of pending uploads.

``start_daemon(spec)`` (what ``tiercache mount`` runs) spawns ``python -m tiercache.fuse.mount`` as a
detached process (a new session; no fork of a process holding threads or LMDB) and waits on a pipe until the
daemon says ``ready`` — the mount answers and its control socket listens — or reports its one-line error.
``MountDaemon.run`` is the daemon itself (also what ``--foreground`` runs in-process):

    cache (TieredCache, owns the cache dir) → write tier (replays its journal) → control socket + registry
    → FUSE loop (libfuse handles SIGINT/SIGTERM/SIGHUP by unmounting) → drain uploads (bounded) → close

Logs go to CACHE_DIR/mount.log (the daemon's stdout/stderr too, so libfuse's own messages land there).
The checks, ``MountSpec`` and the libfuse options it uses are in fuse/mount.py.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import control, handlers, mounts, profiles  # noqa: F401 - importing registers the control ops
from ..errors import ConfigError, TiercacheError
from ..private import open_private, private_dir
from ..tiers.budget import return_freed_memory_to_the_os
from .mount import MountError, MountSpec, check_fuse_access, check_mountpoint, fuse_options, unmount
from .readinto import READ_BUFFER_MAX

log = logging.getLogger("tiercache.mount")

READY_TIMEOUT = 120.0


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
        from ..writeback.front import WriteTier
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
            self.info["fuse_ops"] = ops.op_counts  # live: calls per FUSE operation
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
        # freed blocks go back to the OS, keeping RSS near the memory budget (tiers/budget.py); libfuse's reply
        # buffer of each READ (malloc'd, up to 1 MiB) stays below the threshold: reused from malloc's arenas,
        # not mmapped, page-faulted and unmapped per request (a quarter of the daemon's CPU per MiB streamed)
        return_freed_memory_to_the_os(READ_BUFFER_MAX + (64 << 10), keep=8 << 20)
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

