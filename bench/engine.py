"""Engine benchmark: cold reads via the cache vs raw boto3, warm tier reads vs local files, policy hit rates.

Everything runs side by side in one script on a generated dataset served by a local S3 server
(moto on 127.0.0.1 in its own process, so its GIL is not the readers'; ``fast_ranges``: a ranged GET costs
what the range costs):

* cold: every object read once through a fresh cache vs the same GETs with raw boto3, same thread count
  (small objects whole; the large object as ``block_size`` ranges in parallel, joined into one bytes
  object as ``cache.read`` returns it);
* warm: the same bytes read from the SSD tier (RAM tier disabled) and from the RAM tier vs plain local
  files (all of them hot in the OS page cache: this compares software paths, not disks);
* hit rate: the default policy vs LRU on 5 shuffled epochs with the cache at 25/50/75 % of the data,
  as a policy replay and end to end through the real SSD tier (region files, watermarks).

    python bench/engine.py                    # 2,000 x 110 KB + one 256 MB object
    python bench/engine.py --files 300 --big-mb 32 --trace-items 4000

Writes bench/results/engine.json and prints a table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from traces import simulate  # noqa: E402

import tiercache  # noqa: E402
from tiercache.devserver import LocalS3Process  # noqa: E402
from tiercache.tiers.policy import make_policy  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "engine.json"
BUCKET = "bench-engine"


def best_of(runs: int, fn) -> float:
    """Smallest wall time of ``runs`` calls of ``fn``."""
    return min(interleaved(runs, fn)[0])


def interleaved(runs: int, *fns) -> list[list[float]]:
    """Wall times of ``runs`` rounds calling each of ``fns`` in turn (so all see the same machine load)."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - start)
    return times


def make_dataset(
    server: LocalS3Process, local: Path, files: int, size: int, big: int, threads: int
) -> dict[str, str]:
    """Upload the objects and write the same bytes as local files; returns key → sha256."""
    client = server.client()
    client.create_bucket(Bucket=BUCKET)
    digests: dict[str, str] = {}

    def put(i: int) -> None:
        key = f"train/c{i % 20:02d}/img_{i:05d}.bin"
        data = random.Random(i).randbytes(size)
        client.put_object(Bucket=BUCKET, Key=key, Body=data)
        (local / key).parent.mkdir(parents=True, exist_ok=True)
        (local / key).write_bytes(data)
        digests[key] = hashlib.sha256(data).hexdigest()

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, range(files)))
    blob = os.urandom(big)
    client.put_object(Bucket=BUCKET, Key="shards/big.bin", Body=blob)
    (local / "shards").mkdir(exist_ok=True)
    (local / "shards" / "big.bin").write_bytes(blob)
    digests["shards/big.bin"] = hashlib.sha256(blob).hexdigest()
    return digests


def open_cache(server: LocalS3Process, cache_dir: Path, args, **options) -> tiercache.TieredCache:
    opts = {"ram": "2G", "ssd": str(cache_dir), "ssd_size": "4G", "block_size": args.block_size,
            "threads": args.threads, "endpoint_url": server.endpoint, "metadata_ttl": "inf"}
    opts.update(options)
    return tiercache.open(f"s3://{BUCKET}", **opts)


