"""The control plane of a mount: a Unix socket per daemon, a JSON-lines protocol, a client, mount discovery.

Protocol (one request per line, UTF-8 JSON; several requests may follow each other on one connection)::

    → {"op": "stats", "args": {}}
    ← {"progress": {...}}                 zero or more, for long operations (flush, warm)
    ← {"ok": true, "result": {...}}
      or {"ok": false, "error": "one line", "errno": 2, "type": "NotFound"}

The socket is mode 0600 in the mount's state dir (the cache dir; a short path under /run/tiercache or
/tmp/tiercache-UID when that is too long for a Unix socket) and every connection's peer credentials are
checked: only the mounting user and root are served.

Discovery: ``find_mount(path)`` finds the tiercache mount holding ``path`` from /proc/self/mountinfo, then its
registry record (mountpoint → socket, source, pid) under ``registry_dirs()``.

Handlers live in ``HANDLERS``; add one with ``@handler("name")``. A handler is called as
``fn(daemon, args, progress) -> dict`` where ``daemon`` is the running mount (``.cache``, ``.writes``,
``.info``, ``.request_shutdown(...)``) and ``progress(dict)`` sends an interim line to the client.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from . import errors as _errors
from .errors import ConfigError, TiercacheError

log = logging.getLogger(__name__)

FSTYPE = "fuse.tiercache"
_SUN_PATH_MAX = 107
_MAX_LINE = 64 << 20


class ControlError(TiercacheError):
    """The daemon answered a control request with an error, or could not be reached."""


class DaemonUnreachable(ControlError):
    """Nothing answers on a mount's control socket (the daemon exited or was killed)."""


class Daemon(Protocol):
    """What handlers see of the running mount."""

    cache: Any
    writes: Any
    info: dict

    def request_shutdown(
        self, drain: bool = True, timeout: float | None = None, unmount: bool = False
    ) -> None:
        """Set how the daemon exits (drain uploads or not) and optionally unmount now."""


Progress = Callable[[dict], None]
Handler = Callable[[Daemon, dict, Progress], dict]
HANDLERS: dict[str, Handler] = {}


def handler(name: str) -> Callable[[Handler], Handler]:
    """Register ``fn`` as the handler of control op ``name``."""

    def register(fn: Handler) -> Handler:
        HANDLERS[name] = fn
        return fn

    return register


# ---------------------------------------------------------------- paths and registry


def _runtime_dir() -> Path:
    """A private per-user directory for sockets and the mount registry."""
    if os.geteuid() == 0:
        return Path("/run/tiercache")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / "tiercache"
    return Path(f"/tmp/tiercache-{os.geteuid()}")


def _private_dir(path: Path) -> Path:
    """Create ``path`` (0700) and check it is ours and not a symlink (it may live in /tmp)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not os.path.isdir(path) or os.path.islink(path) or st.st_uid != os.geteuid():
        raise ControlError(f"{path}: not a private directory owned by uid {os.geteuid()}")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def registry_dirs() -> list[Path]:
    """Where mount records may be, for this user: root's /run/tiercache/mounts first, then the user's own."""
    dirs = [Path("/run/tiercache/mounts")]
    own = _runtime_dir() / "mounts"
    if own not in dirs:
        dirs.append(own)
    return dirs


def _record_name(mountpoint: str) -> str:
    return hashlib.sha1(os.path.realpath(mountpoint).encode()).hexdigest() + ".json"


def socket_path_for(state_dir: str | os.PathLike, mountpoint: str) -> str:
    """A mount's control socket: ``STATE_DIR/control.sock``, or a short private path if that is too long."""
    path = os.path.join(os.path.abspath(state_dir), "control.sock")
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        return path
    short = _private_dir(_runtime_dir()) / (_record_name(mountpoint)[:16] + ".sock")
    return str(short)


def register_mount(record: dict) -> Path:
    """Write the registry record of a mount (mountpoint, source, socket_path, pid, ...); returns its path."""
    directory = _private_dir(_runtime_dir() / "mounts")
    path = directory / _record_name(record["mountpoint"])
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)
    return path


def unregister_mount(mountpoint: str, pid: int | None = None) -> None:
    """Remove a mount's registry record (only if it names ``pid``, when given)."""
    for directory in registry_dirs():
        path = directory / _record_name(mountpoint)
        with contextlib.suppress(OSError, ValueError):
            if pid is None or json.loads(path.read_text()).get("pid") == pid:
                path.unlink()


