"""A listing of everything below a prefix, paginated in parallel where the layout allows, streamed as it comes.

A store that can list one level (``list_level``: the objects directly in a prefix and its subprefixes, by
delimiter) and resume a listing after a key (``list_after``) is walked in parallel: the top prefix is listed
by level; while a level has fewer subprefixes than ``threads`` (and the walk is shallower than
``MAX_LEVELS``) each subprefix is listed by level in turn, in parallel; a level with more is cut into up to
``2 * threads`` contiguous key ranges of its subprefixes, each listed whole (one paginated listing resumed
at the range's first key). Any other store is one sequential ``list(prefix)``.

The walk runs in its own threads and hands out ``Part`` events (None after IDLE seconds without one)
through a bounded queue, so a consumer holds at most ``QUEUE`` chunks of ``CHUNK`` infos at a time,
however many objects there are. Each unit of work covers a known key range; the consumer records where
each unit has got to and when it is done, so it can tell which directories are complete meanwhile.
"""

from __future__ import annotations

import queue
import threading
from bisect import bisect_left
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice, repeat
from operator import attrgetter
from typing import Protocol, runtime_checkable

from .base import ObjectInfo, ObjectStore

CHUNK = 1000  # one S3 page
QUEUE = 32
MAX_LEVELS = 3
PAGE = 1000  # keys in one LIST page (S3's most)
IDLE = 0.05  # seconds without a part after which the walk yields None