def cold_reads(server: LocalS3Process, work: Path, small: list[str], big_size: int, args) -> dict:
    """Cold: raw boto3 GETs vs a fresh cache, alternating, best of ``args.runs``."""
    import boto3
    from botocore.config import Config

    bs = tiercache.parse_size(args.block_size)
    client = boto3.client("s3", endpoint_url=server.endpoint,
                          config=Config(max_pool_connections=args.threads + 4))
    ranges = [(s, min(big_size, s + bs)) for s in range(0, big_size, bs)]

    def raw_small() -> None:
        with ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(lambda k: client.get_object(Bucket=BUCKET, Key=k)["Body"].read(), small))

    def raw_big() -> None:
        def get(r):
            return client.get_object(Bucket=BUCKET, Key="shards/big.bin", Range=f"bytes={r[0]}-{r[1] - 1}")[
                "Body"].read()

        with ThreadPoolExecutor(args.threads) as pool:  # joined: cache.read returns the object as one bytes
            assert len(b"".join(pool.map(get, ranges))) == big_size

    results = {"raw_small_s": [], "cache_small_s": [], "raw_big_s": [], "cache_big_s": []}
    for run in range(args.runs):
        results["raw_small_s"].append(best_of(1, raw_small))
        results["raw_big_s"].append(best_of(1, raw_big))
        cache_dir = work / f"cold-{run}"
        with open_cache(server, cache_dir, args) as cache:
            cache.listdir("")  # the listing happens at mount time, not per read

            def cached_small(cache=cache) -> None:
                with ThreadPoolExecutor(args.threads) as pool:
                    list(pool.map(cache.read, small))

            results["cache_small_s"].append(best_of(1, cached_small))
            results["cache_big_s"].append(best_of(1, lambda cache=cache: cache.read("shards/big.bin")))
        shutil.rmtree(cache_dir)
    small_bytes = len(small) * args.file_size
    out = {k: min(v) for k, v in results.items()}
    out["small_files_per_s"] = {
        "raw": len(small) / out["raw_small_s"], "cache": len(small) / out["cache_small_s"],
    }
    out["big_MBps"] = {"raw": big_size / out["raw_big_s"] / 1e6, "cache": big_size / out["cache_big_s"] / 1e6}
    out["small_MBps"] = {
        "raw": small_bytes / out["raw_small_s"] / 1e6, "cache": small_bytes / out["cache_small_s"] / 1e6,
    }
    out["ratio_small"] = out["raw_small_s"] / out["cache_small_s"]
    out["ratio_big"] = out["raw_big_s"] / out["cache_big_s"]
    return out


def warm_reads(server: LocalS3Process, work: Path, local: Path, small: list[str], digests: dict, args) -> dict:
    """Warm: SSD tier (RAM off) and RAM tier vs plain local files, same threads, best of ``args.runs``."""

    def local_small() -> None:
        def read(key: str) -> bytes:
            with open(local / key, "rb") as f:
                return f.read()

        with ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(read, small))

    def local_big() -> None:
        with open(local / "shards" / "big.bin", "rb") as f:
            f.read()

    out: dict = {}
    cache_dir = work / "warm"
    with open_cache(server, cache_dir, args, ram=0) as cache:
        report = cache.warm("", tier="ssd")
        assert report["complete"], report
        for key in (small[0], "shards/big.bin"):
            assert hashlib.sha256(cache.read(key)).hexdigest() == digests[key]
    tiers = {"ssd": {"ram": 0}, "ram": {"ram": "2G"}}
    for tier, options in tiers.items():
        with open_cache(server, cache_dir, args, **options) as cache:
            if tier == "ram":
                cache.warm("", tier="ram")

            def cached_small(cache=cache) -> None:
                with ThreadPoolExecutor(args.threads) as pool:
                    list(pool.map(cache.read, small))

            gets = cache.stats()["backend"]["gets"]
            small_cache, small_local = map(min, interleaved(args.runs, cached_small, local_small))
            big_cache, big_local = map(
                min, interleaved(2 * args.runs, lambda cache=cache: cache.read("shards/big.bin"), local_big)
            )
            stats = cache.stats()
            assert stats["backend"]["gets"] == gets, "warm reads must not reach the store"
            served = stats[tier]["hits"]
        out[tier] = {
            "small_files_per_s": {"cache": len(small) / small_cache, "local": len(small) / small_local},
            "big_MBps": {
                "cache": args.big_mb * 1.048576 / big_cache, "local": args.big_mb * 1.048576 / big_local,
            },
            "ratio_small": small_local / small_cache,
            "ratio_big": big_local / big_cache,
            "tier_hits": served,
        }
    shutil.rmtree(cache_dir)
    return out


