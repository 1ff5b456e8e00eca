"""Object stores against a real HTTP S3 server (moto) and a local directory."""

from __future__ import annotations

import hashlib
import os

import pytest

from tiercache.errors import AccessDenied, BucketNotFound, ConfigError, EndpointUnreachable, NotFound
from tiercache.store import open_store, parse_source
from tiercache.store.local import LocalStore
from tiercache.store.s3 import S3Store

from .faultproxy import CuttingProxy


def test_s3_list_is_paginated_and_relative_to_prefix(bucket, s3_server):
    for i in range(23):
        bucket.put(f"data/train/{i:03d}.bin", bytes([i]) * (i + 1))
    bucket.put("other/x", b"x")
    store = S3Store(f"{bucket.url}/data", endpoint_url=s3_server.endpoint)
    store.page_size = 5
    s3_server.reset_log()
    infos = list(store.list())
    assert [i.key for i in infos] == [f"train/{i:03d}.bin" for i in range(23)]
    assert [i.size for i in infos] == list(range(1, 24))
    lists = [r for r in s3_server.requests if r.method == "GET" and not r.key and r.bucket == bucket.name]
    assert len(lists) == 5
    assert [i.key for i in store.list("train/01")] == [f"train/{i:03d}.bin" for i in range(10, 20)]


def test_s3_head_and_ranges(bucket, s3_server):
    data = os.urandom(100_000)
    bucket.put("p/obj", data)
    store = open_store(f"{bucket.url}/p/", endpoint_url=s3_server.endpoint)
    info = store.head("obj")
    assert info.size == len(data) and info.key == "obj" and info.etag
    assert store.get_range("obj", 0, len(data)) == data
    assert store.get_range("obj", 12_345, 54_321) == data[12_345:54_321]
    assert store.get_range("obj", 99_990, 200_000) == data[99_990:]
    assert store.get_range("obj", 10, 10) == b""
    assert store.get_range("obj", 0, 10, etag=info.etag) == data[:10]
    with pytest.raises(NotFound):
        store.get_range("obj", 0, 10, etag="0123")
    with pytest.raises(NotFound):
        store.head("missing")


def test_s3_put_multipart_copy_delete(bucket, s3_server, tmp_path):
    data = os.urandom(11 << 20 | 12345)
    path = tmp_path / "big"
    path.write_bytes(data)
    store = S3Store(bucket.url, endpoint_url=s3_server.endpoint, multipart_threshold=5 << 20,
                    multipart_chunksize=5 << 20)
    info = store.put_file("ckpt/big.bin", str(path))
    assert info.size == len(data) and info.etag.endswith("-3")
    assert hashlib.sha256(bucket.get("ckpt/big.bin")).digest() == hashlib.sha256(data).digest()
    store.put_bytes("small", b"abc")
    assert store.copy("small", "copied").size == 3
    assert bucket.get("copied") == b"abc"
    store.delete("copied")
    store.delete("never-existed")
    assert "copied" not in bucket.keys()


def test_s3_ranged_get_survives_a_broken_connection(bucket, s3_server):
    data = os.urandom(200_000)
    bucket.put("obj", data)
    proxy = CuttingProxy(s3_server.port, cut=2, after=1000)
    try:
        store = S3Store(bucket.url, endpoint_url=proxy.endpoint)
        assert store.get_range("obj", 1000, 150_000) == data[1000:150_000]
        assert proxy.connections >= 3
    finally:
        proxy.close()


def test_s3_clear_errors(s3_server, monkeypatch):
    with pytest.raises(BucketNotFound, match="does not exist"):
        S3Store("s3://no-such-bucket-here", endpoint_url=s3_server.endpoint).check()
    with pytest.raises(EndpointUnreachable, match="cannot reach"):
        S3Store("s3://any-bucket", endpoint_url="http://127.0.0.1:1").check()
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(AccessDenied, match="credentials"):
        S3Store("s3://any-bucket", endpoint_url=s3_server.endpoint).check()


def test_local_store_roundtrip(tmp_path):
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f.bin").write_bytes(b"0123456789")
    (root / "top.txt").write_bytes(b"top")
    store = open_store(f"file://{root}")
    store.check()
    assert [i.key for i in store.list()] == ["a/b/f.bin", "top.txt"]
    info = store.head("a/b/f.bin")
    assert store.get_range("a/b/f.bin", 3, 7, etag=info.etag) == b"3456"
    src = tmp_path / "src"
    src.write_bytes(b"new content")
    new = store.put_file("a/new.bin", str(src))
    assert new.size == 11 and (root / "a" / "new.bin").read_bytes() == b"new content"
    assert new.etag != store.put_bytes("a/new.bin", b"changed!").etag
    with pytest.raises(NotFound):
        store.get_range("a/new.bin", 0, 3, etag=new.etag)
    for bad in ("../etc/passwd", "/etc/passwd", "a/../../x", "a", "missing"):
        with pytest.raises(NotFound):
            store.head(bad)
    store.delete("top.txt")
    store.delete("top.txt")
    assert [i.key for i in store.list()] == ["a/b/f.bin", "a/new.bin"]
    with pytest.raises(BucketNotFound):
        LocalStore(tmp_path / "nope").check()


@pytest.mark.parametrize("bad", ["", "bucket", "http://x/y", "s3://", "s3:///prefix", "file://relative/dir", 3])
def test_bad_source_urls(bad):
    with pytest.raises(ConfigError):
        parse_source(bad)


def test_local_upload_in_progress_never_lists(tmp_path):
    """A put still copying (its source a FIFO that has not ended) leaves a .tc-upload-* temp file beside
    its destination: list, list_after and list_level never show it, and the object lists once it ends."""
    import threading

    root = tmp_path / "store"
    (root / "d").mkdir(parents=True)
    (root / "d" / "a").write_bytes(b"a")
    store = LocalStore(root)
    fifo = tmp_path / "source"
    os.mkfifo(fifo)
    done = threading.Event()
    upload = threading.Thread(target=lambda: (store.put_file("d/b", str(fifo)), done.set()), daemon=True)
    upload.start()
    with open(fifo, "wb") as writer:
        writer.write(b"first half ")
        writer.flush()
        for _ in range(500):
            if any(p.name.startswith(".tc-upload-") for p in (root / "d").iterdir()):
                break
            threading.Event().wait(0.01)
        temps = [p.name for p in (root / "d").iterdir() if p.name.startswith(".tc-upload-")]
        assert temps, "the upload should be in progress, its temp file on disk"
        assert [i.key for i in store.list()] == ["d/a"]
        assert [i.key for i in store.list_after("d/", "")] == ["d/a"]
        assert [getattr(i, "key", i) for i in store.list_level("d/")] == ["d/a"]
        assert not done.is_set()
        writer.write(b"second half")
    upload.join(10)
    assert done.is_set()
    assert [i.key for i in store.list()] == ["d/a", "d/b"]
    assert store.get_range("d/b", 0, 100) == b"first half second half"
