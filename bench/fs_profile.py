"""Where a mount daemon spends its time: py-spy on the daemon during a cold 1 MiB sequential read and warm
64 KiB random reads (SSD-served and RAM-served), and the do-nothing mfusepy filesystem doing the same.

    python bench/fs_profile.py LABEL [--size 512M] [--seconds 6] [--rate 67]

One file of ``--size`` in the local S3 server (own process, fast_ranges). Phases, each with
``py-spy record --native --idle`` attached to the daemon (py-spy pauses the daemon to sample: the rates here
are slower than unprofiled ones; the split is what matters) and the daemon's CPU seconds from /proc:
  cold_seq     fresh mount (--ram 64M), the file read start to end in 1 MiB reads;
  warm_ssd     same mount, --threads threads of 64 KiB reads at random 64 KiB-aligned offsets, page cache
               dropped before each (so each read is a FUSE request served by the SSD tier);
  warm_ram     a mount with --ram 1G that read the file once, the same random reads (RAM tier);
  ceiling_*    bench/fuse_ceiling.py serving the same file: the same random reads and sequential read.
Writes bench/results/fs_profile_LABEL.json (+ the raw py-spy files next to it) and prints the split.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import fs_stacks  # noqa: E402
from fs_data import LARGE_KEY, MiB, big_file, load_average, s3_client, upload  # noqa: E402
from fs_mounts import CREDS, CeilingMount, TiercacheMount  # noqa: E402
from fs_phases import drop_page_cache, random_uncached, read_sequential  # noqa: E402

from tiercache.config import parse_size  # noqa: E402
from tiercache.devserver import LocalS3Process  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def py_spy() -> str | None:
    """The py-spy next to this python, or on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return here if os.path.exists(here) else shutil.which("py-spy")


def profiled(name: str, pid: int, measure, out_dir: str, rate: int) -> dict:
    """Run ``measure()`` with py-spy sampling ``pid`` (``rate`` 0: no py-spy); the measure's result, the
    daemon's CPU and the split."""
    raw = os.path.join(out_dir, f"{name}.txt")
    spy = py_spy() if rate else None
    proc = None
    if spy:
        proc = subprocess.Popen([spy, "record", "--pid", str(pid), "--native", "--idle", "--rate", str(rate),
                                 "--format", "raw", "--output", raw], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # py-spy attached
    cpu0, start = cpu_seconds(pid), time.perf_counter()
    result = measure()
    wall, cpu = time.perf_counter() - start, cpu_seconds(pid) - cpu0
    if proc is not None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    result.update(daemon_cpu_s=round(cpu, 3), wall_s=round(wall, 3), daemon_cpu_share=round(cpu / wall, 3))
    ops = result.get("reads")
    if ops:
        result["daemon_cpu_us_per_read"] = round(cpu / ops * 1e6, 1)
    if result.get("bytes"):
        result["daemon_cpu_ms_per_mib"] = round(cpu / (result["bytes"] / MiB) * 1e3, 3)
    if spy and os.path.exists(raw):
        with open(raw) as fh:
            result["split"] = fs_stacks.split(fh.read())
    else:
        result["split"] = None
        result["note"] = "not profiled (--rate 0)" if not rate else "py-spy not installed (pip install py-spy)"
    return result


def print_split(name: str, result: dict) -> None:
    keys = ("ops_per_s", "mb_per_s", "daemon_cpu_us_per_read", "daemon_cpu_ms_per_mib", "daemon_cpu_share")
    print(f"\n== {name}: " + ", ".join(f"{k}={result[k]:.1f}" for k in keys if k in result))
    split = result.get("split") or {}
    for who, counts in split.get("by_role", {}).items():
        total = sum(counts.values())
        cells = ", ".join(f"{k} {v:.0%}" for k, v in fs_stacks.shares(counts).items() if v >= 0.01)
        print(f"  {who} [{total}]: {cells}")
    for frame, count in split.get("request_top_frames", [])[:8]:
        print(f"    {count:>6}  {frame}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("label")
    parser.add_argument("--size", default="512M")
    parser.add_argument("--seconds", type=float, default=6.0, help="each random-read phase")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rate", type=int, default=67,
                        help="py-spy samples per second (0: no py-spy, unperturbed rates)")
    parser.add_argument("--latency", type=float, default=0.0, help="time to first byte of the S3 server")
    args = parser.parse_args(argv)
    args.ram = "64M"
    os.environ.update(CREDS)
    size = parse_size(args.size)
    work = tempfile.mkdtemp(prefix="tc-fsprofile-")
    out_dir = os.path.join(HERE, "results", f"fs_profile_{args.label}")
    os.makedirs(out_dir, exist_ok=True)
    local = os.path.join(work, "local")
    big_file(os.path.join(local, LARGE_KEY), size, random.Random(1))
    server = LocalS3Process(fast_ranges=True).start()
    report: dict = {"label": args.label, "size": size, "threads": args.threads, "rate": args.rate,
                    "latency_s": args.latency, "load_average_start": load_average(), "phases": {}}
    phases = report["phases"]
    mounts: list = []
    try:
        upload(server.endpoint, local, [], [LARGE_KEY])
        s3_client(server.endpoint, 1)
        if args.latency:
            server.set_latency(args.latency)
        mount = TiercacheMount(server.endpoint, work, args, ram="64M", tag="-ram64M")
        mounts.append(mount)
        path = os.path.join(mount.path, LARGE_KEY)
        phases["cold_seq"] = profiled("cold_seq", mount.pid, lambda: read_sequential(path), out_dir, args.rate)
        time.sleep(3)  # the SSD write queue drains
        phases["warm_ssd"] = profiled("warm_ssd", mount.pid,
                                      lambda: random_uncached(path, args.seconds, args.threads), out_dir, args.rate)
        drop_page_cache([path])
        phases["warm_ssd_seq"] = profiled("warm_ssd_seq", mount.pid, lambda: read_sequential(path), out_dir,
                                          args.rate)
        report["stats_ram64M"] = (mount.stats().get("cache") or {})
        mount.close()
        mounts.remove(mount)
        mount = TiercacheMount(server.endpoint, work, args, ram="1G", tag="-ram1G")
        mounts.append(mount)
        path = os.path.join(mount.path, LARGE_KEY)
        read_sequential(path)
        read_sequential(path)
        drop_page_cache([path])
        phases["warm_ram"] = profiled("warm_ram", mount.pid,
                                      lambda: random_uncached(path, args.seconds, args.threads), out_dir, args.rate)
        mount.close()
        mounts.remove(mount)
        mount = CeilingMount(server.endpoint, work, args, local=local)
        mounts.append(mount)
        path = os.path.join(mount.path, LARGE_KEY)
        phases["ceiling_random"] = profiled("ceiling_random", mount.pid,
                                            lambda: random_uncached(path, args.seconds, args.threads), out_dir,
                                            args.rate)
        drop_page_cache([path])
        phases["ceiling_seq"] = profiled("ceiling_seq", mount.pid, lambda: read_sequential(path), out_dir,
                                         args.rate)
    finally:
        for mount in mounts:
            mount.close()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    report["load_average_end"] = load_average()
    report["when"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    path = os.path.join(HERE, "results", f"fs_profile_{args.label}.json")
    with open(path, "w") as fh:
        json.dump(report, fh, indent=1)
    for name, result in phases.items():
        print_split(name, result)
    print(f"\nwrote {path} (raw py-spy samples in {out_dir})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
