"""The measurements of bench/fs.py on a mounted (or local) tree, and the same access patterns with raw boto3.

cold = fresh mount and empty cache; warm = the mount's own cache holds the data but the kernel page cache was
dropped (posix_fadvise DONTNEED, never a global drop_caches: the machine is shared); hot = read again at once.
"""

from __future__ import annotations

import os
import random
import time
from concurrent.futures import ThreadPoolExecutor

KiB, MiB = 1 << 10, 1 << 20
BUCKET = "fsbench"


def drop_page_cache(paths: list[str]) -> None:
    """Forget these files' pages in the kernel page cache."""
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def walk(root: str) -> dict:
    """os.walk + stat of every file: files/s."""
    start = time.perf_counter()
    n = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            os.stat(os.path.join(dirpath, name))
            n += 1
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "files": n, "files_per_s": n / seconds}


def read_files(paths: list[str], threads: int) -> dict:
    """Every file read whole, ``threads`` at a time: files/s and MB/s."""
    def one(path: str) -> int:
        with open(path, "rb", buffering=0) as fh:
            return len(fh.read())

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(one, paths))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "bytes": total, "files_per_s": len(paths) / seconds, "mb_per_s": total / seconds / 1e6}


def read_sequential(path: str, chunk: int = MiB) -> dict:
    """One reader, ``chunk`` bytes per read(2), start to end: MB/s."""
    start = time.perf_counter()
    total = 0
    with open(path, "rb", buffering=0) as fh:
        while data := fh.read(chunk):
            total += len(data)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "bytes": total, "mb_per_s": total / seconds / 1e6}


def random_reads(path: str, count: int, threads: int, block: int = 64 * KiB, seed: int = 5) -> dict:
    """``count`` preads of ``block`` at random 4 KiB-aligned offsets, ``threads`` at a time: reads/s."""
    size = os.path.getsize(path)
    rng = random.Random(seed)
    offsets = [rng.randrange(0, max(1, size - block)) // 4096 * 4096 for _ in range(count)]
    fd = os.open(path, os.O_RDONLY)
    try:
        start = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            total = sum(pool.map(lambda off: len(os.pread(fd, block, off)), offsets))
        seconds = time.perf_counter() - start
    finally:
        os.close(fd)
    return {"seconds": seconds, "bytes": total, "ops_per_s": count / seconds, "mb_per_s": total / seconds / 1e6}


def random_uncached(path: str, seconds: float, threads: int, block: int = 64 * KiB) -> dict:
    """``threads`` threads reading ``block`` at random ``block``-aligned offsets for ``seconds``, the page cache
    dropped for the range before every read (so each read reaches the filesystem): reads/s."""
    size = os.path.getsize(path)
    slots = max(1, size // block)
    fd = os.open(path, os.O_RDONLY)
    deadline = time.monotonic() + seconds

    def worker(seed: int) -> int:
        rng, done = random.Random(seed), 0
        while time.monotonic() < deadline:
            offset = rng.randrange(slots) * block
            os.posix_fadvise(fd, offset, block, os.POSIX_FADV_DONTNEED)
            if len(os.pread(fd, block, offset)) != block:
                raise RuntimeError(f"short read of {path} at {offset}")
            done += 1
        return done

    try:
        start = time.monotonic()
        with ThreadPoolExecutor(threads) as pool:
            total = sum(pool.map(worker, range(threads)))
        took = time.monotonic() - start
    finally:
        os.close(fd)
    return {"seconds": took, "reads": total, "ops_per_s": total / took, "mb_per_s": total * block / took / 1e6}


def best_of(measure, rounds: int, budget: float, metric: str) -> dict:
    """The best of up to ``rounds`` runs of ``measure()`` by ``metric``: at least one, and no new round once
    ``budget`` seconds are spent (a fast phase lasts tens of milliseconds on a shared machine)."""
    start = time.perf_counter()
    runs = []
    while not runs or (len(runs) < rounds and time.perf_counter() - start < budget):
        runs.append(measure())
    best = max(runs, key=lambda r: r[metric])
    return {**best, "rounds": len(runs), "all": [round(r[metric], 1) for r in runs]}


def interleaved_best(runs: list[dict], metric: str) -> dict:
    """The best of a reference's runs measured between a target's own rounds."""
    best = max(runs, key=lambda r: r[metric])
    return {**best, "rounds": len(runs), "all": [round(r[metric], 1) for r in runs]}


def boto3_phases(endpoint: str, keys: list[str], big: str, size: int, threads: int, random_key: str,
                 random_count: int, client=None) -> dict:
    """Raw boto3 with the same threads: LIST, whole small objects, the large one in parallel 8 MiB ranges,
    and ``random_count`` 64 KiB ranges of ``random_key``."""
    if client is None:
        from fs_data import s3_client

        client = s3_client(endpoint, threads)

    def get(key: str, start: int | None = None, end: int | None = None) -> int:
        kw = {"Range": f"bytes={start}-{end - 1}"} if start is not None else {}
        return len(client.get_object(Bucket=BUCKET, Key=key, **kw)["Body"].read())

    out = {}
    start = time.perf_counter()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    n = sum(len(p.get("Contents", ())) for p in pages)
    seconds = time.perf_counter() - start
    out["walk_cold"] = {"seconds": seconds, "files": n, "files_per_s": n / seconds}
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(get, keys))
    seconds = time.perf_counter() - start
    out["small_cold"] = {"seconds": seconds, "bytes": total, "files_per_s": len(keys) / seconds,
                         "mb_per_s": total / seconds / 1e6}
    ranges = [(o, min(size, o + 8 * MiB)) for o in range(0, size, 8 * MiB)]
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(lambda r: get(big, *r), ranges))
    seconds = time.perf_counter() - start
    out["large_cold"] = {"seconds": seconds, "bytes": total, "mb_per_s": total / seconds / 1e6}
    rsize = client.head_object(Bucket=BUCKET, Key=random_key)["ContentLength"]
    rng = random.Random(5)
    offsets = [rng.randrange(0, rsize - 64 * KiB) // 4096 * 4096 for _ in range(random_count)]
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(lambda o: get(random_key, o, o + 64 * KiB), offsets))
    seconds = time.perf_counter() - start
    out["random_64k_cold"] = {"seconds": seconds, "bytes": total, "ops_per_s": len(offsets) / seconds,
                              "mb_per_s": total / seconds / 1e6}
    return out
