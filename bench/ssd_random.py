"""64 KiB random reads served by the SSD tier, side by side: this tree, git REF, the Python FUSE ceiling, a local
copy, and library mode of both trees (issue 13).

    python bench/ssd_random.py LABEL [--before REF] [--size 256M] [--ram 64M] [--threads 8] [--seconds 4]
                               [--rounds 3] [--skip-ceiling]

One file of ``--size`` in the local S3 server (its own process, ``fast_ranges``). Mounted at once: tiercache
from this tree and from git ``REF`` (``-before``), ``--ram`` smaller than the file so that the SSD tier serves
it (each read once start to end, then ``tiercache warm --tier ssd`` completes the SSD copy), and the
do-nothing mfusepy filesystem (bench/fuse_ceiling.py). Library mode (``TieredCache.read``, no FUSE hop) of
each tree runs in its own process, set up the same way, and waits for its turn. Then ``--rounds`` rounds, every
target in turn: ``--threads`` threads read 64 KiB at random 64 KiB-aligned offsets for ``--seconds``, the
kernel page cache dropped for the file before every read (posix_fadvise DONTNEED; each read is a FUSE request
served by the SSD tier), the local copy read the same way; then each tiercache target again with one thread
for half as long. Per target: reads/s (best and median of the rounds) and CPU per read (the daemon's, or the
library process's: utime + stime), and the one-thread run's rate and CPU per read (the least of the rounds:
the work a read costs without 8 threads contending for one GIL on a loaded machine).
Writes bench/results/ssd_random_LABEL.json and prints a table.
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
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

from fs_data import LARGE_KEY, big_file, upload  # noqa: E402
from fs_mounts import CREDS, CeilingMount, TiercacheMount, code_tree  # noqa: E402
from results_file import write_result  # noqa: E402
from ssd_stream import cpu_seconds  # noqa: E402

from tiercache.config import parse_size  # noqa: E402
from tiercache.devserver import LocalS3Process  # noqa: E402

KiB, MiB = 1 << 10, 1 << 20
READ = 64 * KiB

# library mode, in its own process: set up, print "ready", then one JSON line per "run SECONDS" line on stdin
LIBRARY = """
import json, os, random, shutil, sys, tempfile, time
from concurrent.futures import ThreadPoolExecutor
import tiercache
endpoint, key, ram = sys.argv[1], sys.argv[2], sys.argv[3]
ssd = tempfile.mkdtemp(prefix="tc-ssdrand-lib-")
try:
    with tiercache.open("s3://fsbench", ram=ram, ssd=ssd, ssd_size="2G", endpoint_url=endpoint,
                        metadata_ttl="inf") as cache:
        size = cache.stat(key).size
        for offset in range(0, size, 8 << 20):
            cache.read(key, offset, 8 << 20)
        time.sleep(2)
        cache.warm(key, "ssd")
        time.sleep(1)
        print("ready", flush=True)
        slots = size // 65536
        for line in sys.stdin:
            if not line.startswith("run"):
                break
            _, seconds, threads = line.split()
            threads = int(threads)
            deadline = time.monotonic() + float(seconds)
            def worker(seed):
                rng, done = random.Random(seed), 0
                while time.monotonic() < deadline:
                    cache.read(key, rng.randrange(slots) * 65536, 65536)
                    done += 1
                return done
            gets, cpu, start = cache.stats()["backend"]["gets"], os.times(), time.monotonic()
            with ThreadPoolExecutor(threads) as pool:
                total = sum(pool.map(worker, range(threads)))
            took, used = time.monotonic() - start, os.times()
            cpu = used.user + used.system - cpu.user - cpu.system
            print(json.dumps({"reads_per_s": total / took, "cpu_us_per_read": cpu * 1e6 / max(1, total),
                              "gets": cache.stats()["backend"]["gets"] - gets}), flush=True)
finally:
    shutil.rmtree(ssd, ignore_errors=True)