def _read_record(mountpoint: str) -> dict | None:
    for directory in registry_dirs():
        try:
            return json.loads((directory / _record_name(mountpoint)).read_text())
        except (OSError, ValueError):
            continue
    return None


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    if "\\" not in field:
        return field
    raw = field.encode()
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == 0x5C and len(raw[i + 1:i + 4]) == 3 and raw[i + 1:i + 4].isdigit():
            out.append(int(raw[i + 1:i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return out.decode(errors="surrogateescape")


def mounts() -> list[tuple[str, str, str]]:
    """(mountpoint, fstype, source) of every mount in this mount namespace, from /proc/self/mountinfo."""
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            parts, rparts = left.split(), right.split()
            if len(parts) >= 5 and len(rparts) >= 2:
                out.append((_unescape(parts[4]), rparts[0], _unescape(rparts[1])))
    return out


def _within(path: str, root: str) -> bool:
    return root == "/" or path == root or path.startswith(root.rstrip("/") + "/")


@dataclass
class Mount:
    """A tiercache mount found by ``find_mount``: where it is, what it serves, how to reach its daemon."""

    mountpoint: str
    source: str
    socket_path: str
    pid: int | None = None
    info: dict = field(default_factory=dict)

    def relpath(self, path: str) -> str:
        """The key of ``path`` inside this mount ("" for the mount root); ConfigError if outside it."""
        real = os.path.realpath(path)
        if not _within(real, self.mountpoint):
            raise ConfigError(f"{path}: not inside the tiercache mount {self.mountpoint}")
        rel = os.path.relpath(real, self.mountpoint)
        return "" if rel == "." else rel.replace(os.sep, "/")

    def client(self, timeout: float | None = 30.0) -> ControlClient:
        """A client for this mount's control socket."""
        return ControlClient(self.socket_path, timeout=timeout, mountpoint=self.mountpoint)

    def daemon_alive(self) -> bool:
        """True while the daemon process named in the registry runs (not a zombie)."""
        return self.pid is not None and pid_alive(self.pid)


def find_mount(path: str) -> Mount | None:
    """The tiercache mount holding ``path`` (the filesystem ``path`` is on), or None."""
    real = os.path.realpath(path)
    best: tuple[str, str, str] | None = None
    for entry in mounts():
        if _within(real, entry[0]) and (best is None or len(entry[0]) >= len(best[0])):
            best = entry
    if best is None or best[1] != FSTYPE:
        return None
    record = _read_record(best[0])
    if record is None:
        log.debug("%s is a tiercache mount without a registry record", best[0])
        return None
    return Mount(mountpoint=best[0], source=record.get("source", ""), socket_path=record["socket_path"],
                 pid=record.get("pid"), info=record)


def list_mounts() -> list[Mount]:
    """Every tiercache mount in this mount namespace that has a registry record."""
    found = []
    for mountpoint, fstype, _source in mounts():
        if fstype == FSTYPE:
            mount = find_mount(mountpoint)
            if mount is not None and mount.mountpoint == mountpoint:
                found.append(mount)
    return found


def pid_alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


# ---------------------------------------------------------------- client


class ControlClient:
    """Sends requests to one mount's control socket."""

    def __init__(self, socket_path: str, timeout: float | None = 30.0, mountpoint: str = ""):
        self.socket_path = socket_path
        self.timeout = timeout
        self.mountpoint = mountpoint

    def request(self, op: str, *, on_progress: Progress | None = None, reply_timeout: float | None = -1.0,
                **args: Any) -> dict:
        """Run ``op`` with ``args`` on the daemon and return its result; raises the server's error.

        ``on_progress`` receives interim progress dicts; ``reply_timeout`` (seconds without an answer line,
        None for none) defaults to the client's ``timeout``.
        """
        where = self.mountpoint or self.socket_path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self.timeout if reply_timeout == -1.0 else reply_timeout)
        try:
            try:
                sock.connect(self.socket_path)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise DaemonUnreachable(
                    f"{where}: the tiercache daemon is not running ({exc.strerror}: {self.socket_path})"
                ) from None
            sock.sendall(json.dumps({"op": op, "args": args}).encode() + b"\n")
            reader = sock.makefile("rb")
            while True:
                try:
                    line = reader.readline(_MAX_LINE)
                except TimeoutError:
                    raise ControlError(f"{where}: no answer to {op!r} from the daemon in time") from None
                if not line:
                    raise ControlError(f"{where}: the daemon closed the connection during {op!r}")
                msg = json.loads(line)
                if "progress" in msg:
                    if on_progress is not None:
                        on_progress(msg["progress"])
                    continue
                if msg.get("ok"):
                    return msg.get("result") or {}
                raise _error_from(msg)
        finally:
            sock.close()


def _error_from(msg: dict) -> TiercacheError:
    """Rebuild the server's error: same class when it is a tiercache error, else ControlError; errno kept."""
    cls = getattr(_errors, str(msg.get("type", "")), None)
    if not (isinstance(cls, type) and issubclass(cls, TiercacheError)):
        cls = ControlError
    err = cls(msg.get("error") or "control request failed")
    if isinstance(msg.get("errno"), int):
        err.errno = msg["errno"]
    return err


# ---------------------------------------------------------------- server


class ControlServer:
    """Serves HANDLERS on a Unix socket for one daemon; only ``owner_uid`` and root may connect."""

    def __init__(self, socket_path: str, daemon: Daemon, owner_uid: int | None = None):
        self.socket_path = socket_path
        self.daemon = daemon
        self.owner_uid = os.geteuid() if owner_uid is None else owner_uid
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> ControlServer:
        """Bind (replacing a stale socket file), chmod 0600 and serve in a background thread."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            sock.bind(self.socket_path)
        finally:
            os.umask(old)
        os.chmod(self.socket_path, 0o600)
        sock.listen(64)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept, name="tc-control", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting and remove the socket file."""
        self._stopping = True
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        if self._thread is not None:
            self._thread.join(5)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)

    def _accept(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                if self._stopping:
                    return
                time.sleep(0.05)
                continue
            threading.Thread(target=self._serve, args=(conn,), name="tc-control-conn", daemon=True).start()

    def _allowed(self, conn: socket.socket) -> bool:
        pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                             struct.calcsize("3i")))
        if uid in (self.owner_uid, 0):
            return True
        log.warning("control socket: refused a connection from uid %d (pid %d); only uid %d and root may "
                    "use it", uid, pid, self.owner_uid)
        return False

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            if not self._allowed(conn):
                _send(conn, {"ok": False, "error": "permission denied: not the mounting user", "errno": 13,
                             "type": "AccessDenied"})
                return
            reader = conn.makefile("rb")
            while True:
                try:
                    line = reader.readline(_MAX_LINE)
                except OSError:
                    return
                if not line:
                    return
                if not self._answer(conn, line):
                    return

    def _answer(self, conn: socket.socket, line: bytes) -> bool:
        """Run one request; False when the client went away."""
        try:
            request = json.loads(line)
            op, args = request["op"], request.get("args") or {}
            if not isinstance(args, dict):
                raise ConfigError("request args must be an object")
        except (ValueError, KeyError, TypeError) as exc:
            return _send(conn, {"ok": False, "error": f"bad request: {exc}", "errno": 22,
                                "type": "ConfigError"})
        fn = HANDLERS.get(op)
        if fn is None:
            known = ", ".join(sorted(HANDLERS))
            return _send(conn, {"ok": False, "error": f"unknown op {op!r} (known: {known})", "errno": 22,
                                "type": "ConfigError"})
        try:
            result = fn(self.daemon, args, lambda progress: _send(conn, {"progress": progress}))
            reply = {"ok": True, "result": result if result is not None else {}}
        except TiercacheError as exc:
            reply = {"ok": False, "error": str(exc), "errno": exc.errno, "type": type(exc).__name__}
        except (TypeError, ValueError) as exc:
            reply = {"ok": False, "error": f"{op}: bad arguments: {exc}", "errno": 22, "type": "ConfigError"}
        except Exception as exc:  # noqa: BLE001 - the daemon keeps serving; the client gets one line
            log.exception("control op %s failed", op)
            reply = {"ok": False, "error": f"{op}: internal error: {exc}", "errno": 5, "type": "ControlError"}
        return _send(conn, reply)


