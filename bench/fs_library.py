"""Library mode for bench/fs.py: the same reads through ``TieredCache.read`` (no FUSE hop), in a process of
its own so that ``PYTHONPATH`` can pick the tree (bench/fs.py runs it for this tree and for ``--before``).

    python bench/fs_library.py ENDPOINT BUCKET LARGE_KEY RANDOM_KEY --ram 64M --cold-ram 1G --threads 8 --seconds 4

Prints one JSON object: large_cold (1 MiB reads start to end on a fresh cache with ``--cold-ram``, the RAM
of the mount whose cold phase it stands beside: read-ahead may have a quarter of it in flight, 64 MiB at
1G, as many bytes as raw boto3's 8 × 8 MiB ranged GETs), then on a fresh cache with ``--ram``:
large_cold_small_ram (the same read, 16 MiB in flight at 64M), large_warm_after_cold (the same again: RAM or
SSD tier, as ``--ram`` allows; blocks the SSD admission dropped are fetched again), large_warm (the same once
``warm`` has made the SSD copy whole), random_64k_ssd (THREADS threads of 64 KiB reads at random aligned offsets for
SECONDS), random_64k_cold (64 KiB reads of RANDOM_KEY, never read before).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

KiB, MiB = 1 << 10, 1 << 20


def sequential(cache, key: str, size: int) -> dict:
    """``key`` read start to end in 1 MiB reads."""
    start = time.perf_counter()
    total = 0
    for offset in range(0, size, MiB):
        total += len(cache.read(key, offset, MiB))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "bytes": total, "mb_per_s": total / seconds / 1e6}


def random_for(cache, key: str, size: int, threads: int, seconds: float) -> dict:
    """``threads`` threads of 64 KiB reads at random 64 KiB-aligned offsets for ``seconds``."""
    slots = max(1, size // (64 * KiB))
    deadline = time.monotonic() + seconds

    def worker(seed: int) -> int:
        rng, done = random.Random(seed), 0
        while time.monotonic() < deadline:
            if len(cache.read(key, rng.randrange(slots) * 64 * KiB, 64 * KiB)) != 64 * KiB:
                raise RuntimeError("short read")
            done += 1
        return done

    start = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(worker, range(threads)))
    took = time.monotonic() - start
    return {"seconds": took, "reads": total, "ops_per_s": total / took, "mb_per_s": total * 64 * KiB / took / 1e6}


def random_count(cache, key: str, size: int, threads: int, count: int) -> dict:
    """``count`` 64 KiB reads at random 4 KiB-aligned offsets, ``threads`` at a time."""
    rng = random.Random(5)
    offsets = [rng.randrange(0, size - 64 * KiB) // 4096 * 4096 for _ in range(count)]
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(lambda o: len(cache.read(key, o, 64 * KiB)), offsets))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "bytes": total, "ops_per_s": count / seconds, "mb_per_s": total / seconds / 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("endpoint")
    parser.add_argument("bucket")
    parser.add_argument("large_key")
    parser.add_argument("random_key")
    parser.add_argument("--ram", default="64M")
    parser.add_argument("--cold-ram", default=None, help="RAM of the large_cold cache (default: --ram)")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--cold-random-reads", type=int, default=500)
    args = parser.parse_args(argv)
    import tiercache

    out: dict = {"tiercache_module": tiercache.__file__, "cold_ram": args.cold_ram or args.ram, "ram": args.ram}

    def fresh(ram: str, ssd: str):
        return tiercache.open(f"s3://{args.bucket}", ram=ram, ssd=ssd, ssd_size="2G",
                              endpoint_url=args.endpoint, metadata_ttl="inf", threads=max(16, args.threads))

    ssd = tempfile.mkdtemp(prefix="tc-fsbench-lib-")
    try:
        with fresh(args.cold_ram or args.ram, ssd) as cache:
            out["large_cold"] = sequential(cache, args.large_key, cache.stat(args.large_key).size)
    finally:
        shutil.rmtree(ssd, ignore_errors=True)
    ssd = tempfile.mkdtemp(prefix="tc-fsbench-lib-")
    cache = fresh(args.ram, ssd)
    try:
        size = cache.stat(args.large_key).size
        rsize = cache.stat(args.random_key).size
        out["random_64k_cold"] = random_count(cache, args.random_key, rsize, args.threads, args.cold_random_reads)
        out["large_cold_small_ram"] = sequential(cache, args.large_key, size)
        time.sleep(2)  # the SSD write queue drains
        out["ssd_admission_dropped"] = cache.stats().get("ssd_admission_dropped")
        out["large_warm_after_cold"] = sequential(cache, args.large_key, size)  # dropped blocks fetched again
        start = time.perf_counter()
        out["ssd_completed"] = {"complete": cache.warm(args.large_key, "ssd")["complete"],
                                "seconds": time.perf_counter() - start}  # the SSD copy made whole
        out["large_warm"] = sequential(cache, args.large_key, size)
        out["random_64k_ssd"] = random_for(cache, args.large_key, size, args.threads, args.seconds)
    finally:
        cache.close()
        shutil.rmtree(ssd, ignore_errors=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
