"""A listing's progress, kept in LMDB with each batch it commits, so that a listing stopped early (the
namespace closed, the process killed) resumes where it had got at the next start instead of from the top.

Two kinds of records in ``listings``, next to the listings' own (``"/" + path``) and the markers (``"+"``):

* ``PROGRESS + top``: the listing's generation (when it started: the fetch time of every record it wrote,
  so its final sweep keeps them), whether it started into an empty subtree, how many files it had taken in,
  and each unit of its walk (``store.walk.Unit``: prefix, key range, the last key taken in, done or not, its
  parent; a level not done also keeps the subprefixes it had found);
* ``DIRS + top + NUL + path``: each directory the listing has seen (one record per directory, not per
  object), so the resumed listing still tells a file that is also a directory.

Both are written in the transaction of the batch they describe, so they never claim a key not committed, and
are removed with the listing's own record when it ends. ``load`` rebuilds what to resume: the units whose
levels above are all done (a level not done is listed again after its last file, and what it had started
below it is dropped: it is started again), each not done to run again after its last key
(``Unit.resumed``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .store.walk import Unit
from .tiers.meta import Meta, Txn

PROGRESS = b"~walk/"
DIRS = b"~dirs/"


@dataclass
class Resume:
    """What a stopped listing left: its generation, its units (``pending``: those to run again)."""

    started: float
    fresh: bool
    files: int
    units: list[Unit]
    pending: list[Unit]
    dirs: set[str]


def _dirs_prefix(top: str) -> bytes:
    return DIRS + top.encode() + b"\0"


def save(txn: Txn, db, top: str, started: float, fresh: bool, files: int, units: list[Unit],
         last: dict[int, str], ended: set[int], new_dirs: list[str]) -> None:
    """Record, in the batch's own transaction ``txn``, how far each unit has got once it commits: ``last``
    (unit id -> the last key this batch takes in) and ``ended`` (ids of units this batch completes)."""
    ids = {id(unit): i for i, unit in enumerate(units)}
    rows = []
    for unit in units:
        done = unit.done or id(unit) in ended
        rows.append([unit.prefix, unit.level, unit.lo, unit.hi, last.get(id(unit), unit.last), done,
                     ids.get(id(unit.parent), -1) if unit.parent is not None else -1, unit.needed, unit.after,
                     unit.limit, unit.depth, list(unit.children) if unit.level and not done else []])
    record = {"generation": started, "fresh": fresh, "files": files, "units": rows}
    txn.put(PROGRESS + top.encode(), json.dumps(record, separators=(",", ":")).encode(), db=db)
    for path in new_dirs:
        txn.put(_dirs_prefix(top) + path.encode(), b"", db=db)


def load(meta: Meta, top: str) -> Resume | None:
    """The progress a stopped listing of ``top`` left, rebuilt to resume; None if there is none."""
    raw = meta.get("listings", PROGRESS + top.encode())
    if raw is None:
        return None
    record = json.loads(raw)
    units: list[Unit] = []
    for prefix, level, lo, hi, last, done, parent, needed, after, limit, depth, children in record["units"]:
        units.append(Unit(prefix, level, lo, hi, last=last, done=done, children=children,
                          parent=units[parent] if parent >= 0 else None, needed=needed, after=after,
                          limit=limit, depth=depth))

    def kept(unit: Unit) -> bool:
        above = unit.parent
        while above is not None:
            if not above.done:
                return False
            above = above.parent
        return True

    units = [unit for unit in units if kept(unit)]
    dirs = {key[len(_dirs_prefix(top)):].decode() for key, _ in meta.scan("listings", _dirs_prefix(top))}
    return Resume(record["generation"], record["fresh"], record["files"], units,
                  [unit.resumed() for unit in units if not unit.done], dirs)


def clear(txn: Txn, db, top: str) -> None:
    """Remove the progress of ``top``'s listing (it has ended), in the transaction that records its end."""
    txn.delete(PROGRESS + top.encode(), db=db)
    for key, _ in txn.scan(db, _dirs_prefix(top)):
        txn.delete(key, db=db)
