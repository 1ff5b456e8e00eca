"""`python -m tiercache.demo` end to end with small parameters: a real local S3 server, a real mount, training."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tiercache import mounts

from .fusehelpers import needs_fuse

pytestmark = [needs_fuse, pytest.mark.fuse, pytest.mark.slow, pytest.mark.timeout(400)]

SMALL = ["--images", "40", "--val", "10", "--image-size", "96", "128", "--batch-size", "8", "--crop", "32"]


def demo(tmp_path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tiercache.demo", "--workdir", str(tmp_path), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def mounted_under(path) -> list[str]:
    root = os.path.realpath(path)
    return [mp for mp, _fstype, _src in mounts.mount_table() if mp == root or mp.startswith(root + os.sep)]


def test_demo_runs_the_whole_story_and_leaves_nothing_behind(tmp_path):
    proc = demo(tmp_path, *SMALL, "--epochs", "2")
    try:
        out, _ = proc.communicate(timeout=360)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out
    for step in range(1, 8):
        assert f"[{step}/7]" in out, out
    assert "warm complete" in out or "warming through the mount's control socket" in out, out
    assert "plans -> mount " in out, out
    assert "checkpoint verified: s3://demo-data/checkpoints/cnn.pt sha256" in out, out
    assert "loads into identical weights" in out, out
    stats = out[out.index("[6/7]"):out.index("[7/7]")]
    assert "hit rate" in stats and "ssd" in stats and "ram" in stats, stats
    assert "loader stall:" in stats, stats
    lines = [line.split() for line in stats.splitlines()]
    assert any(line[:1] == ["train"] for line in lines) and any(line[:1] == ["val"] for line in lines), stats
    assert "unmounted " in out, out
    assert mounted_under(tmp_path) == []
    assert os.listdir(tmp_path) == [], "the work directory is removed without --keep"


def test_demo_interrupted_while_training_still_unmounts(tmp_path):
    proc = demo(tmp_path, *SMALL, "--epochs", "1000")
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("[4/7]"):
                assert mounted_under(tmp_path), "mounted while training"
                proc.send_signal(signal.SIGINT)
                break
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    out = "".join(lines) + out
    assert proc.returncode == 130, out
    assert "demo: interrupted" in out, out
    assert mounted_under(tmp_path) == []
    assert os.listdir(tmp_path) == []
