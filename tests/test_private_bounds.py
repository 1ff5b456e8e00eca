"""Private by default, bounded by default (issue 10 §6): modes whatever the umask, the SSD tier within its
filesystem, the block data of the daemon within the memory budget. Real HTTP S3 server, real mounts."""

from __future__ import annotations

import os
import random
import stat
import subprocess
import threading

import pytest

import tiercache
from tiercache.tiers.base import BlockId
from tiercache.tiers.budget import MemoryBudget
from tiercache.tiers.ram import RamTier

from .fusehelpers import needs_fuse

pytestmark = pytest.mark.timeout(120)

MiB = 1 << 20


def loose_modes(*roots) -> list[str]:
    """Every path below ``roots`` that group or others can read, write or enter."""
    loose = []
    for root in roots:
        for path in [root, *(os.path.join(d, n) for d, dirs, files in os.walk(root) for n in dirs + files)]:
            mode = os.lstat(path).st_mode
            if not stat.S_ISSOCK(mode) and mode & 0o077:
                loose.append(f"{oct(mode & 0o777)} {path}")
    return loose


@needs_fuse
@pytest.mark.fuse
def test_cache_and_write_dirs_are_private_whatever_the_umask(bucket, mounter):
    bucket.put("d/a.bin", os.urandom(3 * MiB))
    old = os.umask(0)
    try:
        m = mounter.mount(bucket.url, "--block-size", "1M")
        with open(m.path / "d/a.bin", "rb") as fh:
            fh.read()
        with open(m.path / "d/new.bin", "wb") as fh:  # a staging file and a journal record
            fh.write(os.urandom(MiB))
        assert m.cli("flush").returncode == 0
        assert loose_modes(m.cache_dir, m.write_dir) == []  # before: 0644 region files, 0755 dirs
        assert any(p.endswith(".region") for _d, _s, f in os.walk(m.cache_dir) for p in f)
        assert (m.cache_dir / "mount.log").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


@pytest.fixture
def small_fs(tmp_path):
    """A 48 MiB tmpfs (needs root), unmounted at teardown."""
    path = tmp_path / "small"
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a tmpfs")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_ssd_tier_stays_within_its_filesystem_and_stats_agree_with_the_disk(bucket, small_fs):
    rng = random.Random(2)
    data = {f"d/{i:02d}.bin": rng.randbytes(4 * MiB) for i in range(20)}  # 80 MiB for a 48 MiB disk
    for key, value in data.items():
        bucket.put(key, value)
    cache = tiercache.open(bucket.url, ram="4M", ssd=str(small_fs / "cache"), ssd_size="1G",
                           block_size=MiB, endpoint_url=bucket.server.endpoint)
    try:
        for _round in range(2):
            for key, value in data.items():
                assert bytes(cache.read(key)) == value
        cache.ssd.drain()
        ssd = cache.stats()["ssd"]
        st = os.statvfs(small_fs)
        disk = st.f_blocks * st.f_frsize
        regions = small_fs / "cache" / "regions"
        on_disk = sum(p.stat().st_size for p in regions.iterdir())
        assert ssd["capacity"] <= disk  # before: the configured 1 GiB
        assert ssd["used"] == on_disk <= disk  # before: 133 MiB "used" on a 48 MiB disk
        assert ssd["used"] > disk // 2 and ssd["write_errors"] == 0
    finally:
        cache.close()


def test_ram_tier_gives_way_to_reads_in_flight_within_one_budget():
    budget = MemoryBudget(10_000)
    demoted = []
    ram = RamTier(10_000, budget=budget, on_evict=demoted.extend)
    for i in range(9):
        assert ram.put(BlockId(f"k{i}", "e", 0), b"x" * 1000)
    assert budget.used("ram") == ram.used() == 9000
    with budget.hold(4000, "fetches"):  # the RAM tier evicts (and demotes) to make room
        assert budget.used() <= 10_000 and ram.used() <= 6000 and demoted
        assert ram.put(BlockId("new", "e", 0), b"y" * 1000)
        assert budget.used() <= 10_000
    assert budget.used() == ram.used() and budget.stats()["overdrafts"] == 0
    ram.clear()
    assert budget.used() == 0


def test_a_hold_that_cannot_be_met_waits_then_overdraws_instead_of_failing_the_read():
    budget = MemoryBudget(1000, wait=0.2)
    released = threading.Event()
    with budget.hold(900, "fetches"), budget.hold(500, "fetches"):  # nothing to reclaim: waits, then goes on
        released.set()
    assert released.is_set() and budget.stats()["overdrafts"] == 1 and budget.used() == 0
