"""Sort py-spy samples (``py-spy record --native --idle --format raw``) of a mount daemon into where the time
goes: the FUSE hop, mfusepy's glue, tiercache's own Python, lock and GIL waits, copies, crc, store GETs, SSD
reads and writes. bench/fs_profile.py uses it; ``python bench/fs_stacks.py RAW.txt`` prints one file's split.

A raw line is ``frame;frame;...;frame COUNT``, root first; a frame is ``func (file:line)`` (Python) or
``func (library)`` / ``0xADDR (library)`` (native). Each sample gets one thread role (what the thread is
for) and one category (the first rule that matches, scanning from the innermost frame outwards).
"""

from __future__ import annotations

import inspect
import re
import sys
from collections import Counter

ROLES = ("fuse request", "fuse worker idle", "fetch/prefetch pool", "ssd writer", "other")


def _memmove_line() -> str:
    """``read (mfusepy.py:N)``, N being the line where mfusepy copies the reply into libfuse's buffer."""
    try:
        import mfusepy

        lines, first = inspect.getsourcelines(mfusepy.FUSE.read)
        for n, text in enumerate(lines):
            if "memmove" in text:
                return f"read (mfusepy.py:{first + n})"
    except (ImportError, OSError, TypeError, AttributeError):
        pass
    return "read (mfusepy.py:memmove)"


MEMMOVE = _memmove_line()

# (category, test on one frame), tried innermost frame first; the first frame that matches any rule decides.
# CPython 3.11 waits for the GIL in pthread_cond_timedwait / pthread_mutex_lock (take_gil, inlined), and a
# Python-level lock in PyThread_acquire_lock_timed; so a pthread_* frame not under a lock acquire is the GIL.
RULES: list[tuple[str, re.Pattern]] = [
    ("lock/condition wait", re.compile(r"PyThread_acquire_lock|lock_PyThread|_queue_SimpleQueue_get")),
    ("GIL handoff", re.compile(r"pthread_cond_timedwait|pthread_mutex_lock|pthread_cond_signal|take_gil|"
                               r"drop_gil|PyEval_RestoreThread|PyEval_SaveThread|PyGILState")),
    ("crc", re.compile(r"crc32|crc_")),
    ("store GET (HTTP)", re.compile(r"botocore|urllib3|http/client|ssl\.py|socket\.py|sock_recv|sock_send|"
                                    r"store/s3\.py|tenacity")),
    ("SSD write", re.compile(r"os_pwrite|pwrite|SsdTier\.put|ssd_queue\.py|fdatasync|os_fsync")),
    ("SSD read", re.compile(r"os_preadv|os_pread|preadv")),
    ("LMDB", re.compile(r"trans_get|trans_put|cursor_|\(cpython\.c|lmdb")),
    ("copy", re.compile(r"memmove|memcpy|tobytes|bytes_join|_PyBytes_Join|PyBytes_FromStringAndSize|"
                        r"array_copy|PyArray_.*Copy|" + re.escape(MEMMOVE))),
    ("FUSE reply (writev /dev/fuse)", re.compile(r"fuse_reply|writev")),
    ("FUSE receive (read /dev/fuse)", re.compile(r"^read \(libc|fuse_session_receive")),
    ("mfusepy/ctypes glue", re.compile(r"mfusepy\.py|_CallPythonObject|closure_fcn|_ctypes|PyCFuncPtr|ffi_|"
                                       r"callproc\.c")),
    ("tiercache Python", re.compile(r"tiercache/")),
]
# what released the GIL a "GIL handoff" sample waits to take back (innermost match outwards)
GIL_CAUSES: list[tuple[str, re.Pattern]] = [
    ("entering a FUSE callback", re.compile(r"_CallPythonObject \(callbacks\.c:1[0-9][0-9]\)|PyGILState_Ensure")),
    ("ctypes call (mfusepy memmove)", re.compile(r"_call_function_pointer|PyCFuncPtr_call")),
    ("LMDB get/put", re.compile(r"trans_get|trans_put|cursor_|\(cpython\.c")),
    ("pread/preadv", re.compile(r"os_pread|os_preadv")),
    ("pwrite", re.compile(r"os_pwrite")),
    ("crc", re.compile(r"crc32")),
    ("socket", re.compile(r"sock_")),
    ("leaving a FUSE callback", re.compile(r"_CallPythonObject")),
]
IDLE_WORKER = re.compile(r"_worker \(concurrent/futures/thread\.py")
BACKGROUND_LOOPS = re.compile(r"Uploader\._worker|_flush_loop|ControlServer\._accept|_plan_loop|WriteQueue\._loop|"
                              r"fuse_session_loop_mt|FUSE\.__init__")


