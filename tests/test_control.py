"""The control plane through a real mount: warm / evict / pin / unpin / plan / stats / metrics from the CLI.

Every test mounts a bucket on the local S3 server (moto over HTTP) and counts the GETs that server sees.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from tiercache.errors import TiercacheError

from .fusehelpers import CLI, assert_one_line_error, needs_fuse, run_cli

pytestmark = [needs_fuse, pytest.mark.fuse, pytest.mark.timeout(120)]

KiB, MiB = 1 << 10, 1 << 20






def fill(bucket, prefix: str, count: int, size: int, seed: int = 1) -> dict[str, bytes]:
    """``count`` random files of ``size`` bytes under ``prefix``; key → bytes."""
    rng = random.Random(seed)
    out = {}
    for i in range(count):
        key = f"{prefix}/{i:03d}.bin"
        out[key] = rng.randbytes(size)
        bucket.put(key, out[key])
    return out


def stats(m) -> dict:
    proc = run_cli("stats", str(m.path), "--json", check=True)
    return json.loads(proc.stdout)


def wait_for(condition, what: str, timeout: float = 60.0):
    """Poll until ``condition()`` is truthy (a wait, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def read(path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


# ---------------------------------------------------------------- warm


def test_warm_then_read_makes_no_gets(bucket, mounter):
    files = fill(bucket, "train", 12, 50 * KiB)
    files.update(fill(bucket, "train/big", 1, 9 * MiB, seed=2))  # several blocks
    m = mounter.mount(bucket.url, "--block-size", "1M", endpoint=bucket.server.endpoint)
    proc = m.cli("warm", "--recursive", "--threads", "4", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "warm complete" in proc.stderr and "13 file(s)" in proc.stderr
    before = len(bucket.gets())
    for key, data in files.items():
        assert read(m.path / key) == data
    assert len(bucket.gets()) == before, "every byte was resident: no GET during the read"
    again = run_cli("warm", str(m.path / "train"), "--recursive", check=True)
    assert "warm complete" in again.stderr and "fetched 0B from the store" in again.stderr
    assert len(bucket.gets()) == before


def test_warm_skips_what_is_resident_and_lands_in_the_tier_asked(bucket, mounter):
    files = fill(bucket, "train", 6, 100 * KiB)
    m = mounter.mount(bucket.url, endpoint=bucket.server.endpoint)
    run_cli("warm", str(m.path / "train/000.bin"), check=True)
    proc = run_cli("warm", str(m.path / "train"), "--recursive", "--tier", "ram", check=True)
    assert "resident in ram" in proc.stderr and "0B was already there" in proc.stderr
    assert all(len(bucket.gets(key)) == 1 for key in files)  # each file fetched once in all
    cache = stats(m)["cache"]
    assert cache["ram"]["used"] >= 6 * 100 * KiB
    listed = m.path.parent / "list.txt"
    listed.write_text("".join(f"{m.path / key}\n" for key in files))
    proc = run_cli("warm", "--from-list", str(listed), "--tier", "ram", check=True)
    assert "6 file(s)" in proc.stderr and "fetched 0B from the store, 600.0K was already there" in proc.stderr


def test_warm_is_complete_only_when_every_byte_is_resident(bucket, mounter):
    fill(bucket, "train", 8, 1 * MiB)
    m = mounter.mount(bucket.url, "--ram", "2M", "--block-size", "1M", endpoint=bucket.server.endpoint, ssd="4M")
    for tier in ("ram", "ssd"):
        proc = run_cli("warm", str(m.path / "train"), "-r", "--tier", tier)
        assert_one_line_error(proc, "warm incomplete", f"not resident in {tier}", "too small")
    proc = run_cli("warm", str(m.path / "train/000.bin"), "--tier", "ram")
    assert proc.returncode == 0 and "warm complete" in proc.stderr


def test_warm_can_be_interrupted_and_rerun(bucket, mounter, proxy):
    files = fill(bucket, "train", 8, 64 * KiB)
    m = mounter.mount(bucket.url, "--threads", "2", endpoint=proxy.endpoint)
    assert os.listdir(m.path / "train")  # listing cached before the store goes quiet
    proxy.pause()
    warm = subprocess.Popen([*CLI, "warm", str(m.path / "train"), "--recursive"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: stats(m)["jobs"]["warm"] == 1, "the warm request to reach the daemon")
        warm.send_signal(signal.SIGINT)
        _, err = warm.communicate(timeout=30)
    finally:
        if warm.poll() is None:
            warm.kill()
    assert warm.returncode == 130, err
    assert "Traceback" not in err and "warm interrupted" in err and "run it again" in err
    proxy.resume()
    wait_for(lambda: stats(m)["jobs"]["warm"] == 0, "the daemon to end the abandoned warm")
    proc = run_cli("warm", str(m.path / "train"), "--recursive", check=True)
    assert "warm complete" in proc.stderr
    before = len(bucket.gets())
    for key, data in files.items():
        assert read(m.path / key) == data
    assert len(bucket.gets()) == before


# ---------------------------------------------------------------- evict, pin, dirty data


def test_evict_frees_and_the_next_read_refetches(bucket, mounter):
    files = fill(bucket, "train", 4, 200 * KiB)
    m = mounter.mount(bucket.url, endpoint=bucket.server.endpoint)
    run_cli("warm", str(m.path / "train"), "-r", "--tier", "ram", check=True)
    assert stats(m)["cache"]["ram"]["used"] >= 800 * KiB
    proc = run_cli("evict", str(m.path / "train"), "--tier", "ram", check=True)
    assert proc.stdout.startswith("evicted 800.0K from ram")
    assert stats(m)["cache"]["ram"]["used"] == 0
    assert read(m.path / "train/000.bin") == files["train/000.bin"]  # from the SSD tier: no GET
    assert len(bucket.gets("train/000.bin")) == 1
    proc = run_cli("evict", str(m.path), check=True)
    assert proc.stdout.startswith("evicted ") and "evicted 0B" not in proc.stdout
    assert stats(m)["cache"]["ssd"]["live"] == 0
    assert read(m.path / "train/001.bin") == files["train/001.bin"]
    assert len(bucket.gets("train/001.bin")) == 2, "evicted data is fetched again"


def test_pinned_data_survives_pressure_and_evict(bucket, mounter):
    keep = fill(bucket, "keep", 1, 1 * MiB, seed=3)
    other = fill(bucket, "other", 24, 1 * MiB, seed=4)
    m = mounter.mount(bucket.url, "--ram", "2M", "--block-size", "1M", endpoint=bucket.server.endpoint, ssd="8M")
    proc = run_cli("pin", str(m.path / "keep"), check=True)
    assert "pinned 1 path(s)" in proc.stdout and "0B of 1.0M resident" in proc.stdout
    run_cli("warm", str(m.path / "keep"), "-r", check=True)
    for key, data in other.items():  # 24 MiB through an 8 MiB SSD tier and a 2 MiB RAM tier
        assert read(m.path / key) == data
    cache = stats(m)["cache"]
    assert cache["ssd"]["evictions"] > 0 and cache["pins"] == ["keep"]
    proc = run_cli("evict", str(m.path), check=True)
    assert "kept pinned: " in proc.stdout and "/keep" in proc.stdout
    assert read(m.path / "keep/000.bin") == keep["keep/000.bin"]
    assert len(bucket.gets("keep/000.bin")) == 1, "pinned data never left the cache"
    run_cli("unpin", str(m.path / "keep"), check=True)
    assert stats(m)["cache"]["pins"] == []
    run_cli("evict", str(m.path / "keep"), check=True)
    assert stats(m)["cache"]["ssd"]["live"] == 0


def test_dirty_data_survives_evict(bucket, mounter, proxy):
    m = mounter.mount(bucket.url, endpoint=proxy.endpoint)
    assert os.listdir(m.path) == []  # the listing is loaded before the store goes quiet
    proxy.pause()  # uploads stall: the new file stays dirty
    try:
        data = os.urandom(300 * KiB)
        (m.path / "ckpt.bin").write_bytes(data)
        assert stats(m)["writes"]["dirty_bytes"] == len(data)
        proc = run_cli("evict", str(m.path), check=True)
        assert proc.stdout.startswith("evicted ")
        assert read(m.path / "ckpt.bin") == data
    finally:
        proxy.resume()
    run_cli("flush", str(m.path), check=True)
    assert bucket.get("ckpt.bin") == data


# ---------------------------------------------------------------- plans


def test_plan_order_and_bounded_lead(bucket, mounter, tmp_path):
    files = fill(bucket, "train", 24, 512 * KiB)
    # one fetch thread: plan fetches reach the server one at a time; RAM 8M: the lead is at most ~4 MiB
    m = mounter.mount(bucket.url, "--threads", "1", "--ram", "8M", endpoint=bucket.server.endpoint)
    plan = list(files)
    random.Random(5).shuffle(plan)
    listed = tmp_path / "plan.txt"
    listed.write_text("".join(key + "\n" for key in plan))
    before = len(bucket.gets())

    def settled() -> dict | None:
        pre = stats(m)["cache"]["prefetcher"]
        return pre if pre["in_flight"] == 0 and pre["lead_files"] else None

    proc = run_cli("plan", str(m.path), "--from-list", str(listed), check=True)
    assert "plan of 24 file(s)" in proc.stdout
    pre = wait_for(settled, "the prefetcher to reach its lead")
    gets = [r.key for r in bucket.gets()[before:]]
    assert gets == plan[:len(gets)], "prefetch follows the plan"
    assert 0 < len(gets) == pre["lead_files"] <= 9 and pre["lead_bytes"] <= 4 * MiB + 512 * KiB
    for key in plan[:12]:
        assert read(m.path / key) == files[key]
    pre = wait_for(settled, "the prefetcher to catch up")
    gets = [r.key for r in bucket.gets()[before:]]
    assert gets == plan[:len(gets)] and len(gets) <= 12 + 9, "never far ahead of the reader"
    assert [p["position"] for p in stats(m)["cache"]["plans"]] == [12]
    for key in plan[12:]:
        assert read(m.path / key) == files[key]
    gets = [r.key for r in bucket.gets()[before:]]
    assert gets == plan, "every file fetched once, in plan order"
    [plan] = stats(m)["cache"]["plans"]
    assert (plan["client"], plan["files"]) == ("cli", 24) and plan["hit_rate"] > 0


def test_plans_per_client_replace_only_their_own_and_end_with_their_session(bucket, mounter, tmp_path):
    files = fill(bucket, "data", 12, 4 * KiB)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    m = mounter.mount(bucket.url, "--metrics-port", str(port), endpoint=bucket.server.endpoint)
    keys = sorted(files)
    lists = {}
    for name, chosen in (("train", keys[:8]), ("val", keys[8:]), ("train2", keys[:3])):
        lists[name] = tmp_path / f"{name}.txt"
        lists[name].write_text("".join(k + "\n" for k in chosen))
    run_cli("plan", str(m.path), "--client", "train", "--from-list", str(lists["train"]), check=True)
    proc = run_cli("plan", str(m.path), "--client", "val", "--from-list", str(lists["val"]), check=True)
    assert "client 'val'" in proc.stdout

    def plans() -> dict:
        return {p["client"]: p for p in stats(m)["cache"]["plans"]}

    assert {c: p["files"] for c, p in plans().items()} == {"train": 8, "val": 4}
    for key in keys[:2]:
        read(m.path / key)
    assert wait_for(lambda: plans()["train"]["position"] == 2, "train's position to follow its reads")
    assert plans()["val"]["position"] == 0, "a read advances only the plan it belongs to"
    run_cli("plan", str(m.path), "--client", "train", "--from-list", str(lists["train2"]), check=True)
    assert {c: p["files"] for c, p in plans().items()} == {"train": 3, "val": 4}, "replaced only train's plan"
    table = run_cli("stats", str(m.path), check=True).stdout
    assert any(line.strip().startswith("train") for line in table.splitlines())
    assert any(line.strip().startswith("val") for line in table.splitlines()), table
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert f'tiercache_plan_files{{client="val",mountpoint="{m.path}"}} 4.0' in metrics, metrics

    from tiercache import mounts

    found = mounts.find_mount(str(m.path))
    assert found.send_plan(keys[::-1], "parts", part=5)["planned"] == 12  # three parts on one connection
    assert found.client().request("plan", client="parts", show=True)["paths"] == keys[::-1]
    odd = ["/" + keys[0], "data//" + keys[1].split("/")[-1], "with\nnewline", *keys[2:]]  # normalised, or a list part
    assert found.send_plan(odd, "parts", part=2)["planned"] == 13
    assert found.client().request("plan", client="parts", show=True)["paths"] == [keys[0], keys[1], "with\nnewline",
                                                                                  *keys[2:]]
    with pytest.raises(TiercacheError, match="outside the mount"):  # one refused part refuses the whole plan
        found.send_plan([*keys[:4], "../etc/passwd", *keys[4:]], "parts", part=3)
    assert found.client().request("plan", client="parts", show=True)["paths"][0] == keys[0], "the plan is unchanged"
    found.client().request("plan", client="parts", end=True)
    session = found.session()
    session.request("plan", paths=keys[4:6], client="rank0", bind=True)
    assert set(plans()) == {"train", "val", "rank0"}
    session.close()  # the loader went away: its plan ends with its connection
    wait_for(lambda: "rank0" not in plans(), "the bound plan to end with its session")
    proc = run_cli("plan", str(m.path), "--client", "val", "--end", check=True)
    assert "ended" in proc.stdout and set(plans()) == {"train"}
    assert_one_line_error(run_cli("plan", str(m.path), "--client", "", "--from-list", str(lists["val"])), "client")


# ---------------------------------------------------------------- stats, metrics, bad input


def test_stats_watch_and_metrics(bucket, mounter):
    fill(bucket, "train", 3, 10 * KiB)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    m = mounter.mount(bucket.url, "--metrics-port", str(port), endpoint=bucket.server.endpoint)
    run_cli("warm", str(m.path), "-r", check=True)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert f'tiercache_backend_gets_total{{mountpoint="{m.path}"}} 3.0' in text
    assert "tiercache_tier_used_bytes" in text and "tiercache_dirty_bytes" in text
    assert "tiercache_prefetch_lead_files" in text and "tiercache_oldest_pending_age_seconds" in text
    table = run_cli("stats", str(m.path), check=True).stdout
    for needle in ("hit rate", "GET/s", "prefetch: lead", "dirty 0B"):
        assert needle in table, table
    watch = subprocess.Popen([*CLI, "stats", str(m.path), "--watch", "--interval", "0.2"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        refreshes = 0
        for line in watch.stdout:  # refreshes keep coming until Ctrl-C
            refreshes += "backend:" in line
            if refreshes == 2:
                break
        watch.send_signal(signal.SIGINT)
        _, err = watch.communicate(timeout=30)
    finally:
        if watch.poll() is None:
            watch.kill()
    assert watch.returncode == 0 and "Traceback" not in err
    taken = mounter.tmp_path / "again"
    taken.mkdir()
    assert_one_line_error(run_cli("mount", bucket.url, str(taken), "--endpoint-url", bucket.server.endpoint,
                                  "--ssd", str(mounter.tmp_path / "again-cache"), "--metrics-port", str(port)),
                          "metrics-port", "cannot listen")


def test_bad_paths_give_one_clear_line(bucket, mounter, tmp_path):
    fill(bucket, "train", 2, 1 * KiB)
    m = mounter.mount(bucket.url, endpoint=bucket.server.endpoint)
    assert_one_line_error(run_cli("warm", str(tmp_path)), "not inside a tiercache mount")
    assert_one_line_error(run_cli("warm", str(tmp_path / "nope")), "no such file")
    assert_one_line_error(run_cli("warm", str(m.path / "nope")), "no such file")
    assert_one_line_error(run_cli("warm", str(m.path / "train")), "is a directory", "--recursive")
    assert_one_line_error(run_cli("warm", "--from-list", str(tmp_path / "none.txt")), "--from-list")
    listed = tmp_path / "list.txt"
    listed.write_text(f"{m.path / 'train/000.bin'}\n{m.path / 'train/gone.bin'}\n")
    assert_one_line_error(run_cli("warm", "--from-list", str(listed)), "train/gone.bin", "no such file")
    assert_one_line_error(run_cli("warm", str(m.path / "train"), "--threads", "0"), "threads")
    assert_one_line_error(run_cli("evict", str(m.path / "nope")), "no such file")
    assert_one_line_error(run_cli("evict", "/"), "not inside a tiercache mount")
    assert_one_line_error(run_cli("pin", str(m.path / "nope")), "no such file")
    assert_one_line_error(run_cli("unpin", str(m.path / "train")), "is not pinned")
    assert_one_line_error(run_cli("plan", str(tmp_path), "--from-list", str(listed)), "not inside")
    assert_one_line_error(run_cli("plan", str(m.path), "--from-list", str(tmp_path / "none.txt")), "--from-list")
    outside = tmp_path / "outside.txt"
    outside.write_text("../etc/passwd\n")
    assert_one_line_error(run_cli("plan", str(m.path), "--from-list", str(outside)), "outside the mount")
    assert_one_line_error(run_cli("stats", str(m.path), "--interval", "0"), "interval")
