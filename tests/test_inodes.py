"""The mount's inode table is compact: no state per looked-up file, one 16-byte map entry (numpy) per renamed
file, and numbers stay stable and unique through renames of files and directories (structural: bytes and
entries counted, never time)."""

from __future__ import annotations

import random
import tracemalloc

import pytest

from tiercache.fuse import FuseUnavailable

try:
    from tiercache.fuse.inodes import ROOT_INO, InodeTable
    from tiercache.fuse.u64map import U64Map
except FuseUnavailable:  # pragma: no cover - no libfuse here
    pytest.skip("libfuse 3 / mfusepy not available", allow_module_level=True)

LOOKED_UP = 100_000
RENAMED = 50_000


def test_looked_up_files_cost_no_bytes():
    table = InodeTable()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        numbers = {table.ino(f"big/file_{i:07d}.bin") for i in range(LOOKED_UP)}
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(numbers) == LOOKED_UP and ROOT_INO not in numbers
    assert table.entries() == 0 and table.nbytes() == 0
    # what grew is the test's own set of numbers (about 60 B per int and set slot), not the table
    assert grown / LOOKED_UP < 120, grown / LOOKED_UP


def test_renamed_files_cost_one_compact_entry_each():
    table = InodeTable()
    before_numbers = [table.ino(f"d/.tmp_{i:06d}") for i in range(RENAMED)]
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for i in range(RENAMED):
            table.renamed(f"d/.tmp_{i:06d}", f"d/file_{i:06d}")
        grown = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert table.entries() == RENAMED
    assert table.nbytes() / RENAMED <= 2 * 16 * 1.01  # two uint64 pairs: the map and its reverse
    assert grown / RENAMED < 64, grown / RENAMED  # the arrays plus a bounded dict of recent changes
    assert [table.ino(f"d/file_{i:06d}") for i in range(RENAMED)] == before_numbers
    fresh = {table.ino(f"d/.tmp_{i:06d}") for i in range(0, RENAMED, 7)}  # new files at the old names
    assert not fresh & set(before_numbers) and len(fresh) == len(range(0, RENAMED, 7))
    for i in range(0, RENAMED, 2):
        table.removed(f"d/file_{i:06d}")
    assert table.entries() == RENAMED // 2 + len(fresh)  # removed files drop their entries


def test_directory_renames_carry_their_children_and_new_names_stay_unique():
    table = InodeTable()
    top, child, deep = table.ino("out"), table.ino("out/model"), table.ino("out/sub/w")
    table.renamed("out", "old")
    assert (table.ino("old"), table.ino("old/model"), table.ino("old/sub/w")) == (top, child, deep)
    made = {table.ino("out"), table.ino("out/model"), table.ino("out/sub/w")}  # a new "out" tree
    assert not made & {top, child, deep} and len(made) == 3
    table.renamed("old/model", "out/model")  # replaces the new out/model
    assert table.ino("out/model") == child
    table.renamed("out", "out2")
    assert table.ino("out2/model") == child
    assert table.entries() <= 4


def test_u64map_agrees_with_a_dict():
    rng = random.Random(12)
    mapping, model = U64Map(merge_at=64), {}
    keys = [rng.getrandbits(64) for _ in range(600)]
    for step in range(6000):
        key = rng.choice(keys)
        if rng.random() < 0.3:
            assert mapping.pop(key) == model.pop(key, None)
        else:
            value = rng.getrandbits(64)
            mapping.set(key, value)
            model[key] = value
        if step % 97 == 0:
            assert len(mapping) == len(model)
            assert all(mapping.get(k) == model.get(k) for k in keys)
    assert len(mapping) == len(model) and mapping.nbytes() <= 16 * len(model) + 16 * 64