def parse(text: str) -> list[tuple[list[str], int]]:
    """Raw py-spy lines as (frames root first, count)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        try:
            out.append((stack.split(";"), int(count)))
        except ValueError:
            continue
    return out


def role(frames: list[str]) -> str:
    """What the sampled thread is for."""
    joined = ";".join(frames)
    if "fuse_fs_" in joined or "_CallPythonObject" in joined or "fuse_reply" in joined:
        return "fuse request"
    if "libfuse" in joined and "python" not in joined.lower():
        return "fuse worker idle"
    if "ssd_queue" in joined or "WriteQueue" in joined:
        return "ssd writer"
    if IDLE_WORKER.search(joined):
        return "fetch/prefetch pool"
    return "other"


def category(frames: list[str]) -> str:
    """Where this sample's time goes (innermost matching frame)."""
    for frame in reversed(frames):
        for name, rule in RULES:
            if rule.search(frame):
                return name
    return "other"


def gil_cause(frames: list[str]) -> str:
    """For a GIL-handoff sample: the call that let the GIL go."""
    for frame in reversed(frames):
        for name, rule in GIL_CAUSES:
            if rule.search(frame):
                return name
    return "other"


def parked(frames: list[str]) -> bool:
    """A thread waiting for work (a pool worker on its queue, a background loop asleep, the FUSE main loop),
    not working for a request."""
    joined = ";".join(frames)
    waiting = "PyThread_acquire_lock" in joined or "accept4" in joined or "fuse_session_loop_mt" in joined
    if IDLE_WORKER.search(joined) and "tiercache/" not in joined and waiting:
        return True
    return bool(BACKGROUND_LOOPS.search(joined)) and waiting


def split(text: str) -> dict:
    """Samples by role and by category, the idle pool threads apart; and the top innermost Python frames of
    the FUSE request threads."""
    by_role: dict[str, Counter] = {r: Counter() for r in ROLES}
    top: Counter = Counter()
    gil: Counter = Counter()
    idle = 0
    for frames, count in parse(text):
        if parked(frames):
            idle += count
            continue
        who = role(frames)
        what = category(frames)
        by_role[who][what] += count
        if who == "fuse request" and what == "GIL handoff":
            gil[gil_cause(frames)] += count
        if who == "fuse request":
            python = [f for f in frames if ".py:" in f]
            if python:
                top[python[-1]] += count
    return {"by_role": {r: dict(c.most_common()) for r, c in by_role.items() if c},
            "parked_samples": idle,
            "request_gil_handoffs_after": dict(gil.most_common()),
            "request_top_frames": top.most_common(15)}


def shares(counts: dict[str, int]) -> dict[str, float]:
    """Each category's fraction of the total."""
    total = sum(counts.values()) or 1
    return {k: round(v / total, 3) for k, v in counts.items()}


def main(argv: list[str] | None = None) -> int:
    for path in (sys.argv[1:] if argv is None else argv):
        with open(path) as fh:
            result = split(fh.read())
        print(path)
        for who, counts in result["by_role"].items():
            total = sum(counts.values())
            print(f"  {who} ({total} samples)")
            for name, share in shares(counts).items():
                print(f"    {name:<34}{share:>7.1%}")
        print("  request GIL handoffs after:", result["request_gil_handoffs_after"])
        for frame, count in result["request_top_frames"]:
            print(f"    top {count:>6}  {frame}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
