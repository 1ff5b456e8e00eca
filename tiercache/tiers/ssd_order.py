"""The SSD tier's eviction order across restarts (issue 12): the slot policy's arrays, written to a file and
taken back by the background validation, instead of rebuilding the order from slot numbers.

``save`` writes the policy's ``state()`` to ``DIR/policy.npz`` with a random generation number, then commits
that number to ``misc``: at close (the index committed, validation done), and every ``SAVE_EVERY`` seconds
while the tier runs (``OrderSaver``: a copy of the arrays taken under the tier's lock, written off it), so an
order survives a kill -9 or a lost node too, as of its last save. At open, ``claim`` takes the number out of
``misc``. When validation has walked the index, ``load`` reads the file back (off the lock) if its
generation is the one claimed; the validator then reconciles it with what it found: slots the file holds
but the index does not are removed, blocks linked since the save and found ones the file lacks are added
(a slot reused since the save keeps its predecessor's place: an order, never data). A missing, stale or
unreadable file costs only the order: the slots are then handed over in slot order. A policy that is not a
compact slot policy (or a plan-aware one while plans are live) is neither saved nor restored.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import zipfile
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np

from ..private import open_private
from .meta import Meta
from .policy import Policy
from .slot_plans import SlotPlanPolicy
from .slot_policy import SlotPolicy

log = logging.getLogger(__name__)

FILE = "policy.npz"
GENERATION = b"ssd_policy_generation"
SAVE_EVERY = 600.0  # seconds between saves while the tier runs (the copy under the lock: 24 ms and 68 MB
# for 2 M blocks, measured; freed once written)


def compact(policy: Policy) -> SlotPolicy | None:
    """The slot policy whose state is the tier's eviction order (None: nothing to persist now)."""
    if isinstance(policy, SlotPlanPolicy):
        return None if policy.book else policy.fallback
    return policy if isinstance(policy, SlotPolicy) else None


def claim(meta: Meta) -> int | None:
    """The generation the last close committed, taken out of ``misc`` (None when there is none)."""
    raw = meta.get("misc", GENERATION)
    if raw is None:
        return None
    meta.delete("misc", GENERATION)
    try:
        return int(raw)
    except ValueError:
        return None


def snapshot(policy: Policy, copy: bool = False) -> dict[str, np.ndarray] | None:
    """The policy's state (copies with ``copy``, to write off the lock); None if not persistable."""
    target = compact(policy)
    if target is None:
        return None
    try:
        state = target.state()
    except TypeError as exc:
        log.info("ssd tier: eviction order not kept: %s", exc)
        return None
    return {name: value.copy() for name, value in state.items()} if copy else state


def save(directory: Path, meta: Meta, state: dict[str, np.ndarray] | None) -> bool:
    """Write ``state`` (from ``snapshot``) with a new generation and commit the generation; False if there
    is nothing to keep or the file could not be written."""
    if state is None:
        return False
    generation = secrets.randbits(62)
    path, tmp = directory / FILE, directory / (FILE + ".tmp")
    try:
        with os.fdopen(open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as fh:
            np.savez(fh, generation=np.array(generation), **state)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("ssd tier: could not write the eviction order to %s: %s", path, exc)
        tmp.unlink(missing_ok=True)
        return False
    meta.put("misc", GENERATION, str(generation).encode())
    return True


class OrderSaver:
    """Saves the eviction order every ``every`` seconds once ``ready`` is set (the validation done), in its
    own thread; ``stop`` ends it before the tier's last save at close."""

    def __init__(self, directory: Path, meta: Meta, policy: Policy, lock: AbstractContextManager,
                 ready: threading.Event, every: float = SAVE_EVERY):
        self.directory, self.meta, self.policy, self.lock = directory, meta, policy, lock
        self.ready, self.every = ready, every
        self.saves = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tiercache-ssd-order", daemon=True)

    def start(self) -> None:
        """Start saving (nothing when ``every`` is 0 or less)."""
        if self.every > 0:
            self._thread.start()

    def stop(self) -> None:
        """Stop saving; waits for a save in progress."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            if not self.ready.is_set():
                continue
            with self.lock:
                state = snapshot(self.policy, copy=True)
            if save(self.directory, self.meta, state):
                self.saves += 1


def load(directory: Path, generation: int | None) -> dict[str, np.ndarray] | None:
    """The state saved under ``generation`` (None when absent, stale or unreadable); the file is removed."""
    path = directory / FILE
    if generation is None or not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            if int(archive["generation"]) != generation:
                return None
            return {name: archive[name] for name in archive.files if name != "generation"}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("ssd tier: eviction order in %s unreadable (%s); rebuilding it in slot order", path, exc)
        return None
    finally:
        path.unlink(missing_ok=True)


def discard(directory: Path) -> None:
    """Remove a saved order (the index it belonged to was dropped)."""
    (directory / FILE).unlink(missing_ok=True)
