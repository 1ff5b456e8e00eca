"""Pins (issue 12): few pins are a set in memory; many are looked up in LMDB, with no Python object per pin,
and both answer ``covers`` the same."""

from __future__ import annotations

import sys

from tiercache import pins as pins_module
from tiercache.pins import Pins
from tiercache.tiers.meta import Meta


def test_many_pins_are_looked_up_in_lmdb_and_answer_as_few(tmp_path, monkeypatch):
    monkeypatch.setattr(pins_module, "IN_MEMORY", 16)
    meta = Meta(tmp_path / "meta")
    pins = Pins(meta)
    pins.pin("dir/sub")
    probes = ["dir/sub", "dir/sub/x", "dir/subx", "dir", "f00003", "f00003/x", "f000031", "other/f00007"]
    few = [pins.covers(k) for k in probes]
    assert few == [True, True, False, False, False, False, False, False]
    blocks = sys.getallocatedblocks()
    for i in range(2000):
        pins.pin(f"f{i:05d}")
    grown = sys.getallocatedblocks() - blocks
    assert grown < 200, grown  # not one object per pin (a set of 2,000 strings is over 2,000 blocks)
    assert len(pins) == 2001 and list(pins)[:2] == ["dir/sub", "f00000"]
    assert [pins.covers(k) for k in probes] == [True, True, False, False, True, True, False, False]
    reads = meta.reads["pins"]
    assert pins.covers("a/b/c/d") is False and meta.reads["pins"] - reads == 5  # the key, 3 directories, root
    meta.close()
    meta = Meta(tmp_path / "meta")  # persisted; reopened with many pins: still not loaded
    pins = Pins(meta)
    assert pins.covers("f01999/y") and not pins.covers("g")
    for i in range(2000):
        pins.unpin(f"f{i:05d}")
    assert list(pins) == ["dir/sub"] and [pins.covers(k) for k in probes] == few
    pins.pin("")
    assert pins.covers("anything/at/all")
    meta.close()
