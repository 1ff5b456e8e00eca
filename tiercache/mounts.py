"""Finding and registering tiercache mounts: the mount registry, /proc/self/mountinfo, ``Mount``.

A running daemon writes a registry record (mountpoint → socket, source, pid, ...) with ``register_mount``
under ``registry_dirs()``; ``find_mount(path)`` finds the tiercache mount holding ``path`` from
/proc/self/mountinfo, then its record, and ``Mount.client()`` talks to its control socket.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from .control import ControlClient, ControlError, ControlSession
from .errors import ConfigError

log = logging.getLogger(__name__)

FSTYPE = "fuse.tiercache"
_SUN_PATH_MAX = 107


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


def mount_table() -> list[tuple[str, str, str]]:
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

    def session(self, timeout: float | None = 30.0) -> ControlSession:
        """A connection to this mount's control socket that stays open (plans tied to it end when it closes)."""
        return ControlSession(self.socket_path, timeout=timeout, mountpoint=self.mountpoint)

    def send_plan(self, paths: list[str], client: str = "default", bind: bool = False,
                  session: ControlSession | None = None, part: int = 1 << 15) -> dict:
        """Send ``client``'s plan (mount-relative paths in read order) over one connection (``session``, or a
        new one closed afterwards: then ``bind`` would end it at once), as newline-joined parts of ``part``
        paths (a path holding a newline goes in a list part of its own)."""
        own = session is None
        session = session or self.session(timeout=300)
        try:
            requests = []
            starts = range(0, max(len(paths), 1), part)
            for start in starts:
                chunk = paths[start:start + part]
                args = {"client": client, **({"bind": bind} if start == starts[-1] else {"more": True})}
                lines = "\n".join(chunk)
                if lines.count("\n") == len(chunk) - 1 and (len(chunk) != 1 or lines):
                    args["lines"] = lines
                else:
                    args["paths"] = list(chunk)
                requests.append(args)
            return session.pipeline("plan", requests)[-1]  # the parts travel while the daemon hashes
        finally:
            if own:
                session.close()

    def daemon_alive(self) -> bool:
        """True while the daemon process named in the registry runs (not a zombie)."""
        return self.pid is not None and pid_alive(self.pid)


def find_mount(path: str) -> Mount | None:
    """The tiercache mount holding ``path`` (the filesystem ``path`` is on), or None."""
    real = os.path.realpath(path)
    best: tuple[str, str, str] | None = None
    for entry in mount_table():
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
    for mountpoint, fstype, _source in mount_table():
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
