"""Cold listing of the synthetic store against the store's own LIST, this tree next to an older one.

    python bench/listing_synthetic.py [--objects 100K,1M] [--before REF] [--rounds 2] [--label NAME]

Each run is a fresh process: one sequential ``store.list()`` of N synthetic keys (the store's own LIST: it
generates every key and info in Python, so it shares the GIL with the listing), then a cold ``Namespace``
(8 walkers) until the whole listing is in its LMDB index (nothing read back). Reported: wall time and CPU
time (user + system, which the load on a shared machine inflates less) of each, and their ratios. With
``--before`` the tree of that git ref runs in the same script, alternating round by round. Writes
bench/results/listing_synthetic[_LABEL].json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from results_file import write_result  # noqa: E402

PROBE = r"""
import json, os, shutil, sys, tempfile, time
from tiercache.namespace import Namespace
from tiercache.store.synthetic import SyntheticStore
from tiercache.tiers.meta import Meta

def cpu():
    t = os.times()
    return t.user + t.system

n = int(sys.argv[1])
store = SyntheticStore(n)
w, c = time.perf_counter(), cpu()
listed = sum(1 for _ in store.list())
out = {"store_wall_s": time.perf_counter() - w, "store_cpu_s": cpu() - c, "store_listed": listed}
work = tempfile.mkdtemp()
meta = Meta(work)
w, c = time.perf_counter(), cpu()
ns = Namespace(store, meta, ttl=float("inf"), threads=8)
ns.exists("big")  # starts the first listing
while ns.stats()["listing"]:  # until the whole listing is in the index
    time.sleep(0.005)
out.update(ns_wall_s=time.perf_counter() - w, ns_cpu_s=cpu() - c, ns_files=ns.stats()["files"],
           list_requests=ns.stats()["list_requests"])
ns.close(); meta.close(); shutil.rmtree(work)
print(json.dumps(out))
"""


def run(tree: str, n: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE, str(n)], capture_output=True, text=True, timeout=1800,
                          cwd=tree, env={**os.environ, "PYTHONPATH": tree})
    if proc.returncode:
        raise SystemExit(f"listing_synthetic: the run in {tree} failed: {proc.stderr.strip()[-400:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_ratio"] = out["ns_wall_s"] / out["store_wall_s"]
    out["cpu_ratio"] = out["ns_cpu_s"] / out["store_cpu_s"]
    return out


def count(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", default="100K,1M")
    parser.add_argument("--before", default="", help="a git ref to run side by side")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--label", default="")
    args = parser.parse_args(argv)
    root = os.path.dirname(HERE)
    trees = {"after": root}
    with tempfile.TemporaryDirectory() as old:
        if args.before:
            archive = subprocess.run(["git", "-C", root, "archive", args.before, "tiercache"], capture_output=True)
            if archive.returncode:
                raise SystemExit(f"listing_synthetic: no such ref {args.before!r}")
            subprocess.run(["tar", "-x", "-C", old], input=archive.stdout, check=True)
            trees = {"before": old, **trees}
        result: dict = {"before": args.before, "rounds": args.rounds, "runs": {}}
        for n in map(count, args.objects.split(",")):
            runs = {name: [] for name in trees}
            for _ in range(args.rounds):
                for name, tree in trees.items():
                    runs[name].append(run(tree, n))
            result["runs"][n] = {name: {"best_wall_ratio": min(r["wall_ratio"] for r in rs),
                                        "best_cpu_ratio": min(r["cpu_ratio"] for r in rs), "runs": rs}
                                 for name, rs in runs.items()}
    write_result("listing_synthetic", result, args.label)
    print("| objects | tree | listing / store LIST, wall (best, all) | CPU (best, all) |\n|---|---|---|---|")
    for n, by_tree in result["runs"].items():
        for name, r in by_tree.items():
            walls = ", ".join(f"{x['wall_ratio']:.2f}" for x in r["runs"])
            cpus = ", ".join(f"{x['cpu_ratio']:.2f}" for x in r["runs"])
            print(f"| {n:,} | {name} | {r['best_wall_ratio']:.2f} ({walls}) | {r['best_cpu_ratio']:.2f} ({cpus}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