def _send(conn: socket.socket, msg: dict) -> bool:
    try:
        conn.sendall(json.dumps(msg, default=str).encode() + b"\n")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------- handlers


def keys_of(paths: Any) -> list[str]:
    """Mount-relative paths from a request → cache keys ("" for the root); refuses paths leaving the mount."""
    if isinstance(paths, str):
        paths = [paths]
    if not isinstance(paths, list | tuple):
        raise ConfigError("paths: expected a list of paths relative to the mount")
    keys = []
    for path in paths:
        key = os.path.normpath(str(path)).strip("/")
        key = "" if key == "." else key
        if key == ".." or key.startswith("../"):
            raise ConfigError(f"{path}: outside the mount")
        keys.append(key)
    return keys


@handler("ping")
def _ping(daemon: Daemon, args: dict, progress: Progress) -> dict:
    return {"pid": os.getpid(), **daemon.info}


_jobs_lock = threading.Lock()
_jobs: dict[str, int] = {"warm": 0}


@contextlib.contextmanager
def _job(kind: str):
    """Count a long request (shown by ``stats`` as ``jobs``) while it runs."""
    with _jobs_lock:
        _jobs[kind] = _jobs.get(kind, 0) + 1
    try:
        yield
    finally:
        with _jobs_lock:
            _jobs[kind] -= 1


