"""Sequential read-ahead (tiercache/readahead.py) and the read path under streaming (issue 13): the state
machine alone; in a cache: a stream detected early and read ahead in parallel, in flight bounded by the
memory budget, a streamed large object not evicting the small files' working set, SSD admission dropped
(never waited for) under pressure. Real HTTP S3 server or a local directory store."""

from __future__ import annotations

import random
import threading
import time

import pytest

import tiercache
from tiercache.readahead import ReadAhead

pytestmark = pytest.mark.timeout(120)

KiB, MiB = 1 << 10, 1 << 20


def _local_cache(tmp_path, files: dict[str, bytes], **options):
    src = tmp_path / "src"
    for key, data in files.items():
        (src / key).parent.mkdir(parents=True, exist_ok=True)
        (src / key).write_bytes(data)
    options.setdefault("ssd", str(tmp_path / "cache"))
    options.setdefault("ssd_size", "0")
    return tiercache.open(f"file://{src}", **options)


def _settle(cache) -> dict:
    assert cache.readahead.wait_idle(30), "the read-ahead did not settle"
    return cache.stats()["prefetcher"]


# ---------------------------------------------------------------- the state machine


def test_a_stream_is_detected_on_its_third_read_and_its_window_grows_with_what_it_read():
    ra = ReadAhead(block_size=MiB, max_window=16 * MiB)
    size = 1 << 30
    assert ra.on_read("f", size, 100 * MiB, 100 * MiB + 64 * KiB) == (0, 0)  # one read is no stream, nor is
    assert ra.on_read("f", size, 100 * MiB + 64 * KiB, 100 * MiB + 128 * KiB) == (0, 0)  # the kernel's pair
    assert not ra.streaming("f")
    first, last = ra.on_read("f", size, 100 * MiB + 128 * KiB, 100 * MiB + 256 * KiB)
    assert ra.streaming("f") and (first, last) == (101, 102)  # the window: at least one block
    windows = []
    offset = 100 * MiB + 256 * KiB
    while offset < 120 * MiB:
        ra.on_read("f", size, offset, offset + 128 * KiB)
        windows.append(ra.window("f"))
        offset += 128 * KiB
    assert windows == sorted(windows) and windows[-1] == 16 * MiB  # grows, up to max_window
    assert windows[0] == 4 * 384 * KiB and 4 * 1024 * KiB in windows  # four times what the run read


def test_a_read_from_the_start_is_a_stream_at_once_and_a_seek_ends_it():
    ra = ReadAhead(block_size=MiB, max_window=16 * MiB)
    assert ra.on_read("f", 64 * MiB, 0, 256 * KiB) == (1, 2)
    ra.issued("f", 2)
    assert ra.on_read("f", 64 * MiB, 256 * KiB, 512 * KiB) == (2, 3)  # issued blocks are not asked again
    assert ra.on_read("f", 64 * MiB, 40 * MiB, 40 * MiB + 64 * KiB) == (0, 0)  # a seek
    assert ra.window("f") == 0
    assert ra.on_read("f", 64 * MiB, 40 * MiB + 64 * KiB, 40 * MiB + 128 * KiB) == (0, 0)
    assert ra.on_read("f", 64 * MiB, 40 * MiB + 128 * KiB, 40 * MiB + 192 * KiB)[0] == 41  # goes on: a stream
    assert ra.on_read("f", 4 * MiB, 0, 4 * MiB) == (4, 4)  # nothing past the end of the object


