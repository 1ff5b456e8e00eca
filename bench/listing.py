"""Cold listings (issue 13's metadata walk, issue 12's streaming listings) against raw boto3 LIST, side by side.

    python bench/listing.py [--keys 20000] [--dirs 100] [--threads 8] [--latency 0.02] [--label NAME]

One local S3 server in its own process (moto: its GIL is not the client's), one bucket of ``--keys`` empty
objects spread over ``--dirs`` directories. In one run, each measured on its own:

* ``boto3_sequential``: one paginated list_objects_v2 of the bucket (bench/fs.py's "raw boto3 LIST");
* ``boto3_parallel``: raw boto3 with the same threads and the same split as the namespace (a delimiter
  listing of the root, then contiguous ranges of its prefixes, each paginated from StartAfter);
* ``namespace``: a cold tiercache namespace (``Namespace`` over ``S3Store``, ``--threads`` walkers): the whole
  listing into its LMDB index; with the time at which the first directory answered;
* ``walk``: a cold metadata walk in library mode (listdir of every directory, stat of every file);
* ``restart``: the namespace reopened on the same index: time to the first stat, and LIST requests made.

The two baselines run first and last, and the better of their two runs counts. Ratios are files/s over
boto3's. Writes bench/results/listing[_LABEL].json and prints a table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from results_file import write_result  # noqa: E402

from tiercache.devserver import LocalS3Process  # noqa: E402
from tiercache.namespace import Namespace  # noqa: E402
from tiercache.store.s3 import S3Store  # noqa: E402
from tiercache.store.walk import Walk  # noqa: E402
from tiercache.tiers.meta import Meta  # noqa: E402

BUCKET = "listing-bench"


def fill(client, keys: int, dirs: int, threads: int) -> list[str]:
    names = [f"dir{d:04d}/file{f:06d}.bin" for d in range(dirs) for f in range(keys // dirs)]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=BUCKET, Key=k, Body=b""), names))
    return names


def rate(n: int, seconds: float) -> dict:
    return {"files": n, "seconds": seconds, "files_per_s": n / seconds if seconds else 0.0}


def boto3_sequential(client) -> dict:
    start = time.perf_counter()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    n = sum(len(p.get("Contents", ())) for p in pages)
    return rate(n, time.perf_counter() - start)


def boto3_parallel(endpoint: str, threads: int) -> dict:
    """Raw boto3, the namespace's split: the walk over an S3Store, infos counted, nothing kept."""
    store = S3Store(f"s3://{BUCKET}", endpoint_url=endpoint, threads=threads)
    start = time.perf_counter()
    n = sum(len(p.infos or ()) for p in Walk(store, "", threads) if p is not None)
    return rate(n, time.perf_counter() - start)


def namespace(endpoint: str, threads: int, meta_dir: str, first: str) -> dict:
    store = S3Store(f"s3://{BUCKET}", endpoint_url=endpoint, threads=threads)
    meta = Meta(meta_dir)
    try:
        start = time.perf_counter()
        ns = Namespace(store, meta, ttl=3600, threads=threads)
        names = ns.listdir(first)
        first_s = time.perf_counter() - start
        n = sum(1 for _ in ns.files(""))
        out = rate(n, time.perf_counter() - start)
        out.update(first_dir_s=first_s, first_dir_files=len(names), list_requests=ns.stats()["list_requests"])
        ns.close()
        return out
    finally:
        meta.close()


def walk(endpoint: str, threads: int, meta_dir: str) -> dict:
    store = S3Store(f"s3://{BUCKET}", endpoint_url=endpoint, threads=threads)
    meta = Meta(meta_dir)
    try:
        start = time.perf_counter()
        ns = Namespace(store, meta, ttl=3600, threads=threads)
        n, stack = 0, [""]
        while stack:
            d = stack.pop()
            for entry in ns.entries(d):
                if entry.is_dir:
                    stack.append(entry.path)
                else:
                    ns.stat(entry.path)
                    n += 1
        out = rate(n, time.perf_counter() - start)
        ns.close()
        return out
    finally:
        meta.close()