"""


def random_reads(path: str, size: int, threads: int, seconds: float) -> dict:
    """``threads`` threads reading 64 KiB at random aligned offsets of ``path`` for ``seconds``, the page
    cache dropped before each read; reads/s."""
    fd = os.open(path, os.O_RDONLY)
    slots = size // READ
    deadline = time.monotonic() + seconds

    def worker(seed: int) -> int:
        rng, done = random.Random(seed), 0
        while time.monotonic() < deadline:
            offset = rng.randrange(slots) * READ
            os.posix_fadvise(fd, offset, READ, os.POSIX_FADV_DONTNEED)
            if len(os.pread(fd, READ, offset)) != READ:
                raise RuntimeError(f"{path}: short read at {offset}")
            done += 1
        return done

    try:
        start = time.monotonic()
        with ThreadPoolExecutor(threads) as pool:
            total = sum(pool.map(worker, range(threads)))
        return {"reads": total, "reads_per_s": total / (time.monotonic() - start)}
    finally:
        os.close(fd)


class Library:
    """Library mode of one tree in its own process (see LIBRARY), one round at a time."""

    def __init__(self, endpoint: str, tree: str | None, args):
        env = {**os.environ, **CREDS, **({"PYTHONPATH": tree} if tree else {})}
        self.proc = subprocess.Popen([sys.executable, "-c", LIBRARY, endpoint, LARGE_KEY, args.ram],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                     cwd=tree or ROOT)

    def ready(self) -> None:
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"library mode did not start: {line!r}")

    def run(self, seconds: float, threads: int) -> dict:
        self.proc.stdin.write(f"run {seconds} {threads}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("label")
    parser.add_argument("--before", metavar="REF")
    parser.add_argument("--size", default="256M")
    parser.add_argument("--ram", default="64M")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-ceiling", action="store_true")
    args = parser.parse_args(argv)
    os.environ.update(CREDS)
    size = parse_size(args.size)
    work = tempfile.mkdtemp(prefix="tc-ssdrand-")
    local = os.path.join(work, "local")
    big_file(os.path.join(local, LARGE_KEY), size, random.Random(4))
    server = LocalS3Process(fast_ranges=True).start()
    results: dict = {"label": args.label, "size": size, "ram": args.ram, "threads": args.threads,
                     "seconds": args.seconds, "before": args.before, "load_start": os.getloadavg()}
    mounts: dict = {}
    libraries: dict = {}
    try:
        upload(server.endpoint, local, [], [LARGE_KEY])
        trees = {"tiercache": None, **({"tiercache-before": code_tree(args.before, work)} if args.before else {})}
        for name, tree in trees.items():
            libraries["library" + name[len("tiercache"):]] = Library(server.endpoint, tree, args)
            mounts[name] = TiercacheMount(server.endpoint, work, args, ram=args.ram, tree=tree,
                                          tag=name[len("tiercache"):])
        if not args.skip_ceiling:
            mounts["ceiling"] = CeilingMount(server.endpoint, work, args, local=local)
        paths = {name: os.path.join(m.path, LARGE_KEY) for name, m in mounts.items()}
        for name in trees:
            with open(paths[name], "rb") as fh:
                while fh.read(8 * MiB):
                    pass
            time.sleep(2)
            subprocess.run([sys.executable, "-m", "tiercache.cli", "warm", "--tier", "ssd", paths[name]],
                           capture_output=True, timeout=300, env=mounts[name].env, cwd=mounts[name].cwd)
        for lib in libraries.values():
            lib.ready()
        paths["local"] = os.path.join(local, LARGE_KEY)
        runs: dict = {name: [] for name in [*paths, *libraries]}
        single: dict = {name: [] for name in [*trees, *libraries]}
        for _ in range(args.rounds):
            for name, path in paths.items():
                for threads in (args.threads, 1) if name in single else (args.threads,):
                    pid = mounts[name].pid if name in mounts else None
                    cpu = cpu_seconds(pid)
                    got = random_reads(path, size, threads, args.seconds if threads > 1 else args.seconds / 2)
                    if pid is not None:
                        got["cpu_us_per_read"] = (cpu_seconds(pid) - cpu) * 1e6 / max(1, got["reads"])
                    (runs if threads > 1 else single)[name].append(got)
            for name, lib in libraries.items():
                runs[name].append(lib.run(args.seconds, args.threads))
                single[name].append(lib.run(args.seconds / 2, 1))
        results["runs"], results["single_thread_runs"] = runs, single
        for name in trees:
            results[f"{name}_stats_ssd"] = mounts[name].stats().get("cache", {}).get("ssd")
    finally:
        for lib in libraries.values():
            lib.close()
        for mount in mounts.values():
            mount.close()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    results["load_end"] = os.getloadavg()
    local_best = max(r["reads_per_s"] for r in runs["local"])
    table = []
    for name, rs in runs.items():
        rates = [r["reads_per_s"] for r in rs]
        cpus = [r["cpu_us_per_read"] for r in rs if "cpu_us_per_read" in r]
        one = single.get(name) or []
        table.append({"target": name, "best_reads_per_s": round(max(rates)),
                      "median_reads_per_s": round(statistics.median(rates)),
                      "cpu_us_per_read": round(statistics.median(cpus), 1) if cpus else None,
                      "vs_local": round(max(rates) / local_best, 3),
                      "one_thread_reads_per_s": round(max(r["reads_per_s"] for r in one)) if one else None,
                      "one_thread_cpu_us_per_read": round(min(r["cpu_us_per_read"] for r in one), 1) if one else None})
    results["table"] = table
    out = write_result("ssd_random", results, args.label)
    print(f"{'64 KiB random, SSD-served':<22}{'best/s':>9}{'median/s':>10}{'CPU us/read':>13}{'x local':>9}"
          f"{'1 thread/s':>12}{'its CPU us':>12}")
    for row in table:
        cells = [row[k] if row[k] is not None else "-" for k in ("cpu_us_per_read", "one_thread_reads_per_s",
                                                                "one_thread_cpu_us_per_read")]
        print(f"{row['target']:<22}{row['best_reads_per_s']:>9}{row['median_reads_per_s']:>10}{cells[0]:>13}"
              f"{row['vs_local']:>9}{cells[1]:>12}{cells[2]:>12}")
    print(f"load {results['load_start']} -> {results['load_end']}; -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
