"""A local S3 server (moto's ThreadedMotoServer, real HTTP on 127.0.0.1) for the demo, tests and benchmarks.

Adds what those need on top of moto: a log of every request the server received (to count GETs and
check their order), an optional latency before the first byte (real S3 is remote), and an optional
fix for a moto trap — stock moto copies the whole object on every GET, ranged ones included, so a
64 KiB range of a 256 MiB object costs as much as the whole object. With ``fast_ranges=True`` object
bytes are kept in memory once and a ranged GET costs what the range costs, as on real S3.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from urllib.parse import unquote


@dataclass(frozen=True)
class Request:
    """One request the server received."""

    method: str
    bucket: str
    key: str
    range: str | None
    time: float


class _Middleware:
    """WSGI middleware: records requests and injects time-to-first-byte latency."""

    def __init__(self, app, server: LocalS3):
        self.app = app
        self.server = server

    def __call__(self, environ, start_response):
        path = unquote(environ.get("PATH_INFO", "/")).lstrip("/")
        bucket, _, key = path.partition("/")
        req = Request(environ["REQUEST_METHOD"], bucket, key, environ.get("HTTP_RANGE"), time.monotonic())
        with self.server._log_lock:
            self.server.requests.append(req)
        if self.server.latency:
            time.sleep(self.server.latency)
        return self.app(environ, start_response)


def _enable_fast_ranges() -> None:
    """Make moto's FakeKey.value return one cached bytes object instead of a fresh full copy."""
    from moto.s3.models import FakeKey

    if getattr(FakeKey, "_tiercache_fast", False):
        return
    original = FakeKey.value

    def getter(self):
        cached = self.__dict__.get("_tc_bytes")
        if cached is None:
            cached = original.fget(self)
            self.__dict__["_tc_bytes"] = cached
        return cached

    def setter(self, new_value):
        self.__dict__.pop("_tc_bytes", None)
        original.fset(self, new_value)

    FakeKey.value = property(getter, setter)
    FakeKey._tiercache_fast = True


_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


class LocalS3:
    """A moto S3 server on 127.0.0.1 with a request log; use as a context manager."""

    def __init__(self, port: int = 0, fast_ranges: bool = False, latency: float = 0.0):
        for name, value in _CREDENTIALS.items():
            os.environ.setdefault(name, value)
        self.port = port
        self.fast_ranges = fast_ranges
        self.latency = latency
        self.requests: list[Request] = []
        self._log_lock = threading.Lock()
        self._server = None

    def start(self) -> LocalS3:
        """Start serving; returns self once the port is bound."""
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        if self.fast_ranges:
            _enable_fast_ranges()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        wsgi = self._server._server
        wsgi.app = _Middleware(wsgi.app, self)
        self.port = self._server.get_host_and_port()[1]
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """The endpoint URL clients should use."""
        return f"http://127.0.0.1:{self.port}"

    def client(self):
        """A boto3 S3 client pointed at this server."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def reset_log(self) -> None:
        """Forget the requests seen so far."""
        with self._log_lock:
            self.requests.clear()

    def gets(self, bucket: str | None = None, key: str | None = None) -> list[Request]:
        """The GET requests on objects (not listings) seen so far, optionally for one bucket/key."""
        with self._log_lock:
            return [
                r for r in self.requests
                if r.method == "GET" and r.key and (bucket is None or r.bucket == bucket)
                and (key is None or r.key == key)
            ]


class LocalS3Process:
    """A :class:`LocalS3` in a child process, so that its GIL is not the readers' (real S3 is remote).

    Benchmarks use it: in one process the server's Python work and the client's compete for one GIL, and
    any extra work the client does (a cache writing its SSD tier) then slows the server too. Same
    ``endpoint`` and ``client()`` as LocalS3; the request log stays in the child. Use as a context manager.
    """

    def __init__(self, fast_ranges: bool = True, latency: float = 0.0):
        self.fast_ranges = fast_ranges
        self.latency = latency
        self.endpoint = ""
        self._proc: subprocess.Popen | None = None

    def start(self) -> LocalS3Process:
        """Start the child; returns self once it serves."""
        for name, value in _CREDENTIALS.items():
            os.environ.setdefault(name, value)
        cmd = [sys.executable, "-m", "tiercache.devserver", "--latency", str(self.latency)]
        cmd += ["--fast-ranges"] if self.fast_ranges else []
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.endpoint = self._proc.stdout.readline().strip()
        if not self.endpoint.startswith("http://"):
            self.stop()
            raise RuntimeError("the local S3 server process did not start")
        return self

    def set_latency(self, seconds: float) -> None:
        """Change the time before the first byte of every response."""
        self._proc.stdin.write(f"latency {seconds}\n")
        self._proc.stdin.flush()
        self._proc.stdout.readline()
        self.latency = seconds

    def stop(self) -> None:
        """Stop the child."""
        if self._proc is None:
            return
        try:
            self._proc.stdin.write("quit\n")
            self._proc.stdin.flush()
            self._proc.wait(10)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            self._proc.kill()
        self._proc = None

    def __enter__(self) -> LocalS3Process:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    client = LocalS3.client


def missing_extra(modules: dict[str, str]) -> str | None:
    """One line naming the extra to install when one of ``modules`` ({module: extra}) cannot be imported."""
    import importlib.util

    for module, extra in modules.items():
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed; install it with: pip install 'tiercache[{extra}]'"
    return None


def main(argv: list[str] | None = None) -> int:
    """``python -m tiercache.devserver``: serve on 127.0.0.1 until SIGINT/SIGTERM (or ``quit`` on stdin), print
    the endpoint first; ``latency S`` on stdin changes the time before the first byte."""
    parser = argparse.ArgumentParser(prog="python -m tiercache.devserver", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: one the OS picks)")
    parser.add_argument("--bucket", action="append", default=[], metavar="NAME",
                        help="create this bucket at start (repeatable)")
    parser.add_argument("--fast-ranges", action="store_true", help="a ranged GET costs what the range costs")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before the first byte")
    args = parser.parse_args(argv)
    missing = missing_extra({"moto": "devserver", "flask": "devserver"})
    if missing:
        sys.stderr.write(f"tiercache.devserver: error: {missing}\n")
        return 1
    if not 0 <= args.port <= 65535:
        sys.stderr.write(f"tiercache.devserver: error: --port: {args.port} is not a port number (0-65535)\n")
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server = LocalS3(port=args.port, fast_ranges=args.fast_ranges, latency=args.latency).start()
    except OSError as exc:
        sys.stderr.write(f"tiercache.devserver: error: cannot serve on port {args.port}: {exc.strerror or exc}\n")
        return 1
    try:
        for name in args.bucket:
            server.client().create_bucket(Bucket=name)
        print(server.endpoint, flush=True)
        threading.Thread(target=_obey_stdin, args=(server, stop), name="devserver-stdin", daemon=True).start()
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


def _obey_stdin(server: LocalS3, stop: threading.Event) -> None:
    """``latency S`` and ``quit`` lines from stdin (LocalS3Process drives the server this way); EOF is not a
    stop: a server started with stdin closed serves on."""
    try:
        for line in sys.stdin:
            command, _, value = line.strip().partition(" ")
            if command == "latency":
                server.latency = float(value)
                print("ok", flush=True)
            elif command == "quit":
                stop.set()
                return
    except (OSError, ValueError):
        return


if __name__ == "__main__":
    sys.exit(main())
