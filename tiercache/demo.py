"""The main job on an embedded default: a local S3 server, a generated dataset, tiercache in front of it.

Run with ``make demo`` (or ``python -m tiercache.demo``). Everything lives in a temporary directory and
is removed at the end unless ``--keep`` is given.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from .devserver import LocalS3


def generate_dataset(client, bucket: str, files: int, file_size: int, big_size: int) -> dict[str, str]:
    """Upload ``files`` random objects and one large one; returns key → sha256."""
    client.create_bucket(Bucket=bucket)
    digests = {}

    def put(i: int) -> None:
        key = f"train/class_{i % 10}/img_{i:05d}.bin"
        data = os.urandom(file_size)
        client.put_object(Bucket=bucket, Key=key, Body=data)
        digests[key] = hashlib.sha256(data).hexdigest()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(files)))
    big = os.urandom(big_size)
    client.put_object(Bucket=bucket, Key="shards/big.bin", Body=big)
    digests["shards/big.bin"] = hashlib.sha256(big).hexdigest()
    return digests


def read_all(cache, keys: list[str], threads: int) -> tuple[float, int, dict[str, str]]:
    """Read every key through the cache with a thread pool; returns (seconds, bytes, key → sha256)."""
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        blobs = dict(zip(keys, pool.map(cache.read, keys), strict=True))
    seconds = time.perf_counter() - start
    return seconds, sum(len(b) for b in blobs.values()), {k: hashlib.sha256(b).hexdigest() for k, b in blobs.items()}


def library_demo(endpoint: str, bucket: str, workdir: str, digests: dict[str, str], threads: int) -> dict:
    """Read the dataset through the library API: cold, then warm from RAM; verify every byte."""
    import tiercache

    keys = sorted(digests)
    rows = []
    with tiercache.open(f"s3://{bucket}", ram="256M", ssd=os.path.join(workdir, "cache"), ssd_size="1G",
                        endpoint_url=endpoint, block_size="4M") as cache:
        print(f"listing: {len(cache.listdir('train'))} class dirs under train/, {len(keys)} objects")
        for phase in ("cold (S3)", "warm (cache)"):
            seconds, nbytes, got = read_all(cache, keys, threads)
            bad = [k for k in keys if got[k] != digests[k]]
            if bad:
                raise SystemExit(f"demo: {len(bad)} objects read back wrong, e.g. {bad[0]}")
            rows.append((phase, nbytes / seconds / 1e6, len(keys) / seconds))
        stats = cache.stats()
    print(f"\n{'phase':<14}{'MB/s':>10}{'files/s':>10}")
    for phase, mbps, fps in rows:
        print(f"{phase:<14}{mbps:>10.1f}{fps:>10.0f}")
    print("every byte verified (sha256)\n\ncache stats:")
    print(json.dumps(stats, indent=2, default=str))
    return stats


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m tiercache.demo``."""
    parser = argparse.ArgumentParser(prog="tiercache-demo", description=__doc__)
    parser.add_argument("--files", type=int, default=1000, help="number of small objects (default 1000)")
    parser.add_argument("--file-size", type=int, default=110_000, help="bytes per small object")
    parser.add_argument("--big", type=int, default=64 << 20, help="bytes of the large object")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="tiercache-demo-")
    try:
        with LocalS3(fast_ranges=True) as server:
            print(f"local S3 server at {server.endpoint}; generating {args.files} objects + one "
                  f"{args.big >> 20} MiB object ...")
            digests = generate_dataset(server.client(), "demo-data", args.files, args.file_size, args.big)
            library_demo(server.endpoint, "demo-data", workdir, digests, args.threads)
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
