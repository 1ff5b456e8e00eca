"""Send a loader's file order (this epoch, then the next) to the tiercache serving the dataset.

The one place that knows how plans travel:

* library mode: the dataset holds a ``TieredCache`` as ``dataset.cache`` and its paths are keys relative to
  the cache's source; the plan goes to ``cache.set_plan(keys_in_order, client=name, bound=token)``, the token
  being this sender's own, and ``cache.end_bound(token)`` ends it when the sender closes (the loader was
  closed or garbage-collected): a newer loader that took over the name keeps its plan.
* mount mode: the dataset's paths lie under a tiercache FUSE mount; the plan goes over a control session
  that stays open (``Mount.session()``) as ``plan(paths=[mount-relative paths], client=name, bind=True)``:
  the daemon ends the plan when the session closes, i.e. when the loader (or its process) goes away.

Each sender is one client: a loader's plans replace only that loader's earlier plan, so train and val
loaders, and every rank, have their own.

Paths come from ``dataset.path_of(index)`` or ``dataset.samples[index][0]`` (torchvision's ImageFolder /
DatasetFolder layout), looking through ``torch.utils.data.Subset``. Anything else loads without plans.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["PlanSender", "path_function", "plan_sender"]

log = logging.getLogger(__name__)


def _unwrap(dataset: Any) -> tuple[Any, Callable[[int], int]]:
    """The innermost dataset behind ``Subset`` wrappers and the index mapping into it."""
    index_map: Callable[[int], int] = int
    while True:
        inner, indices = getattr(dataset, "dataset", None), getattr(dataset, "indices", None)
        if inner is None or indices is None:
            return dataset, index_map
        index_map = (lambda outer, idx: lambda i: idx[outer(i)])(index_map, indices)
        dataset = inner


def path_function(dataset: Any) -> tuple[Any, Callable[[int], str]] | None:
    """(base dataset, index -> path) for datasets exposing ``path_of`` or ``samples``; None otherwise."""
    base, index_map = _unwrap(dataset)
    path_of = getattr(base, "path_of", None)
    if callable(path_of):
        return base, lambda i: path_of(index_map(i))
    samples = getattr(base, "samples", None)
    if isinstance(samples, Sequence) and samples and isinstance(samples[0], (tuple, list)):
        return base, lambda i: samples[index_map(i)][0]
    return None


class PlanSender:
    """Maps sample indices to paths and delivers them to a sink, on a background thread, latest plan wins."""

    def __init__(self, path_of: Callable[[int], str], sink: Callable[[list[str]], Any], describe: str,
                 close: Callable[[], Any] | None = None):
        self.path_of = path_of
        self.sink = sink
        self.describe = describe
        self._close = close
        self._lock = threading.Lock()
        self._pending: list[int] | None = None
        self._busy = False
        self.sent = 0

    def send(self, indices: Sequence[int]) -> None:
        """Map and deliver now, in the calling thread."""
        paths = [self.path_of(i) for i in indices]
        self.sink(paths)
        self.sent += 1
        log.debug("plan of %d files sent to %s", len(paths), self.describe)

    def send_async(self, indices: Sequence[int]) -> None:
        """Deliver from a daemon thread; a plan still waiting when a newer one arrives is dropped."""
        with self._lock:
            self._pending = list(indices)
            if self._busy:
                return
            self._busy = True
        threading.Thread(target=self._drain, name="tiercache-plan", daemon=True).start()

    def _drain(self) -> None:
        while True:
            with self._lock:
                indices, self._pending = self._pending, None
                if indices is None:
                    self._busy = False
                    return
            try:
                self.send(indices)
            except Exception:  # a plan is a hint: never break loading over it
                log.warning("could not send a plan to %s", self.describe, exc_info=True)

    def close(self) -> None:
        """End this client's plan in the cache (idempotent; errors are ignored: a plan is a hint)."""
        close, self._close = self._close, None
        if close is not None:
            try:
                close()
            except Exception:  # noqa: BLE001
                log.debug("could not end the plan at %s", self.describe, exc_info=True)

    def wait(self, timeout: float = 10.0) -> bool:
        """Block until no plan is pending (tests, shutdown); True when idle."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._busy:
                    return True
            time.sleep(0.005)
        return False


class _Owner:
    """The token a library loader's plans are bound to: they end with it, not with whoever has the name."""


def _library_sink(base: Any, client: str) -> tuple[Callable[[list[str]], Any], Callable[[], Any] | None] | None:
    cache = getattr(base, "cache", None)
    if cache is None:
        return None
    set_plan = getattr(cache, "set_plan", None)
    if not callable(set_plan):
        log.debug("no plan: %s has no set_plan", type(cache).__name__)
        return None
    end_bound = getattr(cache, "end_bound", None)
    try:
        binds = callable(end_bound) and "bound" in inspect.signature(set_plan).parameters
    except (TypeError, ValueError):
        binds = False
    if binds:  # the plan lives as long as this sender: a newer loader under the same name keeps its own
        owner = _Owner()
        return (lambda paths: set_plan(paths, client=client, bound=owner)), (lambda: end_bound(owner))
    end_plan = getattr(cache, "end_plan", None)
    return (lambda paths: set_plan(paths, client=client)), (
        (lambda: end_plan(client)) if callable(end_plan) else None)


def mount_relative(paths: Sequence[str], mountpoint: str) -> list[str]:
    """Paths under ``mountpoint`` (a real path) as mount-relative keys; a string prefix test first, the
    file system (symlinks, ``..``) only for paths that do not start with the mountpoint."""
    head = mountpoint.rstrip("/") + "/"
    out = []
    for path in paths:
        if path.startswith(head) and "/." not in path and "//" not in path:
            out.append(path[len(head):])
        else:
            out.append(os.path.relpath(os.path.realpath(path), mountpoint))
    return out


def _mount_sink(probe: str, client: str) -> tuple[Callable[[list[str]], Any], str, Callable[[], Any]] | None:
    try:
        from tiercache.mounts import find_mount
    except ImportError:
        log.debug("no plan: tiercache.mounts.find_mount is not available")
        return None
    mount = find_mount(probe)
    if mount is None:
        return None
    mountpoint = os.path.realpath(mount.mountpoint)
    session = mount.session()

    def sink(paths: list[str]) -> Any:
        return mount.send_plan(mount_relative(paths, mountpoint), client, bind=True, session=session)

    return sink, f"mount {mountpoint}", session.close


def plan_sender(dataset: Any, client: str = "default") -> PlanSender | None:
    """A :class:`PlanSender` for ``dataset``, as plan client ``client``, when its files come through
    tiercache; else None."""
    found = path_function(dataset)
    if found is None:
        return None
    base, path_of = found
    try:
        if len(dataset) == 0:
            return None
    except TypeError:
        pass
    library = _library_sink(base, client)
    if library is not None:
        return PlanSender(path_of, library[0], f"cache {type(base.cache).__name__}", library[1])
    root = getattr(base, "root", None)
    probe = root if isinstance(root, str) and "://" not in root else path_of(0)
    if not isinstance(probe, str) or "://" in probe or not os.path.isabs(os.path.abspath(probe)):
        return None
    try:
        mount = _mount_sink(os.path.abspath(probe), client)
    except Exception:
        log.debug("no plan: mount detection failed for %s", probe, exc_info=True)
        return None
    if mount is None:
        return None
    return PlanSender(path_of, mount[0], mount[1], mount[2])
