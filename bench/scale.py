"""Metadata at scale (issue 12): memory per object and per block, restart and big-directory times, at N objects.

    python bench/scale.py [--objects 100K,1M] [--size 1K] [--label before] [--no-mount] [--profile]

Run by hand, not in CI. The source is the synthetic store (``store/synthetic.py``: bytes derived from the key,
nothing held), so N can be 10 M (``--objects 10M``). For each N, each phase runs in its own process (RSS is
the process's own) on one cache dir, in order:

* ``list``: library open, then the first listing of the whole store (a cold LIST of N keys);
* ``warm``: reopen (the listing comes back from LMDB), warm every object into the SSD tier;
* ``plan``: reopen, ``set_plan`` of all N keys for one client;
* ``restart``: library ``open`` + the first read of a cached file + the first ``listdir`` of the big dir;
* ``mount``: a real mount (when FUSE is available): ready time, first read, ``ls`` and ``ls -l`` of the
  100 K directory, the daemon's RSS.

Bytes per object are RSS deltas divided by N (per listed object: after listing minus before; per block:
after warm minus after listing); ``allocated_blocks`` counts Python allocations (``sys.getallocatedblocks``),
a structural measure of restart work. ``--profile`` adds tracemalloc's top allocation sites per phase.
Writes bench/results/scale[_LABEL].json and prints a table with issue 12's targets and the ratio to them.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from results_file import write_result  # noqa: E402

os.environ["TIERCACHE_SYNTHETIC_STORE"] = "1"

from scale_report import table  # noqa: E402
from scale_warm import boto_phase, raw_store_rate, seed_ssd  # noqa: E402

from tiercache.config import parse_size  # noqa: E402

PHASES = ("list", "warm", "plan", "restart", "mount")
TARGETS = {  # issue 12; bytes beyond a fixed base, seconds at 10 M
    "bytes_per_listed_object": 150, "bytes_per_cached_block": 150, "restart_open_plus_first_read_s": 2.0,
    "mount_ready_plus_first_read_s": 2.0, "ls_l_big_dir_s": 3.0,
}


def rss(pid: int | str = "self", field: str = "VmRSS") -> int:
    """Resident bytes of a process (``field``: VmRSS, VmHWM, RssAnon)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def source_url(objects: int, size: int) -> str:
    """The synthetic store's URL for N objects of about ``size`` bytes."""
    return f"synthetic://scale?objects={objects}&size={size}"


class Probe:
    """Checkpoints of one phase: RSS, Python allocations and (with --profile) tracemalloc snapshots."""

    def __init__(self, profile: bool):
        self.profile = profile
        self.points: dict[str, dict] = {}
        self._snaps: dict[str, object] = {}
        if profile:
            import tracemalloc

            tracemalloc.start(1)

    def mark(self, name: str) -> dict:
        gc.collect()
        point = {"rss": rss(), "rss_anon": rss(field="RssAnon"), "rss_file": rss(field="RssFile"),
                 "allocated_blocks": sys.getallocatedblocks(), "gc_objects": len(gc.get_objects())}
        self.points[name] = point
        if self.profile:
            import tracemalloc

            self._snaps[name] = tracemalloc.take_snapshot()
        return point

    def top(self, start: str, end: str, limit: int = 10) -> list[dict]:
        """tracemalloc's biggest growths between two marks, by source line."""
        if not self.profile:
            return []
        stats = self._snaps[end].compare_to(self._snaps[start], "lineno")
        return [{"where": f"{os.path.relpath(s.traceback[0].filename, ROOT)}:{s.traceback[0].lineno}",
                 "bytes": s.size_diff, "count": s.count_diff} for s in stats[:limit]]


def _open(args: argparse.Namespace):
    import tiercache

    return tiercache.open(source_url(args.objects, args.size), ram=args.ram, ssd=args.cache,
                          ssd_size=args.ssd_size, block_size=args.block_size, metadata_ttl="inf", mode="readonly")


def count(text: str) -> int:
    """An object count: 20000, 100K, 1M, 10M (decimal multiples)."""
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(text[-1:], 1)
    try:
        return int(float(text[:-1] if scale > 1 else text) * scale)
    except ValueError:
        raise SystemExit(f"scale: {text!r} is not an object count (e.g. 100K, 1M)") from None