def hit_rates(work: Path, args) -> dict:
    """Default policy vs LRU on ``args.epochs`` shuffled epochs: replayed, and through the real SSD tier."""
    out: dict = {"replay": {}, "ssd_tier": {}}
    n = args.trace_items
    rng = random.Random(42)
    trace = []
    for _ in range(args.epochs):
        order = list(range(n))
        rng.shuffle(order)
        trace += order
    for frac in (0.25, 0.5, 0.75):
        out["replay"][f"{int(frac * 100)}%"] = {
            name: simulate(make_policy(name), trace, int(n * frac)) for name in ("default", "lru")
        }
    # End to end: file:// source, RAM off, the SSD tier sized to a fraction of the data.
    items, size = args.e2e_items, 16 << 10
    src = work / "e2e-src"
    for i in range(items):
        (src / f"{i // 100:03d}").mkdir(parents=True, exist_ok=True)
        (src / f"{i // 100:03d}" / f"{i:05d}").write_bytes(random.Random(i).randbytes(size))
    keys = [f"{i // 100:03d}/{i:05d}" for i in range(items)]
    rng = random.Random(43)
    for frac in (0.25, 0.5, 0.75):
        row = {}
        for name in ("default", "lru"):
            cache_dir = work / f"e2e-{name}"
            with tiercache.open(f"file://{src}", ram=0, ssd=str(cache_dir), ssd_size=int(items * size * frac),
                                block_size="64K", policy=name, metadata_ttl="inf") as cache:
                for _ in range(args.epochs):
                    order = list(keys)
                    rng.shuffle(order)
                    for key in order:
                        cache.read(key)
                stats = cache.stats()
            row[name] = stats["ssd"]["hits"] / (stats["ssd"]["hits"] + stats["ssd"]["misses"])
            shutil.rmtree(cache_dir)
        out["ssd_tier"][f"{int(frac * 100)}%"] = row
    return out


def main(argv: list[str] | None = None) -> int:
    """Run everything, print a table, write bench/results/engine.json."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--file-size", type=int, default=110_000)
    parser.add_argument("--big-mb", type=int, default=256)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--block-size", default="4M")
    parser.add_argument("--runs", type=int, default=3, help="repetitions; the best time counts")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--trace-items", type=int, default=20_000)
    parser.add_argument("--e2e-items", type=int, default=1000)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="tiercache-bench-"))
    try:
        with LocalS3Process(fast_ranges=True) as server:
            local = work / "local"
            print(f"generating {args.files} x {args.file_size} B + {args.big_mb} MB on {server.endpoint} ...")
            digests = make_dataset(server, local, args.files, args.file_size, args.big_mb << 20, args.threads)
            small = sorted(k for k in digests if k.startswith("train/"))
            cold = cold_reads(server, work, small, args.big_mb << 20, args)
            warm = warm_reads(server, work, local, small, digests, args)
        rates = hit_rates(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    import moto

    result = {
        "server": {
            "kind": "LocalS3Process: moto ThreadedMotoServer on 127.0.0.1 in its own process, fast_ranges=True, "
                    "no added latency",
            "moto": moto.__version__,
        },
        "machine": {
            "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "load_average": os.getloadavg(),
        },
        "dataset": {
            "small_files": args.files, "small_file_bytes": args.file_size, "big_object_MB": args.big_mb,
        },
        "params": {"threads": args.threads, "block_size": args.block_size, "runs": args.runs,
                   "epochs": args.epochs, "trace_items": args.trace_items, "e2e_items": args.e2e_items},
        "cold": cold,
        "warm": warm,
        "hit_rate": rates,
        "goals": {"cold_ratio": 0.9, "warm_ratio_small": 0.5, "warm_ratio_big": 0.8},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{'measurement':<34}{'cache':>12}{'baseline':>12}{'ratio':>8}  goal")
    print(f"{'cold small files/s (vs boto3)':<34}{cold['small_files_per_s']['cache']:>12.0f}"
          f"{cold['small_files_per_s']['raw']:>12.0f}{cold['ratio_small']:>8.2f}  >= 0.9")
    print(f"{'cold big MB/s (vs boto3)':<34}{cold['big_MBps']['cache']:>12.0f}"
          f"{cold['big_MBps']['raw']:>12.0f}"
          f"{cold['ratio_big']:>8.2f}  >= 0.9")
    for tier in ("ssd", "ram"):
        w = warm[tier]
        print(f"{f'warm {tier} small files/s (vs local)':<34}{w['small_files_per_s']['cache']:>12.0f}"
              f"{w['small_files_per_s']['local']:>12.0f}{w['ratio_small']:>8.2f}  >= 0.5")
        print(f"{f'warm {tier} big MB/s (vs local)':<34}{w['big_MBps']['cache']:>12.0f}"
              f"{w['big_MBps']['local']:>12.0f}{w['ratio_big']:>8.2f}  >= 0.8")
    print(f"\n{'hit rate, 5 shuffled epochs':<34}{'default':>12}{'lru':>12}")
    for kind in ("replay", "ssd_tier"):
        for frac, row in rates[kind].items():
            print(f"{f'{kind} @ {frac} of data':<34}{row['default']:>12.3f}{row['lru']:>12.3f}")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
