"""bench/scale.py's warm measures: the backend's own GET rate beside ``warm``, warm against raw boto3 on a real
S3 server, and the SSD tier seeded directly (for N too large to warm within the session).

* ``raw_store_rate``: files/s of the store's own ``get_range`` over the same keys with the same threads (for
  the synthetic store: the ceiling the warm could reach).
* ``boto_phase``: a local S3 server in its own process (``devserver.LocalS3Process``, moto), M small objects
  uploaded, then raw boto3 ``get_object`` of all M with T threads, then ``warm`` of all M through the library
  with T threads on a fresh cache dir: files/s of both and their ratio, the warm's peak RSS.
* ``seed_ssd``: every object's one block put straight into the SSD tier (``SsdTier.put``), no fetch path:
  what a warm leaves behind, written faster; the run says when it was used instead of a warm.
"""

from __future__ import annotations

import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

BUCKET = "scale"


def raw_store_rate(store, keys: list[str], threads: int) -> float:
    """Files/s of ``store.get_range`` over ``keys`` with ``threads`` threads (whole objects)."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(lambda k: store.get_range(k, 0, 1 << 30), keys, chunksize=64):
            pass
    return len(keys) / max(1e-9, time.perf_counter() - t0)


def _peak_rss_during(fn) -> tuple[float, int]:
    """(seconds, the process's VmHWM after) of ``fn()``, the peak reset first where the kernel allows."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM
    except OSError:
        pass
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    with open("/proc/self/status") as fh:
        peak = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
    return seconds, peak


def boto_phase(objects: int, size: int, threads: int) -> dict:
    """Warm of ``objects`` small objects through the library vs raw boto3, same threads (see above)."""
    import boto3
    from botocore.config import Config

    import tiercache
    from tiercache.devserver import LocalS3Process

    with LocalS3Process(fast_ranges=True) as server:
        client = boto3.client("s3", endpoint_url=server.endpoint,
                              config=Config(max_pool_connections=threads + 4))
        client.create_bucket(Bucket=BUCKET)
        keys = [f"train/c{i % 100:03d}/img_{i:07d}.bin" for i in range(objects)]
        body = os.urandom(size)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda k: client.put_object(Bucket=BUCKET, Key=k, Body=body), keys, chunksize=64))
        upload_s = time.perf_counter() - t0

        def raw() -> None:
            with ThreadPoolExecutor(threads) as pool:
                for _ in pool.map(lambda k: client.get_object(Bucket=BUCKET, Key=k)["Body"].read(), keys,
                                  chunksize=64):
                    pass

        raw_s, _ = _peak_rss_during(raw)
        with tempfile.TemporaryDirectory(prefix="tc-scale-boto-") as cache_dir:
            cache = tiercache.open(f"s3://{BUCKET}", ram="64M", ssd=cache_dir, ssd_size="2G", threads=threads,
                                   endpoint_url=server.endpoint, metadata_ttl="inf", mode="readonly")
            try:
                cache.listdir("")
                report: dict = {}
                warm_s, peak = _peak_rss_during(lambda: report.update(cache.warm("", tier="ssd")))
            finally:
                cache.close()
    return {"objects": objects, "size": size, "threads": threads, "upload_s": upload_s,
            "raw_boto3_files_per_s": objects / raw_s, "warm_files_per_s": objects / warm_s,
            "warm_over_raw_boto3": raw_s / warm_s, "warm_complete": report.get("complete"),
            "warm_peak_rss": peak, "server": "LocalS3Process (moto, its own process, fast_ranges)"}


def seed_ssd(cache, store) -> dict:
    """Put every object of ``store`` (one block each) straight into ``cache``'s SSD tier."""
    from tiercache.tiers.base import BlockId

    t0 = time.perf_counter()
    count = 0
    for info in store.list():
        data = store.get_range(info.key, 0, info.size)
        if cache.ssd.put(BlockId(info.key, info.etag, 0), data):
            count += 1
    cache.ssd.flush()
    return {"seeded": count, "seed_s": time.perf_counter() - t0}
