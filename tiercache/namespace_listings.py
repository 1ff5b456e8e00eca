"""The listings of one namespace: when each directory was last listed, and the listing jobs running.

``Listings`` starts a ``ListingJob`` (namespace_ingest) per directory to list, in its own thread, keeps the
time of each finished listing (one entry per listed directory, read from its LMDB record at load), lets
callers wait until a running listing has passed what they need, and stops listings still running at close
(a stopped listing resumes at the next start: namespace_progress). The namespace decides when to list; this
runs the listings and keeps their books.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .namespace_index import NamespaceIndex, below
from .namespace_ingest import ListingJob, ListingStopped, listed_time
from .removals import Removals
from .store.base import ObjectInfo, ObjectStore
from .tiers.meta import Meta

log = logging.getLogger("tiercache.namespace")


class Listings:
    """The listing jobs of one namespace and the time of each finished listing (see the module docstring).

    ``cond`` is the namespace's lock; ``on_listed(prefix)`` is called under it when a listing of the keys
    below ``prefix`` ends well."""

    def __init__(self, store: ObjectStore, meta: Meta, index: NamespaceIndex, cond: threading.Condition,
                 overlay: dict[str, ObjectInfo], hidden: Callable[[], Callable[[str], bool] | None],
                 removals: Removals, threads: int, clock: Callable[[], float],
                 on_listed: Callable[[str], None]):
        self.store, self.meta, self.index, self.cond, self.overlay = store, meta, index, cond, overlay
        self.hidden, self.removals, self.threads = hidden, removals, threads
        self.clock, self.on_listed = clock, on_listed
        self.listed: dict[str, float] = {}  # directory -> when it was last listed (one entry per listing)
        self.jobs: dict[str, ListingJob] = {}  # listings running, by directory
        self.lists = 0
        self.list_requests = 0
        self.skipped = 0

    def load(self) -> None:
        """Read the listings' times from their records (caller holds ``cond``)."""
        self.listed = {k.decode()[1:]: listed_time(v) for k, v in self.meta.scan("listings", b"/")}

    def start(self, top: str) -> ListingJob:
        """Start listing directory ``top`` in its own thread (caller holds ``cond``)."""
        job = ListingJob(self.store, self.meta, self.index, top, self.clock(), self.cond, self.overlay,
                         self.hidden, self.threads, on_end=self._ended, removals=self.removals)
        self.jobs[top] = job
        job.thread = threading.Thread(target=job.run, name=f"tiercache-list:{top}", daemon=True)
        job.thread.start()
        return job

    def first(self) -> ListingJob | None:
        """The first listing of the store while it runs (nothing listed to serve meanwhile), else None."""
        with self.cond:
            if "" in self.listed:
                return None
            return self.jobs.get("") or self.start("")

    def running_above(self, path: str) -> bool:
        """Whether a listing of a directory above ``path`` is running (caller holds ``cond``)."""
        return any(path.startswith(below(top).decode()) for top in self.jobs)

    def wait(self, job: ListingJob, path: str | None, subtree: bool = False, exact: bool = False) -> None:
        """Until what ``job.names_known(path, subtree, exact)`` names is in the index (None: until ``job``
        ends); raises the listing's error if it failed first."""
        with self.cond:
            while not job.finished.is_set() and (path is None or not job.names_known(path, subtree, exact)):
                self.cond.wait(0.5)
        if job.error is not None and (path is None or not job.names_known(path, subtree, exact)):
            raise job.error

    def close(self, grace: float = 2.0, timeout: float = 10.0) -> None:
        """Let running listings end within ``grace`` seconds, stop the others, join their threads."""
        with self.cond:
            jobs = list(self.jobs.values())
        deadline = time.monotonic() + grace
        for job in jobs:
            if not job.finished.wait(max(0.0, deadline - time.monotonic())):
                job.walk.close()
        for job in jobs:
            if job.thread is not None:
                job.thread.join(timeout)

    def _ended(self, job: ListingJob) -> None:  # with the lock held, before the job's waiters wake
        self.jobs.pop(job.top, None)
        self.removals.end(job.token)
        self.lists += 1
        self.list_requests += job.walk.requests
        self.skipped += job.skipped
        if job.error is None:
            self.listed[job.top] = job.started
            self.on_listed(below(job.top).decode())
        elif not isinstance(job.error, ListingStopped):
            log.warning("%s: listing %r failed: %s", self.store.url, job.top, job.error)
