"""Cold streaming against a backend with latency (issue 13): the link's latency and rate are measured on the
GETs themselves, a stream's read-ahead window is the bandwidth-delay product from its first round trip (not
grown over several), consecutive cold blocks come with one ranged GET each run (its body read block by
block, each block checked, one version per open, a body cut mid-run resumed), read-ahead has one worker per
block that fits in flight, and botocore's connection pool has a connection for every worker that may GET at
once. Real HTTP S3 server with injected latency; asserted on counters and stats, never on time taken."""

from __future__ import annotations

import random
import threading

import pytest

import tiercache
from tiercache.errors import StaleVersion
from tiercache.link import Link
from tiercache.readahead import ReadAhead
from tiercache.store.s3 import S3Store, pool_connections

from .faultproxy import CuttingProxy

pytestmark = pytest.mark.timeout(120)

KiB, MiB = 1 << 10, 1 << 20


def test_the_link_is_latency_times_rate_times_connections():
    link = Link(weight=0.5)
    assert link.bdp(8) == 0  # nothing measured: no latency to cover
    link.observe(0.02, 0.01, 1 * MiB)  # 20 ms to the first byte, then 100 MiB/s
    assert link.latency == pytest.approx(0.02) and link.rate == pytest.approx(100 * MiB)
    assert link.bdp(8) == pytest.approx(0.02 * 100 * MiB * 8, rel=1e-6)
    link.observe(0.04, 1.0, 4 * KiB)  # a small body moves the latency, not the rate
    assert link.latency == pytest.approx(0.03) and link.rate == pytest.approx(100 * MiB)


def test_a_stream_window_is_at_least_the_bdp_and_at_most_max_window():
    bdp = [0]
    ra = ReadAhead(block_size=MiB, max_window=32 * MiB, bdp=lambda: bdp[0])
    size = 1 << 30
    ra.on_read("f", size, 0, 256 * KiB)
    assert ra.window("f") == MiB  # four times 256 KiB, at least a block
    bdp[0] = 12 * MiB  # the first round trip measured the link
    assert ra.on_read("f", size, 256 * KiB, 512 * KiB) == (1, 13)  # covers the BDP at once
    assert ra.window("f") == 12 * MiB
    bdp[0] = 1 << 30
    assert ra.window("f") == 32 * MiB  # never past max_window
    ra.on_read("g", size, 300 * MiB, 300 * MiB + 4 * KiB)
    assert ra.window("g") == 0  # a read in the middle is no stream: the BDP earns it nothing


def test_the_s3_store_measures_time_to_first_byte_on_ranged_gets(bucket):
    bucket.put("big.bin", random.Random(1).randbytes(2 * MiB))
    old = bucket.server.latency
    bucket.server.latency = 0.02
    try:
        store = S3Store(bucket.url, endpoint_url=bucket.server.endpoint)
        for start in (0, MiB):
            assert len(store.get_range("big.bin", start, start + MiB)) == MiB
    finally:
        bucket.server.latency = old
    assert store.link.samples == 2
    assert store.link.latency >= 0.02 and store.link.rate > 0


