"""Large sequential reads, cold and warm, side by side with raw boto3, a local copy and (optionally) s3fs.

    python bench/stream.py LABEL [--size 256M] [--ram 1G] [--latency 0.02] [--s3fs] [--profile DIR]

One file of ``--size`` in the local S3 server (its own process, ranged GETs cost the range). Phases, each
run for 0 ms and ``--latency`` seconds before the first byte of every response (real S3 is remote):

- ``cold``: a fresh cache reads the file end to end in 1 MiB reads: through a mount (fresh daemon, empty
  cache) and in library mode (``TieredCache.read``, no FUSE hop); the baseline is raw boto3 with 16 threads
  of parallel 8 MiB ranged GETs, run just before.
- ``warm`` (0 ms only): the same mount (or cache) reads the file again with the kernel page cache dropped
  (posix_fadvise DONTNEED) and RAM smaller than the file (``--ram``), so the SSD tier serves it; the
  baselines are a local copy with its page cache dropped and, with ``--s3fs``, s3fs ``use_cache`` warm.

``--profile DIR``: py-spy (when installed) samples each mount daemon during its phases into DIR (speedscope
JSON, every thread, GIL holders marked), to see where the daemon's time goes.
Writes bench/results/stream_LABEL.json and prints a table.
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
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from results_file import write_result  # noqa: E402

import tiercache  # noqa: E402
from tiercache.config import parse_size  # noqa: E402
from tiercache.devserver import LocalS3Process  # noqa: E402

MiB = 1 << 20
BUCKET = "streambench"
KEY = "big.bin"
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def drop(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed(read_all, *args) -> dict:
    start = time.perf_counter()
    total = read_all(*args)
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 3), "bytes": total, "mb_per_s": round(total / seconds / 1e6, 1)}


def read_file(path: str, chunk: int = MiB) -> int:
    total = 0
    with open(path, "rb", buffering=0) as fh:
        buf = bytearray(chunk)
        while n := fh.readinto(buf):
            total += n
    return total


def read_library(cache, size: int, chunk: int = MiB) -> int:
    total = 0
    for offset in range(0, size, chunk):
        total += len(cache.read(KEY, offset, chunk))
    return total


def boto3_parallel(client, size: int, threads: int = 16, part: int = 8 * MiB) -> int:
    def get(start: int) -> int:
        end = min(size, start + part) - 1
        return len(client.get_object(Bucket=BUCKET, Key=KEY, Range=f"bytes={start}-{end}")["Body"].read())

    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(get, range(0, size, part)))


def cli(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "tiercache.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)
    if check and proc.returncode != 0:
        raise SystemExit(proc.stderr.strip())
    return proc


class Mount:
    """A tiercache mount (readonly, immutable) on a fresh cache dir."""

    def __init__(self, work: str, endpoint: str, ram: str, name: str, profile: str | None):
        self.path = os.path.join(work, f"mnt-{name}")
        cache = os.path.join(work, f"cache-{name}")
        shutil.rmtree(cache, ignore_errors=True)
        os.makedirs(self.path, exist_ok=True)
        cli("mount", f"s3://{BUCKET}", self.path, "--ssd", cache, "--ssd-size", "2G", "--ram", ram,
            "--mode", "readonly", "--metadata-ttl", "inf", "--endpoint-url", endpoint)
        self.spy = None
        if profile and shutil.which("py-spy"):
            from tiercache import mounts

            os.makedirs(profile, exist_ok=True)
            self.spy = subprocess.Popen(
                ["py-spy", "record", "-p", str(mounts.find_mount(self.path).pid), "-r", "200", "-t", "-f",
                 "raw", "-o", os.path.join(profile, f"daemon-{name}.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stats(self) -> dict:
        proc = cli("stats", self.path, "--json", check=False)
        return (json.loads(proc.stdout or "{}").get("cache") or {}) if proc.returncode == 0 else {}

    def close(self) -> None:
        if self.spy is not None:
            self.spy.send_signal(2)
            self.spy.wait(30)
        cli("unmount", "--force", self.path, check=False)


def s3fs_warm(work: str, endpoint: str) -> dict | None:
    """s3fs use_cache: read once (cold), drop its page cache, read again (from its cache dir)."""
    if shutil.which("s3fs") is None:
        return None
    mnt, cache = os.path.join(work, "mnt-s3fs"), os.path.join(work, "s3fs-cache")
    os.makedirs(mnt, exist_ok=True)
    os.makedirs(cache, exist_ok=True)
    passwd = os.path.join(work, "s3fs-passwd")
    with open(passwd, "w") as fh:
        fh.write("testing:testing\n")
    os.chmod(passwd, 0o600)
    proc = subprocess.Popen(["s3fs", BUCKET, mnt, "-f", "-o", f"url={endpoint}", "-o", "use_path_request_style",
                             "-o", f"passwd_file={passwd}", "-o", f"use_cache={cache}", "-o", "ro",
                             "-o", "endpoint=us-east-1", "-o", "parallel_count=16"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt) and time.monotonic() < deadline:
            time.sleep(0.1)
        path = os.path.join(mnt, KEY)
        cold = timed(read_file, path)
        drop(path)
        warm = timed(read_file, path)
        return {"cold": cold, "warm": warm}
    finally:
        subprocess.run(["fusermount3", "-u", mnt], capture_output=True)
        proc.wait(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("label")
    parser.add_argument("--size", default="256M")
    parser.add_argument("--ram", default="1G", help="RAM tier for the cold phases (default 1G)")
    parser.add_argument("--warm-ram", default="64M", help="RAM tier for the warm phases (default 64M)")
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--s3fs", action="store_true", help="s3fs use_cache warm beside")
    parser.add_argument("--skip-mount", action="store_true")
    parser.add_argument("--skip-library", action="store_true")
    parser.add_argument("--profile", help="cProfile the mount daemons into this directory")
    args = parser.parse_args(argv)
    os.environ.update(CREDS)
    size = parse_size(args.size)
    work = tempfile.mkdtemp(prefix="tc-stream-")
    local = os.path.join(work, "local.bin")
    with open(local, "wb") as fh:
        for _ in range(size // MiB):
            fh.write(os.urandom(MiB))
    server = LocalS3Process(fast_ranges=True).start()
    results: dict = {"label": args.label, "size": size, "ram": args.ram, "warm_ram": args.warm_ram,
                     "load_start": os.getloadavg()}
    try:
        import boto3
        from botocore.config import Config

        client = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                              config=Config(max_pool_connections=20))
        client.create_bucket(Bucket=BUCKET)
        client.upload_file(local, BUCKET, KEY)
        drop(local)
        results["local_warm"] = timed(read_file, local)
        for latency in (0.0, args.latency):
            tag = f"{latency * 1000:.0f}ms"
            server.set_latency(latency)
            results[f"boto3_cold_{tag}"] = timed(boto3_parallel, client, size)
            if not args.skip_mount:
                mount = Mount(work, server.endpoint, args.ram if latency else args.warm_ram, tag, args.profile)
                try:
                    path = os.path.join(mount.path, KEY)
                    results[f"mount_cold_{tag}"] = timed(read_file, path)
                    if not latency:
                        time.sleep(1)  # the SSD write queue drains
                        drop(path)
                        results["mount_warm"] = timed(read_file, path)
                    results[f"mount_stats_{tag}"] = {k: mount.stats().get(k) for k in ("ssd", "memory", "backend")}
                finally:
                    mount.close()
            if not args.skip_library:
                ram = args.ram if latency else args.warm_ram
                with tiercache.open(f"s3://{BUCKET}", ram=ram, ssd=os.path.join(work, f"lib-{tag}"), ssd_size="2G",
                                    endpoint_url=server.endpoint, metadata_ttl="inf") as cache:
                    results[f"library_cold_{tag}"] = timed(read_library, cache, size)
                    if not latency:
                        cache.ssd.drain()
                        results["library_warm"] = timed(read_library, cache, size)
                    results[f"library_stats_{tag}"] = {k: cache.stats().get(k) for k in ("ssd", "memory")}
        server.set_latency(0.0)
        if args.s3fs:
            results["s3fs"] = s3fs_warm(work, server.endpoint)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    results["load_end"] = os.getloadavg()
    rows = []
    for tag in ("0ms", f"{args.latency * 1000:.0f}ms"):
        base = results[f"boto3_cold_{tag}"]["mb_per_s"]
        for target in ("mount", "library"):
            got = results.get(f"{target}_cold_{tag}")
            if got:
                rows.append((f"cold {tag} {target}", got["mb_per_s"], f"boto3 {base}", got["mb_per_s"] / base))
    base = results["local_warm"]["mb_per_s"]
    s3fs = (results.get("s3fs") or {}).get("warm", {}).get("mb_per_s")
    for target in ("mount", "library"):
        got = results.get(f"{target}_warm")
        if got:
            ref = f"local {base}" + (f", s3fs {s3fs}" if s3fs else "")
            rows.append((f"warm {target}", got["mb_per_s"], ref, got["mb_per_s"] / (s3fs or base)))
    results["table"] = [{"phase": p, "mb_per_s": v, "reference": r, "ratio": round(x, 2)} for p, v, r, x in rows]
    out = write_result("stream", results, args.label)
    print(f"{'phase':<24}{'MB/s':>10}  {'reference (MB/s)':<28}{'ratio':>6}")
    for p, v, r, x in rows:
        print(f"{p:<24}{v:>10.1f}  {r:<28}{x:>6.2f}")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