def test_blocks_the_reader_has_read_past_are_late_for_read_ahead():
    """A fetch ahead that the reader overtook is late: staging it would only hold budget (and make RAM
    evict the working set) until it is dropped."""
    ra = ReadAhead(block_size=MiB, max_window=16 * MiB)
    assert not ra.passed("f", 0)
    ra.on_read("f", 64 * MiB, 0, 3 * MiB // 2)
    assert ra.passed("f", 0) and not ra.passed("f", 1) and not ra.passed("f", 5)
    ra.on_read("f", 64 * MiB, 3 * MiB // 2, 6 * MiB)
    assert ra.passed("f", 5) and not ra.passed("f", 6)


def test_out_of_order_requests_keep_the_stream_and_scattered_reads_earn_nothing():
    ra = ReadAhead(block_size=MiB, max_window=64 * MiB)
    size = 1 << 30
    # FUSE worker threads hand over the kernel's concurrent requests out of order
    for offset in (0, 256, 128, 384, 640, 512, 768, 1024, 896):
        ra.on_read("f", size, offset * KiB, (offset + 128) * KiB)
        assert ra.streaming("f")
    assert ra.window("f") == 4 * 1152 * KiB
    rng = random.Random(2)
    hits = 0
    for _ in range(2000):  # 64 KiB random reads: read ahead only when one happens to continue the last
        offset = rng.randrange(size // (64 * KiB)) * 64 * KiB
        first, last = ra.on_read("r", size, offset, offset + 64 * KiB)
        hits += last - first
    assert hits <= 4


# ---------------------------------------------------------------- in a cache


def test_a_sequential_reader_is_read_ahead_in_parallel(tmp_path):
    """Blocks read ahead wait in the staging area (not in a tier) until the reader takes them."""
    bs = 64 * KiB
    blob = random.Random(1).randbytes(64 * bs)
    with _local_cache(tmp_path, {"big.bin": blob}, ram="64M", block_size="64K") as cache:
        blocks = cache.blocks.ids(cache.namespace.info("big.bin"))

        def where() -> tuple[list[int], list[int]]:
            return ([i for i, b in enumerate(blocks) if cache.tiers.contains(b, "ram")],
                    [i for i, b in enumerate(blocks) if cache.readahead.holds(b)])

        for i in range(2):
            assert cache.read("big.bin", i * 16 * KiB, 16 * KiB) == blob[i * 16 * KiB:(i + 1) * 16 * KiB]
        _settle(cache)
        assert where() == ([0], [1, 2])
        offset = 32 * KiB
        while offset < 8 * bs:
            assert cache.read("big.bin", offset, 32 * KiB) == blob[offset:offset + 32 * KiB]
            offset += 32 * KiB
        pre = _settle(cache)
        in_ram, staged = where()
        assert in_ram == list(range(8)), "a block enters RAM when the reader takes it"
        assert staged == list(range(8, 8 + len(staged))) and len(staged) >= 16, "read ahead of the reader"
        assert pre["readahead_peak_in_flight_bytes"] >= 2 * bs, "several blocks fetched at a time"
        assert pre["readahead_read_bytes"] == 7 * bs and pre["prefetched_read_bytes"] == 7 * bs
        assert pre["readahead_staged_bytes"] == len(staged) * bs
        assert cache.read("big.bin", 40 * bs, bs) == blob[40 * bs:41 * bs]  # a seek: no read-ahead
        assert cache.readahead.window("big.bin") == 0


def test_read_ahead_in_flight_stays_within_the_memory_budget(bucket, tmp_path):
    """A small --ram: what read-ahead has in flight is at most a quarter of the budget, the budget itself is
    never overdrawn, and every byte read is right."""
    blob = random.Random(4).randbytes(40 * MiB)
    bucket.put("big.bin", blob)
    bucket.server.reset_log()
    old = bucket.server.latency
    bucket.server.latency = 0.01  # GETs overlap, as against a remote store
    try:
        with tiercache.open(bucket.url, ram="8M", ssd=str(tmp_path / "cache"), ssd_size="0", block_size="1M",
                            endpoint_url=bucket.server.endpoint, metadata_ttl="inf") as cache:
            for offset in range(0, len(blob), 256 * KiB):
                assert bytes(cache.read("big.bin", offset, 256 * KiB)) == blob[offset:offset + 256 * KiB]
            pre = _settle(cache)
            memory = cache.stats()["memory"]
    finally:
        bucket.server.latency = old
    assert pre["readahead_max_in_flight_bytes"] == memory["budget"] // 4
    assert 2 * MiB <= pre["readahead_peak_in_flight_bytes"] <= memory["budget"] // 4
    assert memory["overdrafts"] == 0 and memory["peak"] <= memory["budget"]
    # read-ahead and the reader share fetches (under a tight budget RAM may turn a block away, then its next
    # read fetches it again: a few, not one per read)
    assert 40 <= len(bucket.gets("big.bin")) <= 48


def _scan_after_working_set(tmp_path, keep_ahead: bool = False, stall_every: int = 0) -> tuple[int, int]:
    """Small files read twice, then a large object (4x RAM) read once end to end in 128 KiB reads (as
    through FUSE); (small files still wholly in RAM, RAM evictions). ``keep_ahead``: the reader lets
    read-ahead settle after each read, so it never outruns it. ``stall_every`` reads, read-ahead's fetches
    are stalled (the reader outruns it and fetches its own misses) and then released (read-ahead catches
    up, its fetches and staged blocks taking budget back from RAM): what a loaded machine does by chance,
    here at fixed points of the stream, not by timing."""
    files = {f"small/{i:02d}": random.Random(i).randbytes(32 * KiB) for i in range(64)}
    big = random.Random(99).randbytes(32 * MiB)
    with _local_cache(tmp_path, {**files, "big.bin": big}, ram="8M", block_size="64K") as cache:
        running = threading.Event()
        running.set()
        fetch = cache.readahead.fetch

        def stalled_fetch(info, block, keep):
            running.wait(60)
            return fetch(info, block, keep)

        cache.readahead.fetch = stalled_fetch
        try:
            for _ in range(2):
                for key, data in files.items():
                    assert cache.read(key) == data
            for n, offset in enumerate(range(0, len(big), 128 * KiB)):
                if stall_every and n % stall_every == 0:
                    if (n // stall_every) % 2:
                        running.clear()
                    else:
                        running.set()
                        _settle(cache)
                assert cache.read("big.bin", offset, 128 * KiB) == big[offset:offset + 128 * KiB]
                if keep_ahead:
                    _settle(cache)
        finally:
            running.set()
        _settle(cache)
        kept = [key for key in files if cache.resident(key, "ram") == len(files[key])]
        return len(kept), cache.stats()["ram"]["evictions"]


def test_one_large_streamed_object_does_not_evict_the_small_files_working_set(tmp_path):
    """Scan resistance while read-ahead keeps ahead of the reader: all 64 small files stay (streamed blocks
    enter RAM as one use each; before this read-ahead, each of a block's reads counted as a use and none of
    the 64 stayed)."""
    kept, evictions = _scan_after_working_set(tmp_path, keep_ahead=True)
    assert kept == 64, f"{64 - kept} of 64 small files evicted by one stream"
    assert evictions >= 300, "the stream did pass through RAM"


@pytest.mark.parametrize("stall_every", [4, 16])
def test_a_stream_that_outruns_read_ahead_does_not_evict_the_small_files_working_set(tmp_path, stall_every):
    """The reader outruns read-ahead (its fetches stalled), then read-ahead catches up and takes budget
    back from RAM, over and over: the stream's blocks (staged or the reader's own misses) are one-shot
    blocks for the policy, evicted first and never moved into main, so all 64 small files stay (before the
    scan flag: 0 of 64 with stalls every 4 or 16 reads, S3-FIFO's fill of main from the small queue
    moving stream blocks in front of the working set)."""
    kept, evictions = _scan_after_working_set(tmp_path, stall_every=stall_every)
    assert kept == 64, f"{64 - kept} of 64 small files evicted by one stream"
    assert evictions >= 300, "the stream did pass through RAM"


def test_a_stream_through_the_ssd_tier_does_not_evict_its_small_files_working_set(tmp_path):
    """The same one-shot rule in the SSD tier (its slot policy): small files read three times (from the SSD
    tier: RAM is too small to hold them), then a stream 4x the SSD tier: every small file stays on the SSD
    tier (before the scan flag reached it: 53-60 of 64)."""
    files = {f"small/{i:02d}": random.Random(i).randbytes(32 * KiB) for i in range(64)}
    big = random.Random(99).randbytes(32 * MiB)
    with _local_cache(tmp_path, {**files, "big.bin": big}, ram="1M", ssd_size="8M", block_size="64K") as cache:
        assert cache.ssd.validated(30)
        for _ in range(3):
            for key, data in files.items():
                assert cache.read(key) == data
            cache.ssd.drain()
            cache.evict("small", "ram")
        for offset in range(0, len(big), 128 * KiB):
            assert cache.read("big.bin", offset, 128 * KiB) == big[offset:offset + 128 * KiB]
        _settle(cache)
        cache.ssd.drain()
        kept = sum(cache.resident(key, "ssd") == len(data) for key, data in files.items())
        assert cache.stats()["ssd"]["evictions"] >= 200, "the stream did pass through the SSD tier"
    assert kept == 64, f"{64 - kept} of 64 small files evicted from the SSD tier by one stream"


def test_ssd_admission_is_dropped_under_pressure_never_written_on_the_read_path(tmp_path, monkeypatch):
    """SSD writes stalled: the reader goes on (no SSD write ever runs on its thread), what does not fit the
    write queue is dropped and counted (or, while RAM holds it, owed and written once the queue frees),
    every byte read is right, and what did reach the SSD tier is the right bytes once the writes resume."""
    big = random.Random(7).randbytes(48 * MiB)
    with _local_cache(tmp_path, {"big.bin": big}, ram="16M", block_size="1M", ssd_size="256M") as cache:
        stalled = threading.Event()
        writers: set[str] = set()
        real_put = cache.ssd.put

        def slow_put(block, data, queued=False, scan=False):
            name = threading.current_thread().name
            writers.add(name)
            if name == "tiercache-ssd-writer":
                stalled.wait(20)
            return real_put(block, data, queued, scan)

        monkeypatch.setattr(cache.ssd, "put", slow_put)
        reader = threading.current_thread().name
        for offset in range(0, len(big), 128 * KiB):
            assert cache.read("big.bin", offset, 128 * KiB) == big[offset:offset + 128 * KiB]
        dropped = cache.stats()["ssd_admission_dropped"]
        stalled.set()
        _settle(cache)
        cache.ssd.drain()
        assert writers == {"tiercache-ssd-writer"} and reader not in writers
        assert dropped > 0, "a stalled SSD tier dropped what did not fit"
        info = cache.namespace.info("big.bin")
        on_ssd = 0
        for block in cache.blocks.ids(info):
            data = cache.ssd.get(block)
            if data is not None:
                on_ssd += 1
                start = cache.blocks.start(block)
                assert data == big[start:start + len(data)]
        assert 0 < on_ssd < 48
        in_ram = [block for block in cache.blocks.ids(info) if cache.tiers.contains(block, "ram")]
        assert in_ram and all(cache.ssd.contains(block) for block in in_ram), \
            "what the full queue refused while RAM held it was written once the writes resumed"
        cache.evict("", "ram")
        for offset in range(0, len(big), 4 * MiB):  # dropped or not, reads stay right
            assert cache.read("big.bin", offset, 64 * KiB) == big[offset:offset + 64 * KiB]


# ---------------------------------------------------------------- the policies' scan flag


def _policies():
    """Every policy the tiers run, each with how a block is named for it (slot policies: ints)."""
    from tiercache.plans import PlanBook
    from tiercache.tiers.planned import PlanAwarePolicy
    from tiercache.tiers.policy import LRUPolicy, S3FIFOPolicy
    from tiercache.tiers.slot_lru import SlotLRU
    from tiercache.tiers.slot_plans import SlotPlanPolicy
    from tiercache.tiers.slot_policy import SlotS3FIFO

    def planned(slot_policy: bool):
        book = PlanBook()
        book.set_plan([f"k{i}" for i in range(1000, 1010)])  # a live plan that reads none of these blocks
        if not slot_policy:
            return PlanAwarePolicy(book), str
        policy = SlotPlanPolicy(book)
        policy.key_of = lambda slot: f"k{slot}"
        return policy, int

    return {
        "s3fifo": lambda: (S3FIFOPolicy(), str), "lru": lambda: (LRUPolicy(), str),
        "plan": lambda: (PlanAwarePolicy(), str), "plan, a plan live": lambda: planned(False),
        "slot s3fifo": lambda: (SlotS3FIFO(), int), "slot lru": lambda: (SlotLRU(), int),
        "slot plan": lambda: (SlotPlanPolicy(), int), "slot plan, a plan live": lambda: planned(True),
    }


@pytest.mark.parametrize("name", list(_policies()))
def test_every_policy_evicts_a_streams_one_shot_blocks_before_the_working_set(name):
    """20 blocks of room: a working set of 10 (each read twice), then a stream of 300 one-shot blocks with
    an eviction whenever it is full, and one of its blocks read again by another reader: the working set
    and the re-read block stay, the stream's other blocks go oldest first."""
    policy, named = _policies()[name]()
    block = lambda i: named(i) if named is int else f"k{i}"  # noqa: E731
    for i in range(10):
        policy.on_insert(block(i), 1)
        policy.on_access(block(i))
    evicted = []
    for i in range(100, 400):
        policy.on_insert(block(i), 1, scan=True)
        if i == 105:
            policy.on_access(block(i))  # read again, not by the stream: a normal block now
        if policy.tracked_bytes > 20:
            evicted += policy.victims(policy.tracked_bytes - 20)
    assert all(block(i) in policy for i in range(10)), "the working set stayed"
    assert block(105) in policy, "a streamed block read again is a normal block"
    assert [str(v) for v in evicted] == [str(block(i)) for i in range(100, 400 - 9) if i != 105]


def test_the_ssd_tier_writes_a_streams_blocks_as_one_shot_blocks(tmp_path):
    """put/put_async with ``scan``: the SSD tier's slot policy evicts the stream's blocks first, oldest
    first, and one read again after its stream stays like any block read twice."""
    from tiercache.tiers.base import BlockId
    from tiercache.tiers.meta import Meta
    from tiercache.tiers.ssd import SsdTier

    meta = Meta(tmp_path / "meta")
    ssd = SsdTier(tmp_path / "regions", 2 * MiB, meta, region_size=64 * KiB)
    try:
        assert ssd.validated(30)
        small = [BlockId(f"small/{i}", "e", 0) for i in range(8)]
        for block in small:
            assert ssd.put(block, bytes([len(block.key)]) * (32 * KiB))
            assert ssd.get(block) is not None
        stream = [BlockId("big.bin", "e", i) for i in range(100)]
        for block in stream[:50]:
            assert ssd.put_async(block, bytes([block.index]) * (32 * KiB), scan=True)
            ssd.drain()
        assert ssd.get(stream[45]) == bytes([45]) * (32 * KiB)  # read again, after its stream
        for block in stream[50:]:
            ssd.put(block, bytes([block.index]) * (32 * KiB), scan=True)
        assert all(ssd.contains(block) for block in small), "the working set stayed"
        assert ssd.contains(stream[45]) and ssd.contains(stream[-1]) and not ssd.contains(stream[0])
        assert ssd.stats()["evictions"] >= 40
    finally:
        ssd.close()
        meta.close()


def test_a_block_queued_twice_counts_once_and_close_does_not_hang():
    """Two readers admitting the same block (or an owed block queued again while still queued) counted its
    bytes twice: the queue then looked fuller than it was, its writer waited while blocks were owed, and
    close() waited for them forever (test_cache's threaded churn hung 1 run in 3)."""
    from tiercache.tiers.base import BlockId
    from tiercache.tiers.ssd_queue import WriteQueue

    lock = threading.Lock()
    go = threading.Event()
    written: list[BlockId] = []

    def write(block, data, scan=False):
        go.wait(30)
        written.append(block)

    queue = WriteQueue(lock, limit=4 * KiB, write=write)
    first, again = BlockId("a", "e", 0), BlockId("b", "e", 0)
    with lock:
        assert queue.add(first, b"a" * KiB)  # the writer takes it and waits on ``go``
        assert queue.add(again, b"b" * (2 * KiB)) and queue.add(again, b"b" * (2 * KiB))
        assert queue.bytes == 3 * KiB, "the second add of a queued block adds nothing"
        queue.owe(BlockId("c", "e", 0))
    queue.refill = lambda block, scan: False  # RAM no longer holds it
    go.set()
    assert queue.close() and queue.bytes == 0 and queue.owed == 0
    assert written == [first, again]


def test_the_ssd_write_queue_owes_what_it_refused_and_stream_blocks_yield_to_others():
    """A full write queue: a normal block takes the place of the newest (uncharged) stream block, which is
    owed; owed blocks are offered again to ``refill`` (RAM's copy) once the writer has room, oldest first;
    drain waits for them too."""
    from tiercache.tiers.base import BlockId
    from tiercache.tiers.ssd_queue import WriteQueue

    lock = threading.Lock()
    go = threading.Event()
    written: list[tuple[BlockId, bool]] = []

    def write(block, data, scan=False):
        go.wait(30)
        written.append((block, scan))

    queue = WriteQueue(lock, limit=3 * KiB, write=write)
    stream = [BlockId("big.bin", "e", i) for i in range(4)]
    with lock:
        assert queue.add(stream[0], b"s" * KiB, scan=True)  # the writer takes it and waits on ``go``
        assert queue.add(stream[1], b"s" * KiB, scan=True) and queue.add(stream[2], b"s" * KiB, scan=True)
        assert not queue.add(stream[3], b"s" * KiB, scan=True)  # full: refused (the cache owes it)
        queue.owe(stream[3], True)
        small = BlockId("small/a", "e", 0)
        assert queue.add(small, b"n" * KiB), "a normal block makes room by unqueuing a stream block"
        assert stream[2] not in queue and queue.owed == 2
    offered = []

    def refill(block, scan):
        offered.append(block)
        with lock:
            return queue.add(block, b"s" * KiB, scan)

    queue.refill = refill
    go.set()
    queue.drain()
    assert offered == [stream[3], stream[2]], "owed blocks offered again, oldest first"
    assert [b for b, _ in written] == [stream[0], stream[1], small, stream[3], stream[2]]
    assert all(scan == (b.key == "big.bin") for b, scan in written)
    assert queue.owed == 0 and queue.owed_written == 2
    queue.close()


# ---------------------------------------------------------------------------------------------- worker pool


def test_worker_pool_starts_every_thread_up_front_and_runs_tasks():
    from tiercache.workerpool import WorkerPool

    pool = WorkerPool(4, "test-pool")
    deadline = time.monotonic() + 10
    while len([t for t in threading.enumerate() if t.name.startswith("test-pool_")]) < 4:
        assert time.monotonic() < deadline, "the pool's threads did not start without a submit"
        time.sleep(0.01)
    gate, seen, done = threading.Event(), set(), []
    barrier = threading.Barrier(4)

    def task(n):
        barrier.wait(10)  # four tasks at once: four threads
        seen.add(threading.current_thread().name)
        gate.wait(10)
        done.append(n)

    for n in range(4):
        pool.submit(task, n)
    pool.submit(lambda: 1 / 0)  # an error escaping a task is logged; the pool goes on
    pool.submit(done.append, "after")
    gate.set()
    deadline = time.monotonic() + 10
    while "after" not in done:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert seen == {f"test-pool_{i}" for i in range(4)}
    assert sorted(x for x in done if x != "after") == [0, 1, 2, 3]
    gate.clear()
    busy = threading.Barrier(5)

    def hold():
        busy.wait(10)
        gate.wait(10)

    for _ in range(4):
        pool.submit(hold)  # every thread busy at shutdown: waited for
    busy.wait(10)
    for _ in range(3):
        pool.submit(done.append, "dropped")
    threading.Timer(0.2, gate.set).start()
    assert pool.shutdown() == 3  # not started: dropped
    assert "dropped" not in done and not [t for t in threading.enumerate() if t.name.startswith("test-pool_")]
    with pytest.raises(RuntimeError):
        pool.submit(done.append, 1)
    assert pool.shutdown() == 0
