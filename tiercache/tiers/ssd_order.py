"""The SSD tier's eviction order across restarts (issue 12): the slot policy's arrays, written to a file at
close and taken back by the background validation, instead of rebuilding the order from slot numbers.

At close (the index committed, validation done), ``save`` writes the policy's ``state()`` to
``DIR/policy.npz`` with a random generation number, then commits that number to ``misc``. At open,
``claim`` takes the number out of ``misc`` (so a crash after this open never pairs the file with an index
that has changed since). When validation has walked the index, ``load`` reads the file back (off the
lock) if its generation is the one claimed; the validator then reconciles it with what it found: slots the
file holds but the index does not are removed, blocks linked since open and found ones the file lacks are
added. A missing, stale or unreadable file costs only the order: the slots are then handed over in slot
order. A policy that is not a compact slot policy (or a plan-aware one while plans are live) is neither
saved nor restored.
"""

from __future__ import annotations

import logging
import os
import secrets
import zipfile
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


def save(directory: Path, meta: Meta, policy: Policy) -> bool:
    """Write the policy's state with a new generation and commit the generation; False if not persistable."""
    target = compact(policy)
    if target is None:
        return False
    try:
        state = target.state()
    except TypeError as exc:
        log.info("ssd tier: eviction order not kept: %s", exc)
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
