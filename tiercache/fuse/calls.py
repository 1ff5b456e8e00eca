"""How FUSE calls enter tiercache: each operation runs under ``errno_op`` (exceptions become a clean errno,
the daemon keeps running) and names its file by ``store_key``.

Errors become errno: a TiercacheError's own ``errno``, an OSError's, or EIO (logged with its traceback) for
anything unexpected: one bad request never kills the daemon.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

from ..errors import TiercacheError
from . import binding
from .names import check_path

fuse = binding()

log = logging.getLogger("tiercache.fuse.ops")

# errnos that are routine answers of some calls (logged at DEBUG, not WARNING)
QUIET = {
    errno.ENOENT: {"getattr", "access", "open", "getxattr", "listxattr"},
    errno.ENODATA: {"getxattr", "removexattr"},
}


def _thread_state_keeper() -> Callable[[], None]:
    """A function that keeps the calling thread's Python thread state alive between FUSE callbacks.

    libfuse's worker threads are not Python threads: for every callback, ctypes creates a Python thread
    state and deletes it on return (in CPython 3.11+ that includes mmap/munmap of its frame stack), about a
    fifth of the daemon's CPU per small-file READ. One extra ``PyGILState_Ensure`` on each worker thread's
    first callback keeps its thread state for the thread's life (libfuse keeps its workers; at most
    ``max_threads`` of them). A thread id seen again after its thread ended just takes the slow path.
    """
    if sys.implementation.name != "cpython" or not hasattr(ctypes, "pythonapi"):
        return lambda: None
    ensure = ctypes.pythonapi.PyGILState_Ensure  # a PYFUNCTYPE: called with the GIL held, keeps it
    ensure.restype = ctypes.c_int
    kept: set[int] = set()
    lock = threading.Lock()

    def keep() -> None:
        ident = threading.get_ident()
        if ident in kept:
            return
        with lock:
            if ident in kept:
                return
            kept.add(ident)
        ensure()

    return keep


_keep_thread_state = _thread_state_keeper()

OP_NAMES: set[str] = set()  # every operation wrapped by errno_op (the keys of ``op_counts``)


def op_counts() -> dict[str, int]:
    """A zeroed count per operation, for an operations object's ``op_counts``: ``errno_op`` adds one per
    call (all keys exist up front, so the dict can be serialized while FUSE threads count)."""
    return dict.fromkeys(sorted(OP_NAMES), 0)


def errno_op(fn: Callable) -> Callable:
    """Turn whatever ``fn`` raises into a FuseOSError with the right errno; log what is not routine. Each
    call is counted in the host's ``op_counts`` (see ``op_counts()``), when it has one."""
    name = fn.__name__
    OP_NAMES.add(name)

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any) -> Any:
        _keep_thread_state()
        counts = getattr(self, "op_counts", None)
        if counts is not None:
            counts[name] += 1
        try:
            return fn(self, *args)
        except fuse.FuseOSError:
            raise
        except TiercacheError as exc:
            code = exc.errno or errno.EIO
            level = logging.DEBUG if name in QUIET.get(code, ()) else logging.WARNING
            where = args[0] if args else ""
            log.log(level, "%s %s: %s (%s)", name, where, exc, errno.errorcode.get(code, code))
            raise fuse.FuseOSError(code) from None
        except OSError as exc:
            code = exc.errno if isinstance(exc.errno, int) and exc.errno > 0 else errno.EIO
            level = logging.DEBUG if name in QUIET.get(code, ()) else logging.WARNING
            log.log(level, "%s %s: %s", name, args[0] if args else "", exc)
            raise fuse.FuseOSError(code) from None
        except Exception:
            log.exception("%s %s failed unexpectedly; returning EIO", name, args[0] if args else "")
            raise fuse.FuseOSError(errno.EIO) from None

    return wrapper


def store_key(path: str | None) -> str:
    """A FUSE path ("/a/b") as a cache key ("a/b"); the root is "". ENAMETOOLONG past NAME_MAX/PATH_MAX."""
    if path:
        check_path(path)
    return (path or "/").strip("/")
