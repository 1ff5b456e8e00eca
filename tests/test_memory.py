"""--memory-target and the cgroup memory limit: the daemon's RAM tier (and the buffers sharing its budget) is
sized so the process stays within a total; by default it fits in the container's limit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tiercache import cli, memory, mount_command
from tiercache.errors import ConfigError
from tiercache.memory import cgroup_memory_limit, overhead, size_ram

from .fusehelpers import force_cleanup, needs_fuse, run_cli

MiB = 1 << 20


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_limit_is_the_tightest_of_the_cgroup_and_its_parents(tmp_path):
    _write(tmp_path / "proc", "0::/a/b\n")
    _write(tmp_path / "cg" / "a" / "b" / "memory.max", "max\n")
    _write(tmp_path / "cg" / "a" / "memory.max", "1073741824\n")
    _write(tmp_path / "cg" / "memory.max", "max\n")
    assert cgroup_memory_limit(str(tmp_path / "proc"), str(tmp_path / "cg")) == 1 << 30
    _write(tmp_path / "cg" / "a" / "b" / "memory.max", "536870912\n")
    assert cgroup_memory_limit(str(tmp_path / "proc"), str(tmp_path / "cg")) == 512 * MiB


def test_cgroup_v1_limit_and_no_limit(tmp_path):
    _write(tmp_path / "proc", "9:name=systemd:/\n4:memory,foo:/x/y\n0::/\n")
    _write(tmp_path / "cg" / "memory" / "x" / "y" / "memory.limit_in_bytes", "9223372036854771712\n")
    _write(tmp_path / "cg" / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")
    assert cgroup_memory_limit(str(tmp_path / "proc"), str(tmp_path / "cg")) is None
    _write(tmp_path / "cg" / "memory" / "x" / "memory.limit_in_bytes", "805306368\n")
    assert cgroup_memory_limit(str(tmp_path / "proc"), str(tmp_path / "cg")) == 768 * MiB
    assert cgroup_memory_limit(str(tmp_path / "missing"), str(tmp_path / "cg")) is None


def test_ram_is_sized_to_the_target_or_the_cgroup_limit():
    cost = overhead(16)
    assert size_ram(None, "1G", "1G", 16, None)[0] == (1 << 30) - cost
    assert size_ram("256M", "1G", "1G", 16, None) == (256 * MiB, None)
    with pytest.raises(ConfigError, match="does not fit in memory target"):
        size_ram("1G", "1G", "1G", 16, None)
    with pytest.raises(ConfigError, match="too small"):
        size_ram(None, "1G", "100M", 16, None)
    with pytest.raises(ConfigError, match="exceeds this cgroup's memory limit"):
        size_ram(None, "1G", "2G", 16, 1 << 30)
    ram, note = size_ram(None, "1G", None, 16, 1 << 30)  # the default 1G does not fit in half of a 1G cgroup
    assert ram == (512 * MiB) - cost and "lowered" in note
    assert size_ram("100M", "1G", None, 16, 1 << 30) == (100 * MiB, None)  # fits: kept
    assert size_ram(None, "1G", None, 16, None) == (1 << 30, None)  # no limit: as asked


def test_memory_target_through_mount_options(monkeypatch, tmp_path):
    monkeypatch.setattr(mount_command, "cgroup_memory_limit", lambda: None)
    spec = mount_command.build_spec("s3://bkt", str(tmp_path), {"memory_target": "1G", "threads": 8})
    assert int(spec.ram) == (1 << 30) - overhead(8)
    monkeypatch.setattr(mount_command, "cgroup_memory_limit", lambda: 1 << 30)
    spec = mount_command.build_spec("s3://bkt", str(tmp_path), {})
    assert int(spec.ram) == (512 * MiB) - overhead(16)
    assert memory.CGROUP_SHARE == 0.5


def _ram_capacity(path) -> int:
    return json.loads(run_cli("stats", str(path), "--json", check=True).stdout)["cache"]["ram"]["capacity"]


@needs_fuse
@pytest.mark.fuse
@pytest.mark.timeout(120)
def test_the_daemon_sizes_its_ram_tier_to_the_memory_target(bucket, mounter):
    bucket.put("a", b"1")
    m = mounter.mount(bucket.url, "--memory-target", "400M", "--threads", "4", endpoint=bucket.server.endpoint)
    # Mounter passes --ram 256M: it fits in 400M minus the overhead, so it is kept
    assert _ram_capacity(m.path) == 256 * MiB
    assert (m.path / "a").read_bytes() == b"1"


@needs_fuse
@pytest.mark.fuse
@pytest.mark.timeout(120)
def test_by_default_the_ram_tier_fits_the_cgroup_limit(bucket, tmp_path, monkeypatch, capsys):
    bucket.put("a", b"1")
    monkeypatch.setattr(mount_command, "cgroup_memory_limit", lambda: 600 * MiB)
    path = tmp_path / "mnt"
    path.mkdir()
    try:
        assert cli.main(["mount", bucket.url, str(path), "--ssd", str(tmp_path / "c"), "--ssd-size", "32M",
                         "--endpoint-url", bucket.server.endpoint, "--threads", "4", "--ram", "2G"]) == 0
        assert "lowered from 2G" in capsys.readouterr().err
        assert _ram_capacity(path) == 300 * MiB - overhead(4)
        path_b = tmp_path / "mnt-b"
        path_b.mkdir()
        proc = run_cli("mount", bucket.url, str(path_b), "--memory-target", "100M", "--ssd", str(tmp_path / "d"))
        assert proc.returncode != 0 and "too small" in proc.stderr
    finally:
        from tiercache import mounts

        found = mounts.find_mount(str(path))
        force_cleanup(path, found.pid if found else None)
