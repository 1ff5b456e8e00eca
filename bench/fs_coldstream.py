"""Cold sequential reads in library mode next to raw boto3, side by side, at 0 ms and with added latency.

    python bench/fs_coldstream.py LABEL [--before REF] [--size 128M] [--ram 1G,64M] [--threads 8] [--rounds 2]
                                        [--into]

One local S3 server (its own process, fast ranges); one large object. Each round reads it cold with raw
boto3 (THREADS threads of 8 MiB ranged GETs, as bench/fs.py's boto3 target), then with
``TieredCache.read`` in 1 MiB reads start to end on a fresh cache (bench/fs_library.py's ``large_cold``),
for this tree and for ``--before`` (each in a process of its own, PYTHONPATH picking the tree), for each
``--ram`` (read-ahead may have a quarter of it in flight), in turn. Prints a table (best of the rounds, and
the reader process's CPU per MiB: on a machine short of cores, what a target spends per MiB is what its
rate comes down to; and by thread, after the SSD copy is written, with minor page faults per MiB) and writes
bench/results/coldstream_LABEL.json (every round, each cache's read-ahead and backend counters). ``--into``:
the reads go into one reused buffer (``read(..., into=buf)``) in the trees that have it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

from fs_data import load_average, s3_client  # noqa: E402
from fs_mounts import code_tree  # noqa: E402
from results_file import write_result  # noqa: E402

from tiercache.config import parse_size  # noqa: E402
from tiercache.devserver import LocalS3Process  # noqa: E402

BUCKET, KEY, MiB = "coldstream", "large.bin", 1 << 20
CHILD = r"""
import json, os, re, resource, shutil, sys, tempfile, threading, time
import tiercache


def thread_cpu():
    # CPU ns per thread group (the name without its pool number), from /proc/self/task/TID/schedstat
    out = {}
    for thread in threading.enumerate():
        try:
            with open(f"/proc/self/task/{thread.native_id}/schedstat") as f:
                ns = int(f.read().split()[0])
        except (OSError, TypeError):
            continue
        name = "reader" if thread is threading.main_thread() else re.sub(r"[_-]?\d+$", "", thread.name)
        out[name] = out.get(name, 0) + ns
    return out

endpoint, bucket, key, ram, threads = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
ssd = tempfile.mkdtemp(prefix="tc-coldstream-")
cache = tiercache.open(f"s3://{bucket}", ram=ram, ssd=ssd, ssd_size="2G", endpoint_url=endpoint,
                       metadata_ttl="inf", threads=max(16, threads))
try:
    size = cache.stat(key).size
    into = sys.argv[6] == "1" and "into" in cache.read.__code__.co_varnames  # --into (a tree that has it)
    buf = memoryview(bytearray(1 << 20))
    threads_before = thread_cpu()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start, cpu = time.perf_counter(), os.times()
    total = 0
    for offset in range(0, size, 1 << 20):
        total += cache.read(key, offset, 1 << 20, into=buf) if into else len(cache.read(key, offset, 1 << 20))
    seconds = time.perf_counter() - start
    mib = total / (1 << 20)
    cpu = (os.times().user + os.times().system - cpu.user - cpu.system) / mib * 1000
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / mib
    if getattr(cache, "ssd", None) is not None:  # the SSD copy's writes count too
        cache.ssd.drain()
    per_thread = {k: round((v - threads_before.get(k, 0)) / 1e6 / mib, 3) for k, v in thread_cpu().items()}
    stats = cache.stats()
finally:
    cache.close()
    shutil.rmtree(ssd, ignore_errors=True)
keep = {"backend": stats["backend"], "ssd_admission_dropped": stats["ssd_admission_dropped"],
        "single_flight_waits": stats["single_flight_waits"], "memory": stats["memory"],
        **{k: v for k, v in stats["prefetcher"].items() if k.startswith("readahead")}}
print(json.dumps({"seconds": seconds, "bytes": total, "mb_per_s": total / seconds / 1e6, "cpu_ms_per_mib": cpu,
                  "thread_cpu_ms_per_mib": per_thread, "faults_per_mib": round(faults, 1), "read_into": into,
                  "stats": keep,
                  "module": tiercache.__file__}))