def test_a_stream_at_100ms_gets_its_window_to_the_bdp_in_its_first_round_trip(bucket, tmp_path):
    """The reader's first read (from offset 0: a stream at once) makes one round trip; on its second read
    the window is the measured BDP (capped), far more than four times the 512 KiB read so far, and
    read-ahead asks for all of it at once. (100 ms, not 20: the BDP then beats the growth rule even when a
    loaded machine measures each connection at a few MiB/s.)"""
    blob = random.Random(7).randbytes(48 * MiB)
    bucket.put("big.bin", blob)
    old = bucket.server.latency
    bucket.server.latency = 0.1
    try:
        with tiercache.open(bucket.url, ram="256M", ssd=str(tmp_path / "cache"), ssd_size="0",
                            block_size="1M", endpoint_url=bucket.server.endpoint, metadata_ttl="inf") as cache:
            bucket.server.reset_log()
            assert cache.read("big.bin", 0, 256 * KiB) == blob[:256 * KiB]
            link = cache.stats()["prefetcher"]
            assert link["readahead_link_samples"] >= 1 and link["readahead_link_latency_ms"] >= 100
            assert cache.read("big.bin", 256 * KiB, 256 * KiB) == blob[256 * KiB:512 * KiB]
            window = cache.readahead.window("big.bin")  # (the BDP moves as later GETs are measured)
            assert 2 * MiB < window <= cache.stats()["prefetcher"]["readahead_max_window_bytes"], \
                "the BDP, capped: more than the growth rule's four times what was read"
            assert cache.readahead.wait_idle(60), "the read-ahead did not settle"
            pre = cache.stats()["prefetcher"]
            # blocks 1 .. the window's end (block 0 is the reader's own GET), within the object and in flight
            asked = min(-(-(512 * KiB + window) // MiB), 48) - 1
            assert pre["readahead_bytes"] >= min(asked, pre["readahead_max_in_flight_bytes"] // MiB) * MiB
            covered = _ranged(bucket.gets("big.bin"))
            assert covered[:1 + min(asked, pre["readahead_max_in_flight_bytes"] // MiB)] == [True] * (
                1 + min(asked, pre["readahead_max_in_flight_bytes"] // MiB)), "the window asked for at once"
            offset = 512 * KiB
            while offset < len(blob):  # and every byte of the stream is right
                assert cache.read("big.bin", offset, MiB) == blob[offset:offset + MiB]
                offset += MiB
    finally:
        bucket.server.latency = old


def _ranged(gets, block: int = MiB, blocks: int = 48) -> list[bool]:
    """Which blocks the ranged GETs logged cover."""
    covered = [False] * blocks
    for get in gets:
        lo, _, hi = get.range.removeprefix("bytes=").partition("-")
        for index in range(int(lo) // block, (int(hi) + 1) // block):
            covered[index] = True
    return covered


def test_read_ahead_workers_fit_in_flight_and_each_worker_has_a_connection(bucket, tmp_path):
    bucket.put("a.bin", b"x")
    for ram, threads in (("64M", 16), ("1G", 16), ("64M", 4)):
        with tiercache.open(bucket.url, ram=ram, ssd=str(tmp_path / f"c{ram}{threads}"), ssd_size="0",
                            threads=threads, endpoint_url=bucket.server.endpoint) as cache:
            pre = cache.stats()["prefetcher"]
            fits = pre["readahead_max_in_flight_bytes"] // cache.blocks.block_size
            assert pre["readahead_workers"] == min(threads, fits)
            # the fetch pool, read-ahead, the two prefetch pools, and uploads/listings/metadata
            getters = threads + pre["readahead_workers"] + 2 * max(1, threads // 2)
            pool = cache.store.client.meta.config.max_pool_connections
            assert pool == pool_connections(threads) and pool >= getters + 8


def test_consecutive_cold_blocks_are_read_ahead_with_one_ranged_get_per_run(bucket, tmp_path):
    blob = random.Random(3).randbytes(40 * MiB)
    bucket.put("big.bin", blob)
    with tiercache.open(bucket.url, ram="256M", ssd=str(tmp_path / "cache"), ssd_size="1G", block_size="1M",
                        endpoint_url=bucket.server.endpoint, metadata_ttl="inf") as cache:
        assert cache.stats()["prefetcher"]["readahead_run_blocks"] == 8  # 8 MiB GETs of 1 MiB blocks
        bucket.server.reset_log()
        for offset in range(0, len(blob), 256 * KiB):
            assert cache.read("big.bin", offset, 256 * KiB) == blob[offset:offset + 256 * KiB]
        assert cache.readahead.wait_idle(60)
        gets = bucket.gets("big.bin")
        stats = cache.stats()
    assert all(_ranged(gets, blocks=40)), "every block fetched"
    sizes = [int(g.range.partition("-")[2]) + 1 - int(g.range.removeprefix("bytes=").partition("-")[0])
             for g in gets]
    assert max(sizes) == 8 * MiB and len(gets) <= 40 // 4, f"GETs of runs, not one per block: {sizes}"
    assert stats["backend"]["gets"] == len(gets) and stats["backend"]["bytes"] == sum(sizes)
    assert stats["prefetcher"]["readahead_read_bytes"] >= 32 * MiB


def test_a_run_is_of_the_version_the_open_file_pinned_never_of_a_newer_one(bucket, tmp_path):
    """The object is replaced while read-ahead's run GETs wait: they ask If-Match the pinned etag, so no
    block of the new version is staged or served to the open file; its reads give the old bytes or
    StaleVersion, never new bytes, and a fresh read gets the new version whole."""
    old, new = random.Random(5).randbytes(24 * MiB), random.Random(6).randbytes(24 * MiB)
    bucket.put("big.bin", old)
    with tiercache.open(bucket.url, ram="256M", ssd=str(tmp_path / "cache"), ssd_size="0", block_size="1M",
                        endpoint_url=bucket.server.endpoint, metadata_ttl="inf") as cache:
        info = cache.namespace.info("big.bin")
        hold = threading.Event()
        fetch = cache.readahead.fetch

        def held(info_, run, keep):
            hold.wait(60)
            return fetch(info_, run, keep)

        cache.readahead.fetch = held
        assert bytes(cache.read_version(info, 0, 256 * KiB)) == old[:256 * KiB]  # a stream: runs are issued
        bucket.put("big.bin", new)
        hold.set()
        assert cache.readahead.wait_idle(60)
        served = stale = 0
        for offset in range(256 * KiB, len(old), 256 * KiB):
            try:
                data = bytes(cache.read_version(info, offset, 256 * KiB))
            except StaleVersion:
                stale += 1
                continue
            assert data == old[offset:offset + 256 * KiB], "never a newer version's bytes"
            served += 1
        assert stale > 0 and cache.stats()["prefetcher"]["readahead_bytes"] == 0  # nothing of it staged
        assert bytes(cache.read("big.bin", 0, len(new))) == new


def test_a_run_whose_body_is_cut_mid_way_is_resumed_for_the_blocks_left(s3_server, bucket):
    blob = random.Random(8).randbytes(4 * MiB)
    bucket.put("big.bin", blob)
    proxy = CuttingProxy(s3_server.port, cut=1, after=MiB + MiB // 2)  # the first GET breaks in its 2nd part
    try:
        store = S3Store(bucket.url, endpoint_url=proxy.endpoint)
        etag = bucket.client.head_object(Bucket=bucket.name, Key="big.bin")["ETag"].strip('"')  # not via the proxy
        parts = list(store.get_range_parts("big.bin", 0, [MiB] * 4, etag=etag))
    finally:
        proxy.close()
    assert [len(p) for p in parts] == [MiB] * 4 and b"".join(parts) == blob
    assert proxy.connections >= 2, "the rest came by another GET"


def test_evict_also_drops_what_read_ahead_staged(bucket, tmp_path):
    """A window at the BDP can stage a whole file ahead of its reader: evicting the file lets go of those
    blocks too (the next read fetches again), not only of the tiers' copies."""
    blob = random.Random(9).randbytes(16 * MiB)
    bucket.put("big.bin", blob)
    with tiercache.open(bucket.url, ram="256M", ssd=str(tmp_path / "cache"), ssd_size="0", block_size="1M",
                        endpoint_url=bucket.server.endpoint, metadata_ttl="inf") as cache:
        assert cache.read("big.bin", 0, 256 * KiB) == blob[:256 * KiB]
        assert cache.readahead.wait_idle(60)
        assert cache.stats()["prefetcher"]["readahead_staged_bytes"] > 0
        assert cache.evict("big.bin") > 0
        assert cache.stats()["prefetcher"]["readahead_staged_bytes"] == 0
        assert cache.stats()["memory"].get("used_readahead", 0) == 0
        bucket.server.reset_log()
        assert cache.read("big.bin", 8 * MiB, MiB) == blob[8 * MiB:9 * MiB]
        assert bucket.gets("big.bin"), "fetched again"
