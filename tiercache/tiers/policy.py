"""Eviction policies: which blocks a full tier drops first.

A policy only does bookkeeping — no I/O, no locks (the owning tier serialises calls) — so the same
objects replay traces offline (bench/traces.py, bench/hit_rate.py). Blocks are any hashable ids (the tiers
pass :class:`~tiercache.tiers.base.BlockId`); sizes are bytes (or 1 per block in a unit-size trace).

Contract, shared by every policy:

* ``on_insert(block, size, scan=False)`` when a block becomes resident, ``on_access(block)`` on a hit,
  ``on_remove(block)`` when the tier drops a block for any reason other than ``victims``;
* ``scan=True`` marks a one-shot block (admitted by a detected sequential stream: read-ahead's staging or
  the streaming reader's own misses). Scan blocks are victims before every other block (oldest first),
  never promoted by a fill, leave no ghost, and do not advance the reuse clock; one becomes a normal block
  only when it is read again (``on_access``: a stream's own reads never touch), as PostgreSQL's ring
  buffer for bulk reads and Linux's ``FADV_NOREUSE`` keep a scan from displacing the working set;
* ``victims(bytes_needed, protected)`` picks blocks totalling at least ``bytes_needed`` (fewer if
  everything else is protected), **forgets them**, and returns them in eviction order; the caller must
  then drop exactly those from the tier. ``protected(block)`` true means never a victim (pinned, dirty).
* ``set_plan(keys_in_order)`` hands over the loader's read plan (object keys in the order they will be
  read). The policies here only store it; a plan-aware policy overrides ``_plan_changed`` and
  ``victims`` (evict the block whose next use is farthest away, blocks of keys not in the plan first)
  and registers itself with ``register_policy("plan", factory, plans=True)``: its factory gets the cache's
  one PlanBook (``make_policy(name, book)``).

Offline replay of traces (Belady, ``simulate``) lives in bench/traces.py.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

Protected = Callable[[Hashable], bool]


def never_protected(_block: Hashable) -> bool:
    """The default ``protected``: no block is."""
    return False


class Policy(ABC):
    """Base of every eviction policy: bookkeeping of resident blocks and their sizes."""

    name = "abstract"

    def __init__(self) -> None:
        self.plan: tuple[str, ...] = ()

    @abstractmethod
    def on_insert(self, block: Hashable, size: int, scan: bool = False) -> None:
        """A block became resident (``scan``: a one-shot block of a stream, see the module docstring)."""

    @abstractmethod
    def on_access(self, block: Hashable) -> None:
        """A resident block was read; unknown blocks are ignored."""

    @abstractmethod
    def on_remove(self, block: Hashable) -> None:
        """A block left the tier outside ``victims`` (invalidated, corrupt, evicted by prefix)."""

    @abstractmethod
    def victims(self, bytes_needed: int, protected: Protected | None = None) -> list[Hashable]:
        """Choose and forget blocks totalling at least ``bytes_needed``; never a protected one."""

    @abstractmethod
    def __contains__(self, block: Hashable) -> bool: ...

    @abstractmethod
    def __len__(self) -> int: ...

    @property
    @abstractmethod
    def tracked_bytes(self) -> int:
        """Sum of the sizes of the resident blocks."""

    def set_plan(self, keys_in_order: Sequence[str]) -> None:
        """Store the read plan (object keys in the order they will be read) and notify the policy."""
        self.plan = tuple(keys_in_order)
        self._plan_changed()

    def _plan_changed(self) -> None:  # noqa: B027 - an optional hook, not an abstract method
        """Extension point for plan-aware policies; the policies here ignore plans."""


class LRUPolicy(Policy):
    """Least recently used: a baseline that thrashes on shuffled epochs larger than the tier."""

    name = "lru"

    def __init__(self) -> None:
        super().__init__()
        self._queue: OrderedDict[Hashable, int] = OrderedDict()
        self._scan: OrderedDict[Hashable, int] = OrderedDict()  # one-shot blocks, oldest first
        self._bytes = 0

    def on_insert(self, block: Hashable, size: int, scan: bool = False) -> None:
        """Insert at the most-recent end (a scan block: at the end of the scan FIFO)."""
        self.on_remove(block)
        (self._scan if scan else self._queue)[block] = size
        self._bytes += size

    def on_access(self, block: Hashable) -> None:
        """Move to the most-recent end (a scan block read again becomes a normal one)."""
        if block in self._queue:
            self._queue.move_to_end(block)
        elif block in self._scan:
            self._queue[block] = self._scan.pop(block)

    def on_remove(self, block: Hashable) -> None:
        """Forget a block."""
        size = self._queue.pop(block, None)
        if size is None:
            size = self._scan.pop(block, None)
        if size is not None:
            self._bytes -= size

    def victims(self, bytes_needed: int, protected: Protected | None = None) -> list[Hashable]:
        """Scan blocks first, then least recent first, skipping protected blocks."""
        protected = protected or never_protected
        out, freed = [], 0
        for queue in (self._scan, self._queue):
            taken = []
            for block, size in queue.items():
                if freed >= bytes_needed:
                    break
                if not protected(block):
                    taken.append(block)
                    freed += size
            for block in taken:
                self._bytes -= queue.pop(block)
            out += taken
        return out

    def __contains__(self, block: Hashable) -> bool:
        return block in self._queue or block in self._scan

    def __len__(self) -> int:
        return len(self._queue) + len(self._scan)

    @property
    def tracked_bytes(self) -> int:
        """Bytes of the resident blocks."""
        return self._bytes


class S3FIFOPolicy(Policy):
    """Scan-resistant default: S3-FIFO (Yang et al., SOSP '23) tuned for shuffled epochs.

    A small probationary FIFO (``small_ratio`` of the bytes), a main FIFO with second chances (a 2-bit
    counter per block) and a ghost FIFO of recently evicted ids. New blocks enter the small queue; one read
    again while there moves to main, otherwise it is evicted and remembered as a ghost; a miss on a ghost
    goes straight to main. One-shot blocks thus churn through the small queue while main keeps a stable set.

    Two changes from the paper make shuffled epochs over data larger than the tier work (epoch-shuffled
    traces otherwise keep cycling blocks through main): main is filled from the small queue while it is
    under its share, so the first epoch already builds the stable set; and the ghost is short
    (``ghost_ratio`` of the resident count), so only blocks re-read soon after eviction displace main.
    To still adapt when the workload moves on (a new dataset), a main block idle for more than
    ``stale_factor`` times the longest recent reuse interval seen on main hits is evicted first.

    Scan blocks (``on_insert(..., scan=True)``) wait in a FIFO of their own, outside both queues and their
    shares, and go before anything else; read again, one joins the small queue as a block used twice.
    """

    name = "s3fifo"

    def __init__(
        self, small_ratio: float = 0.1, ghost_ratio: float = 0.1, stale_factor: float = 1.5, max_freq: int = 3
    ) -> None:
        super().__init__()
        self.small_ratio = small_ratio
        self.ghost_ratio = ghost_ratio
        self.stale_factor = stale_factor
        self.max_freq = max_freq
        self._small: OrderedDict[Hashable, int] = OrderedDict()
        self._main: OrderedDict[Hashable, int] = OrderedDict()  # FIFO with reinsertion
        self._recency: OrderedDict[Hashable, None] = OrderedDict()  # main blocks, least recently used first
        self._ghost: OrderedDict[Hashable, None] = OrderedDict()
        self._scan: OrderedDict[Hashable, int] = OrderedDict()  # one-shot blocks, oldest first
        self._scan_bytes = 0
        self._freq: dict[Hashable, int] = {}
        self._last: dict[Hashable, int] = {}
        self._small_bytes = 0
        self._main_bytes = 0
        self._tick = 0
        self._reuse: float | None = None  # decayed max of the reuse intervals of main hits

    def on_insert(self, block: Hashable, size: int, scan: bool = False) -> None:
        """Into main if the ghost remembers it, else into the small queue; a scan block into the scan FIFO
        (the ghost not asked, the clock not moved)."""
        if block in self._freq:
            self.on_remove(block)
        self._freq[block] = 0
        if scan:
            self._last[block] = self._tick
            self._scan[block] = size
            self._scan_bytes += size
            return
        self._tick += 1
        self._last[block] = self._tick
        if block in self._ghost:
            del self._ghost[block]
            self._to_main(block, size)
        else:
            self._small[block] = size
            self._small_bytes += size

    def on_access(self, block: Hashable) -> None:
        """Bump the block's counter; main hits also feed the reuse-interval estimate."""
        freq = self._freq.get(block)
        if freq is None:
            return
        if block in self._scan:  # a one-shot block read again: a normal one, used twice
            size = self._scan.pop(block)
            self._scan_bytes -= size
            self._small[block] = size
            self._small_bytes += size
        self._tick += 1
        if freq < self.max_freq:
            self._freq[block] = freq + 1
        if block in self._recency:
            interval = self._tick - self._last[block]
            decay = 1.0 - 1.0 / max(1, len(self._main))
            self._reuse = interval if self._reuse is None else max(interval, self._reuse * decay)
            self._recency.move_to_end(block)
        self._last[block] = self._tick

    def on_remove(self, block: Hashable) -> None:
        """Forget a block (not remembered as a ghost)."""
        if self._freq.pop(block, None) is None:
            return
        del self._last[block]
        size = self._small.pop(block, None)
        if size is not None:
            self._small_bytes -= size
        elif block in self._scan:
            self._scan_bytes -= self._scan.pop(block)
        else:
            self._drop_main(block)

    def _to_main(self, block: Hashable, size: int) -> None:
        self._main[block] = size
        self._main_bytes += size
        self._recency[block] = None

    def _drop_main(self, block: Hashable) -> int:
        size = self._main.pop(block)
        self._main_bytes -= size
        del self._recency[block]
        return size

    def _forget(self, block: Hashable) -> None:
        del self._freq[block]
        del self._last[block]

    def _remember(self, block: Hashable) -> None:
        self._ghost[block] = None
        limit = max(16, int(self.ghost_ratio * (len(self._small) + len(self._main))))
        while len(self._ghost) > limit:
            self._ghost.popitem(last=False)

    def _scans(self, bytes_needed: int, protected: Protected, out: list[Hashable]) -> int:
        """Evict scan blocks, oldest first (a protected one joins main instead)."""
        freed = 0
        while freed < bytes_needed and self._scan:
            block, size = self._scan.popitem(last=False)
            self._scan_bytes -= size
            if protected(block):
                self._to_main(block, size)
                continue
            self._forget(block)
            out.append(block)
            freed += size
        return freed

    def _stale(self, bytes_needed: int, protected: Protected, out: list[Hashable]) -> int:
        """Evict main blocks idle far longer than main blocks are normally reused."""
        if self._reuse is None:
            return 0
        limit = self.stale_factor * self._reuse
        freed = 0
        for _ in range(len(self._recency)):
            if freed >= bytes_needed:
                break
            block = next(iter(self._recency))
            if self._tick - self._last[block] <= limit:
                break
            if protected(block):
                self._recency.move_to_end(block)
                continue
            freed += self._drop_main(block)
            self._forget(block)
            out.append(block)
        return freed

    def victims(self, bytes_needed: int, protected: Protected | None = None) -> list[Hashable]:
        """Scan blocks first, stale main blocks next; then from the small queue while it is over its share,
        else from main."""
        protected = protected or never_protected
        out: list[Hashable] = []
        freed = self._scans(bytes_needed, protected, out)
        freed += self._stale(bytes_needed - freed, protected, out)
        # Shares are of what remains after this eviction, so that batched evictions (a tier evicting from
        # its high to its low watermark) take the one-shot blocks of the small queue, not main's.
        after = max(0, self._small_bytes + self._main_bytes - (bytes_needed - freed))
        while self._small:  # main under its share: fill it from the small queue
            block, size = next(iter(self._small.items()))
            if self._main_bytes + size > (1.0 - self.small_ratio) * after:
                break
            del self._small[block]
            self._small_bytes -= size
            self._to_main(block, size)
        small_target = self.small_ratio * after
        main_skips = 0  # consecutive protected blocks met in main: all of main protected ends the search
        while freed < bytes_needed and (self._small or self._main):
            main_stuck = main_skips > len(self._main)
            if self._small and (self._small_bytes > small_target or not self._main or main_stuck):
                block, size = self._small.popitem(last=False)
                self._small_bytes -= size
                if self._freq[block] > 0 or protected(block):
                    self._freq[block] = 0
                    self._to_main(block, size)  # read again (or pinned): promote
                    main_skips = 0
                    continue
                self._forget(block)
                self._remember(block)
            elif main_stuck:
                break
            else:
                block, size = next(iter(self._main.items()))
                if protected(block):
                    self._main.move_to_end(block)
                    main_skips += 1
                    continue
                freq = self._freq[block]
                if freq > 0:
                    self._main.move_to_end(block)
                    self._freq[block] = freq - 1
                    continue
                self._drop_main(block)
                self._forget(block)
                main_skips = 0
            out.append(block)
            freed += size
        return out

    def __contains__(self, block: Hashable) -> bool:
        return block in self._freq

    def __len__(self) -> int:
        return len(self._freq)

    @property
    def tracked_bytes(self) -> int:
        """Bytes of the resident blocks."""
        return self._small_bytes + self._main_bytes + self._scan_bytes


_FACTORIES: dict[str, tuple[Callable[..., Policy], bool, str]] = {
    "s3fifo": (S3FIFOPolicy, False, "scan-resistant S3-FIFO, plans ignored"),
    "lru": (LRUPolicy, False, "plain LRU, plans ignored (a baseline)"),
}


def register_policy(name: str, factory: Callable[..., Policy], plans: bool = False, doc: str = "") -> None:
    """Make a policy available by name (CacheConfig.policy, ``--policy``, the benchmarks).

    With ``plans`` the factory is called with the cache's PlanBook (``factory(book)``), else with nothing.
    """
    _FACTORIES[name] = (factory, plans, doc)


def _registered() -> dict[str, tuple[Callable[..., Policy], bool, str]]:
    from . import planned  # noqa: F401 - registers the plan-aware policies

    return _FACTORIES


def policy_names() -> dict[str, str]:
    """Every registered policy name and what it does."""
    return {name: doc for name, (_f, _p, doc) in sorted(_registered().items())}


def make_policy(name: str = "default", book: object = None) -> Policy:
    """A fresh policy by name; plan-aware ones read ``book`` (a PlanBook; a private one when None)."""
    try:
        factory, plans, _doc = _registered()[name]
    except KeyError:
        raise ValueError(f"unknown eviction policy {name!r} (known: {', '.join(policy_names())})") from None
    return factory(book) if plans else factory()
