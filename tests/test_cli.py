"""The tiercache command line: one clear line and a non-zero exit for every bad input; the control socket."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from tiercache import cli, control, handlers, mounts  # noqa: F401 - importing handlers registers the control ops
from tiercache.errors import ConfigError, NotFound
from tiercache.fuse import mount as mountmod

from .fusehelpers import CLI, assert_one_line_error, is_mounted, needs_fuse, run_cli


@pytest.fixture
def mnt(tmp_path):
    path = tmp_path / "mnt"
    path.mkdir()
    return path


# ---------------------------------------------------------------- bad input, no FUSE needed


def test_usage_errors_are_one_line():
    assert_one_line_error(run_cli(), "required")
    proc = run_cli("mount")
    assert proc.returncode == 2
    assert_one_line_error(proc, "required")
    assert_one_line_error(run_cli("frobnicate"), "invalid choice")


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--ram", "12Q"], "ram"),
        (["--block-size", "1K"], "block size"),
        (["--ssd-size", "lots"], "ssd size"),
        (["--metadata-ttl", "soon"], "metadata ttl"),
        (["--write-limit", "-5"], "write limit"),
    ],
)
def test_bad_sizes(mnt, extra, needle):
    assert_one_line_error(run_cli("mount", "s3://bucket", str(mnt), *extra), needle)


@pytest.mark.parametrize("source", ["http://bucket/x", "bucket/x", "s3://", "file://relative/dir"])
def test_bad_source_url(mnt, source):
    assert_one_line_error(run_cli("mount", source, str(mnt)), "source" if source != "s3://" else "s3://")


def test_bad_mountpoints(tmp_path):
    missing = tmp_path / "nope"
    assert_one_line_error(run_cli("mount", "s3://bucket", str(missing)), "does not exist")
    afile = tmp_path / "file"
    afile.write_text("x")
    assert_one_line_error(run_cli("mount", "s3://bucket", str(afile)), "not a directory")
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    assert_one_line_error(run_cli("mount", "s3://bucket", str(full)), "not empty", "--nonempty")


def test_unmount_flush_stats_of_a_non_mount(tmp_path):
    assert_one_line_error(run_cli("unmount", str(tmp_path)), "not a mount")
    assert_one_line_error(run_cli("unmount", str(tmp_path / "missing")), "not a mount")
    assert_one_line_error(run_cli("flush", str(tmp_path)), "not inside a tiercache mount")
    assert_one_line_error(run_cli("stats", str(tmp_path / "missing")), "no such file")


def test_no_dev_fuse_and_no_permission(mnt, monkeypatch, capsys):
    monkeypatch.setattr(mountmod, "DEV_FUSE", "/nonexistent/fuse")
    assert cli.main(["mount", "s3://bucket", str(mnt), "--ssd-size", "0", "--ssd", str(mnt.parent)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tiercache: error: ")
    assert "/nonexistent/fuse not found" in err

    monkeypatch.setattr(mountmod, "DEV_FUSE", "/dev/null")
    monkeypatch.setattr(mountmod.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(mountmod.shutil, "which", lambda name: None)
    with pytest.raises(mountmod.MountError, match="needs root or the fusermount3"):
        mountmod.check_fuse_access()


def test_ssd_dir_colon_size():
    assert cli._split_ssd("/nvme/cache:500G", None) == ("/nvme/cache", "500G")
    assert cli._split_ssd("/nvme/cache", "1G") == ("/nvme/cache", "1G")
    assert cli._split_ssd("/odd:name/dir", None) == ("/odd:name/dir", None)


def test_format_stats_table():
    stats = {
        "mount": {"source": "s3://b", "mode": "writeback", "pid": 1},
        "cache": {
            "ram": {"used": 3 << 20, "capacity": 1 << 30, "hits": 3, "misses": 1, "hit_rate": 0.75},
            "ssd": {"used": 0, "capacity": 0, "hits": 0, "misses": 0, "hit_rate": 0.0},
            "backend": {"gets": 4, "bytes": 1 << 20, "errors": 0, "heads": 1, "lists": 1},
            "hit_rate": 0.5,
        },
        "writes": {"mode": "writeback", "dirty_bytes": 5 << 20, "pending_files": 2,
                   "oldest_pending_age_s": 12.0, "uploaded_files": 1, "uploaded_bytes": 10,
                   "failed_uploads": 0},
    }
    text = cli.format_stats("/mnt/x", stats)
    assert "75.0%" in text and "3.0M" in text and "dirty 5.0M in 2 file(s)" in text
    assert "oldest pending 12 s" in text


def test_format_stats_shows_plan_rates_prefetch_and_jobs():
    stats = {
        "mount": {"source": "s3://b", "mode": "readonly", "pid": 1},
        "cache": {
            "ram": {"used": 0, "capacity": 1 << 30, "hits": 9, "misses": 1},
            "backend": {"gets": 4, "bytes": 1 << 20, "errors": 0, "heads": 1, "lists": 1, "gets_per_s": 2.5,
                        "bytes_per_s": 3 << 20},
            "read_hit_rate": 0.9,
            "plans": [{"client": "train", "files": 1200, "position": 40, "lead_files": 12, "lead_bytes": 6 << 20,
                       "started": time.time() - 30, "hit_rate": 0.995},
                      {"client": "val", "files": 300, "position": 7, "lead_files": 0, "lead_bytes": 0,
                       "started": time.time() - 5, "hit_rate": 0.5, "note": "this epoch only"}],
            "prefetcher": {"lead_files": 12, "lead_bytes": 6 << 20,
                           "prefetched_bytes": 8 << 20, "prefetched_unread_bytes": 1 << 10},
        },
        "jobs": {"warm": 1},
    }
    text = cli.format_stats("/mnt/x", stats)
    assert "hit rate 90.0% overall" in text
    train = next(line for line in text.splitlines() if line.strip().startswith("train"))
    val = next(line for line in text.splitlines() if line.strip().startswith("val"))
    assert "40 of 1,200" in train and "12 / 6.0M" in train and "99.5%" in train and "30s" in train
    assert "7 of 300" in val and "50.0%" in val and "this epoch only" in val
    assert "now 2.5 GET/s, 3.0M/s" in text
    assert "lead 12 file(s) / 6.0M ahead of the readers" in text
    assert "8.0M prefetched, 1.0K never read" in text and "running: 1 warm request(s)" in text


def test_metrics_listen_address():
    from tiercache.metrics import parse_listen

    assert parse_listen("9100") == ("127.0.0.1", 9100)
    assert parse_listen("0.0.0.0:9100") == ("0.0.0.0", 9100)
    assert parse_listen("[::1]:9100") == ("::1", 9100)
    for bad in ("0", "70000", "port", "host:"):
        with pytest.raises(ConfigError, match="metrics-port"):
            parse_listen(bad)


def test_metrics_collector_reads_the_stats_reply():
    from prometheus_client import CollectorRegistry, generate_latest

    from tiercache.metrics import StatsCollector

    reply = {"cache": {"ram": {"used": 5, "capacity": 10, "hits": 3, "misses": 1},
                       "backend": {"gets": 7, "bytes": 70, "gets_per_s": 1.5}, "read_hit_rate": 0.75,
                       "prefetcher": {"lead_files": 2}},
             "writes": {"dirty_bytes": 11, "oldest_pending_age_s": 4.0}}
    registry = CollectorRegistry()
    registry.register(StatsCollector(lambda: reply, "/m"))
    text = generate_latest(registry).decode()
    for line in ('tiercache_tier_used_bytes{mountpoint="/m",tier="ram"} 5.0',
                 'tiercache_backend_gets_total{mountpoint="/m"} 7.0',
                 'tiercache_backend_gets_per_second{mountpoint="/m"} 1.5',
                 'tiercache_hit_ratio{mountpoint="/m"} 0.75', 'tiercache_prefetch_lead_files{mountpoint="/m"} 2.0',
                 'tiercache_dirty_bytes{mountpoint="/m"} 11.0',
                 'tiercache_oldest_pending_age_seconds{mountpoint="/m"} 4.0'):
        assert line in text, line


def test_warm_evict_pin_plan_usage_errors(tmp_path):
    assert_one_line_error(run_cli("warm"), "no paths")
    assert_one_line_error(run_cli("warm", "x", "--tier", "gpu"), "invalid choice")
    assert_one_line_error(run_cli("evict"), "required")
    assert_one_line_error(run_cli("pin"), "required")
    assert_one_line_error(run_cli("plan", str(tmp_path)), "--from-list")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    assert_one_line_error(run_cli("warm", "--from-list", str(empty)), "no paths", "empty")


def test_mountinfo_unescape():
    assert mounts._unescape(r"/tmp/a\040b") == "/tmp/a b"
    assert mounts._unescape(r"/tmp/x\134y") == "/tmp/x\\y"
    assert mounts.find_mount("/proc") is None


# ---------------------------------------------------------------- control socket


class FakeDaemon:
    def __init__(self):
        self.cache = self
        self.writes = None
        self.info = {"mountpoint": "/m", "source": "s3://b"}
        self.shutdown = None

    def stats(self):
        return {"ram": {"used": 1}}

    def stat(self, path):
        raise NotFound(f"{path}: no such file")

    def request_shutdown(self, drain=True, timeout=None, unmount=False):
        self.shutdown = (drain, timeout, unmount)


@pytest.fixture
def server(tmp_path):
    daemon = FakeDaemon()
    srv = control.ControlServer(str(tmp_path / "control.sock"), daemon).start()
    try:
        yield srv, daemon
    finally:
        srv.stop()


def test_control_protocol(server):
    srv, daemon = server
    assert os.stat(srv.socket_path).st_mode & 0o777 == 0o600
    client = control.ControlClient(srv.socket_path)
    assert client.request("ping")["source"] == "s3://b"
    assert client.request("stats")["cache"] == {"ram": {"used": 1}}
    assert client.request("drain_status")["dirty_bytes"] == 0
    client.request("shutdown", drain=False, timeout=5)
    assert daemon.shutdown == (False, 5, False)
    with pytest.raises(ConfigError, match="unknown op 'nope'"):
        client.request("nope")

    @control.handler("test_progress")
    def progress_op(d, args, progress):
        for i in range(args["n"]):
            progress({"i": i})
        d.cache.stat("gone")

    try:
        seen = []
        with pytest.raises(NotFound, match="gone: no such file") as info:
            client.request("test_progress", n=3, on_progress=seen.append)
        assert seen == [{"i": 0}, {"i": 1}, {"i": 2}] and info.value.errno == 2
    finally:
        control.HANDLERS.pop("test_progress")
    with socket.socket(socket.AF_UNIX) as raw:  # garbage in, one error line out, server still fine
        raw.connect(srv.socket_path)
        raw.sendall(b"not json\n")
        assert json.loads(raw.makefile("rb").readline())["ok"] is False
    assert client.request("ping")["mountpoint"] == "/m"


@pytest.mark.skipif(os.geteuid() != 0 or not os.access("/usr/bin/python3", os.X_OK),
                    reason="needs root (to act as another user) and a system python3")
def test_control_refuses_other_users():
    open_dir = tempfile.mkdtemp(prefix="tc-peercred-")
    os.chmod(open_dir, 0o755)  # let the other user reach the socket (and so the peer-credential check)
    srv = control.ControlServer(os.path.join(open_dir, "control.sock"), FakeDaemon()).start()
    try:
        os.chmod(srv.socket_path, 0o666)
        reply = _reply_as_nobody(srv)
        assert reply["ok"] is False and "permission denied" in reply["error"]
    finally:
        srv.stop()
        shutil.rmtree(open_dir, ignore_errors=True)


def _reply_as_nobody(srv) -> dict:
    """What the server answers a connection from uid 65534 (nobody), before any request."""
    code = (
        "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]);"
        "print(s.makefile().readline())"  # refused at once, before any request
    )
    proc = subprocess.run(["/usr/bin/python3", "-c", code, srv.socket_path], user=65534, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_client_of_a_dead_daemon(tmp_path):
    with pytest.raises(control.DaemonUnreachable, match="not running"):
        control.ControlClient(str(tmp_path / "none.sock")).request("ping")


def test_long_state_dir_gets_a_short_socket(tmp_path):
    deep = tmp_path / ("d" * 120)
    path = mounts.socket_path_for(deep, "/mnt/somewhere")
    assert len(path.encode()) <= 107 and path.endswith(".sock")


# ---------------------------------------------------------------- with FUSE


@needs_fuse
@pytest.mark.fuse
@pytest.mark.timeout(60)
def test_missing_bucket_and_unreachable_endpoint(s3_server, mnt, tmp_path):
    common = ["--ssd", str(tmp_path / "c"), "--ssd-size", "0"]
    endpoint = ["--endpoint-url", s3_server.endpoint]
    proc = run_cli("mount", "s3://no-such-bucket-here", str(mnt), *common, *endpoint)
    assert_one_line_error(proc, "no-such-bucket-here", "does not exist")
    proc = run_cli("mount", "s3://some-bucket", str(mnt), *common, "--endpoint-url", "http://127.0.0.1:9")
    assert_one_line_error(proc, "cannot reach endpoint")
    assert not is_mounted(mnt)


@needs_fuse
@pytest.mark.fuse
@pytest.mark.timeout(60)
def test_busy_mountpoint_and_cache_dir_in_use(bucket, mounter, tmp_path):
    m = mounter.mount(bucket.url)
    assert_one_line_error(run_cli("mount", bucket.url, str(m.path), "--ssd", str(tmp_path / "other")), "busy")
    second = tmp_path / "second"
    second.mkdir()
    proc = run_cli("mount", bucket.url, str(second), "--ssd", str(m.cache_dir), "--ssd-size", "0")
    assert_one_line_error(proc, "in use")
    assert not is_mounted(second)
    assert "mounted" in run_cli("unmount", str(m.path)).stderr
    assert_one_line_error(run_cli("unmount", str(m.path)), "not a mount")


@needs_fuse
@pytest.mark.fuse
@pytest.mark.timeout(60)
def test_foreground_mount_stops_on_sigint(bucket, mnt, tmp_path):
    bucket.put("a.txt", b"A")
    cmd = [*CLI, "mount", bucket.url, str(mnt), "--foreground", "--ssd", str(tmp_path / "c"),
           "--ssd-size", "0"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not is_mounted(mnt) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert (mnt / "a.txt").read_bytes() == b"A"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "mounted s3://" in err and not is_mounted(mnt)
    finally:
        if proc.poll() is None:
            proc.kill()
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)


@needs_fuse
@pytest.mark.fuse
@pytest.mark.timeout(60)
def test_unmount_of_a_killed_daemon_needs_force(bucket, mounter):
    m = mounter.mount(bucket.url)
    pid = m.pid
    os.kill(pid, signal.SIGKILL)
    threading.Event().wait(0.2)
    while mounts.pid_alive(pid):
        time.sleep(0.05)
    assert_one_line_error(run_cli("unmount", str(m.path)), "not running", "--force")
    forced = run_cli("unmount", "--force", str(m.path))
    assert forced.returncode == 0, forced.stderr
    assert not is_mounted(m.path)
