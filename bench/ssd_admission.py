"""SSD admission under pressure, this tree next to an older one: a cold read of one large object with a small
``--ram``, then (RAM emptied) the same read warm; how many blocks the SSD tier did not get and the warm
read had to fetch again.

    python bench/ssd_admission.py LABEL [--before REF] [--size 512M] [--ram 64M] [--runs 3]

Library mode over a local directory store (the fastest backend: the SSD writer's worst case), 1 MiB
reads start to end, default 4 MiB blocks, SSD tier 2 GiB; each run a process of its own on a fresh cache,
the trees alternating run by run. Prints a table (cold and warm MB/s, SSD admissions dropped, warm
refetches) and writes bench/results/ssd_admission_LABEL.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from fs_data import load_average  # noqa: E402
from fs_mounts import code_tree  # noqa: E402
from results_file import write_result  # noqa: E402

CHILD = r"""
import json, sys, time, tiercache
src, cache_dir, size, ram = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
MiB = 1 << 20
with tiercache.open(f"file://{src}", ssd=cache_dir, ssd_size="2G", ram=ram) as cache:
    cache.ssd.validated(30)
    t = time.perf_counter()
    for off in range(0, size, MiB):
        cache.read("big.bin", off, MiB)
    cold = time.perf_counter() - t
    cache.readahead.wait_idle(30)
    cache.ssd.drain()
    gets = cache.stats()["backend"]["gets"]
    dropped = cache.stats()["ssd_admission_dropped"]
    on_ssd = sum(cache.ssd.contains(b) for b in cache.blocks.ids(cache.namespace.info("big.bin")))
    cache.evict("", "ram")
    t = time.perf_counter()
    for off in range(0, size, MiB):
        cache.read("big.bin", off, MiB)
    warm = time.perf_counter() - t
    print(json.dumps({"cold_MBps": size / MiB / cold, "warm_MBps": size / MiB / warm, "dropped": dropped,
                      "blocks": len(cache.blocks.ids(cache.namespace.info("big.bin"))), "on_ssd": on_ssd,
                      "warm_refetches": cache.stats()["backend"]["gets"] - gets}))
"""


def one_run(tree: str, src: str, work: str, size: int, ram: str) -> dict:
    """One cold + warm read in a process of its own, importing tiercache from ``tree``."""
    cache_dir = tempfile.mkdtemp(prefix="cache-", dir=work)
    env = {**os.environ, "PYTHONPATH": tree}
    out = subprocess.run([sys.executable, "-c", CHILD, src, cache_dir, str(size), ram], cwd=tree, env=env,
                         capture_output=True, text=True, timeout=600)
    subprocess.run(["rm", "-rf", cache_dir], check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "child failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    """Run the table (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("label")
    parser.add_argument("--before", default=None, help="git ref of the baseline tree")
    parser.add_argument("--size", default="512M")
    parser.add_argument("--ram", default="64M")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, ROOT)
    from tiercache.config import parse_size

    size = parse_size(args.size)
    results: dict = {"size": size, "ram": args.ram, "runs": args.runs, "load_before": load_average(), "trees": {}}
    with tempfile.TemporaryDirectory(prefix="tc-admission-", dir="/tmp") as work:
        src = os.path.join(work, "src")
        os.makedirs(src)
        with open(os.path.join(src, "big.bin"), "wb") as fh:
            for _ in range(size >> 20):
                fh.write(os.urandom(1 << 20))
        trees = {"after": ROOT}
        if args.before:
            trees = {"before": code_tree(args.before, work), **trees}
        for _ in range(args.runs):
            for name, tree in trees.items():
                results["trees"].setdefault(name, []).append(one_run(tree, src, work, size, args.ram))
    results["load_after"] = load_average()
    path = write_result("ssd_admission", results, args.label)
    print(f"cold read of {args.size} with --ram {args.ram}, then warm; median of {args.runs} runs "
          f"(load {results['load_before'][:1]})")
    print(f"{'tree':<8}{'cold MB/s':>11}{'warm MB/s':>11}{'on SSD':>14}{'warm refetches':>16}   runs (refetches)")
    for name, runs in results["trees"].items():
        med = {k: statistics.median(r[k] for r in runs) for k in ("cold_MBps", "warm_MBps", "on_ssd",
                                                                    "warm_refetches")}
        print(f"{name:<8}{med['cold_MBps']:>11.0f}{med['warm_MBps']:>11.0f}"
              f"{med['on_ssd']:>8.0f} / {runs[0]['blocks']:<4}{med['warm_refetches']:>16.0f}   "
              + " ".join(str(r["warm_refetches"]) for r in runs))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
