"""Scan resistance, this tree next to an older one: 64 small files (the working set, each read twice), then
one large object (4x RAM) read once end to end; how many small files are still wholly in RAM.

    python bench/scan.py LABEL [--before REF] [--runs 3] [--modes free,stall4,stall16] [--burners 0]

Modes: ``free``, the reader and read-ahead as the machine's scheduling has them (the reader outruns
read-ahead only when it happens to); ``stallN``, read-ahead's fetches stalled for N reads and released
for N reads, over and over (the reader outruns read-ahead, then read-ahead catches up and takes budget
back from RAM; tests/test_readahead.py's scenario). Each run is a process of its own on a fresh cache
(8 MiB RAM, 64 KiB blocks, a local directory store), this tree and ``--before`` in turn. ``--burners``
busy processes run meanwhile (a loaded machine). Prints a table and writes bench/results/scan_LABEL.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
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
import json, random, sys, tempfile, threading, pathlib
import tiercache
stall = int(sys.argv[1])
KiB, MiB = 1 << 10, 1 << 20
files = {f"small/{i:02d}": random.Random(i).randbytes(32 * KiB) for i in range(64)}
big = random.Random(99).randbytes(32 * MiB)
with tempfile.TemporaryDirectory(prefix="tc-scan-") as tmp:
    src = pathlib.Path(tmp) / "src"
    for key, data in {**files, "big.bin": big}.items():
        (src / key).parent.mkdir(parents=True, exist_ok=True)
        (src / key).write_bytes(data)
    with tiercache.open(f"file://{src}", ssd=f"{tmp}/cache", ssd_size="0", ram="8M", block_size="64K") as cache:
        running = threading.Event()
        running.set()
        fetch = cache.readahead.fetch
        def stalled(info, block, keep):
            running.wait(60)
            return fetch(info, block, keep)
        cache.readahead.fetch = stalled
        for _ in range(2):
            for key, data in files.items():
                assert cache.read(key) == data
        for n, offset in enumerate(range(0, len(big), 128 * KiB)):
            if stall and n % stall == 0:
                if (n // stall) % 2:
                    running.clear()
                else:
                    running.set()
                    cache.readahead.wait_idle(30)
            assert cache.read("big.bin", offset, 128 * KiB) == big[offset:offset + 128 * KiB]
        running.set()
        cache.readahead.wait_idle(30)
        kept = sum(cache.resident(k, "ram") == len(v) for k, v in files.items())
        print(json.dumps({"kept": kept, "evictions": cache.stats()["ram"]["evictions"]}))
"""


def one_run(tree: str, stall: int) -> dict:
    """One scenario in a process of its own, importing tiercache from ``tree``."""
    env = {**os.environ, "PYTHONPATH": tree}
    out = subprocess.run([sys.executable, "-c", CHILD, str(stall)], cwd=tree, env=env, capture_output=True,
                         text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "child failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _burn() -> None:
    while True:
        pass


def main() -> int:
    """Run the table (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("label")
    parser.add_argument("--before", default=None, help="git ref of the baseline tree")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--modes", default="free,stall4,stall16")
    parser.add_argument("--burners", type=int, default=0)
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m != "free" and not (m.startswith("stall") and m[5:].isdigit())]
    if bad:
        print(f"scan.py: unknown mode {bad[0]!r} (free or stallN)", file=sys.stderr)
        return 2
    burners = [multiprocessing.Process(target=_burn, daemon=True) for _ in range(args.burners)]
    for proc in burners:
        proc.start()
    results: dict = {"runs": args.runs, "burners": args.burners, "load_before": load_average(), "trees": {}}
    try:
        with tempfile.TemporaryDirectory(prefix="tc-scan-trees-") as work:
            trees = {"after": ROOT}
            if args.before:
                trees = {"before": code_tree(args.before, work), **trees}
            for name, tree in trees.items():
                for mode in modes:
                    stall = 0 if mode == "free" else int(mode[5:])
                    runs = [one_run(tree, stall) for _ in range(args.runs)]
                    results["trees"].setdefault(name, {})[mode] = runs
    finally:
        for proc in burners:
            proc.terminate()
    results["load_after"] = load_average()
    path = write_result("scan", results, args.label)
    print(f"small files kept in RAM of 64, {args.runs} runs each (load {results['load_before'][:1]}, "
          f"{args.burners} burners)")
    print(f"{'mode':<10}" + "".join(f"{name:>24}" for name in results["trees"]))
    for mode in modes:
        cells = [" ".join(str(r["kept"]) for r in runs[mode]) for runs in results["trees"].values()]
        print(f"{mode:<10}" + "".join(f"{c:>24}" for c in cells))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
