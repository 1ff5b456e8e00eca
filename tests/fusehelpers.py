"""Helpers for tests that mount: run the CLI, mount with guaranteed teardown, a pausable TCP proxy."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tiercache import mounts

CLI = [sys.executable, "-m", "tiercache.cli"]

needs_fuse = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or os.geteuid() != 0, reason="needs /dev/fuse and root"
)


def ssd_size() -> str:
    """A small SSD tier when the engine has one, else none."""
    try:
        import tiercache.tiers.ssd  # noqa: F401
    except ImportError:
        return "0"
    return "256M"


def run_cli(*args: str, timeout: float = 90, check: bool = False) -> subprocess.CompletedProcess:
    """Run ``tiercache ARGS`` in a subprocess; stdout/stderr captured as text."""
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"tiercache {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Non-zero exit, exactly one line on stderr starting with 'tiercache: error:', no traceback."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0, proc
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("tiercache: error: "), lines[0]
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])
    return lines[0]


def is_mounted(path: str | Path) -> bool:
    real = os.path.realpath(path)
    return any(mp == real for mp, _fstype, _src in mounts.mount_table())


def force_cleanup(path: str | Path, pid: int | None) -> None:
    """Unmount ``path`` whatever state it is in, and make sure its daemon is gone."""
    path = str(path)
    if is_mounted(path):
        for flag in ("-u", "-uz"):
            if subprocess.run(["fusermount3", flag, path], capture_output=True).returncode == 0:
                break
    if pid is not None:
        deadline = time.monotonic() + 20
        while mounts.pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if mounts.pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if is_mounted(path):
        subprocess.run(["fusermount3", "-uz", path], capture_output=True)


@dataclass
class Mounted:
    """A mount made by ``tiercache mount`` for a test."""

    path: Path
    cache_dir: Path
    write_dir: Path
    source: str
    args: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        mount = mounts.find_mount(str(self.path))
        return mount.pid if mount is not None else None

    @property
    def log(self) -> str:
        try:
            return (self.cache_dir / "mount.log").read_text(errors="replace")
        except OSError:
            return ""

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return run_cli(*args, str(self.path), timeout=timeout)


class Mounter:
    """Makes mounts and undoes every one of them at teardown (even after a failed test)."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.made: list[tuple[Path, int | None]] = []
        self._n = 0

    def mount(self, source: str, *extra: str, endpoint: str | None = None, name: str | None = None,
              cache_dir: Path | None = None, write_dir: Path | None = None,
              ssd: str | None = None) -> Mounted:
        self._n += 1
        name = name or f"m{self._n}"
        path = self.tmp_path / name
        path.mkdir(exist_ok=True)
        cache_dir = cache_dir or self.tmp_path / f"{name}-cache"
        write_dir = write_dir or self.tmp_path / f"{name}-write"
        args = ["mount", source, str(path), "--ssd", str(cache_dir), "--ssd-size", ssd or ssd_size(),
                "--write-dir", str(write_dir), "--ram", "256M", *extra]
        if endpoint:
            args += ["--endpoint-url", endpoint]
        proc = run_cli(*args)
        mounted = Mounted(path, cache_dir, write_dir, source, args)
        self.made.append((path, mounted.pid))
        if proc.returncode != 0:
            raise AssertionError(f"mount failed ({proc.returncode}): {proc.stderr}\n{mounted.log[-3000:]}")
        self.made[-1] = (path, mounted.pid)
        return mounted

    def cleanup(self) -> None:
        for path, pid in reversed(self.made):
            found = None if pid else mounts.find_mount(str(path))
            pid = pid or (found.pid if found else None)
            force_cleanup(path, pid)




class PausableProxy:
    """A TCP proxy to 127.0.0.1:target_port whose traffic can be held (``pause``) and let go (``resume``).

    While paused, bytes already received are held, so requests in flight (uploads) stall deterministically.
    """

    def __init__(self, target_port: int):
        self.target_port = target_port
        self._open = threading.Event()
        self._open.set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pause(self) -> None:
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            self._socks += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self._open.wait()
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self._open.set()
        self._listener.close()
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.close()
