"""The SSD tier's compact index (issue 12): a block is a 12-byte digest in LMDB and its id lives once, in its
record in the region file. A digest collision is a miss, never the other block's bytes; an index of an older
format is dropped with one log line, never misread; the eviction order survives a clean restart; the
background validation leaves the index's pages out of the process's RSS."""

from __future__ import annotations

import logging
import os
import signal
import struct
import subprocess
import sys
import threading

import lmdb
import pytest

from tiercache.tiers import ssd_index
from tiercache.tiers.base import BlockId, key_prefix
from tiercache.tiers.meta import Meta
from tiercache.tiers.slot_lru import SlotLRU
from tiercache.tiers.slot_policy import SlotS3FIFO
from tiercache.tiers.ssd import SsdTier
from tiercache.tiers.ssd_format import FORMAT, checksums

pytestmark = pytest.mark.timeout(120)


def test_an_index_entry_is_a_digest_and_a_small_value(tmp_path, meta):
    ssd = SsdTier(tmp_path / "regions", 10 << 20, meta)
    block = BlockId("train/class_0001/img_00001234.jpg", "0123456789abcdef0123456789abcdef", 0)
    ssd.put(block, b"x" * 1000)
    ssd.flush()
    [(key, value)] = meta.scan("ssd_index")
    assert key == ssd_index.block_key(block) and len(key) == 12
    assert len(value) == 20  # region, offset, size, slot and one page crc
    assert block.key.encode() not in value and block.etag.encode() not in value
    ssd.close()


def test_a_digest_collision_is_a_miss_never_the_other_blocks_bytes(tmp_path, meta, monkeypatch):
    monkeypatch.setattr(ssd_index, "digest", lambda data, size: b"\1" * size)  # every block collides
    ssd = SsdTier(tmp_path / "regions", 10 << 20, meta)
    a, b = BlockId("a", "e1", 0), BlockId("b", "e2", 0)
    longer = BlockId("another/key", "e3", 0)  # an id of another length: the entry's size cannot fit it
    assert ssd.put(a, b"A" * 5000)
    assert ssd.put(b, b"B" * 5000)  # the digest is taken: b is not cached
    for other in (b, longer):
        assert ssd.get(other) is None and ssd.get_range(other, 0, 10) is None
        assert not ssd.get_into(other, memoryview(bytearray(5000)))
    assert ssd.get(a) == b"A" * 5000 and ssd.stats()["crc_errors"] == 0  # a's entry is intact, kept
    assert ssd.blocks(key_prefix("b")) == [] and ssd.blocks(key_prefix("a")) == [a] and ssd.blocks() == [a]
    ssd.close()
    again = SsdTier(tmp_path / "regions", 10 << 20, meta)
    assert again.validated(30)
    assert again.get(b) is None and again.get(a) == b"A" * 5000 and again.stats()["blocks"] == 1
    again.close()


def test_a_key_prefix_finds_only_that_keys_blocks_and_a_directory_prefix_walks_the_index(tmp_path, meta):
    ssd = SsdTier(tmp_path / "regions", 10 << 20, meta)
    blocks = [BlockId(k, e, i) for k in ("d/a", "d/ab", "e/a") for e in ("v1", "v2") for i in range(3)]
    for block in blocks:
        ssd.put(block, block.encode() * 3)
    assert sorted(ssd.blocks(key_prefix("d/a"))) == sorted(b for b in blocks if b.key == "d/a")
    assert sorted(ssd.blocks(b"d/")) == sorted(b for b in blocks if b.key.startswith("d/"))
    assert sorted(ssd.blocks()) == sorted(blocks)
    ssd.close()


def _old_format_dir(tmp_path) -> None:
    """A cache dir as the previous format (pages-v3) left it: full encoded ids as keys, twice, a slot map."""
    meta = Meta(tmp_path / "meta")
    regions = tmp_path / "regions"
    regions.mkdir(mode=0o700)
    data = b"old bytes" * 100
    (regions / "00000001.region").write_bytes(data)
    block = BlockId("old/key", "e", 0)
    with meta.write() as txn:
        txn.put(block.encode(), struct.pack("<IQII", 1, 0, len(data), 0) + checksums(block, data),
                meta.db("ssd_index"))
        txn.put(b"\0\0\0\1", b"", meta.db("regions"))
        txn.put(b"ssd_format", b"pages-v3", meta.db("misc"))
        txn.put(b"ssd_next_slot", b"1", meta.db("misc"))
    with meta.env.begin(write=True) as txn:
        txn.put(struct.pack(">I", 0), block.encode(), db=meta.env.open_db(b"ssd_slots", txn=txn))
    meta.close()


