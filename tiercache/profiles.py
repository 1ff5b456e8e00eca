"""Warm profiles: record which files a run read, in the order it first read them, and replay that list with
``tiercache warm --from-profile FILE MOUNTPOINT`` on the next machine (or the next job) before it starts.

    tiercache profile start /mnt/data            # the daemon records from now on
    ... the run reads ...
    tiercache profile save /mnt/data run.profile [--stop]
    # elsewhere, a fresh cache:
    tiercache warm --from-profile run.profile /mnt/data

Recording costs one check per read: the daemon appends a file's path to CACHE_DIR/profile.rec the first time
it sees it among the last ``RECENT`` files read (a bounded table, so state does not grow per file); saving
drops the repeats, keeping each file's first position. A profile file is text, one mount-relative path a line,
after a ``#`` header naming the source.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from .control import Daemon, Progress, handler
from .errors import ConfigError

RECENT = 4096
HEADER = "# tiercache profile"


class ProfileRecorder:
    """Appends each file's path to ``path`` when it is read and not among the last RECENT files read."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - open for the recorder's life
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self.started = time.time()
        self.reads = 0

    def __call__(self, key: str, offset: int = 0) -> None:
        """One read of ``key`` (the cache's ``on_read`` hook)."""
        with self._lock:
            self.reads += 1
            if key in self._recent:
                self._recent.move_to_end(key)
                return
            self._recent[key] = None
            if len(self._recent) > RECENT:
                self._recent.popitem(last=False)
            if not self._fh.closed:
                self._fh.write(key + "\n")

    def paths(self) -> list[str]:
        """The files read so far, each once, in first-read order."""
        with self._lock:
            if not self._fh.closed:
                self._fh.flush()
        with open(self.path, encoding="utf-8") as fh:
            return list(dict.fromkeys(line.rstrip("\n") for line in fh if line.strip()))

    def close(self) -> None:
        """Stop recording (the file stays until the next start)."""
        with self._lock:
            self._fh.close()


def write_profile(path: str | os.PathLike, paths: list[str], source: str) -> None:
    """A profile file: the header, then one mount-relative path a line."""
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    body = "".join(p + "\n" for p in paths)
    Path(path).write_text(f"{HEADER}: {source}, {len(paths)} file(s), recorded {when}\n{body}", encoding="utf-8")


def read_profile(path: str) -> list[str]:
    """The paths of a profile file, in order; ConfigError for a missing or foreign file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--from-profile {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--from-profile {path}: not a tiercache profile (not UTF-8 text)") from None
    if not text.startswith(HEADER):
        raise ConfigError(f"--from-profile {path}: not a tiercache profile (save one with: tiercache profile save)")
    paths = [ln.strip() for ln in text.splitlines()[1:] if ln.strip() and not ln.startswith("#")]
    for key in paths:
        if key.startswith("/") or key == ".." or key.startswith("../"):
            raise ConfigError(f"--from-profile {path}: {key!r} is not a path inside the mount")
    return paths


# ---------------------------------------------------------------- the daemon side

_recorders: dict[int, ProfileRecorder] = {}
_lock = threading.Lock()


@handler("profile")
def _profile(daemon: Daemon, args: dict, progress: Progress) -> dict:
    """``action``: start (record from now, dropping an earlier recording), save (the paths read so far;
    ``stop`` true also stops), stop, status."""
    action = args.get("action", "status")
    cache = daemon.cache
    with _lock:
        recorder = _recorders.get(id(cache))
        if action == "start":
            if recorder is not None:
                recorder.close()
            recorder = _recorders[id(cache)] = ProfileRecorder(Path(daemon.info["cache_dir"]) / "profile.rec")
            cache.on_read = recorder
            return {"recording": True, "path": str(recorder.path)}
        if action not in ("save", "stop", "status"):
            raise ConfigError(f"profile: unknown action {action!r} (start, save, stop, status)")
        if recorder is None:
            if action == "status":
                return {"recording": False}
            raise ConfigError("no profile is being recorded (start one with: tiercache profile start MOUNTPOINT)")
        result: dict[str, Any] = {"recording": True, "reads": recorder.reads, "started": recorder.started,
                                  "source": daemon.info.get("source")}
        if action in ("save", "stop"):
            result["paths"] = recorder.paths()
        if action == "stop" or args.get("stop"):
            cache.on_read = None
            recorder.close()
            del _recorders[id(cache)]
            result["recording"] = False
        return result
