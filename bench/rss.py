"""Daemon memory under concurrent readers: peak RSS of a tiercache mount against its RAM budget.

    python bench/rss.py LABEL [--ram 32M] [--readers 64] [--seconds 15] [--files 32] [--file-size 8M]

A mount with ``--ram RAM`` over the local S3 server (its own process), ``--readers`` threads reading 1 MiB at
random offsets of random files (cold and SSD-served reads mixed) for ``--seconds``. The daemon's RSS is
sampled every 20 ms; the baseline is the same daemon idle right after mounting (its fixed overhead), side by
side with the budget. Writes bench/results/rss_LABEL.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from results_file import write_result  # noqa: E402

from tiercache import mounts  # noqa: E402
from tiercache.config import parse_size  # noqa: E402
from tiercache.devserver import LocalS3Process  # noqa: E402

MiB = 1 << 20
BUCKET = "rssbench"
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def rss(pid: int, field: str = "VmRSS") -> int:
    """Resident bytes of ``pid`` now (``field``: VmRSS, RssAnon, RssFile)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("label")
    parser.add_argument("--ram", default="32M")
    parser.add_argument("--readers", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--files", type=int, default=32)
    parser.add_argument("--file-size", default="8M")
    parser.add_argument("--block-size", default="4M")
    args = parser.parse_args(argv)
    os.environ.update(CREDS)
    size = parse_size(args.file_size)
    work = tempfile.mkdtemp(prefix="tc-rss-")
    mnt, cache = os.path.join(work, "mnt"), os.path.join(work, "cache")
    os.makedirs(mnt)
    server = LocalS3Process(fast_ranges=True).start()
    try:
        client = server.client() if hasattr(server, "client") else None
        if client is None:
            import boto3

            client = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        keys = [f"d/f{i:03d}.bin" for i in range(args.files)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda k: client.put_object(Bucket=BUCKET, Key=k, Body=os.urandom(size)), keys))
        cmd = [sys.executable, "-m", "tiercache.cli", "mount", f"s3://{BUCKET}", mnt, "--ssd", cache,
               "--ssd-size", "2G", "--ram", args.ram, "--block-size", args.block_size, "--mode", "readonly",
               "--metadata-ttl", "inf", "--endpoint-url", server.endpoint]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr.strip())
        try:
            pid = mounts.find_mount(mnt).pid
            os.listdir(os.path.join(mnt, "d"))
            time.sleep(0.5)
            idle = rss(pid)
            peak, peak_anon, stop = [idle], [0], threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    peak[0] = max(peak[0], rss(pid))
                    peak_anon[0] = max(peak_anon[0], rss(pid, "RssAnon"))
                    time.sleep(0.02)

            deadline = time.monotonic() + args.seconds
            reads = [0]

            def reader(seed: int) -> None:
                rng = random.Random(seed)
                while time.monotonic() < deadline:
                    path = os.path.join(mnt, rng.choice(keys))
                    fd = os.open(path, os.O_RDONLY)
                    try:
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                        os.pread(fd, MiB, rng.randrange(0, size - MiB + 1))
                        reads[0] += 1
                    finally:
                        os.close(fd)

            sampler = threading.Thread(target=sample)
            sampler.start()
            with ThreadPoolExecutor(args.readers) as pool:
                list(pool.map(reader, range(args.readers)))
            stop.set()
            sampler.join()
            stats = json.loads(subprocess.run(
                [sys.executable, "-m", "tiercache.cli", "stats", mnt, "--json"], capture_output=True, text=True,
            ).stdout or "{}")
        finally:
            subprocess.run([sys.executable, "-m", "tiercache.cli", "unmount", "--force", mnt],
                           capture_output=True, text=True, timeout=60)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    ram = parse_size(args.ram)
    result = {
        "label": args.label, "ram_budget": ram, "readers": args.readers, "seconds": args.seconds,
        "reads": reads[0], "idle_rss": idle, "peak_rss": peak[0], "peak_rss_anon": peak_anon[0],
        "peak_over_idle": peak[0] - idle,
        "peak_over_budget_plus_idle": peak[0] / (ram + idle), "block_size": args.block_size,
        "ram_used_at_end": (stats.get("cache") or {}).get("ram", {}).get("used"),
        "memory": (stats.get("cache") or {}).get("memory"),
    }
    write_result("rss", result, args.label)
    print(f"{'':28}{'MiB':>10}")
    for name in ("ram_budget", "idle_rss", "peak_rss", "peak_rss_anon", "peak_over_idle"):
        print(f"{name:28}{result[name] / MiB:10.1f}")
    print(f"{'peak / (budget + idle)':28}{result['peak_over_budget_plus_idle']:10.2f}")
    print(f"{'reads (1 MiB)':28}{reads[0]:10d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