def test_an_older_format_is_dropped_with_one_line_never_misread(tmp_path, caplog):
    _old_format_dir(tmp_path)
    meta = Meta(tmp_path / "meta")
    with caplog.at_level(logging.INFO, logger="tiercache"):
        ssd = SsdTier(tmp_path / "regions", 10 << 20, meta)
    lines = [r for r in caplog.records if r.name.startswith("tiercache.tiers")]
    assert len(lines) == 1 and "pages-v3" in lines[0].getMessage(), [r.getMessage() for r in lines]
    assert ssd.get(BlockId("old/key", "e", 0)) is None and ssd.stats()["blocks"] == 0
    assert os.listdir(tmp_path / "regions") == [] and meta.count("ssd_index") == 0
    with pytest.raises(lmdb.NotFoundError), meta.env.begin() as txn:
        meta.env.open_db(b"ssd_slots", txn=txn, create=False)
    assert meta.get("misc", b"ssd_format") == FORMAT
    fresh = BlockId("new/key", "e", 0)
    assert ssd.put(fresh, b"new" * 10)
    ssd.close()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tiercache"):
        again = SsdTier(tmp_path / "regions", 10 << 20, meta)
    assert again.get(fresh) == b"new" * 10
    assert not [r for r in caplog.records if "format" in r.getMessage()]
    again.close()
    meta.close()


def _victim_keys(ssd: SsdTier, count: int) -> list[str]:
    victims = ssd.policy.victims(count * ssd.policy.size_of(int(ssd.policy.resident()[0])))
    return [ssd.entries.block_of(v).key for v in victims][:count]


def _filled_lru(tmp_path, meta) -> None:
    ssd = SsdTier(tmp_path / "regions", 10 << 20, meta, policy="lru")
    blocks = [BlockId(f"k{i:03d}", "e", 0) for i in range(100)]
    for block in blocks:
        ssd.put(block, b"z" * 1000)
    assert ssd.validated(30)
    for block in reversed(blocks):  # the least recently used is now the last one written
        assert ssd.get(block) is not None
    ssd.close()


def test_the_eviction_order_survives_a_clean_restart(tmp_path, meta):
    _filled_lru(tmp_path, meta)
    again = SsdTier(tmp_path / "regions", 10 << 20, meta, policy="lru")
    assert again.validated(30) and again.validator.restored == 100
    extra = BlockId("after-open", "e", 0)
    again.put(extra, b"y" * 1000)
    assert len(again.policy) == 101
    # before: rebuilt in slot order, so k000.. went first although they were read last
    assert _victim_keys(again, 3) == ["k099", "k098", "k097"]
    again.close()


def test_a_saved_order_is_not_used_after_an_unclean_stop(tmp_path, meta):
    _filled_lru(tmp_path, meta)
    crashed = SsdTier(tmp_path / "regions", 10 << 20, meta, policy="lru")
    assert crashed.validated(30)
    crashed.discard(BlockId("k099", "e", 0))
    crashed.flush()  # then the process dies: no close, the index has changed since the order was saved
    again = SsdTier(tmp_path / "regions", 10 << 20, meta, policy="lru")
    assert again.validated(30) and again.validator.restored == 0 and len(again.policy) == 99
    assert _victim_keys(again, 2) == ["k000", "k001"]  # slot order
    again.close()
    crashed.validator.stop()


