"""Size, TTL and config parsing: every bad value is one clear ConfigError."""

from __future__ import annotations

import math

import pytest

from tiercache.config import CacheConfig, parse_size, parse_ttl
from tiercache.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "expected"),
    [("512M", 512 << 20), ("1G", 1 << 30), ("1.5T", int(1.5 * (1 << 40))), ("4MiB", 4 << 20), ("64k", 64 << 10),
     ("1024", 1024), (" 2 G ", 2 << 30), ("10KB", 10 << 10), (4096, 4096), ("0", 0)],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "G", "-1G", "1X", "1.2.3G", "ten", None, True, -5, float("nan"), "1e3"])
def test_parse_size_rejects(bad):
    with pytest.raises(ConfigError, match="size"):
        parse_size(bad)


def test_parse_ttl():
    assert parse_ttl("inf") == math.inf
    assert parse_ttl("0") == 0
    assert parse_ttl(2.5) == 2.5
    for bad in ("-1", "soon", "nan"):
        with pytest.raises(ConfigError, match="TTL"):
            parse_ttl(bad)


def test_build_validates_everything(tmp_path):
    cfg = CacheConfig.build("s3://bucket/prefix", ram="64M", ssd=tmp_path, ssd_size="1G", block_size="1M")
    assert (cfg.ram_bytes, cfg.ssd_bytes, cfg.block_size, cfg.cache_dir) == (64 << 20, 1 << 30, 1 << 20, tmp_path)
    assert CacheConfig.build("file:///data", ssd=tmp_path).ssd_bytes > 0
    bad_options = [
        {"ram": "lots"}, {"block_size": "1"}, {"block_size": "1G"}, {"threads": 0}, {"mode": "sometimes"},
        {"policy": "random"}, {"metadata_ttl": "x"},
    ]
    for options in bad_options:
        with pytest.raises(ConfigError):
            CacheConfig.build("s3://bucket", ssd=tmp_path, **options)
    with pytest.raises(ConfigError):
        CacheConfig.build("ftp://host/x")
