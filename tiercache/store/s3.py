"""S3 (and S3-compatible) object store on boto3.

Retries: botocore's own retry modes handle throttling, 5xx and connection errors on the request;
``tenacity`` additionally retries a ranged GET whose *body* breaks off mid-stream (connection reset,
read timeout), which botocore does not. Large uploads go through boto3's transfer manager (parallel
multipart above ``multipart_threshold``).
"""

from __future__ import annotations

import http.client
import logging
import mmap
import time
from collections.abc import Callable, Iterator

import boto3
import botocore.exceptions as bexc
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_random_exponential
from urllib3.exceptions import ProtocolError, ReadTimeoutError

from ..errors import AccessDenied, BucketNotFound, ConfigError, EndpointUnreachable, NotFound, StoreError
from ..link import Link
from .base import Attrs, ObjectInfo, attrs_from_metadata

log = logging.getLogger(__name__)

_BODY_ERRORS = (
    bexc.IncompleteReadError,
    bexc.ReadTimeoutError,
    bexc.ResponseStreamingError,
    bexc.ConnectionClosedError,
    ProtocolError,
    ReadTimeoutError,
    ConnectionError,
)
Buffers = Callable[[int], "mmap.mmap | None"]  # a writable buffer for a body part of n bytes, or None
_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}
_DENIED_CODES = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"}


def pool_connections(threads: int) -> int:
    """botocore's connection pool for a cache of ``threads`` threads (see ``S3Store.__init__``)."""
    return 3 * threads + 8


