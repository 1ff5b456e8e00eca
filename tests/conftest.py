"""Shared fixtures: a real HTTP S3 server (moto on 127.0.0.1), per-test buckets, mounts and a pausable proxy."""

from __future__ import annotations

import itertools
import os

import pytest

from tiercache.devserver import LocalS3
from tiercache.tiers.meta import Meta

from .fusehelpers import Mounter, PausableProxy

_bucket_ids = itertools.count()


@pytest.fixture(scope="session")
def s3_server():
    """One local S3 server for the whole session, with a request log."""
    with LocalS3() as server:
        os.environ["AWS_ENDPOINT_URL"] = server.endpoint
        yield server
        os.environ.pop("AWS_ENDPOINT_URL", None)


class Bucket:
    """A fresh bucket on the test server, with helpers to fill it and read its request log."""

    def __init__(self, server: LocalS3, name: str):
        self.server = server
        self.name = name
        self.client = server.client()
        self.client.create_bucket(Bucket=name)

    @property
    def url(self) -> str:
        return f"s3://{self.name}"

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=data)

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=key)["Body"].read()

    def keys(self) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", ()))

    def gets(self, key: str | None = None):
        return self.server.gets(self.name, key)


@pytest.fixture
def bucket(s3_server) -> Bucket:
    """An empty bucket, unique to the test."""
    return Bucket(s3_server, f"test-{os.getpid()}-{next(_bucket_ids)}")


@pytest.fixture
def mounter(tmp_path):
    """Mounts made in a test; all unmounted (lazily if need be) and their daemons stopped at teardown."""
    m = Mounter(tmp_path)
    try:
        yield m
    finally:
        m.cleanup()


@pytest.fixture
def meta(tmp_path):
    """An LMDB metadata environment under the test's tmp dir, closed at teardown."""
    m = Meta(tmp_path / "meta")
    yield m
    m.close()


@pytest.fixture
def proxy(s3_server):
    """A pausable TCP proxy in front of the test S3 server (to stall or cut traffic)."""
    p = PausableProxy(s3_server.port)
    try:
        yield p
    finally:
        p.close()
