"""The SSD tier alone at N cached blocks (issue 12): bulk fill, then a restart in a fresh process.

    python bench/scale_ssd.py --objects 10M [--size 1K] [--label 10m]

For N too large to warm through the library within a session, this measures the SSD tier's own part of a
restart: ``fill`` (one process) puts N blocks of ~``size`` bytes (keys shaped like the synthetic store's)
with ``SsdTier.put_many`` and closes; ``restart`` (a fresh process) opens the tier, serves one block (its
open time, first-read time and the LMDB entries read before it), waits for the background validation and
reports RSS and the tier's state bytes per block. Writes bench/results/scale_ssd[_LABEL].json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from results_file import write_result  # noqa: E402
from scale import count, rss  # noqa: E402

from tiercache.config import parse_size  # noqa: E402

ETAG = "0123456789abcdef0123456789abcdef"


def key(i: int) -> str:
    """The i-th block's object key."""
    return f"train/class_{i % 1000:04d}/img_{i:08d}.jpg"


def payload(i: int, size: int) -> bytes:
    """Block i's bytes (size varies ±25 % by index)."""
    n = size * 3 // 4 + (i * 7919) % (size // 2 + 1)
    return (i.to_bytes(8, "little") * (n // 8 + 1))[:n]


def fill(cache: str, n: int, size: int) -> dict:
    from tiercache.tiers.base import BlockId
    from tiercache.tiers.meta import Meta
    from tiercache.tiers.ssd import SsdTier

    meta = Meta(os.path.join(cache, "meta"), disposable=True)
    tier = SsdTier(os.path.join(cache, "regions"), int(n * size * 1.6) + (1 << 30), meta)
    t0 = time.perf_counter()
    admitted = 0
    for start in range(0, n, 4096):
        admitted += tier.put_many([(BlockId(key(i), ETAG, 0), payload(i, size))
                                   for i in range(start, min(n, start + 4096))])
        if start % (1 << 20) == 0:
            tier.flush()
            print(f"[scale_ssd] filled {start:,}", file=sys.stderr, flush=True)
    tier.flush()
    fill_s = time.perf_counter() - t0
    stats = tier.stats()
    tier.close()
    meta.close()
    return {"admitted": admitted, "fill_s": fill_s, "blocks_per_s": admitted / fill_s, "regions": stats["regions"],
            "state_bytes_per_block": stats["state_bytes"] / max(1, stats["blocks"]),
            "rss_after_fill": rss(), "rss_anon_after_fill": rss(field="RssAnon")}


def restart(cache: str, n: int, size: int) -> dict:
    import tiercache.tiers.ssd  # noqa: F401 - imports are not restart work
    from tiercache.tiers.base import BlockId
    from tiercache.tiers.meta import Meta
    from tiercache.tiers.ssd import SsdTier

    base_anon = rss(field="RssAnon")
    t0 = time.perf_counter()
    meta = Meta(os.path.join(cache, "meta"), disposable=True)
    tier = SsdTier(os.path.join(cache, "regions"), int(n * size * 1.6) + (1 << 30), meta)
    opened = time.perf_counter()
    i = n // 2
    data = tier.get(BlockId(key(i), ETAG, 0))
    read = time.perf_counter()
    reads = {db: meta.reads[db] for db in ("ssd_index", "regions")}
    validated = tier.validated(3000)
    done = time.perf_counter()
    stats = tier.stats()
    out = {"open_s": opened - t0, "first_read_s": read - opened, "open_plus_first_read_s": read - t0,
           "first_read_ok": data == payload(i, size), "index_reads_to_first_read": reads,
           "background_validation_s": done - t0, "validated": validated, "blocks": stats["blocks"],
           "state_bytes_per_block": stats["state_bytes"] / max(1, stats["blocks"]),
           "rss_anon_growth_per_block": (rss(field="RssAnon") - base_anon) / max(1, stats["blocks"]),
           "rss_after_validation": rss(), "rss_anon_after_validation": rss(field="RssAnon"),
           "peak_rss": rss(field="VmHWM")}
    tier.close()
    meta.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=count, default=count("1M"))
    parser.add_argument("--size", default="1K")
    parser.add_argument("--label", default="")
    parser.add_argument("--work", default=None)
    parser.add_argument("--timeout", type=float, default=3000.0)
    parser.add_argument("--step", choices=("fill", "restart"), help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    size = parse_size(args.size, "size")
    if args.step:
        print(json.dumps((fill if args.step == "fill" else restart)(args.cache, args.objects, size)))
        return 0
    work = tempfile.mkdtemp(prefix="tc-scale-ssd-", dir=args.work)
    result: dict = {"objects": args.objects, "size": size}
    try:
        for step in ("fill", "restart"):
            print(f"[scale_ssd] N={args.objects:,} {step} ...", file=sys.stderr, flush=True)
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--step", step, "--objects",
                                   str(args.objects), "--size", str(size), "--cache", work],
                                  stdout=subprocess.PIPE, text=True, timeout=args.timeout)
            lines = proc.stdout.strip().splitlines()
            result[step] = json.loads(lines[-1]) if proc.returncode == 0 and lines else {"error": proc.returncode}
            print(f"[scale_ssd]   {result[step]}", file=sys.stderr, flush=True)
            if "error" in result[step]:
                break
        result["cache_dir_files"] = sum(len(f) for _, _, f in os.walk(work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_result("scale_ssd", result, args.label)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
