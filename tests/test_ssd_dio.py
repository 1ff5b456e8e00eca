"""The SSD tier's large writes past the page cache (issue 13, cold streaming): the write queue's writer puts a
large record at a 4 KiB-aligned offset with O_DIRECT (tiers/ssd_dio.py); small records stay buffered and
packed; a filesystem without O_DIRECT (tmpfs) falls back to buffered writes. Every record reads back
checked, before and after a restart, and a damaged one is still a miss. Real region files."""

from __future__ import annotations

import os
import random
import tempfile

import pytest

from tiercache.tiers.base import BlockId
from tiercache.tiers.meta import Meta
from tiercache.tiers.ssd import SsdTier
from tiercache.tiers.ssd_dio import ALIGN, DIRECT_MIN, DirectIOWriter

pytestmark = pytest.mark.timeout(120)

MiB = 1 << 20


def region_paths(directory) -> list[str]:
    return sorted(os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".region"))


def has_o_direct(directory) -> bool:
    probe = os.path.join(directory, ".probe")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600))
    except OSError:
        return False
    finally:
        if os.path.exists(probe):
            os.unlink(probe)
    return True


def mixed_blocks(seed: int) -> list[tuple[BlockId, bytes]]:
    """Large blocks of odd sizes (records never a multiple of 4 KiB) between small ones."""
    rng = random.Random(seed)
    out = []
    for i in range(12):
        size = rng.choice([4 * MiB, 4 * MiB - 777, DIRECT_MIN + 5, 3000, 100, 70_000])
        out.append((BlockId(f"obj-{i % 3}", "etag", i), rng.randbytes(size)))
    return out


def queue_all(ssd: SsdTier, blocks: list[tuple[BlockId, bytes]]) -> None:
    for block, data in blocks:
        if not ssd.put_async(block, data):  # the queue is full: once it is written, there is room
            ssd.drain()
            assert ssd.put_async(block, data)
    ssd.drain()


def test_large_records_are_aligned_o_direct_writes_and_read_back_checked(tmp_path):
    if not has_o_direct(tmp_path):
        pytest.skip("the test directory's filesystem has no O_DIRECT")
    meta = Meta(tmp_path / "meta")
    ssd = SsdTier(tmp_path / "regions", 256 * MiB, meta)
    blocks = mixed_blocks(1)
    queue_all(ssd, blocks)
    large = sum(1 for _b, data in blocks if len(data) >= DIRECT_MIN)
    stats = ssd.stats()
    assert stats["o_direct_writes"] == large and stats["write_errors"] == 0
    for block, data in blocks:
        assert ssd.get(block) == data
    # padding is garbage, not live bytes: used covers it, live counts the records only
    assert ssd.used() >= ssd.live_bytes()
    assert sum(os.path.getsize(p) for p in region_paths(tmp_path / "regions")) == ssd.used()
    ssd.close()
    again = SsdTier(tmp_path / "regions", 256 * MiB, meta)  # restart: every record found and checked again
    assert again.validated(timeout=30)
    for block, data in blocks:
        assert again.get(block) == data
    again.close()
    meta.close()


def test_a_damaged_o_direct_record_is_a_miss(tmp_path):
    if not has_o_direct(tmp_path):
        pytest.skip("the test directory's filesystem has no O_DIRECT")
    meta = Meta(tmp_path / "meta")
    ssd = SsdTier(tmp_path / "regions", 1 << 30, meta)  # regions of 32 MiB: both records in one
    small, big = BlockId("s", "e", 0), BlockId("b", "e", 0)
    data = random.Random(3).randbytes(4 * MiB)
    queue_all(ssd, [(small, b"x" * 1000), (big, data)])
    assert ssd.stats()["o_direct_writes"] == 1
    [path] = region_paths(tmp_path / "regions")
    with open(path, "r+b") as fh:  # the big record starts at the first aligned offset after the small one
        fh.seek(ALIGN + 2 * MiB)
        byte = fh.read(1)
        fh.seek(ALIGN + 2 * MiB)
        fh.write(bytes([byte[0] ^ 0xFF]))
    assert ssd.get(small) == b"x" * 1000
    assert ssd.get(big) is None
    assert ssd.stats()["crc_errors"] == 1 and not ssd.contains(big)
    ssd.close()
    meta.close()


def test_without_o_direct_records_are_written_buffered(tmp_path):
    if not os.path.isdir("/dev/shm") or has_o_direct("/dev/shm"):
        pytest.skip("no tmpfs without O_DIRECT at /dev/shm")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        meta = Meta(tmp_path / "meta")
        ssd = SsdTier(os.path.join(shm, "regions"), 256 * MiB, meta)
        blocks = mixed_blocks(2)
        queue_all(ssd, blocks)
        stats = ssd.stats()
        assert stats["o_direct_writes"] == 0 and stats["write_errors"] == 0
        assert not ssd.dio.enabled and ssd.dio.unsupported
        for block, data in blocks:
            assert ssd.get(block) == data
        ssd.close()
        meta.close()


def test_o_direct_off_by_choice_and_for_synchronous_puts(tmp_path):
    meta = Meta(tmp_path / "meta")
    ssd = SsdTier(tmp_path / "regions", 64 * MiB, meta, o_direct=False)
    blocks = mixed_blocks(4)
    queue_all(ssd, blocks)
    assert ssd.stats()["o_direct_writes"] == 0
    for block, data in blocks:
        assert ssd.get(block) == data
    ssd.close()
    on = SsdTier(tmp_path / "regions2", 64 * MiB, Meta(tmp_path / "meta2"))
    block = BlockId("sync", "e", 0)
    assert on.put(block, b"y" * (4 * MiB))  # a synchronous put (a warm into the SSD tier) stays buffered
    assert on.stats()["o_direct_writes"] == 0 and on.get(block) == b"y" * (4 * MiB)
    on.close()
    meta.close()


def test_direct_io_writer_bounds(tmp_path):
    writer = DirectIOWriter()
    assert writer.padded(1) == ALIGN and writer.padded(ALIGN) == ALIGN and writer.padded(ALIGN + 1) == 2 * ALIGN
    assert not writer.wants(DIRECT_MIN - 1) and writer.wants(DIRECT_MIN) == writer.enabled
    assert not DirectIOWriter(enabled=False).wants(8 * MiB)
    path = tmp_path / "f"
    path.write_bytes(b"")
    with pytest.raises(ValueError):
        writer.write(path, [b"abc"], 100)
    if not has_o_direct(tmp_path):
        return
    parts = [b"head", random.Random(5).randbytes(DIRECT_MIN + 3)]
    assert writer.write(path, parts, ALIGN) is True
    content = path.read_bytes()
    record = b"".join(parts)
    assert content[ALIGN:ALIGN + len(record)] == record
    assert len(content) == ALIGN + writer.padded(len(record)) and content[ALIGN + len(record):] == bytes(
        len(content) - ALIGN - len(record))
    assert writer.write(tmp_path / "missing", parts, 0) is False  # an error other than EINVAL: a failed write
    assert writer.enabled