@handler("stats")
def _stats(daemon: Daemon, args: dict, progress: Progress) -> dict:
    with _jobs_lock:
        jobs = dict(_jobs)
    return {
        "mount": daemon.info,
        "cache": daemon.cache.stats(),
        "writes": daemon.writes.stats() if daemon.writes is not None else {},
        "jobs": jobs,
    }


_DRAIN_FIELDS = ("dirty_bytes", "pending_files", "pending_ops", "open_files", "in_flight",
                 "oldest_pending_age_s", "uploaded_files", "uploaded_bytes", "failed_uploads", "last_error")


@handler("drain_status")
def _drain_status(daemon: Daemon, args: dict, progress: Progress) -> dict:
    if daemon.writes is None:
        return {name: 0 for name in _DRAIN_FIELDS}
    stats = daemon.writes.stats()
    return {name: stats.get(name) for name in _DRAIN_FIELDS}


@handler("flush")
def _flush(daemon: Daemon, args: dict, progress: Progress) -> dict:
    """Upload everything acknowledged now; progress lines every ``interval`` s; returns flush_all's report."""
    if daemon.writes is None:
        return {"uploaded": [], "left": [], "failed": [], "open": []}
    timeout = args.get("timeout")
    interval = float(args.get("interval", 0.5))
    box: dict = {}

    def run() -> None:
        try:
            box["result"] = daemon.writes.flush_all(timeout=timeout)
        except BaseException as exc:  # noqa: BLE001 - handed to the request thread
            box["error"] = exc

    worker = threading.Thread(target=run, name="tc-flush", daemon=True)
    worker.start()
    while True:
        worker.join(interval)
        if not worker.is_alive():
            break
        progress(_drain_status(daemon, {}, progress))
    if "error" in box:
        raise box["error"]
    return {**box["result"], **_drain_status(daemon, {}, progress)}


@handler("shutdown")
def _shutdown(daemon: Daemon, args: dict, progress: Progress) -> dict:
    """How the daemon exits: ``drain`` (bool), ``timeout`` (s); ``unmount`` true also unmounts now."""
    daemon.request_shutdown(drain=bool(args.get("drain", True)), timeout=args.get("timeout"),
                            unmount=bool(args.get("unmount", False)))
    return {"pid": os.getpid()}


HANDLERS["unmount"] = lambda daemon, args, progress: _shutdown(daemon, {**args, "unmount": True}, progress)


# Data placement: plans, warm, evict, pins. Paths arrive relative to the mount root.


@handler("plan")
def _plan(daemon: Daemon, args: dict, progress: Progress) -> dict:
    """The loader's read plan (mount-relative paths in read order); restarts the per-plan hit rate."""
    keys = keys_of(args.get("paths", []))
    daemon.cache.set_plan(keys)
    return {"planned": len(keys)}


def _threads(args: dict) -> int | None:
    threads = args.get("threads")
    if threads is None:
        return None
    if not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= 1024:
        raise ConfigError(f"threads: {threads!r} is not a number from 1 to 1024")
    return threads


@handler("warm")
def _warm(daemon: Daemon, args: dict, progress: Progress) -> dict:
    """Fetch files into a tier: metadata first, then the bytes, streaming progress; stops if the client leaves.

    Args: ``paths``, ``recursive`` (directories), ``tier`` (ram|ssd), ``threads``, ``interval`` (s between
    progress lines). The result says ``complete`` only if every byte asked for is resident in the tier.
    """
    with _job("warm"):
        return _run_warm(daemon, args, progress)


