"""The control socket of a mount: a JSON-lines protocol over a Unix socket, its client and its server.

Protocol (one request per line, UTF-8 JSON; several requests may follow each other on one connection)::

    → {"op": "stats", "args": {}}
    ← {"progress": {...}}                 zero or more, for long operations (flush, warm)
    ← {"ok": true, "result": {...}}
      or {"ok": false, "error": "one line", "errno": 2, "type": "NotFound"}

The socket is mode 0600 in the mount's state dir (the cache dir; a short path under /run/tiercache or
/tmp/tiercache-UID when that is too long for a Unix socket: ``tiercache.mounts.socket_path_for``) and every
connection's peer credentials are checked: only the mounting user and root are served.

The server answers the ops in ``HANDLERS``; add one with ``@handler("name")``. The built-in ops live in
``tiercache.handlers`` and are registered when it is imported. A handler is called as
``fn(daemon, args, progress) -> dict`` where ``daemon`` is the running mount (``.cache``, ``.writes``,
``.info``, ``.request_shutdown(...)``) and ``progress(dict)`` sends an interim line to the client.
A handler may tie state to the connection it serves: ``current_connection()`` is a token unique to that
connection, and ``on_disconnect(fn)`` runs ``fn()`` when the client closes it (a loader's plan session).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from . import errors as _errors
from .errors import ConfigError, TiercacheError

log = logging.getLogger(__name__)

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
    """A decorator: register the function as the handler of control op ``name``."""

    def register(fn: Handler) -> Handler:
        HANDLERS[name] = fn
        return fn

    return register


_serving = threading.local()  # the connection the current handler thread serves


class Connection:
    """One client connection as handlers see it: a token, and what to run when it closes."""

    def __init__(self) -> None:
        self.closers: list[Callable[[], None]] = []
        self.state: dict[Any, Any] = {}  # what handlers keep between requests on this connection


def current_connection() -> Connection | None:
    """The connection the calling handler serves (None outside a handler)."""
    return getattr(_serving, "connection", None)


def on_disconnect(fn: Callable[[], None]) -> None:
    """Run ``fn()`` once the client closes the connection the calling handler serves."""
    connection = current_connection()
    if connection is None:
        raise ConfigError("on_disconnect outside a control request")
    connection.closers.append(fn)


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


class ControlSession:
    """Requests over one connection that stays open (state the daemon ties to it lives as long)."""

    def __init__(self, socket_path: str, timeout: float | None = 30.0, mountpoint: str = ""):
        self.socket_path, self.timeout, self.mountpoint = socket_path, timeout, mountpoint
        self._sock: socket.socket | None = None
        self._reader: Any = None
        self._lock = threading.Lock()

    def request(self, op: str, **args: Any) -> dict:
        """Run ``op`` on the daemon over this session's connection (opened on first use, reopened once if
        the daemon closed it)."""
        with self._lock:
            for attempt in (0, 1):
                try:
                    return self._request(op, args)
                except (BrokenPipeError, ConnectionResetError, _Closed):
                    self._close()
                    if attempt:
                        raise ControlError(f"{self.mountpoint or self.socket_path}: the daemon closed the "
                                           f"connection during {op!r}") from None
            raise AssertionError("unreachable")

    def pipeline(self, op: str, args_list: list[dict]) -> list[dict]:
        """Run ``op`` once per entry of ``args_list``, every request written before the answers are read
        (the daemon works on one while the next travels); raises the first error after reading them all."""
        with self._lock:
            self._connect()
            payload = b"".join(json.dumps({"op": op, "args": args}).encode() + b"\n" for args in args_list)
            sender = threading.Thread(target=self._send_all, args=(payload,), daemon=True)
            sender.start()  # write and read at once: neither side's socket buffer can fill up and stall
            results: list[dict] = []
            error: TiercacheError | None = None
            try:
                while len(results) < len(args_list):
                    line = self._reader.readline(_MAX_LINE)
                    if not line:
                        raise ControlError(f"{self.mountpoint or self.socket_path}: the daemon closed the "
                                           f"connection during {op!r}")
                    msg = json.loads(line)
                    if "progress" in msg:
                        continue
                    if not msg.get("ok") and error is None:
                        error = _error_from(msg)
                    results.append(msg.get("result") or {})
            except (OSError, ValueError):
                self._close()
                raise
            finally:
                sender.join()
            if error is not None:
                raise error
            return results

    def _send_all(self, payload: bytes) -> None:
        with contextlib.suppress(OSError):
            self._sock.sendall(payload)

    def _connect(self) -> None:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.socket_path)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                sock.close()
                raise DaemonUnreachable(f"{self.mountpoint or self.socket_path}: the tiercache daemon is not "
                                        f"running ({exc.strerror}: {self.socket_path})") from None
            self._sock, self._reader = sock, sock.makefile("rb")

    def _request(self, op: str, args: dict) -> dict:
        self._connect()
        self._sock.sendall(json.dumps({"op": op, "args": args}).encode() + b"\n")
        while True:
            line = self._reader.readline(_MAX_LINE)
            if not line:
                raise _Closed()
            msg = json.loads(line)
            if "progress" in msg:
                continue
            if msg.get("ok"):
                return msg.get("result") or {}
            raise _error_from(msg)

    def _close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._reader.close()
                self._sock.close()
        self._sock = self._reader = None

    def close(self) -> None:
        """Close the connection (the daemon then drops what it tied to it)."""
        with self._lock:
            self._close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._close()


class _Closed(Exception):
    """The daemon closed a session's connection."""


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
        connection = _serving.connection = Connection()
        try:
            self._serve_requests(conn)
        finally:
            _serving.connection = None
            for closer in connection.closers:
                try:
                    closer()
                except Exception:  # noqa: BLE001 - one failing closer must not skip the others
                    log.exception("control: a disconnect callback failed")

    def _serve_requests(self, conn: socket.socket) -> None:
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