@runtime_checkable
class LevelLister(Protocol):
    """The optional listing calls that let a walk go in parallel (S3 by delimiter, a local directory)."""

    def list_level(self, prefix: str, start_after: str = "") -> Iterator[ObjectInfo | str]:
        """The objects directly under ``prefix`` and its subprefixes (str, ending in "/"), in key order;
        those after ``start_after`` (a level resumed)."""
        ...

    def list_after(self, prefix: str, start_after: str) -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` whose key sorts after ``start_after``, in key order."""
        ...


@dataclass
class Unit:
    """One piece of a walk: the objects directly in ``prefix`` (``level``), or every object below it with a
    key in [lo, hi) (hi None: to the end of the prefix). The consumer sets ``last`` (the last key of this
    unit it has taken in) and ``done`` (all of them taken in), after its ``finished`` part."""

    prefix: str
    level: bool
    lo: str = ""
    hi: str | None = None
    last: str | None = None
    done: bool = False
    children: list[str] = field(default_factory=list)  # a level's subprefixes
    parent: Unit | None = None  # the level unit that started this one
    needed: str = ""  # the last subprefix this unit lists (see ``named``)
    after: str | None = None  # a range (or a level) resumed after this key (then keys > after, not >= lo)
    limit: int = 0  # a range that stops after this many keys (0: none)
    depth: int = 0  # levels below the walk's top

    def resumed(self) -> Unit:
        """This unit, to run again in a walk resumed from where its consumer had got (``last``): a level
        lists after its last file (the subprefixes it had are kept), a range after its last key."""
        if self.last is not None:
            self.after = self.last
        self.limit = 0  # a first page resumed: its range was set when it ended (else it lists to the end)
        return self

    def covers(self, key_prefix: str) -> bool:
        """Whether a whole (not level) unit lists some of the keys starting with ``key_prefix``."""
        if self.level or not (key_prefix.startswith(self.prefix) or self.prefix.startswith(key_prefix)):
            return False
        # the first key past every key with the prefix ("0" sorts right after "/")
        end = (key_prefix[:-1] + "0" if key_prefix.endswith("/") else key_prefix + "\U0010ffff") if key_prefix else None
        return (end is None or self.lo < end) and (self.hi is None or key_prefix < self.hi)

    def passed(self, key_prefix: str) -> bool:
        """Whether this unit has handed out every key it has that starts with ``key_prefix``."""
        if self.done:
            return True
        return self.last is not None and self.last > key_prefix and not self.last.startswith(key_prefix)

    def named(self, units: list[Unit]) -> bool:
        """Whether the consumer holds a key below each subprefix this unit lists (so their names are known)."""
        if self.last is not None and self.last >= self.needed:
            return True
        if not self.done:
            return False
        return not self.level or all(u.named(units) for u in units if u.parent is self)


def complete(units: list[Unit], key_prefix: str) -> bool:
    """Whether the names directly under ``key_prefix`` (a directory's prefix) are all known from ``units``,
    the units a walk has started, each with what it has handed out so far."""
    if not units:
        return False  # the walk has not started
    for unit in units:
        if unit.level and unit.prefix == key_prefix:
            return unit.done and all(u.named(units) for u in units if u.parent is unit)
    covering = [unit for unit in units if unit.covers(key_prefix)]
    if covering:
        return all(unit.passed(key_prefix) for unit in covering)
    above = [u for u in units if u.level and key_prefix.startswith(u.prefix)]
    if not above:
        return True  # not below this walk
    return max(above, key=lambda u: len(u.prefix)).done  # done: a level lists its subprefixes; this is none


def complete_below(units: list[Unit], key_prefix: str) -> bool:
    """Whether every key starting with ``key_prefix`` is known from ``units`` (the whole subtree, not only
    the names directly in it as ``complete``)."""
    if not units:
        return False
    for unit in units:
        if unit.level and unit.prefix.startswith(key_prefix) and not unit.done:
            return False
        if unit.covers(key_prefix) and not unit.passed(key_prefix):
            return False
    above = [u for u in units if u.level and key_prefix.startswith(u.prefix)]
    # done: each unit below it has started (and was checked above)
    return not above or max(above, key=lambda u: len(u.prefix)).done


@dataclass
class Part:
    """One event of a walk: infos of one unit (``infos``), a new unit (``started``), a finished one
    (``finished``), the end of the walk (``end``) or its failure (``error``)."""

    unit: Unit | None = None
    infos: list[ObjectInfo] | None = None
    started: bool = False
    finished: bool = False
    end: bool = False
    error: BaseException | None = None


class Walk:
    """The parallel listing of one prefix (see the module docstring); iterate to get its ``Part``s."""

    def __init__(self, store: ObjectStore, prefix: str = "", threads: int = 8, resume: list[Unit] | None = None):
        self.store = store
        self.prefix = prefix
        self.threads = max(1, threads)
        self.parallel = self.threads > 1 and isinstance(store, LevelLister)
        self.resume = resume if self.parallel else None  # units left by a walk stopped early (``Unit.resumed``)
        self.requests = 0  # listing calls started (units)
        self._queue: queue.Queue[Part] = queue.Queue(QUEUE)
        self._stop = threading.Event()
        self._outstanding = 0
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def __iter__(self) -> Iterator[Part | None]:
        if not self.parallel:
            unit = Unit(self.prefix, level=False, lo=self.prefix)
            threading.Thread(target=self._sequential, args=(unit,), name="tiercache-list", daemon=True).start()
        else:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="tiercache-list")
            if self.resume is None:
                self._submit(Unit(self.prefix, level=True, lo=self.prefix), depth=0)
            elif not self.resume:
                self._put(Part(end=True))  # it had listed everything
            else:
                with self._lock:  # counted all at once: the first to end must not end the walk
                    self._outstanding += len(self.resume)
                for unit in self.resume:  # the consumer knows them already: no ``started`` part
                    self._pool.submit(self._run, unit)
        try:
            while not self._stop.is_set():
                try:
                    part = self._queue.get(timeout=IDLE)
                except queue.Empty:
                    yield None  # nothing for a while: the consumer may publish what it holds
                    continue
                yield part
                if part.end or part.error is not None:
                    return
        finally:
            self._stop.set()
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop the walk early: its threads drop what they list from now on, and iteration ends (with no
        ``end`` part)."""
        self._stop.set()

    # ------------------------------------------------------------------ producers

    def _put(self, part: Part) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(part, timeout=0.2)
                return
            except queue.Full:
                continue

    def _stream(self, unit: Unit, infos: Iterator[ObjectInfo], base: int | None = None) -> tuple[int, str | None]:
        """Hand out ``infos`` in chunks (up to ``unit.limit``; with ``base``, only the keys in [unit.lo,
        unit.hi) with a "/" past ``base``: a range's keys); (how many, the last key). Chunks are pulled
        and cut as wholes (``islice``, bisection): no Python work per key here."""
        count, last = 0, None
        while not self._stop.is_set():
            want = CHUNK if not unit.limit else min(CHUNK, unit.limit - count)
            chunk = list(islice(infos, want)) if want > 0 else []
            if not chunk:
                break
            pulled = len(chunk)
            past = False
            if base is not None:
                chunk, past = _in_range(unit, chunk, base)
            if chunk:
                count, last = count + len(chunk), chunk[-1].key
                self._put(Part(unit, chunk))
            if past or pulled < want:
                break
        return count, last

    def _sequential(self, unit: Unit) -> None:
        try:
            self.requests += 1
            self._put(Part(unit, started=True))
            self._stream(unit, iter(self.store.list(self.prefix)))
            self._put(Part(unit, finished=True))
            self._put(Part(end=True))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._put(Part(error=exc))

    def _submit(self, unit: Unit, depth: int) -> None:
        unit.depth = depth
        with self._lock:
            self._outstanding += 1
        self._put(Part(unit, started=True))
        assert self._pool is not None
        try:
            self._pool.submit(self._run, unit)
        except RuntimeError:  # the pool is shut down: the walk was stopped
            pass

    def _run(self, unit: Unit) -> None:
        try:
            self.requests += 1
            if unit.level:
                self._run_level(unit, unit.depth)
            else:
                self._run_range(unit)
            self._put(Part(unit, finished=True))
            with self._lock:
                self._outstanding -= 1
                last = self._outstanding == 0
            if last:
                self._put(Part(end=True))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer (before the walk stops, so
            self._put(Part(error=exc))  # that it is not taken for a stop)
            self._stop.set()

    def _run_level(self, unit: Unit, depth: int) -> None:
        store = self.store
        assert isinstance(store, LevelLister)

        known = set(unit.children)  # a level resumed: the subprefixes it had found before

        def files() -> Iterator[ObjectInfo]:
            items = store.list_level(unit.prefix, unit.after) if unit.after else store.list_level(unit.prefix)
            for item in items:
                if isinstance(item, str):
                    if item not in known:
                        unit.children.append(item)
                else:
                    yield item

        self._stream(unit, files())
        subs = unit.children
        if not subs:
            return
        if len(subs) < self.threads and depth + 1 < MAX_LEVELS:
            for sub in subs:
                self._submit(Unit(sub, level=True, lo=sub, parent=unit, needed=sub), depth + 1)
            return
        # one page first, in this thread: a small subtree ends there; a big one tells how many keys a
        # subprefix holds, so the rest is cut into ranges of about a page or more each (no empty requests)
        head = Unit(unit.prefix, level=False, lo=subs[0], parent=unit, limit=PAGE)
        self._put(Part(head, started=True))
        count, last = self._run_range(head)
        if last is None or count < PAGE:
            head.needed = subs[-1]
            self._put(Part(head, finished=True))
            return
        head.hi = last + "\0"  # what it listed: up to and including ``last``
        rest = [sub for sub in subs if sub > last]
        current = [sub for sub in subs if last.startswith(sub)]
        head.needed = current[0] if current else max([sub for sub in subs if sub <= last], default="")
        self._put(Part(head, finished=True))
        seen = max(1, sum(1 for sub in subs if sub <= last))
        pages = max(1, round(len(subs) / seen) - 1)
        groups = max(1, min(len(rest) + 1, 2 * self.threads, pages))
        starts = [None] + rest  # None: resume after ``last`` within its subprefix
        firsts = [i * len(starts) // groups for i in range(groups)] + [len(starts)]
        for i in range(groups):
            first = starts[firsts[i]]
            hi = starts[firsts[i + 1]] if i + 1 < groups else None
            needed = starts[firsts[i + 1] - 1] or (current[0] if current else last)
            if first is None:
                part = Unit(unit.prefix, level=False, lo=last + "\0", hi=hi, parent=unit, needed=needed,
                            after=last)
            else:
                part = Unit(unit.prefix, level=False, lo=first, hi=hi, parent=unit, needed=needed)
            self._submit(part, depth + 1)

    def _run_range(self, unit: Unit) -> tuple[int, str | None]:
        store = self.store
        assert isinstance(store, LevelLister)
        # resume after ``after``, or start just before lo: lo ends in "/", and "." sorts right before it
        start_after = unit.after if unit.after is not None else unit.lo[:-1] + "."
        return self._stream(unit, iter(store.list_after(unit.prefix, start_after)), len(unit.prefix))


def _in_range(unit: Unit, chunk: list[ObjectInfo], base: int) -> tuple[list[ObjectInfo], bool]:
    """The infos of a sorted chunk that belong to range ``unit`` (keys in [lo, hi) below a subprefix: a "/"
    past ``base``), and whether the chunk ran past ``hi``."""
    key, n = attrgetter("key"), len(chunk)
    first = bisect_left(chunk, unit.lo, key=key) if chunk[0].key < unit.lo else 0
    end = bisect_left(chunk, unit.hi, key=key) if unit.hi is not None and chunk[-1].key >= unit.hi else n
    if first or end < n:
        chunk = chunk[first:end]
    keys = [info.key for info in chunk]
    if keys and min(map(str.find, keys, repeat("/"), repeat(base))) < 0:  # files directly in the prefix
        chunk = [info for info, k in zip(chunk, keys, strict=True) if k.find("/", base) >= 0]
    return chunk, end < n
