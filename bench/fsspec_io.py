"""fsspec benchmark: the ``tiercache`` protocol vs its baselines, side by side in one script.

* small files, cold: ``fs.cat_file`` through a fresh cache vs raw boto3 GETs (same objects, one thread each);
* small files, warm: ``fs.cat_file`` from the RAM tier vs ``TieredCache.read`` (library mode, no fsspec) vs
  plain local files (hot in the page cache);
* Parquet, warm: ``pyarrow.parquet.read_table`` of a dataset through the protocol vs from local files.

The local S3 server runs in its own process (``fast_ranges``). Best of ``--rounds``, rounds interleaved.

    python bench/fsspec_io.py                  # 400 x 100 KB files, 4 x ~8 MB Parquet parts

Writes bench/results/fsspec.json and prints a table.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fsspec  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from tiercache import fsspec_engine  # noqa: E402
from tiercache.devserver import LocalS3Process  # noqa: E402
from tiercache.fsspec_fs import TiercacheFileSystem  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "fsspec.json"
BUCKET = "bench-fsspec"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=400)
    parser.add_argument("--file-kb", type=int, default=100)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per Parquet part (4 parts)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tc-bench-fsspec-"))
    local = work / "local"
    (local / "small").mkdir(parents=True)
    (local / "pq").mkdir()
    with LocalS3Process(fast_ranges=True) as server:
        s3 = server.client()
        s3.create_bucket(Bucket=BUCKET)
        keys = [f"small/{i:05d}.bin" for i in range(args.files)]
        for i, key in enumerate(keys):
            data = os.urandom(args.file_kb * 1024 - (i % 7))
            s3.put_object(Bucket=BUCKET, Key=key, Body=data)
            (local / key).write_bytes(data)
        for part in range(4):
            table = pa.table({"id": pa.array(range(args.rows), pa.int64()),
                              "value": pa.array([float(i % 1000) for i in range(args.rows)])})
            sink = io.BytesIO()
            pq.write_table(table, sink)
            s3.put_object(Bucket=BUCKET, Key=f"pq/part-{part}.parquet", Body=sink.getvalue())
            (local / "pq" / f"part-{part}.parquet").write_bytes(sink.getvalue())
        parquet_bytes = sum(p.stat().st_size for p in (local / "pq").iterdir())
        small_bytes = sum((local / k).stat().st_size for k in keys)

        def new_fs(name: str) -> TiercacheFileSystem:
            TiercacheFileSystem.clear_instance_cache()
            return fsspec.filesystem("tiercache", target=f"s3://{BUCKET}", endpoint_url=server.endpoint,
                                     ram="1G", ssd=str(work / name), ssd_size="2G", mode="readonly")

        rows: dict[str, dict] = {}
        cold_tc, cold_boto = [], []
        for r in range(args.rounds):
            fs = new_fs(f"cold{r}")
            cold_tc.append(timed(lambda fs=fs: [fs.cat_file(k) for k in keys]))
            fsspec_engine.close_all()
            cold_boto.append(timed(lambda: [s3.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys]))
        rows["small cold (files/s)"] = {"tiercache": args.files / min(cold_tc),
                                        "baseline": args.files / min(cold_boto), "baseline_is": "raw boto3"}

        fs = new_fs("warm")
        for k in keys:
            fs.cat_file(k)
        cache = fs.engine.cache
        warm_fs, warm_lib, warm_local = [], [], []
        for _ in range(args.rounds):
            warm_fs.append(timed(lambda: [fs.cat_file(k) for k in keys]))
            warm_lib.append(timed(lambda: [cache.read(k) for k in keys]))
            warm_local.append(timed(lambda: [(local / k).read_bytes() for k in keys]))
        rows["small warm (files/s)"] = {"tiercache": args.files / min(warm_fs),
                                        "baseline": args.files / min(warm_local), "baseline_is": "local files",
                                        "library_mode": args.files / min(warm_lib)}
        pq.read_table("pq", filesystem=fs)  # warm the dataset
        pq_fs, pq_local = [], []
        for _ in range(args.rounds):
            pq_fs.append(timed(lambda: pq.read_table("pq", filesystem=fs)))
            pq_local.append(timed(lambda: pq.read_table(str(local / "pq"))))
        rows["parquet warm (MB/s)"] = {"tiercache": parquet_bytes / 1e6 / min(pq_fs),
                                       "baseline": parquet_bytes / 1e6 / min(pq_local), "baseline_is": "local files"}
        fsspec_engine.close_all()
    for row in rows.values():
        row["ratio"] = row["tiercache"] / row["baseline"]
    result = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "fsspec": fsspec.__version__, "pyarrow": pa.__version__},
              "data": {"small_files": args.files, "small_bytes": small_bytes, "parquet_bytes": parquet_bytes},
              "rounds": args.rounds, "results": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'measurement':<24}{'tiercache':>12}{'baseline':>12}{'ratio':>8}  baseline")
    for name, row in rows.items():
        extra = f" (library mode {row['library_mode']:,.0f})" if "library_mode" in row else ""
        print(f"{name:<24}{row['tiercache']:>12,.0f}{row['baseline']:>12,.0f}{row['ratio']:>8.2f}  "
              f"{row['baseline_is']}{extra}")
    print(f"wrote {RESULTS}")
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
