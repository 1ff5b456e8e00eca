"""rename(2) as POSIX has it, checked before the write tier moves anything.

    old == new (the same file)                 → nothing to do
    new below old (a directory into itself)    → EINVAL
    old missing                                → ENOENT
    a directory over a file                    → ENOTDIR
    a file over a directory                    → EISDIR
    a directory over a non-empty directory     → ENOTEMPTY (never a merge: the target's files stay)
    a directory over an empty directory        → the empty one is removed, then the move
    a file over a file                         → the move replaces it (the write tier supersedes it)

``flags`` are renameat2's: RENAME_NOREPLACE fails with EEXIST when ``new`` exists; RENAME_EXCHANGE and
RENAME_WHITEOUT are refused with EINVAL (not supported), never done as a plain rename.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from enum import Enum

RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1, 2, 4


class RenamePlan(Enum):
    """What the caller does after the checks."""

    NOTHING = "nothing"
    MOVE = "move"
    REPLACE_EMPTY_DIR = "replace-empty-dir"


def plan_rename(old: str, new: str, flags: int, kind: Callable[[str], bool | None],
                has_entries: Callable[[str], bool]) -> RenamePlan:
    """Check a rename of store keys ``old`` → ``new``; raise OSError with rename(2)'s errno, or say what to do.

    ``kind(path)``: True for a directory, False for a file, None if nothing is there. ``has_entries(dir)``:
    whether a directory holds anything.
    """
    if flags & ~RENAME_NOREPLACE:
        raise OSError(errno.EINVAL, "rename: RENAME_EXCHANGE / RENAME_WHITEOUT are not supported")
    if new.startswith(old + "/") or not old:
        raise OSError(errno.EINVAL, f"rename {old} -> {new}: a directory cannot move into itself")
    source = kind(old)
    if source is None:
        raise OSError(errno.ENOENT, f"rename: {old}: no such file or directory")
    if old == new:
        return RenamePlan.NOTHING
    if old.startswith(new + "/") or not new:
        raise OSError(errno.ENOTEMPTY, f"rename {old} -> {new}: the target holds the source")
    target = kind(new)
    if target is None:
        return RenamePlan.MOVE
    if flags & RENAME_NOREPLACE:
        raise OSError(errno.EEXIST, f"rename: {new} exists")
    if source and not target:
        raise OSError(errno.ENOTDIR, f"rename {old} -> {new}: {new} is not a directory")
    if not source and target:
        raise OSError(errno.EISDIR, f"rename {old} -> {new}: {new} is a directory")
    if source and target:
        if has_entries(new):
            raise OSError(errno.ENOTEMPTY, f"rename {old} -> {new}: {new} is not empty")
        return RenamePlan.REPLACE_EMPTY_DIR
    return RenamePlan.MOVE
