"""Uploader threads: run the write journal's pending changes against the object store, in journal order.

A put uploads its staging file (``store.put_file``: multipart when large), checks the size the store now
reports (``put_file`` HEADs the new object; the bytes on the wire are covered by botocore's checksums), marks
the record CLEAN, admits the file to the cache (it reads back warm), then deletes staging file and record.
Store errors are retried with backoff (tenacity); a change still failing stays pending, is retried later
(backoff up to 5 minutes) and shows in stats: nothing acknowledged is dropped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from pathlib import Path

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from ..errors import NotFound, StoreError
from ..store.base import Attrs, ObjectInfo, ObjectStore
from .cacheside import CacheFeed
from .changes import Changes
from .journal import CLEAN, COPY, PUT, Journal, Record, file_sha256

log = logging.getLogger(__name__)

LOCAL_FAIL_LIMIT = 3


class Uploader:
    """Threads that run pending changes (put, copy, delete) against the store, or one in a caller's thread.

    Shares the write tier's lock (``changes.cond``); once ``journal.closed`` it touches no journal or file.
    """

    def __init__(
        self, store: ObjectStore, journal: Journal, changes: Changes, *, feed: CacheFeed | None = None,
        threads: int = 4,
        retry_attempts: int = 3, retry_wait: float = 0.2, retry_interval: float = 5.0,
    ):
        self.store, self.journal, self.changes = store, journal, changes
        self.feed = feed if feed is not None else CacheFeed(None)
        self.cond = changes.cond
        self.retry_interval = retry_interval
        self.retrying = Retrying(
            retry=retry_if_exception_type(StoreError), stop=stop_after_attempt(max(1, retry_attempts)),
            wait=wait_random_exponential(multiplier=retry_wait, max=10.0), reraise=True,
        )
        self.failing = False  # the last change run failed (writers then get no backpressure wait)
        self.stopping = False
        self.counts: Counter[str] = Counter()
        self.last_error = ""
        self._threads = [
            threading.Thread(target=self._worker, name=f"tc-upload-{i}", daemon=True)
            for i in range(max(1, threads))
        ]

    def start(self) -> None:
        """Start the threads."""
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Let the threads finish what they run now and exit; False if some are still busy at ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def draining(self) -> bool:
        """Uploads are queued or running and the store is not failing (so waiting for them makes sense)."""
        return bool(self.changes.queue or self.changes.inflight) and not self.failing and not self.stopping

    def try_now(self, rec: Record) -> None:
        """Run ``rec`` in the calling thread if nothing is ordered before it; else the threads will."""
        with self.cond:
            if rec.id not in self.changes.queue or not self.changes.runnable(rec):
                return
            self.changes.claim(rec)
        self._execute(rec)

    def run_now(self, rec: Record) -> None:
        """Run ``rec`` in the calling thread once the changes before it are done; StoreError if it fails (it
        stays pending and is retried)."""
        fails = rec.fails
        while True:
            with self.cond:
                while True:
                    if rec.done:
                        return
                    if rec.fails != fails or not (rec.inflight or rec.id in self.changes.queue):
                        raise StoreError(f"upload {rec.key} failed: {rec.error}; it stays pending, retried")
                    if rec.id in self.changes.queue and self.changes.runnable(rec):
                        self.changes.claim(rec)
                        break
                    if self.changes.blocked_by_failure(rec):
                        raise StoreError(f"upload {rec.key} waits behind a failing change; it stays pending")
                    self.cond.wait(1.0)
            self._execute(rec)

    def _worker(self) -> None:
        while True:
            with self.cond:
                while not self.stopping:
                    rec = self.changes.next_ready(time.monotonic())
                    if rec is not None:
                        break
                    due = self.changes.next_due()
                    self.cond.wait(None if due is None else max(0.0, due - time.monotonic()))
                else:
                    return
            self._execute(rec)

    def _execute(self, rec: Record) -> None:
        try:
            if rec.op == PUT:
                self._put(rec)
            elif rec.op == COPY:
                self._copy(rec)
            else:
                self._delete(rec)
        except Exception as exc:  # noqa: BLE001 - a runner never dies; the change stays pending
            self._failed(rec, exc)
        finally:
            with self.cond:
                self.changes.unclaim(rec)
                if rec.superseded and not rec.done and not self.journal.closed:
                    self._finish(rec)  # retired by a newer change while it ran

    def _put(self, rec: Record) -> None:
        path = self.journal.staging_path(rec.id)
        if not self._verify(rec, path):
            return
        key = rec.claimed[0]
        attrs = record_attrs(rec)
        info = self.retrying(self.store.put_file, key, str(path), attrs)
        if info.size != rec.size:
            raise StoreError(f"upload {key}: the store holds {info.size} bytes, expected {rec.size}")
        rec.landed = True
        while True:
            landed = self._follow(rec, key, info)
            if landed is None:
                return
            key, info = landed
            self.feed.uploaded(key, info, str(path))  # reads back warm
            with self.cond:
                if self.journal.closed:
                    return
                changed = not rec.superseded and record_attrs(rec) != attrs  # chmod/utime meanwhile
                if changed:
                    attrs = record_attrs(rec)
                elif rec.superseded or rec.key == key:
                    if not rec.superseded:
                        self.counts["uploaded_files"] += 1
                        self.counts["uploaded_bytes"] += rec.size
                    self.failing = False
                    self._finish(rec)
                    return
            if changed:  # checked under the lock with the finish: a later change finds no record
                info = self.retrying(self.store.set_attrs, key, attrs)
            # else renamed meanwhile: follow it

    def _copy(self, rec: Record) -> None:
        try:
            info = self.retrying(self.store.copy, rec.src, rec.key)
            rec.landed = True
        except NotFound:
            log.warning("rename %s -> %s: source gone from the store (moved already?)", rec.src, rec.key)
            self._done(rec)
            return
        if rec.touched:  # chmod/utime after the rename: the copy kept the source's
            info = self.retrying(self.store.set_attrs, rec.key, record_attrs(rec))
        landed = self._follow(rec, rec.claimed[1], info)
        if landed is None:
            return
        self.feed.changed(landed[0])  # the cache knows the new name before it stops being pending: no gap
        self.feed.added(landed[1])
        self._done(rec)

    def _delete(self, rec: Record) -> None:
        self.retrying(self.store.delete, rec.key)
        rec.landed = True
        self.feed.removed(rec.key)  # before _done: hidden as pending until the cache has forgotten it
        self.feed.changed(rec.key)
        self._done(rec)

    def _follow(self, rec: Record, key: str, info: ObjectInfo) -> tuple[str, ObjectInfo] | None:
        """After ``rec`` wrote ``key``: follow renames made meanwhile by server-side copies. Returns where it
        landed, or None when it is not done (superseded and dropped, queued again, or the journal closed)."""
        while True:
            with self.cond:
                if self.journal.closed:
                    return None
                if rec.superseded:
                    self._finish(rec)
                    return None
                if rec.key == key:
                    if rec.op == PUT:
                        rec.state = CLEAN  # replay drops it (staging file and all) unless renamed again
                        self.journal.write(put=[rec])
                    return key, info
                target = rec.key
                if self.changes.busy[target] or self.changes.index[target][0] is not rec:
                    self.changes.queue[rec.id] = None  # redone from the start when its turn comes
                    return None
                self.changes.claim(rec, extra=target)
            info = self.retrying(self.store.copy, key, target)
            key = target

    def _done(self, rec: Record) -> None:
        with self.cond:
            if not self.journal.closed:
                self.failing = False
                self._finish(rec)

    def _finish(self, rec: Record) -> None:
        """Forget ``rec``, drop it from the journal, delete its staging file (call holding the lock)."""
        self.changes.forget(rec)
        self.journal.write(delete=[rec])
        self.journal.discard([rec], running=True)

    def _verify(self, rec: Record, path: Path) -> bool:
        """Is the staging file what the record says (size; sha256 after a restart)? Else quarantine it."""
        try:
            size = os.stat(path).st_size
            reason = "" if size == rec.size else f"size {size} != journal size {rec.size}"
            if not reason and rec.verify:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    reason = "" if file_sha256(fd, size) == rec.sha256 else "sha256 mismatch"
                finally:
                    os.close(fd)
        except FileNotFoundError:
            reason = "staging file missing"
        if not reason:
            rec.verify = False
            return True
        with self.cond:
            if self.journal.closed:
                return False
            self.changes.forget(rec)
            dest = self.journal.quarantine(rec, reason)
            self.counts["corrupt"] += 1
        log.error("BUG: staging file of %s (record %s) does not match its journal entry (%s): NOT uploaded, "
                  "kept at %s", rec.key, rec.id, reason, dest)
        return False

    def _failed(self, rec: Record, exc: Exception) -> None:
        """A change failed. A store error: retried with backoff, for as long as it takes. A local failure
        (the journal, a staging file) after the store op succeeded: not redone (the store is right; the
        journal entry left behind is redone once at the next start); before it: retried
        ``LOCAL_FAIL_LIMIT`` times, then given up and reported (a put is quarantined: lost, not silent)."""
        local = not isinstance(exc, StoreError)
        with self.cond:
            if self.journal.closed:
                return
            self.counts["errors"] += 1
            self.last_error = f"{rec.op} {rec.key}: {exc}"
            if rec.superseded or rec.done:
                return
            if local:
                self.counts["local_errors"] += 1
                rec.local_fails += 1
                if rec.landed or rec.local_fails >= LOCAL_FAIL_LIMIT:
                    self._give_up(rec, exc)
                    return
            if not local:
                self.failing = True
            rec.fails += 1
            rec.error = str(exc)
            delay = min(300.0, self.retry_interval * 2 ** min(rec.fails - 1, 10))
            self.changes.delay(rec, time.monotonic() + delay)
            self.cond.notify_all()
        log.warning("%s %s failed (%s); still pending, next try in %.0f s", rec.op, rec.key, exc, delay)

    def _give_up(self, rec: Record, exc: Exception) -> None:
        """Stop running ``rec`` after a local failure (call holding the lock); never retried in this run."""
        self.changes.forget(rec)
        if rec.landed:
            log.error("%s %s: done at the store, but the write journal failed after it (%s); it is not "
                      "redone now (its journal entry is redone once at the next start)", rec.op, rec.key, exc)
            return
        reason = f"local failure {rec.local_fails} times: {exc}"
        if rec.op == PUT:
            try:
                dest = self.journal.quarantine(rec, reason)
            except Exception as again:  # noqa: BLE001 - the journal itself is failing
                self.journal.lost[rec.key] = {"id": rec.id, "key": rec.key, "size": rec.size, "reason": reason,
                                              "mtime": rec.mtime, "note": ""}
                log.error("%s %s: given up (%s); the journal failed too (%s)", rec.op, rec.key, reason, again)
                return
            log.error("upload %s given up (%s): NOT uploaded, kept at %s", rec.key, reason, dest)
        else:
            log.error("%s %s given up (%s); it stays in the journal, redone at the next start", rec.op, rec.key,
                      reason)


def record_attrs(rec: Record) -> Attrs:
    """The attributes a change stores with its object (mode, owner, mtime)."""
    return Attrs(rec.mode, rec.uid, rec.gid, rec.mtime)