class _BodyBroken(Exception):
    """A GET whose response body broke off; retried by tenacity."""


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → ("bucket", "some/prefix/") (prefix empty or ending in "/")."""
    rest = url[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ConfigError(f"{url!r}: expected s3://BUCKET[/PREFIX]")
    prefix = prefix.strip("/")
    return bucket, (prefix + "/") if prefix else ""


class S3Store:
    """Objects under ``s3://bucket/prefix``; keys given to and returned by methods are relative to the prefix."""

    def __init__(
        self,
        url: str,
        endpoint_url: str | None = None,
        threads: int = 16,
        multipart_threshold: int = 64 << 20,
        multipart_chunksize: int = 16 << 20,
        max_attempts: int = 6,
    ):
        self.url = url
        self.bucket, self.prefix = parse_s3_url(url)
        self.endpoint_url = endpoint_url
        config = Config(
            # one connection per thread that may GET at once: the cache's fetch pool (threads), read-ahead
            # (at most threads), its two prefetch pools (threads/2 each), plus the uploader, listings and
            # metadata calls (8). A smaller pool lets a worker open a connection, use it once and discard it
            # (a reconnect per GET, mid-stream); more would never be used
            max_pool_connections=pool_connections(threads),
            retries={"mode": "adaptive", "max_attempts": max_attempts},
            connect_timeout=5,
            read_timeout=60,
            tcp_keepalive=True,
        )
        self.page_size = 1000
        self.link = Link()  # time to first byte and per-connection rate of ranged GETs (read-ahead's BDP)
        self.run_bytes = 8 << 20  # read-ahead's GETs of consecutive blocks (get_range_parts), as boto3's parts
        self._session = boto3.session.Session()
        self.client = self._session.client("s3", endpoint_url=endpoint_url, config=config)
        self.transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            max_concurrency=max(2, min(threads, 16)),
            use_threads=True,
        )

    def _full(self, key: str) -> str:
        return self.prefix + key

    def _translate(self, exc: Exception, what: str) -> Exception:
        """Map a botocore failure to one clear tiercache error."""
        where = f"s3://{self.bucket}/{self.prefix}"
        if isinstance(exc, bexc.NoCredentialsError | bexc.PartialCredentialsError):
            return AccessDenied(f"{where}: no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_PROFILE)")
        if isinstance(exc, bexc.EndpointConnectionError | bexc.ConnectTimeoutError):
            return EndpointUnreachable(f"{where}: cannot reach endpoint {self.endpoint_url or 'AWS'} ({exc})")
        if isinstance(exc, bexc.ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "NoSuchBucket":
                return BucketNotFound(f"bucket {self.bucket!r} does not exist")
            if code in _NOT_FOUND_CODES:
                return NotFound(f"{what}: not found")
            if code in _DENIED_CODES:
                return AccessDenied(f"{where}: access denied ({code}); check credentials and permissions")
            if code in ("412", "PreconditionFailed"):
                return NotFound(f"{what}: object changed")
            return StoreError(f"{what}: S3 error {code}: {exc}")
        return StoreError(f"{what}: {exc}")

    def check(self) -> None:
        """Fail fast with a clear error for a missing bucket, bad credentials or an unreachable endpoint."""
        probe = self._session.client(
            "s3",
            endpoint_url=self.endpoint_url,
            config=Config(retries={"mode": "standard", "max_attempts": 2}, connect_timeout=3, read_timeout=10),
        )
        try:
            probe.head_bucket(Bucket=self.bucket)
        except bexc.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise BucketNotFound(f"bucket {self.bucket!r} does not exist") from None
            raise self._translate(exc, f"s3://{self.bucket}") from None
        except Exception as exc:  # noqa: BLE001 - every failure becomes one clear line
            raise self._translate(exc, f"s3://{self.bucket}") from None

    def _pages(self, prefix: str, **extra) -> Iterator[dict]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            yield from paginator.paginate(Bucket=self.bucket, Prefix=self._full(prefix),
                                          PaginationConfig={"PageSize": self.page_size}, **extra)
        except (bexc.ClientError, bexc.BotoCoreError) as exc:
            raise self._translate(exc, f"list {self.url}") from None

    def _infos(self, page: dict) -> Iterator[ObjectInfo]:
        skip = len(self.prefix)
        for item in page.get("Contents", ()):
            yield ObjectInfo(key=item["Key"][skip:], size=int(item["Size"]), etag=item["ETag"].strip('"'),
                             mtime=item["LastModified"].timestamp())

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Paginated listing of every object under the store prefix + ``prefix``, streamed page by page."""
        for page in self._pages(prefix):
            yield from self._infos(page)

    def list_after(self, prefix: str, start_after: str) -> Iterator[ObjectInfo]:
        """As ``list``, from the first key after ``start_after`` (S3's StartAfter), for parallel walks."""
        extra = {"StartAfter": self._full(start_after)} if start_after else {}
        for page in self._pages(prefix, **extra):
            yield from self._infos(page)

    def list_level(self, prefix: str, start_after: str = "") -> Iterator[ObjectInfo | str]:
        """One level by delimiter "/": the objects directly under ``prefix``, then its subprefixes (str,
        relative, ending in "/"), page by page (those after ``start_after``: a level resumed)."""
        skip = len(self.prefix)
        extra = {"StartAfter": self._full(start_after)} if start_after else {}
        for page in self._pages(prefix, Delimiter="/", **extra):
            yield from self._infos(page)
            for common in page.get("CommonPrefixes", ()):
                yield common["Prefix"][skip:]

    def head(self, key: str) -> ObjectInfo:
        """HEAD one object."""
        try:
            resp = self.client.head_object(Bucket=self.bucket, Key=self._full(key))
        except (bexc.ClientError, bexc.BotoCoreError) as exc:
            raise self._translate(exc, key) from None
        return ObjectInfo(
            key=key, size=int(resp["ContentLength"]), etag=resp["ETag"].strip('"'),
            mtime=resp["LastModified"].timestamp(),
        ).with_metadata(resp.get("Metadata"))

    def get_range(self, key: str, start: int, end: int, etag: str | None = None,
                  buffer: Buffers | None = None) -> bytes | memoryview:
        """Ranged GET of [start, end); the body is retried if it breaks off mid-stream. ``buffer`` as for
        ``get_range_parts`` (the bytes then come as a read-only view of the buffer)."""
        if end <= start:
            return b""
        try:
            return self._get_range(key, start, end, etag, buffer)
        except _BodyBroken as exc:
            raise StoreError(f"{key}: connection kept breaking while reading ({exc.__cause__})") from None
        except (bexc.ClientError, bexc.BotoCoreError) as exc:
            raise self._translate(exc, key) from None

    @retry(
        retry=retry_if_exception_type(_BodyBroken),
        stop=stop_after_attempt(5),
        wait=wait_random_exponential(multiplier=0.05, max=2.0),
        reraise=True,
    )
    def _get_range(self, key: str, start: int, end: int, etag: str | None,
                   buffer: Buffers | None) -> bytes | memoryview:
        kwargs = {"Bucket": self.bucket, "Key": self._full(key), "Range": f"bytes={start}-{end - 1}"}
        if etag:
            kwargs["IfMatch"] = f'"{etag}"'
        sent = time.perf_counter()
        resp = self.client.get_object(**kwargs)
        headers = time.perf_counter()
        body = resp["Body"]
        raw, fp = _readinto_source(body) if buffer is not None else (None, None)
        try:
            slab = buffer(end - start) if fp is not None else None
            if slab is None:
                data = body.read()
            else:
                data = _read_into(fp, memoryview(slab)[:end - start])
                raw.release_conn()  # read to its end past urllib3: its connection back to the pool
        except (*_BODY_ERRORS, OSError, http.client.HTTPException) as exc:
            log.warning("GET %s [%d,%d) broke off: %s; retrying", key, start, end, exc)
            raise _BodyBroken(str(exc)) from exc
        if len(data) != end - start and start + len(data) < end:
            # Short body: either the object is shorter than asked (fine at EOF) or the stream was cut.
            total = resp.get("ContentRange", "").rpartition("/")[2]
            if not total.isdigit() or start + len(data) < min(end, int(total)):
                raise _BodyBroken(f"short read: {len(data)} of {end - start} bytes")
        self.link.observe(headers - sent, time.perf_counter() - headers, len(data))
        return data

    def get_range_parts(self, key: str, start: int, parts: list[int], etag: str | None = None,
                        buffer: Buffers | None = None) -> Iterator[bytes | memoryview]:
        """One ranged GET of consecutive parts of the given lengths from ``start``, each part's bytes
        yielded as they arrive (read straight off the body: no join, no copy). ``buffer(n)``: a writable
        buffer (or None) for a part of n bytes, read into and yielded as a read-only view of it (no new
        bytes object; tiercache/bufpool.py). A body that breaks off is resumed for the parts left with
        ``get_range`` (its own retries); short at EOF like ``get_range``."""
        end = start + sum(parts)
        kwargs = {"Bucket": self.bucket, "Key": self._full(key), "Range": f"bytes={start}-{end - 1}"}
        if etag:
            kwargs["IfMatch"] = f'"{etag}"'
        sent = time.perf_counter()
        try:
            body = self.client.get_object(**kwargs)["Body"]
        except (bexc.ClientError, bexc.BotoCoreError) as exc:
            raise self._translate(exc, key) from None
        headers = time.perf_counter()
        offset, left = start, list(parts)
        raw, fp = _readinto_source(body) if buffer is not None else (None, None)
        try:
            while left:
                try:
                    slab = buffer(left[0]) if fp is not None else None
                    data = body.read(left[0]) if slab is None else _read_into(fp, memoryview(slab)[:left[0]])
                except (*_BODY_ERRORS, OSError, http.client.HTTPException) as exc:
                    log.warning("GET %s [%d,%d) broke off at %d: %s; resuming", key, start, end, offset, exc)
                    break
                if len(data) != left[0]:
                    break  # cut short (or the end of the object): the rest goes by get_range
                offset += len(data)
                left.pop(0)
                if not left:
                    self.link.observe(headers - sent, time.perf_counter() - headers, end - start)
                    if fp is not None:
                        raw.release_conn()  # read to its end past urllib3: its connection back to the pool
                yield data
        finally:
            if left:  # not read to the end: the connection cannot be reused
                body.close()
        for length in left:
            data = self.get_range(key, offset, offset + length, etag)
            offset += len(data)
            yield data
            if len(data) != length:
                return

    def put_file(self, key: str, path: str, attrs: Attrs | None = None) -> ObjectInfo:
        """Upload a file, ``attrs`` in its metadata; parallel multipart above the threshold."""
        extra = {"Metadata": attrs.metadata()} if attrs is not None else None
        try:
            self.client.upload_file(path, self.bucket, self._full(key), ExtraArgs=extra, Config=self.transfer)
        except (bexc.ClientError, bexc.BotoCoreError, boto3.exceptions.S3UploadFailedError) as exc:
            raise self._translate(exc, f"upload {key}") from None
        return self.head(key)

    def put_bytes(self, key: str, data: bytes, attrs: Attrs | None = None) -> ObjectInfo:
        """PUT a small object, ``attrs`` in its metadata."""
        extra = {"Metadata": attrs.metadata()} if attrs is not None else {}
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data, **extra)
        except (bexc.ClientError, bexc.BotoCoreError) as exc:
            raise self._translate(exc, f"upload {key}") from None
        return self.head(key)

    def delete(self, key: str) -> None:
        """DELETE one object (missing is fine)."""
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._full(key))
        except (bexc.ClientError, bexc.BotoCoreError) as exc:
            err = self._translate(exc, f"delete {key}")
            if not isinstance(err, NotFound):
                raise err from None

    def copy(self, src_key: str, dst_key: str) -> ObjectInfo:
        """Server-side copy (managed: multipart copy above the threshold)."""
        try:
            self.client.copy(
                {"Bucket": self.bucket, "Key": self._full(src_key)}, self.bucket, self._full(dst_key),
                Config=self.transfer,
            )
        except (bexc.ClientError, bexc.BotoCoreError) as exc:
            raise self._translate(exc, f"copy {src_key} -> {dst_key}") from None
        return self.head(dst_key)

    def set_attrs(self, key: str, attrs: Attrs) -> ObjectInfo:
        """Copy the object onto itself with its metadata replaced (MetadataDirective REPLACE): the set fields
        of ``attrs`` replace the stored ones; other user metadata, the content type and the bytes stay."""
        full = self._full(key)
        try:
            resp = self.client.head_object(Bucket=self.bucket, Key=full)
            metadata = dict(resp.get("Metadata") or {})
            old = attrs_from_metadata(metadata)
            merged = Attrs(attrs.mode or old.mode, attrs.uid if attrs.uid >= 0 else old.uid,
                           attrs.gid if attrs.gid >= 0 else old.gid,
                           attrs.mtime if attrs.mtime is not None else old.mtime)
            metadata.update(merged.metadata())
            extra = {"Metadata": metadata, "MetadataDirective": "REPLACE"}
            if resp.get("ContentType"):
                extra["ContentType"] = resp["ContentType"]
            self.client.copy({"Bucket": self.bucket, "Key": full}, self.bucket, full, ExtraArgs=extra,
                             Config=self.transfer)
        except (bexc.ClientError, bexc.BotoCoreError) as exc:
            raise self._translate(exc, f"set attributes of {key}") from None
        return self.head(key)

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()


def _read_into(fp, view: memoryview) -> memoryview:
    """``view`` filled from the response body ``fp`` (http.client's: straight into it), as a read-only view
    of what came (short when the body ended first)."""
    got = 0
    while got < len(view):
        n = fp.readinto(view[got:])
        if not n:
            break
        got += n
    return view[:got].toreadonly()


def _readinto_source(body) -> tuple[object, object]:
    """(urllib3's response, http.client's response under it) of a botocore body, to read parts straight
    into buffers (http.client's ``readinto``; urllib3's own copies); (None, None) where they differ."""
    raw = getattr(body, "_raw_stream", None)
    fp = getattr(raw, "_fp", None)
    if not hasattr(raw, "release_conn") or not hasattr(fp, "readinto"):
        return None, None
    return raw, fp
