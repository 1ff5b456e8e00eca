"""Warm streaming from the SSD tier, every reader side by side in one time window (issue 13).

    python bench/ssd_stream.py LABEL [--before REF] [--size 256M] [--rounds 5] [--ram 64M]

One large file in the local S3 server (its own process, ``fast_ranges``). Mounted at once: tiercache from this
tree (``--ram`` smaller than the file: the SSD tier serves it), the same from git ``REF`` (``-before``), s3fs
``use_cache`` and the do-nothing mfusepy filesystem (bench/fuse_ceiling.py, the Python FUSE ceiling). Each
reads the file once cold; tiercache's SSD copy is then made whole (``tiercache warm``: blocks its admission
dropped under a disk slower than the stream; s3fs writes its whole cache file on the cold read). Then
``--rounds`` rounds, each target in turn: page cache dropped, the file read in 1 MiB reads. Per target: MB/s
(best and median) and the daemon's CPU per MiB (utime + stime from /proc, a figure the machine's load moves
far less than wall time). Library mode (``TieredCache.read``, no FUSE hop) of both trees runs after, in its
own processes: the read right after the cold one, and once ``warm`` made the SSD copy whole.
Writes bench/results/ssd_stream_LABEL.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from fs_data import LARGE_KEY, big_file, upload  # noqa: E402
from fs_mounts import CREDS, CeilingMount, S3fsMount, TiercacheMount, code_tree  # noqa: E402
from fs_phases import drop_page_cache, read_sequential  # noqa: E402
from results_file import write_result  # noqa: E402

from tiercache.config import parse_size  # noqa: E402
from tiercache.devserver import LocalS3Process  # noqa: E402

MiB = 1 << 20
LIBRARY = """
import json, sys, time, tempfile, shutil
import tiercache
endpoint, key, ram = sys.argv[1:4]
ssd = tempfile.mkdtemp(prefix="tc-ssdstream-lib-")
def read(cache, size):
    cpu, start = time.process_time(), time.perf_counter()
    for offset in range(0, size, 1 << 20):
        cache.read(key, offset, 1 << 20)
    took = time.perf_counter() - start
    return {"mb_per_s": size / took / 1e6, "cpu_ms_per_mib": (time.process_time() - cpu) * 1000 / (size >> 20)}
out = {}
try:
    with tiercache.open("s3://fsbench", ram=ram, ssd=ssd, ssd_size="2G", endpoint_url=endpoint,
                        metadata_ttl="inf", threads=16) as cache:
        size = cache.stat(key).size
        out["cold"] = read(cache, size)
        time.sleep(2)
        out["ssd_admission_dropped"] = cache.stats().get("ssd_admission_dropped")
        out["warm_after_cold"] = read(cache, size)
        cache.warm(key, "ssd")
        out["warm"] = max((read(cache, size) for _ in range(3)), key=lambda r: r["mb_per_s"])
finally:
    shutil.rmtree(ssd, ignore_errors=True)
print(json.dumps(out))
"""


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of a process (0 when unknown)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, TypeError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def library(endpoint: str, tree: str | None, ram: str) -> dict:
    env = {**os.environ, **CREDS, **({"PYTHONPATH": tree} if tree else {})}
    proc = subprocess.run([sys.executable, "-c", LIBRARY, endpoint, LARGE_KEY, ram], capture_output=True, text=True,
                          env=env, cwd=tree or os.path.dirname(HERE), timeout=600)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("label")
    parser.add_argument("--before", metavar="REF")
    parser.add_argument("--size", default="256M")
    parser.add_argument("--ram", default="64M")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--skip-library", action="store_true")
    args = parser.parse_args(argv)
    os.environ.update(CREDS)
    work = tempfile.mkdtemp(prefix="tc-ssdstream-")
    local = os.path.join(work, "local")
    big_file(os.path.join(local, LARGE_KEY), parse_size(args.size), random.Random(4))
    server = LocalS3Process(fast_ranges=True).start()
    results: dict = {"label": args.label, "size": args.size, "ram": args.ram, "before": args.before,
                     "load_start": os.getloadavg()}
    mounts: dict = {}
    try:
        upload(server.endpoint, local, [], [LARGE_KEY])
        trees = {"tiercache": None, **({"tiercache-before": code_tree(args.before, work)} if args.before else {})}
        for name, tree in trees.items():
            mounts[name] = TiercacheMount(server.endpoint, work, args, ram=args.ram, tree=tree,
                                          tag=name[len("tiercache"):])
        if shutil.which("s3fs"):
            mounts["s3fs"] = S3fsMount(server.endpoint, work, args)
        mounts["ceiling"] = CeilingMount(server.endpoint, work, args, local=local)
        paths = {name: os.path.join(m.path, LARGE_KEY) for name, m in mounts.items()}
        for name, path in paths.items():
            results[f"{name}_cold"] = read_sequential(path)["mb_per_s"]
        time.sleep(2)
        for name in trees:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "tiercache.cli", "warm", "--tier", "ssd", paths[name]],
                           capture_output=True, timeout=300, env=mounts[name].env, cwd=mounts[name].cwd)
            results[f"{name}_ssd_completed_s"] = round(time.perf_counter() - start, 2)
        runs: dict = {name: [] for name in paths}
        for _ in range(args.rounds):
            for name, path in paths.items():
                drop_page_cache([path])
                cpu = cpu_seconds(mounts[name].pid)
                got = read_sequential(path)
                used = (cpu_seconds(mounts[name].pid) - cpu) * 1000 / (got["bytes"] / MiB)
                runs[name].append({"mb_per_s": got["mb_per_s"], "cpu_ms_per_mib": used})
        results["runs"] = runs
        for name in trees:
            results[f"{name}_stats"] = mounts[name].stats().get("cache", {}).get("ssd")
    finally:
        for mount in mounts.values():
            mount.close()
    try:
        if not args.skip_library:
            for name, tree in trees.items():
                results["library" + name[len("tiercache"):]] = library(server.endpoint, tree, args.ram)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    results["load_end"] = os.getloadavg()
    table = []
    s3fs = max((r["mb_per_s"] for r in runs.get("s3fs", [])), default=None)
    for name, rs in runs.items():
        rates = [r["mb_per_s"] for r in rs]
        cpu = statistics.median(r["cpu_ms_per_mib"] for r in rs)
        table.append({"target": name, "best_mb_per_s": round(max(rates)), "median_mb_per_s": round(
            statistics.median(rates)), "cpu_ms_per_mib": round(cpu, 2),
            "vs_s3fs": round(max(rates) / s3fs, 2) if s3fs else None})
    results["table"] = table
    out = write_result("ssd_stream", results, args.label)
    print(f"{'target':<20}{'best MB/s':>10}{'median':>10}{'CPU ms/MiB':>12}{'x s3fs':>8}")
    for row in table:
        print(f"{row['target']:<20}{row['best_mb_per_s']:>10}{row['median_mb_per_s']:>10}"
              f"{row['cpu_ms_per_mib']:>12}{row['vs_s3fs'] if row['vs_s3fs'] is not None else '-':>8}")
    for name in ("library", "library-before"):
        if name in results:
            print(name, json.dumps(results[name]))
    print(f"load {results['load_start']} -> {results['load_end']}; -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