"""


def boto3_cold(endpoint: str, size: int, threads: int) -> dict:
    """The object in parallel 8 MiB ranged GETs, ``threads`` at a time (a fresh client: cold connections)."""
    from concurrent.futures import ThreadPoolExecutor

    client = s3_client(endpoint, threads)

    def get(start: int) -> int:
        end = min(size, start + 8 * MiB) - 1
        return len(client.get_object(Bucket=BUCKET, Key=KEY, Range=f"bytes={start}-{end}")["Body"].read())

    start, cpu = time.perf_counter(), os.times()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(get, range(0, size, 8 * MiB)))
    seconds = time.perf_counter() - start
    cpu = (os.times().user + os.times().system - cpu.user - cpu.system) / (total / MiB) * 1000
    client.close()
    return {"seconds": seconds, "bytes": total, "mb_per_s": total / seconds / 1e6, "cpu_ms_per_mib": cpu}


def library_cold(endpoint: str, tree: str | None, ram: str, threads: int, into: bool = False) -> dict:
    """The object read cold through ``TieredCache.read`` by the tree at ``tree`` (None: this one)."""
    env = {**os.environ, **({"PYTHONPATH": tree} if tree else {"PYTHONPATH": ROOT})}
    proc = subprocess.run([sys.executable, "-c", CHILD, endpoint, BUCKET, KEY, ram, str(threads), str(int(into))],
                          capture_output=True, text=True, env=env, cwd=tree or ROOT, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError((proc.stderr.strip().splitlines() or ["?"])[-1])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("label")
    parser.add_argument("--before", help="git ref of the baseline tree, measured side by side")
    parser.add_argument("--size", default="128M")
    parser.add_argument("--ram", default="1G,64M", help="RAM of the caches, comma-separated")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--latency", type=float, nargs="*", default=[0.0, 0.02])
    parser.add_argument("--into", action="store_true",
                        help="read with read(..., into=buf) into one reused buffer (trees that have it)")
    args = parser.parse_args(argv)
    size = parse_size(args.size)
    work = tempfile.mkdtemp(prefix="tc-coldstream-work-")
    trees: dict[str, str | None] = {"library": None}
    if args.before:
        trees["library-before"] = code_tree(args.before, work)
    runs: dict[str, list[dict]] = {}
    with LocalS3Process(fast_ranges=True) as server:
        client = server.client()
        client.create_bucket(Bucket=BUCKET)
        client.put_object(Bucket=BUCKET, Key=KEY, Body=os.urandom(size))
        for latency in args.latency:
            server.set_latency(latency)
            tag = f"@{latency * 1000:.0f}ms"
            for _ in range(args.rounds):
                runs.setdefault("boto3" + tag, []).append(boto3_cold(server.endpoint, size, args.threads))
                for ram in args.ram.split(","):
                    for name, tree in trees.items():
                        runs.setdefault(f"{name}-{ram}{tag}", []).append(
                            library_cold(server.endpoint, tree, ram, args.threads, args.into))
    best = {name: max(rs, key=lambda r: r["mb_per_s"]) for name, rs in runs.items()}
    rows = []
    for name in sorted(best):
        tag = name[name.index("@"):]
        ref = best["boto3" + tag]["mb_per_s"]
        cpu = sorted(r["cpu_ms_per_mib"] for r in runs[name])
        rows.append({"target": name, "mb_per_s": round(best[name]["mb_per_s"], 1),
                     "of_boto3": round(best[name]["mb_per_s"] / ref, 3),
                     "median_of_boto3": round(_median([r["mb_per_s"] for r in runs[name]])
                                              / _median([r["mb_per_s"] for r in runs["boto3" + tag]]), 3),
                     "cpu_ms_per_mib": round(cpu[len(cpu) // 2], 2),
                     "all": [round(r["mb_per_s"], 1) for r in runs[name]]})
        groups = sorted({g for r in runs[name] for g in r.get("thread_cpu_ms_per_mib", {})})
        if groups:  # the reader process's CPU per MiB by thread (median of the rounds), faults per MiB
            rows[-1]["thread_cpu_ms_per_mib"] = {g: _median([r["thread_cpu_ms_per_mib"].get(g, 0.0)
                                                               for r in runs[name]]) for g in groups}
            rows[-1]["faults_per_mib"] = _median([r["faults_per_mib"] for r in runs[name]])
    print(f"{'target':28} {'MB/s':>8} {'x boto3':>8} {'median x':>9} {'CPU ms/MiB':>11}  rounds")
    for row in rows:
        print(f"{row['target']:28} {row['mb_per_s']:8.1f} {row['of_boto3']:8.3f} {row['median_of_boto3']:9.3f}"
              f" {row['cpu_ms_per_mib']:11.2f}  {row['all']}")
        if "thread_cpu_ms_per_mib" in row:
            print(f"{'':28} faults/MiB {row['faults_per_mib']:.0f}; ms/MiB by thread: "
                  + ", ".join(f"{g} {v:.2f}" for g, v in row["thread_cpu_ms_per_mib"].items() if v >= 0.01))
    write_result(f"coldstream_{args.label}", {"label": args.label, "before": args.before, "size": size,
                                              "ram": args.ram, "threads": args.threads, "rows": rows,
                                              "runs": runs, "load": load_average()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
