"""Plan-aware eviction over slots, compact while no plan is live; and the SSD tier's policy factory.

``SlotPlanPolicy`` is what the SSD tier runs under the ``default``/``plan`` policies. Without a live plan it
is its compact fallback (``slot_policy.SlotS3FIFO``: numpy arrays, no Python object per block). When a plan
arrives it builds a ``planned.PlanAwarePolicy`` over the resident slots (each handed over as a ``SlotRef``,
an int that carries its object key, which that policy ranks by) and defers to it; when the last plan ends
that per-block state is dropped again. Seeding reads each resident slot's key from the tier's index once,
``SEED_BATCH`` slots per policy call (a slot not handed over yet is not a plan-aware victim meanwhile).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

from ..plans import PlanBook
from .planned import PlanAwarePolicy
from .policy import Policy, Protected, make_policy
from .slot_lru import SlotLRU
from .slot_policy import SlotPolicy, SlotS3FIFO

__all__ = ["SlotPlanPolicy", "SlotRef", "make_slot_policy"]


class SlotRef(int):
    """A slot id that carries its object key (``key``); equal to and hashed as the plain int."""

    key: str

    def __new__(cls, slot: int, key: str) -> SlotRef:
        ref = super().__new__(cls, slot)
        ref.key = key
        return ref


class _Detached(Policy):
    """A fallback that does nothing: used while seeding a plan-aware policy from slots already tracked."""

    def on_insert(self, block: Hashable, size: int, scan: bool = False) -> None:
        """Nothing."""

    def on_access(self, block: Hashable) -> None:
        """Nothing."""

    def on_remove(self, block: Hashable) -> None:
        """Nothing."""

    def victims(self, bytes_needed: int, protected: Protected | None = None) -> list[Hashable]:
        """None."""
        return []

    def __contains__(self, block: Hashable) -> bool:
        return False

    def __len__(self) -> int:
        return 0

    @property
    def tracked_bytes(self) -> int:
        """Zero."""
        return 0


class SlotPlanPolicy(Policy):
    """Farthest next use over ``book``'s live plans; the compact ``fallback`` alone without plans."""

    name = "plan"
    SEED_BATCH = 4096

    def __init__(self, book: PlanBook | None = None, fallback: Callable[[], SlotPolicy] = SlotS3FIFO):
        super().__init__()
        self.book = book if book is not None else PlanBook()
        self.fallback = fallback()
        self.key_of: Callable[[int], str | None] = lambda _slot: None  # the tier's slot → object key
        self._planned: PlanAwarePolicy | None = None
        self._unseeded = None  # slots resident when the plans came, not yet handed to the plan-aware policy
        self._seeded_upto = 0

    def _active(self) -> PlanAwarePolicy | None:
        if not self.book:
            self._planned = None  # no plan left: drop the per-block plan state
            self._unseeded = None
            return None
        if self._planned is None:
            self._planned = PlanAwarePolicy(self.book, fallback=lambda: self.fallback)
            self._unseeded = self.fallback.resident()
            self._seeded_upto = 0
        if self._unseeded is not None:
            self._seed()
        return self._planned

    def _seed(self) -> None:
        """Hand the next ``SEED_BATCH`` slots resident before the plan came to the plan-aware policy (a
        batch per call, so a plan arriving over a million resident blocks never stalls the tier)."""
        planned, start = self._planned, self._seeded_upto
        batch = self._unseeded[start:start + self.SEED_BATCH].tolist()
        planned.fallback = _DETACHED  # the fallback tracks them already
        try:
            for slot in batch:
                if slot in self.fallback and slot not in planned:
                    planned.on_insert(self._ref(slot), self.fallback.size_of(slot),
                                      scan=self.fallback.scanned(slot))
        finally:
            planned.fallback = self.fallback
        self._seeded_upto = start + len(batch)
        if self._seeded_upto >= len(self._unseeded):
            self._unseeded = None

    def _ref(self, slot: int) -> SlotRef:
        return SlotRef(slot, self.key_of(slot) or "")

    def on_insert(self, block: int, size: int, ident: int | None = None, scan: bool = False) -> None:
        """Track a resident slot (in the fallback; in the plan-aware policy too while plans are live);
        ``scan``: a stream's one-shot block."""
        planned = self._active()
        self.fallback.on_insert(block, size, ident, scan=scan)
        if planned is not None:
            planned.fallback = _DETACHED  # the fallback has it already (with its ghost identity)
            try:
                planned.on_insert(self._ref(int(block)), size, scan=scan)
            finally:
                planned.fallback = self.fallback

    def insert_many(self, slots, sizes, idents) -> None:
        """``on_insert`` of many slots (vectorized in the fallback while no plan is live)."""
        if self._active() is None:
            self.fallback.insert_many(slots, sizes, idents)
        else:
            for slot, size, ident in zip(slots.tolist(), sizes.tolist(), idents.tolist(), strict=True):
                self.on_insert(slot, size, ident)

    def reserve(self, slots: int) -> None:
        """Room for slots below ``slots`` (see SlotPolicy.reserve)."""
        self.fallback.reserve(slots)

    def on_access(self, block: int) -> None:
        """A hit (the fallback keeps recency; a scan slot read again turns normal in both)."""
        if self._planned is not None:
            self._planned.on_access(block)  # passes it on to the fallback
        else:
            self.fallback.on_access(block)

    def on_remove(self, block: int) -> None:
        """Forget a slot."""
        if self._planned is not None:
            self._planned.on_remove(block)
        else:
            self.fallback.on_remove(block)

    def victims(self, bytes_needed: int, protected: Protected | None = None) -> list[int]:
        """The plan-aware choice while plans are live, else the fallback's; plain slot ints."""
        planned = self._active()
        chosen = self.fallback.victims(bytes_needed, protected) if planned is None else \
            planned.victims(bytes_needed, protected)
        return [int(slot) for slot in chosen]

    def set_plan(self, keys_in_order: Sequence[str], client: str = "default") -> None:
        """Install ``client``'s plan in the book."""
        self.book.set_plan(keys_in_order, client)

    def __contains__(self, block: object) -> bool:
        return block in self.fallback

    def __len__(self) -> int:
        return len(self.fallback)

    @property
    def tracked_bytes(self) -> int:
        """Bytes of the resident slots."""
        return self.fallback.tracked_bytes

    @property
    def nbytes(self) -> int:
        """Bytes of the compact state (the plan-aware dicts, while plans are live, are not counted)."""
        return self.fallback.nbytes


_DETACHED = _Detached()

_SLOT_POLICIES: dict[str, Callable[[PlanBook | None], Policy]] = {
    "s3fifo": lambda _book: SlotS3FIFO(),
    "lru": lambda _book: SlotLRU(),
    "default": lambda book: SlotPlanPolicy(book, SlotS3FIFO),
    "plan": lambda book: SlotPlanPolicy(book, SlotS3FIFO),
    "plan-lru": lambda book: SlotPlanPolicy(book, SlotLRU),
}


def make_slot_policy(name: str = "default", book: PlanBook | None = None) -> Policy:
    """The SSD tier's policy by name: a compact slot policy where one exists, else ``make_policy``'s."""
    factory = _SLOT_POLICIES.get(name)
    return factory(book) if factory is not None else make_policy(name, book)
