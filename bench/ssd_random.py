"""64 KiB random reads served by the SSD tier, side by side with the same reads of a local copy.

    python bench/ssd_random.py LABEL [--size 128M] [--ram 16M] [--threads 8] [--seconds 8]

One file of ``--size`` in the local S3 server (its own process), read once through a mount (and through
library mode) so the SSD tier holds it, RAM smaller than the file. Then ``--threads`` threads read 64 KiB at
random 64 KiB-aligned offsets for ``--seconds``: through the mount with the kernel page cache dropped for the
file before every read (posix_fadvise DONTNEED), through ``TieredCache.read`` (library mode, no FUSE hop),
and from a local copy of the file (page cache dropped the same way). Also the daemon's peak RSS.
Writes bench/results/ssd_random_LABEL.json and prints a table.
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
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from results_file import write_result  # noqa: E402

import tiercache  # noqa: E402
from tiercache import mounts  # noqa: E402
from tiercache.config import parse_size  # noqa: E402
from tiercache.devserver import LocalS3Process  # noqa: E402

KiB, MiB = 1 << 10, 1 << 20
BUCKET = "ssdbench"
KEY = "big.bin"
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def hwm(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def random_reads(read_at, size: int, threads: int, seconds: float) -> dict:
    """``threads`` threads calling ``read_at(offset)`` for 64 KiB at random aligned offsets; reads/s."""
    deadline = time.monotonic() + seconds
    slots = size // (64 * KiB)

    def worker(seed: int) -> int:
        rng, done = random.Random(seed), 0
        while time.monotonic() < deadline:
            read_at(rng.randrange(slots) * 64 * KiB)
            done += 1
        return done

    start = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(worker, range(threads)))
    return {"reads": total, "reads_per_s": total / (time.monotonic() - start)}


def file_reader(path: str):
    fd = os.open(path, os.O_RDONLY)

    def read_at(offset: int) -> None:
        os.posix_fadvise(fd, offset, 64 * KiB, os.POSIX_FADV_DONTNEED)
        if len(os.pread(fd, 64 * KiB, offset)) != 64 * KiB:
            raise RuntimeError("short read")

    return fd, read_at


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("label")
    parser.add_argument("--size", default="128M")
    parser.add_argument("--ram", default="16M")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args(argv)
    os.environ.update(CREDS)
    size = parse_size(args.size)
    work = tempfile.mkdtemp(prefix="tc-ssdrand-")
    local, mnt = os.path.join(work, "local.bin"), os.path.join(work, "mnt")
    os.makedirs(mnt)
    with open(local, "wb") as fh:
        for _ in range(size // MiB):
            fh.write(os.urandom(MiB))
    server = LocalS3Process(fast_ranges=True).start()
    results: dict = {"label": args.label, "size": size, "ram": args.ram, "threads": args.threads}
    try:
        import boto3

        client = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        client.upload_file(local, BUCKET, KEY)
        common = ["--ram", args.ram, "--ssd-size", "2G", "--mode", "readonly", "--metadata-ttl", "inf",
                  "--endpoint-url", server.endpoint]
        cmd = [sys.executable, "-m", "tiercache.cli", "mount", f"s3://{BUCKET}", mnt,
               "--ssd", os.path.join(work, "cache"), *common]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr.strip())
        try:
            pid = mounts.find_mount(mnt).pid
            with open(os.path.join(mnt, KEY), "rb") as fh:  # warm the SSD tier
                while fh.read(8 * MiB):
                    pass
            time.sleep(2)  # let the SSD write queue drain
            fd, read_at = file_reader(os.path.join(mnt, KEY))
            try:
                results["mount"] = random_reads(read_at, size, args.threads, args.seconds)
            finally:
                os.close(fd)
            results["daemon_peak_rss"] = hwm(pid)
            stats = subprocess.run([sys.executable, "-m", "tiercache.cli", "stats", mnt, "--json"],
                                   capture_output=True, text=True).stdout
            results["mount_stats_ssd"] = (json.loads(stats or "{}").get("cache") or {}).get("ssd")
        finally:
            subprocess.run([sys.executable, "-m", "tiercache.cli", "unmount", "--force", mnt],
                           capture_output=True, text=True, timeout=60)
        cache = tiercache.open(f"s3://{BUCKET}", ram=args.ram, ssd=os.path.join(work, "cache"), ssd_size="2G",
                               endpoint_url=server.endpoint, metadata_ttl="inf")
        try:
            results["library"] = random_reads(lambda off: cache.read(KEY, off, 64 * KiB), size, args.threads,
                                              args.seconds)
            results["library_backend_gets"] = cache.stats()["backend"]["gets"]
        finally:
            cache.close()
        fd, read_at = file_reader(local)
        try:
            results["local"] = random_reads(read_at, size, args.threads, args.seconds)
        finally:
            os.close(fd)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    base = results["local"]["reads_per_s"]
    results["ratio_mount_to_local"] = results["mount"]["reads_per_s"] / base
    results["ratio_library_to_local"] = results["library"]["reads_per_s"] / base
    write_result("ssd_random", results, args.label)
    print(f"{'64 KiB random reads, SSD-served':34}{'reads/s':>10}{'vs local':>10}")
    for name in ("mount", "library", "local"):
        rate = results[name]["reads_per_s"]
        print(f"{name:34}{rate:10.0f}{rate / base:10.2f}")
    print(f"{'daemon peak RSS (MiB)':34}{results['daemon_peak_rss'] / MiB:10.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