KILLED_AFTER_A_SAVE = r"""
import os, signal, sys, time
from tiercache.tiers.base import BlockId
from tiercache.tiers.meta import Meta
from tiercache.tiers.ssd import SsdTier

ssd = SsdTier(sys.argv[1] + "/regions", 10 << 20, Meta(sys.argv[1] + "/meta"), policy="lru", order_every=0.05)
blocks = [BlockId(f"k{i:03d}", "e", 0) for i in range(100)]
for block in blocks:
    ssd.put(block, b"z" * 1000)
assert ssd.validated(30)
for block in reversed(blocks):  # the least recently used is now the last one written
    assert ssd.get(block) is not None
ssd.flush()
saves = ssd.order_saver.saves
while ssd.order_saver.saves < saves + 2:  # a save begun after the reads
    time.sleep(0.01)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_eviction_order_survives_a_kill_as_of_its_last_periodic_save(tmp_path):
    proc = subprocess.run([sys.executable, "-c", KILLED_AFTER_A_SAVE, str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    meta = Meta(tmp_path / "meta")
    again = SsdTier(tmp_path / "regions", 10 << 20, meta, policy="lru")
    assert again.validated(30) and again.validator.restored == 100
    assert _victim_keys(again, 3) == ["k099", "k098", "k097"]  # before: slot order (k000 first) after a kill
    again.close()
    meta.close()


def test_a_saved_order_drops_blocks_the_index_no_longer_holds(tmp_path, meta):
    _filled_lru(tmp_path, meta)
    meta.delete("ssd_index", ssd_index.block_key(BlockId("k050", "e", 0)))  # lost from the index
    again = SsdTier(tmp_path / "regions", 10 << 20, meta, policy="lru")
    assert again.validated(30) and again.validator.restored == 99 and len(again.policy) == 99
    assert BlockId("k050", "e", 0) not in {again.entries.block_of(int(s)) for s in again.policy.resident()}
    assert _victim_keys(again, 2) == ["k099", "k098"]
    again.close()


def _rss_file() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("RssFile:"))


def test_background_validation_leaves_the_index_out_of_the_rss(tmp_path):
    meta = Meta(tmp_path / "meta")
    ssd = SsdTier(tmp_path / "regions", 256 << 20, meta)
    for start in range(0, 40_000, 4096):
        ssd.put_many([(BlockId(f"d/{i:08d}", "e", 0), b"v" * 100) for i in range(start, min(40_000, start + 4096))])
    ssd.close()
    index_bytes = meta.page_bytes("ssd_index")
    meta.close()
    for _round in range(2):  # the first round maps the code and libraries a restart touches
        base = _rss_file()
        meta = Meta(tmp_path / "meta")
        again = SsdTier(tmp_path / "regions", 256 << 20, meta)
        assert again.validated(60) and again.stats()["blocks"] == 40_000
        grown = _rss_file() - base
        again.close()
        meta.close()
    # before: the walk left every page of the index mapped (grown >= index_bytes)
    assert index_bytes > 1 << 20 and grown < index_bytes / 4, (grown, index_bytes)


def test_a_saved_order_is_not_used_for_an_index_dropped_since(tmp_path, meta):
    _filled_lru(tmp_path, meta)
    with meta.write() as txn:  # what a cache dir reused for another source does
        txn.drop(meta.db("ssd_index"), delete=False)
    again = SsdTier(tmp_path / "regions", 10 << 20, meta, policy="lru")
    assert again.validated(30) and again.validator.restored == 0 and len(again.policy) == 0
    block = BlockId("fresh", "e", 0)
    assert again.put(block, b"f" * 100) and len(again.policy) == 1 and again.get(block) == b"f" * 100
    again.close()


def test_the_background_walk_rests_while_another_thread_works(tmp_path):
    """A core-bound walk of a big index made every FUSE request wait for the GIL (``ls -l`` of 100 K files
    during the walk at 10 M: 19 s against 1.6 s at 1 M); it now rests when another thread has work, and still
    finishes with every block."""
    meta = Meta(tmp_path / "meta")
    ssd = SsdTier(tmp_path / "regions", 256 << 20, meta)
    for start in range(0, 40_000, 4096):
        ssd.put_many([(BlockId(f"d/{i:08d}", "e", 0), b"v" * 100) for i in range(start, min(40_000, start + 4096))])
    ssd.close()
    meta.close()
    meta = Meta(tmp_path / "meta")
    stop = threading.Event()

    def busy() -> None:  # a request thread with Python work to do the whole time
        while not stop.is_set():
            sum(range(1000))

    worker = threading.Thread(target=busy, daemon=True)
    worker.start()
    try:
        again = SsdTier(tmp_path / "regions", 256 << 20, meta)
        assert again.validated(60) and again.stats()["blocks"] == 40_000
        assert again.validator.rests > 0
    finally:
        stop.set()
        worker.join()
    again.close()
    meta.close()


@pytest.mark.parametrize("policy_class", [SlotS3FIFO, SlotLRU])
def test_a_slot_policy_taken_back_from_its_state_decides_as_the_original(policy_class):
    original = policy_class()
    for slot in range(3000):
        original.on_insert(slot, 10 + slot % 7, ident=slot * 31 + 1, scan=slot % 9 == 0)
    for slot in range(0, 3000, 4):
        original.on_access(slot)
    original.victims(2000)
    copy = policy_class()
    copy.load_state({name: value.copy() for name, value in original.state().items()})
    for policy in (original, copy):
        for slot in range(3000, 4000):
            policy.on_insert(slot, 5, ident=slot, scan=slot % 5 == 0)
        for slot in range(0, 4000, 7):
            policy.on_access(slot)
    assert copy.victims(9000) == original.victims(9000) and len(copy) == len(original)
    with pytest.raises(ValueError):
        (SlotLRU() if policy_class is SlotS3FIFO else SlotS3FIFO()).load_state(original.state())