def phase_list(args: argparse.Namespace, probe: Probe) -> dict:
    from tiercache.store.synthetic import synthetic_store_from_url

    t0 = time.perf_counter()
    raw = sum(1 for _ in synthetic_store_from_url(source_url(args.objects, args.size)).list())
    store_list_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cache = _open(args)
    opened = time.perf_counter()
    probe.mark("opened")
    names = cache.listdir("")
    listed = time.perf_counter()
    probe.mark("listed")
    ns = cache.stats()["namespace"]
    cache.close()
    before, after = probe.points["opened"], probe.points["listed"]
    return {"open_s": opened - t0, "list_s": listed - opened, "top_names": names, "namespace": ns,
            "store_list_s": store_list_s, "store_listed": raw, "list_over_store_list": (listed - opened) / store_list_s,
            "bytes_per_listed_object": (after["rss"] - before["rss"]) / args.objects,
            "anon_bytes_per_listed_object": (after["rss_anon"] - before["rss_anon"]) / args.objects,
            "allocated_blocks_per_object": (after["allocated_blocks"] - before["allocated_blocks"]) / args.objects,
            "top": probe.top("opened", "listed")}


def phase_warm(args: argparse.Namespace, probe: Probe) -> dict:
    t0 = time.perf_counter()
    cache = _open(args)
    cache.listdir("")
    reloaded = time.perf_counter()
    probe.mark("listed")
    from tiercache.store.synthetic import synthetic_store_from_url

    store = synthetic_store_from_url(source_url(args.objects, args.size))
    if args.seed:  # the SSD tier filled directly: what a warm leaves, for N too large to warm here
        report = seed_ssd(cache, store)
        report["files"] = report["seeded"]
    else:
        report = cache.warm("", tier="ssd")
    warmed = time.perf_counter()
    probe.mark("warmed")
    stats = cache.stats()
    pages = {db: cache.meta.page_bytes(db) for db in ("ssd_index", "objects")}
    sample = [store.key(i) for i in range(0, args.objects, max(1, args.objects // 100_000))]
    raw_rate = raw_store_rate(store, sample, cache.config.threads)
    cache.close()
    blocks = stats["ssd"].get("blocks") or args.objects
    files = sum(len(f) for _, _, f in os.walk(args.cache))
    rate = report["files"] / max(1e-9, warmed - reloaded)
    out = {"reload_listing_s": reloaded - t0, "warm_s": warmed - reloaded, "seeded": bool(args.seed),
            "files_per_s": rate, "warm": report, "store_get_files_per_s": raw_rate,
            "warm_over_store_get": rate / raw_rate, "threads": cache.config.threads,
            "ssd_state_bytes_per_block": stats["ssd"].get("state_bytes", 0) / max(1, blocks),
            "ssd": stats["ssd"], "cache_dir_files": files, "blocks": blocks,
            "cache_dir_bytes": sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(args.cache) for f in fs),
            "bytes_per_cached_block": (probe.points["warmed"]["rss"] - probe.points["listed"]["rss"]) / blocks,
            "anon_bytes_per_cached_block":
                (probe.points["warmed"]["rss_anon"] - probe.points["listed"]["rss_anon"]) / blocks,
            "file_bytes_per_cached_block":
                (probe.points["warmed"]["rss_file"] - probe.points["listed"]["rss_file"]) / blocks,
            "cache_dir_bytes_per_block": None, "ssd_index_page_bytes_per_block": pages["ssd_index"] / blocks,
            "objects_page_bytes_per_object": pages["objects"] / args.objects,
            "meta_file_bytes": os.path.getsize(os.path.join(args.cache, "meta", "data.mdb")),
            "top": probe.top("listed", "warmed")}
    out["cache_dir_bytes_per_block"] = out["cache_dir_bytes"] / blocks
    return out


def phase_plan(args: argparse.Namespace, probe: Probe) -> dict:
    from tiercache.store.synthetic import synthetic_store_from_url

    cache = _open(args)
    cache.listdir("")
    cache.ssd.validated(args.phase_timeout)  # the background walk's mapped pages are not the plan's
    probe.mark("listed")
    keys = [synthetic_store_from_url(source_url(args.objects, args.size)).key(i) for i in range(args.objects)]
    probe.mark("keys")
    t0 = time.perf_counter()
    entries = cache.set_plan(keys, client="scale")
    planned = time.perf_counter()
    probe.mark("planned")  # the caller's key list is still held: planned - keys is what the plan adds
    del keys
    plan_bytes = cache.stats()["plan_bytes"]
    cache.close()
    points = probe.points
    return {"plan_entries": entries, "set_plan_s": planned - t0, "plan_bytes_reported": plan_bytes,
            "bytes_per_plan_entry": (points["planned"]["rss"] - points["keys"]["rss"]) / args.objects,
            "key_list_bytes_per_entry": (points["keys"]["rss"] - points["listed"]["rss"]) / args.objects,
            "top": probe.top("keys", "planned")}


def phase_restart(args: argparse.Namespace, probe: Probe) -> dict:
    from tiercache.store.synthetic import synthetic_store_from_url

    store = synthetic_store_from_url(source_url(args.objects, args.size))
    key = store.key(args.objects // 2)
    probe.mark("start")
    t0 = time.perf_counter()
    cache = _open(args)
    opened = time.perf_counter()
    probe.mark("opened")
    data = cache.read(key)
    read = time.perf_counter()
    probe.mark("read")
    index_reads = {db: cache.meta.reads[db] for db in ("ssd_index", "regions")}
    names = cache.listdir("big")
    listed = time.perf_counter()
    backend_gets = cache.stats()["backend"]["gets"]
    validated = cache.ssd.validated(args.phase_timeout)
    validated_s = time.perf_counter() - t0
    probe.mark("validated")
    blocks = cache.stats()["ssd"]["blocks"]
    cache.close()
    p = probe.points
    return {"open_s": opened - t0, "first_read_s": read - opened, "first_listdir_big_s": listed - read,
            "index_reads_to_first_read": index_reads, "background_validation_s": validated_s,
            "validated": validated, "blocks_after_validation": blocks,
            "open_plus_first_read_s": read - t0, "first_read_ok": bytes(data) == store.content(key),
            "first_read_from_store": backend_gets, "big_dir_entries": len(names),
            "allocated_blocks_at_open": p["opened"]["allocated_blocks"] - p["start"]["allocated_blocks"],
            "allocated_blocks_at_first_read": p["read"]["allocated_blocks"] - p["opened"]["allocated_blocks"],
            "rss_growth_open_plus_read": p["read"]["rss"] - p["start"]["rss"],
            "rss_after_validation": p["validated"]["rss"], "rss_anon_after_validation": p["validated"]["rss_anon"],
            "top": probe.top("start", "read")}


def _cli(*argv: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tiercache.cli", *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def _timed_shell(cmd: list[str], timeout: float) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=timeout)
    return time.perf_counter() - t0


def phase_mount(args: argparse.Namespace, probe: Probe) -> dict:
    from tiercache import mounts
    from tiercache.store.synthetic import synthetic_store_from_url

    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        return {"skipped": "no FUSE here"}
    store = synthetic_store_from_url(source_url(args.objects, args.size))
    key = store.key(args.objects // 2 + 1)
    mnt = tempfile.mkdtemp(prefix="tc-scale-mnt-")
    t0 = time.perf_counter()
    proc = _cli("mount", source_url(args.objects, args.size), mnt, "--ssd", args.cache, "--ssd-size",
                args.ssd_size, "--ram", args.ram, "--block-size", args.block_size, "--mode", "readonly",
                "--metadata-ttl", "inf", timeout=args.phase_timeout)
    ready = time.perf_counter()
    if proc.returncode != 0:
        os.rmdir(mnt)
        return {"error": proc.stderr.strip()[-500:]}
    out: dict = {"ready_s": ready - t0}
    try:
        pid = mounts.find_mount(mnt).pid
        out["rss_ready"] = rss(pid)
        t1 = time.perf_counter()
        with open(os.path.join(mnt, key), "rb") as fh:
            ok = fh.read() == store.content(key)
        out["first_read_s"] = time.perf_counter() - t1
        out["ready_plus_first_read_s"] = out["ready_s"] + out["first_read_s"]
        out["first_read_ok"] = ok
        out["rss_after_first_read"] = rss(pid)
        big = os.path.join(mnt, "big")
        out["ls_big_s"] = _timed_shell(["ls", big], args.phase_timeout)
        out["ls_l_big_s"] = _timed_shell(["ls", "-l", big], args.phase_timeout)
        out["rss_after_ls"] = rss(pid)
        out["peak_rss"] = rss(pid, "VmHWM")
    finally:
        done = _cli("unmount", "--force", mnt, timeout=120)
        if done.returncode != 0:
            subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)
        os.rmdir(mnt)
    return out


def run_phase(args: argparse.Namespace) -> int:
    import tiercache.cache  # noqa: F401 - imports are not restart work

    probe = Probe(args.profile)
    probe.mark("base")
    result = globals()[f"phase_{args.phase}"](args, probe)
    result["rss"] = {name: p["rss"] for name, p in probe.points.items()}
    result["rss_anon"] = {name: p["rss_anon"] for name, p in probe.points.items()}
    result["rss_file"] = {name: p["rss_file"] for name, p in probe.points.items()}
    result.setdefault("peak_rss", rss(field="VmHWM"))  # the mount phase's is the daemon's own
    print(json.dumps(result))
    return 0


def run_all(args: argparse.Namespace) -> dict:
    runs = []
    for n in [count(x) for x in args.objects_list.split(",")]:
        work = tempfile.mkdtemp(prefix="tc-scale-", dir=args.work)
        cache = os.path.join(work, "cache")
        ssd_size = str(max(1 << 30, int(n * args.size * 1.25 * 1.3)))
        run: dict = {"objects": n}
        for phase in args.phases.split(","):
            if phase == "mount" and args.no_mount:
                continue
            cmd = [sys.executable, os.path.abspath(__file__), "--phase", phase, "--objects", str(n), "--size",
                   str(args.size), "--cache", cache, "--ssd-size", ssd_size, "--ram", args.ram, "--block-size",
                   args.block_size, "--phase-timeout", str(args.phase_timeout)]
            cmd += ["--profile"] if args.profile else []
            cmd += ["--seed", "1"] if args.seed and n >= args.seed else []
            print(f"[scale] N={n:,} {phase} ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.phase_timeout)
                lines = proc.stdout.strip().splitlines()
                run[phase] = json.loads(lines[-1]) if proc.returncode == 0 and lines else {
                    "error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
            except subprocess.TimeoutExpired:
                run[phase] = {"error": f"timed out after {args.phase_timeout:.0f} s"}
            run[phase]["phase_wall_s"] = time.perf_counter() - t0
            print(f"[scale]   {run[phase]['phase_wall_s']:.1f} s {run[phase].get('error', '')}", file=sys.stderr)
            if "error" in run[phase] and phase in ("list", "warm"):
                break
        runs.append(run)
        shutil.rmtree(work, ignore_errors=True)
    boto = None
    if args.boto_objects:
        print(f"[scale] warm vs raw boto3, {args.boto_objects:,} objects ...", file=sys.stderr, flush=True)
        boto = boto_phase(args.boto_objects, args.size, args.threads)
    return {"label": args.label, "boto": boto, "size": args.size, "block_size": args.block_size, "ram": args.ram,
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                     cwd=ROOT).stdout.strip(),
            "cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg(), "targets": TARGETS, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", dest="objects_list", default="100K,1M", help="comma-separated N (10M allowed)")
    parser.add_argument("--size", default="1K", help="mean object size (each within ±25%%)")
    parser.add_argument("--block-size", default="4M")
    parser.add_argument("--ram", default="64M")
    parser.add_argument("--phases", default=",".join(PHASES))
    parser.add_argument("--phase-timeout", type=float, default=600.0)
    parser.add_argument("--no-mount", action="store_true")
    parser.add_argument("--profile", action="store_true", help="tracemalloc top allocation sites (slower)")
    parser.add_argument("--label", default="")
    parser.add_argument("--seed", type=count, default=0,
                        help="from this N on, fill the SSD tier directly instead of warming (e.g. 10M)")
    parser.add_argument("--boto-objects", type=count, default=0,
                        help="also warm this many objects from a local S3 server against raw boto3 (e.g. 20K)")
    parser.add_argument("--threads", type=int, default=16, help="threads of the boto3 comparison (both sides)")
    parser.add_argument("--work", default=None, help="where the cache dirs go (default: the temp dir)")
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--ssd-size", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.size = parse_size(args.size, "size")
    if args.phase:
        args.objects = count(args.objects_list)
        return run_phase(args)
    result = run_all(args)
    write_result("scale", result, args.label)
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
