"""Defaults that do what --help says: without --ssd a real SSD tier under $XDG_CACHE_HOME/tiercache, sized at
half the free space; warm and stats name the tier that really holds the data."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

import tiercache
from tiercache import mounts

from .fusehelpers import CLI, force_cleanup, needs_fuse, run_cli

KiB = 1 << 10


def test_library_default_is_an_ssd_tier_under_xdg_cache_home_at_half_the_free_space(bucket, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.delenv("TIERCACHE_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    bucket.put("a.bin", b"x" * 5000)
    with tiercache.open(bucket.url, ram="8M") as cache:
        assert cache.config.cache_dir.parent == tmp_path / "xdg" / "tiercache"
        assert cache.ssd is not None
        st = os.statvfs(tmp_path)
        half = st.f_bavail * st.f_frsize // 2
        assert abs(cache.config.ssd_bytes - half) <= max(half // 20, 64 << 20)
        assert cache.read("a.bin") == b"x" * 5000
        assert cache.resident("a.bin", "ssd") == 5000  # written through to the SSD tier
    monkeypatch.setenv("TIERCACHE_HOME", str(tmp_path / "home"))
    with tiercache.open(bucket.url, ram="8M", ssd_size="0") as cache:
        assert cache.config.cache_dir.parent == tmp_path / "home" and cache.ssd is None


def _mount(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "mount", *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture
def plain_mount(bucket, tmp_path):
    """Mount without --ssd (and optionally other flags), with $XDG_CACHE_HOME in the test's tmp dir."""
    made: list[str] = []
    env = {k: v for k, v in os.environ.items() if k != "TIERCACHE_HOME"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")

    def mount(*extra: str) -> str:
        path = tmp_path / f"mnt{len(made)}"
        path.mkdir()
        made.append(str(path))
        proc = _mount(env, bucket.url, str(path), "--ram", "64M", "--endpoint-url", bucket.server.endpoint, *extra)
        assert proc.returncode == 0, proc.stderr
        return str(path)

    yield mount
    for path in made:
        found = mounts.find_mount(path)
        force_cleanup(path, found.pid if found else None)


@needs_fuse
@pytest.mark.fuse
@pytest.mark.timeout(180)
def test_mount_without_ssd_has_a_real_ssd_tier_and_warm_says_where_data_is(bucket, tmp_path, plain_mount):
    for i in range(4):
        bucket.put(f"train/{i}.bin", bytes([i]) * (100 * KiB))
    path = plain_mount()
    stats = json.loads(run_cli("stats", path, "--json", check=True).stdout)
    assert stats["mount"]["cache_dir"].startswith(str(tmp_path / "xdg" / "tiercache"))
    assert stats["cache"]["ssd"]["capacity"] > 0
    proc = run_cli("warm", os.path.join(path, "train"), "-r", "--tier", "ssd", check=True)
    assert "resident in ssd;" in proc.stderr
    stats = json.loads(run_cli("stats", path, "--json", check=True).stdout)
    assert stats["cache"]["ssd"]["used"] >= 4 * 100 * KiB


@needs_fuse
@pytest.mark.fuse
@pytest.mark.timeout(180)
def test_without_an_ssd_tier_warm_and_stats_name_the_ram_tier(bucket, plain_mount):
    for i in range(4):
        bucket.put(f"train/{i}.bin", bytes([i]) * (100 * KiB))
    path = plain_mount("--ssd-size", "0")
    proc = run_cli("warm", os.path.join(path, "train"), "-r", "--tier", "ssd", check=True)
    assert "resident in ram (the mount has no ssd tier)" in proc.stderr
    assert "resident in ssd" not in proc.stderr
    text = run_cli("stats", path, check=True).stdout
    assert "no SSD tier" in text
