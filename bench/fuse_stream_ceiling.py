"""The cold-streaming ceiling of a Python FUSE daemon: the do-nothing filesystem of bench/fuse_ceiling.py, but
each file's bytes come from S3 as the raw boto3 baseline gets them (ranged GETs of --chunk bytes, --ahead of
them in flight ahead of the reader), held in memory only until read. No cache, no checksums, no SSD:
what a cold sequential read through mfusepy can reach on this machine, next to raw boto3.

    python bench/fuse_stream_ceiling.py MANIFEST.json MOUNTPOINT ENDPOINT BUCKET [--chunk 8M] [--ahead 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import fuse_ceiling  # noqa: E402

from tiercache.config import parse_size  # noqa: E402


class StreamingOps(fuse_ceiling.CeilingOps):
    """Reads come from ranged GETs: the chunk holding ``offset`` and the next ``ahead`` ones are in flight
    (or done); chunks behind the reader are dropped."""

    def __init__(self, files: dict[str, int], endpoint: str, bucket: str, chunk: int, ahead: int):
        super().__init__(files)
        import boto3
        from botocore.config import Config

        self.client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                   config=Config(max_pool_connections=ahead + 4))
        self.bucket, self.chunk, self.ahead = bucket, chunk, ahead
        self.pool = ThreadPoolExecutor(ahead)
        self.chunks: dict[tuple[str, int], Future] = {}
        self.lock = threading.Lock()

    def _get(self, path: str, index: int) -> bytes:
        start = index * self.chunk
        end = min(self.files[path], start + self.chunk) - 1
        response = self.client.get_object(Bucket=self.bucket, Key=path.lstrip("/"), Range=f"bytes={start}-{end}")
        return response["Body"].read()

    def _chunk(self, path: str, index: int) -> bytes:
        last = (self.files[path] - 1) // self.chunk
        with self.lock:
            for i in range(index, min(last, index + self.ahead) + 1):
                if (path, i) not in self.chunks:
                    self.chunks[(path, i)] = self.pool.submit(self._get, path, i)
            for key in [k for k in self.chunks if k[0] == path and k[1] < index - 1]:
                del self.chunks[key]
            future = self.chunks[(path, index)]
        return future.result()

    def read(self, path: str, size: int, offset: int, fh: int):
        """``size`` bytes at ``offset``, from the chunks that hold them."""
        end = min(offset + size, self.files.get(path, 0))
        parts = []
        while offset < end:
            index = offset // self.chunk
            data = self._chunk(path, index)
            lo = offset - index * self.chunk
            hi = min(len(data), end - index * self.chunk)
            parts.append(data[lo:hi])
            offset += hi - lo
        return parts[0] if len(parts) == 1 else b"".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest")
    parser.add_argument("mountpoint")
    parser.add_argument("endpoint")
    parser.add_argument("bucket")
    parser.add_argument("--chunk", default="8M")
    parser.add_argument("--ahead", type=int, default=8)
    args = parser.parse_args(argv)
    with open(args.manifest) as fh:
        files = json.load(fh)["files"]
    ops = StreamingOps(files, args.endpoint, args.bucket, parse_size(args.chunk), args.ahead)
    fuse_ceiling.fuse.FUSE(ops, args.mountpoint, **fuse_ceiling.libfuse_options(args.mountpoint))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
