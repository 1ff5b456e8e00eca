"""bench/fs.py and its helpers: a dry run mounts every local target for real (tiercache from this tree and
from a git ref, the do-nothing mfusepy filesystem) and writes a complete JSON; the py-spy stack sorter sorts
real py-spy lines. Nothing here times anything (speed is measured by the bench, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fusehelpers import needs_fuse

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import fs_report  # noqa: E402
import fs_stacks  # noqa: E402


def mounted_under(prefix: str) -> list[str]:
    with open("/proc/mounts") as fh:
        return [line.split()[1] for line in fh if line.split()[1].startswith(prefix)]


@needs_fuse
@pytest.mark.fuse
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_dry_run_measures_every_target_and_leaves_no_mount(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "fs.py"), "dry", "--dry-run", "--out", str(tmp_path),
         "--targets", "local,boto3,tiercache,tiercache-ssd,library,ceiling,ceiling-s3", "--before", "HEAD"],
        cwd=REPO, capture_output=True, text=True, timeout=230)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    report = json.loads((tmp_path / "fs_dry.json").read_text())
    results = report["results"]
    assert report["notes"] == [], report["notes"]
    for target in ("local", "ceiling", "tiercache", "tiercache-before"):
        for phase, metric in (("walk_cold", "files_per_s"), ("small_cold", "files_per_s"),
                              ("large_warm", "mb_per_s"), ("random_64k_ssd", "ops_per_s")):
            assert results[target][phase][metric] > 0, (target, phase)
        assert results[target]["walk_cold"]["files"] == 40 + 2, target  # every file listed (ceiling too)
    for target in ("tiercache-ssd", "tiercache-ssd-before"):
        assert results[target]["random_64k_ssd"]["reads"] > 0
        assert results[target]["local_random_64k_ssd"]["reads"] > 0
    assert results["boto3"]["large_cold"]["bytes"] == 8 << 20
    assert results["ceiling-s3"]["large_cold"]["bytes"] == 8 << 20  # the streaming ceiling read it from S3
    for target in ("library", "library-before"):
        assert results[target]["large_cold"]["bytes"] == 8 << 20 and results[target]["random_64k_ssd"]["reads"] > 0
    assert "tree-HEAD" in results["library-before"]["tiercache_module"]  # the --before tree's code ran
    assert "tree-HEAD" in results["tiercache-before_stats"]["daemon_code"]
    assert "tree-HEAD" not in results["tiercache_stats"]["daemon_code"]
    rows = {row["goal"]: row for row in report["issue13_goals"]}
    ssd = rows["64 KiB random reads served by the SSD tier (reads/s)"]
    assert ssd["before"] > 0 and ssd["after"] > 0 and ssd["references"][0]["ratio_after"] > 0
    assert report["host"]["load_average_1_5_15_start"] and report["host"]["load_average_after_each_target"]
    assert "| phase | before | after |" in proc.stdout
    assert [m for m in mounted_under("/") if "tiercache-fsbench-" in m] == []


# lines as py-spy 0.4 writes them (--native --idle --format raw), shortened
GIL_AFTER_LMDB = ("0x1 (libc.so.6);0x2 (libfuse3.so.3.14.0);fuse_fs_read_buf (libfuse3.so.3.14.0);"
                  "closure_fcn (callbacks.c:317);_CallPythonObject (callbacks.c:217);FUSE._wrapper (mfusepy.py:1487);"
                  "FUSE.read (mfusepy.py:1619);TieredCache.read (tiercache/cache.py:174);"
                  "Namespace.lookup (tiercache/namespace.py:312);Meta.get (tiercache/tiers/meta.py:203);"
                  "trans_get (cpython.c:5094);pthread_cond_timedwait (libc.so.6);0x3 (libc.so.6) 17")
GIL_ENTERING = ("0x1 (libc.so.6);fuse_fs_read_buf (libfuse3.so.3.14.0);closure_fcn (callbacks.c:317);"
                "_CallPythonObject (callbacks.c:165);PyTuple_GET_SIZE (tupleobject.h:24);"
                "pthread_cond_timedwait (libc.so.6);0x3 (libc.so.6) 5")
POOL_PARKED = ("0x1 (libc.so.6);thread_run (libpython3.11.so.1.0);Thread.run (threading.py:982);"
               "_worker (concurrent/futures/thread.py:81);_queue_SimpleQueue_get (_queuemodule.c.h:177);"
               "PyThread_acquire_lock_timed (libpython3.11.so.1.0);0x3 (libc.so.6) 100")
POOL_GET = ("0x1 (libc.so.6);Thread.run (threading.py:982);_worker (concurrent/futures/thread.py:83);"
            "Fetcher.get (tiercache/fetcher.py:45);S3Store._get_range (tiercache/store/s3.py:179);"
            "SocketIO.readinto (socket.py:706);sock_recv_into (socketmodule.c:3631);recv (libc.so.6) 3")
REPLY = ("0x1 (libc.so.6);0x2 (libfuse3.so.3.14.0);fuse_reply_data (libfuse3.so.3.14.0);writev (libc.so.6) 9")
WAITING = "0x1 (libc.so.6);0x2 (libfuse3.so.3.14.0);read (libc.so.6) 50"


def test_stack_sorter_names_gil_handoffs_and_their_cause():
    split = fs_stacks.split("\n".join([GIL_AFTER_LMDB, GIL_ENTERING, POOL_PARKED, POOL_GET, REPLY, WAITING]))
    assert split["by_role"]["fuse request"] == {"GIL handoff": 22, "FUSE reply (writev /dev/fuse)": 9}
    assert split["request_gil_handoffs_after"] == {"LMDB get/put": 17, "entering a FUSE callback": 5}
    assert split["by_role"]["fetch/prefetch pool"] == {"store GET (HTTP)": 3}
    assert split["by_role"]["fuse worker idle"] == {"FUSE receive (read /dev/fuse)": 50}
    assert split["parked_samples"] == 100
    assert split["request_top_frames"][0] == ("Meta.get (tiercache/tiers/meta.py:203)", 17)


def test_goal_rows_compare_before_and_after_with_their_reference():
    results = {"tiercache": {"large_cold": {"mb_per_s": 900.0}},
               "tiercache-before": {"large_cold": {"mb_per_s": 300.0}},
               "boto3": {"large_cold": {"mb_per_s": 1000.0}},
               "tiercache-ssd": {"random_64k_ssd": {"ops_per_s": 5000.0},
                                 "local_random_64k_ssd": {"ops_per_s": 20000.0}},
               "ceiling": {"random_64k_ssd": {"ops_per_s": 10000.0}}}
    rows = {row["goal"]: row for row in fs_report.issue13_goals(results)}
    cold = rows["large sequential read, cold (MB/s)"]["references"][0]
    assert (cold["ratio_before"], cold["ratio_after"], cold["met"]) == (0.3, 0.9, True)
    ssd = rows["64 KiB random reads served by the SSD tier (reads/s)"]
    assert ssd["ceiling"] == 10000.0
    assert ssd["references"][0]["met"] is False and ssd["references"][0]["ceiling_reaches_goal"] is False
    assert "no (above the ceiling)" in fs_report.issue13_markdown(fs_report.issue13_goals(results))