def restart(endpoint: str, threads: int, meta_dir: str, key: str) -> dict:
    store = S3Store(f"s3://{BUCKET}", endpoint_url=endpoint, threads=threads)
    meta = Meta(meta_dir)
    try:
        start = time.perf_counter()
        ns = Namespace(store, meta, ttl=3600, threads=threads)
        size = ns.stat(key).size
        seconds = time.perf_counter() - start
        return {"first_stat_s": seconds, "size": size, "lists": ns.stats()["lists"],
                "list_requests": ns.stats()["list_requests"]}
    finally:
        meta.close()


def table(result: dict) -> str:
    base = result["boto3_sequential"]["files_per_s"]
    par = result["boto3_parallel"]["files_per_s"]
    rows = [("raw boto3 LIST, sequential", result["boto3_sequential"]),
            (f"raw boto3 LIST, {result['threads']} threads by prefix", result["boto3_parallel"]),
            ("tiercache namespace, cold listing", result["namespace"]),
            ("tiercache cold walk (listdir + stat)", result["walk"])]
    lines = ["| listing | files/s | vs boto3 sequential | vs boto3 same threads |", "|---|---|---|---|"]
    for name, r in rows:
        lines.append(f"| {name} | {r['files_per_s']:,.0f} | {r['files_per_s'] / base:.2f} | "
                     f"{r['files_per_s'] / par:.2f} |")
    ns, rs = result["namespace"], result["restart"]
    lines.append(f"\nfirst directory answered after {ns['first_dir_s']:.2f} s of a {ns['seconds']:.2f} s listing; "
                 f"restart: first stat {rs['first_stat_s'] * 1000:.1f} ms, {rs['list_requests']} LIST requests")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--dirs", type=int, default=100)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each response's first byte")
    parser.add_argument("--label", default="")
    args = parser.parse_args(argv)
    if args.keys < 1 or args.dirs < 1 or args.threads < 1 or args.keys < args.dirs:
        parser.error("--keys, --dirs and --threads must be >= 1, and --keys >= --dirs")
    work = tempfile.mkdtemp(prefix="tc-listing-")
    try:
        with LocalS3Process(latency=0.0) as server:
            client = server.client()
            client.create_bucket(Bucket=BUCKET)
            names = fill(client, args.keys, args.dirs, args.threads)
            server.set_latency(args.latency)
            result = {"keys": len(names), "dirs": args.dirs, "threads": args.threads, "latency_s": args.latency}
            # the baselines run first and last (the best of the two counts): the server's state and the
            # machine's load drift during a run
            sequential = [boto3_sequential(client)]
            parallel = [boto3_parallel(server.endpoint, args.threads)]
            result["namespace"] = namespace(server.endpoint, args.threads, os.path.join(work, "ns"), "dir0000")
            result["walk"] = walk(server.endpoint, args.threads, os.path.join(work, "walk"))
            result["restart"] = restart(server.endpoint, args.threads, os.path.join(work, "ns"), names[-1])
            parallel.append(boto3_parallel(server.endpoint, args.threads))
            sequential.append(boto3_sequential(client))
            for name, runs in (("boto3_sequential", sequential), ("boto3_parallel", parallel)):
                result[name] = max(runs, key=lambda r: r["files_per_s"])
                result[name]["runs_files_per_s"] = [r["files_per_s"] for r in runs]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = result["boto3_sequential"]["files_per_s"]
    for name in ("boto3_parallel", "namespace", "walk"):
        result[name]["over_boto3_sequential"] = result[name]["files_per_s"] / base
        result[name]["over_boto3_same_threads"] = result[name]["files_per_s"] / result["boto3_parallel"]["files_per_s"]
    write_result("listing", result, args.label)
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
