"""bench/fs.py's data set, its upload to the local S3 server, the server check, and what the host is."""

from __future__ import annotations

import os
import platform
import random
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

MiB = 1 << 20
BUCKET = "fsbench"
LARGE_KEY = "shards/big.bin"
RANDOM_KEY = "shards/rand.bin"  # read only by the cold random phases (the large file's cold read stays cold)


def s3_client(endpoint: str, threads: int):
    """A boto3 client with a connection per thread."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        config=Config(max_pool_connections=threads + 4))


def big_file(path: str, size: int, rng: random.Random) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        chunk = rng.randbytes(8 * MiB)
        for offset in range(0, size, len(chunk)):
            fh.write(chunk[: min(len(chunk), size - offset)])


def make_data(local: str, files: int, file_size: int, large: int, random_size: int) -> tuple[list[str], str, str]:
    """Small files in 10 directories, one large file and one file for cold random reads under ``local``;
    returns (small keys, large key, random key)."""
    rng = random.Random(42)
    keys = [f"train/c{i % 10}/img_{i:06d}.bin" for i in range(files)]
    for key in keys:
        path = os.path.join(local, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(rng.randbytes(rng.randint(file_size // 2, file_size * 3 // 2)))
    big_file(os.path.join(local, LARGE_KEY), large, rng)
    big_file(os.path.join(local, RANDOM_KEY), random_size, rng)
    return keys, LARGE_KEY, RANDOM_KEY


def upload(endpoint: str, local: str, small: list[str], big: list[str]) -> None:
    """Create the bucket; small files in parallel, the big ones in 64 MiB parts."""
    from boto3.s3.transfer import TransferConfig

    client = s3_client(endpoint, 16)
    client.create_bucket(Bucket=BUCKET)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: client.upload_file(os.path.join(local, k), BUCKET, k), small))
    for key in big:
        client.upload_file(os.path.join(local, key), BUCKET, key,
                           Config=TransferConfig(multipart_chunksize=64 * MiB, max_concurrency=8))


def check_server(endpoint: str, big: str, size: int) -> dict:
    """Does a ranged GET cost what the range costs? Times one full GET of the large object and 64 KiB ranges of
    it (stock moto copies the whole object per GET: then a range costs about as much as the whole)."""
    client = s3_client(endpoint, 1)
    start = time.perf_counter()
    client.get_object(Bucket=BUCKET, Key=big)["Body"].read()
    full = time.perf_counter() - start
    rng = random.Random(7)
    times = []
    for _ in range(20):
        offset = rng.randrange(0, size - (64 << 10))
        start = time.perf_counter()
        client.get_object(Bucket=BUCKET, Key=big, Range=f"bytes={offset}-{offset + (64 << 10) - 1}")["Body"].read()
        times.append(time.perf_counter() - start)
    ranged = sorted(times)[len(times) // 2]
    verdict = ranged < full / 4 if size >= 64 * MiB else None
    return {"object_bytes": size, "full_get_ms": round(full * 1e3, 1), "range_64k_median_ms": round(ranged * 1e3, 2),
            "range_costs_the_range": verdict}


def tool_versions() -> dict:
    """Versions of the mounts and tools compared (what is installed)."""
    out = {}
    for tool, flag in (("s3fs", "--version"), ("rclone", "version"), ("fio", "--version")):
        if shutil.which(tool):
            proc = subprocess.run([tool, flag], capture_output=True, text=True)
            text = (proc.stdout or proc.stderr).strip()
            out[tool] = text.splitlines()[0] if text else "?"
    from importlib import metadata

    for package in ("mfusepy", "moto", "boto3"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return out


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def host() -> dict:
    """The machine, for the JSON."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release(),
            "tools": tool_versions()}
