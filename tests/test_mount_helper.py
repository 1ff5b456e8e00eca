"""Mount like any filesystem: fstab-style -o options, the mount.tiercache helper (called directly and by
mount(8) for type fuse.tiercache), and options layered defaults < config file < TIERCACHE_* < flags."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tiercache import mount_options
from tiercache.errors import ConfigError
from tiercache.mount_command import build_spec

from .fusehelpers import force_cleanup, is_mounted, needs_fuse, run_cli

HELPER = [sys.executable, "-m", "tiercache.mount_command"]


def test_fstab_option_strings_are_parsed():
    opts = mount_options.parse_option_string(
        "defaults,_netdev,nofail,x-systemd.automount,ram=8G,ssd=/nvme/cache,ssd-size=500G,ro,allow_other,"
        "threads=4,metadata_ttl=inf,drain_timeout=2.5,endpoint_url=http://127.0.0.1:9000/a\\,b")
    assert opts == {"ram": "8G", "ssd": "/nvme/cache", "ssd_size": "500G", "mode": "readonly",
                    "allow_other": True, "threads": 4, "metadata_ttl": "inf", "drain_timeout": 2.5,
                    "endpoint_url": "http://127.0.0.1:9000/a,b"}
    with pytest.raises(ConfigError, match="unknown option 'ramm'"):
        mount_options.parse_option_string("ramm=8G")
    assert mount_options.parse_option_string("ramm=8G,ram=1G", sloppy=True) == {"ram": "1G"}
    with pytest.raises(ConfigError, match="threads='many' is not a number"):
        mount_options.parse_option_string("threads=many")


def test_options_layer_defaults_file_environment_flags(tmp_path, monkeypatch):
    conf = tmp_path / "config.toml"
    conf.write_text('ram = "2G"\nthreads = 8\nmode = "writethrough"\nblock-size = "1M"\n'
                    '[source."s3://bkt/data"]\nram = "3G"\nmetadata_ttl = "inf"\n')
    for var in list(os.environ):
        if var.startswith("TIERCACHE_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("TIERCACHE_CONFIG", str(conf))
    spec = build_spec("s3://other", str(tmp_path), {})
    assert (spec.ram, spec.threads, spec.mode, spec.block_size, spec.metadata_ttl) == ("2G", 8, "writethrough",
                                                                                      "1M", "60")
    spec = build_spec("s3://bkt/data", str(tmp_path), {})
    assert (spec.ram, spec.metadata_ttl) == ("3G", "inf")  # the source's own section
    monkeypatch.setenv("TIERCACHE_RAM", "4G")
    monkeypatch.setenv("TIERCACHE_SSD", "/nvme/c:100G")
    spec = build_spec("s3://bkt/data", str(tmp_path), {})
    assert (spec.ram, spec.ssd, spec.ssd_size) == ("4G", "/nvme/c", "100G")  # environment over the file
    spec = build_spec("s3://bkt/data", str(tmp_path), {"ram": "5G", "threads": None})
    assert (spec.ram, spec.threads) == ("5G", 8)  # a flag over both; a flag not given changes nothing
    monkeypatch.setenv("TIERCACHE_THREADS", "lots")
    with pytest.raises(ConfigError, match="TIERCACHE_THREADS"):
        build_spec("s3://bkt/data", str(tmp_path), {})
    monkeypatch.delenv("TIERCACHE_THREADS")
    conf.write_text("ram = [1, 2]\n")
    with pytest.raises(ConfigError, match="config file"):
        build_spec("s3://bkt", str(tmp_path), {})
    conf.write_text("ram = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        build_spec("s3://bkt", str(tmp_path), {})


def test_the_shipped_examples_parse(tmp_path, monkeypatch):
    examples = Path(__file__).resolve().parents[1] / "docs" / "examples"
    for line in (examples / "fstab").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            source, _mountpoint, fstype, options, *_ = line.split()
            assert fstype == "fuse.tiercache" and source.startswith("s3://")
            assert mount_options.parse_option_string(options)["ram"]
    for var in list(os.environ):
        if var.startswith("TIERCACHE_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("TIERCACHE_CONFIG", str(examples / "config.toml"))
    spec = build_spec("s3://bucket/imagenet", str(tmp_path), {})
    assert (spec.mode, spec.ram, spec.ssd, spec.threads) == ("readonly", "16G", "/nvme/imagenet", 32)
    assert "ExecStart=" in (examples / "tiercache-mnt-data.service").read_text()


def test_bad_config_is_one_line_for_the_cli_and_the_helper(tmp_path):
    conf = tmp_path / "bad.toml"
    conf.write_text("colour = 'blue'\n")
    env = {**os.environ, "TIERCACHE_CONFIG": str(conf)}
    for cmd in ([sys.executable, "-m", "tiercache.cli", "mount", "s3://bkt", str(tmp_path)],
                [*HELPER, "s3://bkt", str(tmp_path), "-o", "ram=1G"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "unknown option 'colour'" in lines[0] and str(conf) in lines[0]


def _stats(path: Path) -> dict:
    return json.loads(run_cli("stats", str(path), "--json", check=True).stdout)


@contextlib.contextmanager
def _cleanup(path: Path):
    try:
        yield
    finally:
        from tiercache import mounts

        found = mounts.find_mount(str(path))
        force_cleanup(path, found.pid if found else None)


def _options(bucket, tmp_path: Path) -> str:
    return (f"ram=48M,ssd={tmp_path / 'cache'},ssd_size=64M,endpoint_url={bucket.server.endpoint},"
            f"metadata_ttl=inf,ro,threads=3,_netdev,nofail")


@needs_fuse
@pytest.mark.fuse
@pytest.mark.timeout(120)
def test_the_helper_mounts_with_fstab_options_applied(bucket, tmp_path):
    bucket.put("train/a.txt", b"through mount.tiercache")
    path = tmp_path / "mnt"
    path.mkdir()
    with _cleanup(path):
        proc = subprocess.run([*HELPER, bucket.url, str(path), "-o", _options(bucket, tmp_path)],
                              capture_output=True, text=True, timeout=90)
        assert proc.returncode == 0, proc.stderr
        assert (path / "train" / "a.txt").read_bytes() == b"through mount.tiercache"
        stats = _stats(path)
        assert stats["mount"]["mode"] == "readonly"
        assert stats["cache"]["ram"]["capacity"] == 48 << 20
        assert stats["mount"]["cache_dir"] == str(tmp_path / "cache")
        with pytest.raises(OSError):
            (path / "new.txt").write_bytes(b"x")  # ro: read-only mount


@needs_fuse
@pytest.mark.fuse
@pytest.mark.timeout(120)
@pytest.mark.skipif(shutil.which("mount") is None, reason="needs mount(8)")
def test_mount_t_fuse_tiercache_goes_through_mount8(bucket, tmp_path):
    """``mount -t fuse.tiercache SOURCE DIR -o ...`` as root: mount(8) finds /sbin/mount.fuse.tiercache."""
    link = Path("/sbin/mount.fuse.tiercache")
    if link.exists() or link.is_symlink():
        pytest.skip(f"{link} exists already; not replacing it")
    wrapper = tmp_path / "mount.tiercache"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -m tiercache.mount_command \"$@\"\n")
    wrapper.chmod(0o755)
    bucket.put("f.bin", b"z" * 1000)
    path = tmp_path / "mnt"
    path.mkdir()
    try:
        link.symlink_to(wrapper)
    except OSError as exc:
        pytest.skip(f"cannot create {link}: {exc}")
    try:
        with _cleanup(path):
            proc = subprocess.run(["mount", "-t", "fuse.tiercache", bucket.url, str(path), "-o",
                                   _options(bucket, tmp_path)], capture_output=True, text=True, timeout=90)
            assert proc.returncode == 0, proc.stderr
            assert is_mounted(path)
            assert (path / "f.bin").read_bytes() == b"z" * 1000
            assert _stats(path)["cache"]["ram"]["capacity"] == 48 << 20
    finally:
        link.unlink()


@needs_fuse
@pytest.mark.fuse
@pytest.mark.timeout(120)
def test_tiercache_mount_takes_options_from_the_config_file_and_environment(bucket, tmp_path):
    bucket.put("x", b"1")
    conf = tmp_path / "config.toml"
    conf.write_text(f'ram = "40M"\nmode = "readonly"\nssd = "{tmp_path / "c"}"\nssd_size = "32M"\n')
    env = {**os.environ, "TIERCACHE_CONFIG": str(conf), "TIERCACHE_RAM": "36M"}
    path = tmp_path / "mnt"
    path.mkdir()
    with _cleanup(path):
        proc = subprocess.run([sys.executable, "-m", "tiercache.cli", "mount", bucket.url, str(path),
                               "--endpoint-url", bucket.server.endpoint], capture_output=True, text=True,
                              timeout=90, env=env)
        assert proc.returncode == 0, proc.stderr
        stats = _stats(path)
        assert stats["cache"]["ram"]["capacity"] == 36 << 20  # TIERCACHE_RAM over the file's 40M
        assert stats["mount"]["mode"] == "readonly"  # from the file
        assert stats["mount"]["cache_dir"] == str(tmp_path / "c")
