"""The control ops a mount daemon answers, registered in ``control.HANDLERS`` when this module is imported.

ping, stats, drain_status, flush, shutdown, unmount; data placement: plan, warm, evict, pin, unpin. Paths in
requests are relative to the mount root (``keys_of``).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any

from .control import Daemon, Progress, current_connection, handler, on_disconnect
from .errors import ConfigError, NotFound
from .keybatch import KeyBatch
from .statsrecords import DRAIN_FIELDS, WriteStats


def keys_of(paths: Any) -> list[str]:
    """Mount-relative paths from a request → cache keys ("" for the root); refuses paths leaving the mount."""
    if isinstance(paths, str):
        paths = [paths]
    if not isinstance(paths, list | tuple):
        raise ConfigError("paths: expected a list of paths relative to the mount")
    if _plain(paths):
        return list(paths)
    keys = []
    for path in paths:
        key = str(path).strip("/")
        if "//" in key or "/." in key or key.startswith("."):  # only these can normalize to something else
            key = os.path.normpath(key).strip("/")
            key = "" if key == "." else key
            if key == ".." or key.startswith("../"):
                raise ConfigError(f"{path}: outside the mount")
        keys.append(key)
    return keys


def _plain(paths: list | tuple) -> bool:
    """Whether every path is a string that is its own key already (checked on one joined string: a plan of a
    million paths must not cost a Python loop per path)."""
    try:
        joined = "\n".join(paths)
    except TypeError:
        return False
    return not (joined.startswith((".", "/")) or joined.endswith("/") or "//" in joined or "/." in joined
                or "\n." in joined or "\n/" in joined or "/\n" in joined or "\n\n" in joined)


@handler("ping")
def _ping(daemon: Daemon, args: dict, progress: Progress) -> dict:
    """The daemon's pid and its mount info."""
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
    """Mount info, cache and write-tier stats and running jobs (``tiercache stats``, the metrics)."""
    with _jobs_lock:
        jobs = dict(_jobs)
    return {
        "mount": daemon.info,
        "cache": daemon.cache.stats(),
        "writes": daemon.writes.stats() if daemon.writes is not None else {},
        "jobs": jobs,
    }


@handler("drain_status")
def _drain_status(daemon: Daemon, args: dict, progress: Progress) -> dict:
    """The write tier's upload backlog (all zero without a write tier)."""
    if daemon.writes is None:
        return {name: 0 for name in DRAIN_FIELDS}
    return WriteStats.from_dict(daemon.writes.stats()).drain_status()


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


@handler("unmount")
def _unmount(daemon: Daemon, args: dict, progress: Progress) -> dict:
    """``shutdown`` with ``unmount`` true."""
    return _shutdown(daemon, {**args, "unmount": True}, progress)


# ---------------------------------------------------------------- data placement: plan, warm, evict, pins


def _client_name(args: dict) -> str:
    client = args.get("client", "default")
    if not isinstance(client, str) or not client or len(client) > 200 or not client.isprintable():
        raise ConfigError(f"client: {client!r} is not a name (1 to 200 printable characters)")
    return client


_REFUSED: list = []  # marks a plan whose earlier part was refused (compared by identity)


def _plan_part(args: dict) -> KeyBatch:
    """One part of a plan as a KeyBatch with its hashes: ``lines`` (newline-joined paths, the fast way: no
    Python object per path) or ``paths`` (a list); normalised like ``keys_of``, vectorised where clean."""
    lines = args.get("lines")
    if lines is not None:
        if not isinstance(lines, str):
            raise ConfigError("lines: expected newline-joined paths relative to the mount")
        batch = KeyBatch.from_lines(lines)
    else:
        batch = KeyBatch.from_strings(keys_of(args.get("paths", [])))
    odd = batch.rows_needing_normalisation()
    if len(odd):
        batch = batch.replaced(odd, keys_of([batch.key(i) for i in odd.tolist()]))
    return batch.with_hashes()


@handler("plan")
def _plan(daemon: Daemon, args: dict, progress: Progress) -> dict:
    """One client's read plan: ``lines`` (mount-relative paths, newline-joined, in read order) or ``paths``
    (the same as a list) replace that client's plan only.

    ``client`` names the reader (default "default"). A long plan comes in parts on one connection, every
    part but the last with ``more`` true, so no request holds the daemon long; each part is hashed as it
    arrives, and the last one builds the plan (outside every lock) and swaps it in. ``end`` true ends the
    client's plan; ``bind`` true ties it to this connection: it ends when the client closes it (the
    DataLoader's session); unbound plans end when idle past the timeout. ``note`` is shown in ``stats``;
    ``show`` true returns the client's plan.
    """
    client = _client_name(args)
    connection = current_connection()
    if args.get("more"):  # one part of a long plan: kept until the last part arrives on this connection
        parts = connection.state.setdefault(("plan", client), [])
        if parts is _REFUSED:
            raise ConfigError(f"plan of {client!r}: an earlier part was refused")
        try:
            parts.append(_plan_part(args))
        except ConfigError:
            connection.state[("plan", client)] = _REFUSED  # the rest of this plan is refused too
            raise
        return {"client": client, "received": sum(map(len, parts))}
    if args.get("show"):
        return {"client": client, "paths": daemon.cache.plan_keys(client)}
    if args.get("end"):
        return {"client": client, "ended": bool(daemon.cache.end_plan(client))}
    parts = connection.state.pop(("plan", client), None) if connection is not None else None
    if parts is _REFUSED:
        raise ConfigError(f"plan of {client!r}: an earlier part was refused; the plan is unchanged")
    keys = KeyBatch.concat([*(parts or []), _plan_part(args)])
    bound = None
    if args.get("bind"):
        bound = connection
        if not connection.state.get("plan-bound"):  # once per connection, however many plans it sends
            connection.state["plan-bound"] = True
            on_disconnect(lambda: daemon.cache.end_bound(bound))
    planned = daemon.cache.set_plan(keys, client, bound=bound, note=str(args.get("note", ""))[:200])
    return {"planned": planned, "client": client}


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
    # without an SSD tier, "ssd" data lands in RAM: say so instead of claiming the SSD holds it
    held = "ram" if tier == "ssd" and getattr(daemon.cache, "ssd", None) is None else tier
    return {**result, "tier": held, "tier_asked": tier}


def _display(daemon: Daemon, key: str) -> str:
    """How a user names ``key``: its path under the mountpoint."""
    mountpoint = daemon.info.get("mountpoint", "/")
    return os.path.join(mountpoint, key) if key else mountpoint


def _check_exists(daemon: Daemon, keys: list[str]) -> None:
    """NotFound, naming the path as the user sees it, for the first key that is neither file nor directory."""
    for key in keys:
        try:
            daemon.cache.stat(key)
        except NotFound:
            raise NotFound(f"{_display(daemon, key)}: no such file or directory") from None


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