def _run_warm(daemon: Daemon, args: dict, progress: Progress) -> dict:
    tier = args.get("tier", "ssd")
    if tier not in ("ram", "ssd"):
        raise ConfigError(f"tier {tier!r} is not one of ram, ssd")
    threads = _threads(args)
    interval = float(args.get("interval", 0.2))
    keys = keys_of(args.get("paths", []))
    cancel = threading.Event()
    progress({"phase": "metadata", "paths": len(keys)})
    infos = daemon.cache.warm_targets(keys, recursive=bool(args.get("recursive", False)),
                                      display=lambda key: _display(daemon, key))
    last = [0.0]
    lock = threading.Lock()

    def report(state: dict) -> None:
        now = time.monotonic()
        with lock:
            final = state["done_files"] == state["files"]
            if not final and now - last[0] < interval:
                return
            last[0] = now
            if not progress({"phase": "fetch", **state}):
                cancel.set()  # the client went away (Ctrl-C): stop between files

    result = daemon.cache.warm_files(infos, tier, report, threads=threads, cancel=cancel)
    return {**result, "tier": tier}


def _display(daemon: Daemon, key: str) -> str:
    """How a user names ``key``: its path under the mountpoint."""
    return os.path.join(daemon.info.get("mountpoint", "/"), key) if key else daemon.info.get("mountpoint", "/")


def _check_exists(daemon: Daemon, keys: list[str]) -> None:
    """NotFound, naming the path as the user sees it, for the first key that is neither file nor directory."""
    for key in keys:
        try:
            daemon.cache.stat(key)
        except _errors.NotFound:
            raise _errors.NotFound(f"{_display(daemon, key)}: no such file or directory") from None


def _pinned_under(daemon: Daemon, key: str) -> list[str]:
    """Pins at, above or below ``key`` (data the evict of ``key`` will keep)."""
    pins = daemon.cache.pins()
    return [p for p in pins if not key or not p or p == key or p.startswith(key + "/") or key.startswith(p + "/")]


@handler("evict")
def _evict(daemon: Daemon, args: dict, progress: Progress) -> dict:
    """Drop clean, unpinned cached data of ``paths`` from ``tier`` (ram|ssd|all); bytes freed."""
    tier = args.get("tier", "all")
    if tier not in ("ram", "ssd", "all"):
        raise ConfigError(f"tier {tier!r} is not one of ram, ssd, all")
    keys = keys_of(args.get("paths", []))
    _check_exists(daemon, keys)
    freed = sum(int(daemon.cache.evict(key, tier) or 0) for key in keys)
    kept = sorted({p for key in keys for p in _pinned_under(daemon, key)})
    return {"freed": freed, "tier": tier, "pinned_kept": kept}


@handler("pin")
def _pin(daemon: Daemon, args: dict, progress: Progress) -> dict:
    """Protect ``paths`` from eviction (persisted); reports how much of them is resident already."""
    keys = keys_of(args.get("paths", []))
    _check_exists(daemon, keys)
    for key in keys:
        daemon.cache.pin(key)
    return {"pinned": keys, **_residency(daemon, keys)}


@handler("unpin")
def _unpin(daemon: Daemon, args: dict, progress: Progress) -> dict:
    """Undo ``pin`` for exactly these paths; ConfigError naming the pins if one of them is not pinned."""
    keys = keys_of(args.get("paths", []))
    pins = set(daemon.cache.pins())
    for key in keys:
        if key not in pins:
            known = ", ".join(_display(daemon, p) for p in sorted(pins)) or "none"
            raise ConfigError(f"{_display(daemon, key)} is not pinned (pinned: {known})")
    for key in keys:
        daemon.cache.unpin(key)
    return {"unpinned": keys}


def _residency(daemon: Daemon, keys: list[str]) -> dict:
    """Total and resident bytes (in the lowest tier) of the files under ``keys``."""
    cache = daemon.cache
    infos = cache.warm_targets(keys, recursive=True)
    tier = "ssd" if cache.ssd is not None else "ram"
    return {"bytes": sum(i.size for i in infos),
            "resident_bytes": sum(cache.resident(i.key, tier) for i in infos), "tier": tier}
