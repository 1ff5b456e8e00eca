"""Filesystem benchmark: a tiercache mount side by side with a local directory, raw boto3, s3fs, rclone and the
do-nothing mfusepy filesystem (the Python FUSE ceiling); with ``--before REF`` also tiercache as of git REF.

    python bench/fs.py LABEL                                 # 2000 x 100 KB + 256 MiB, everything
    python bench/fs.py LABEL --files 1000 --before 252b5cb   # issue 13's goals, before -> after
    python bench/fs.py LABEL --dry-run                       # seconds: tiny data, no s3fs/rclone/fio

Every target reads the same data from the same local S3 server: moto in its own process with ``fast_ranges``
(a ranged GET costs what the range costs, as on S3), once as is and once with 20 ms before the first byte of
every response (the cold phases are repeated under it). Targets:

  local           the files on a local disk (the page cache is its only cache)
  boto3           raw boto3, same threads: LIST, GETs, parallel 8 MiB ranges of the large object
  tiercache       ``--mode readonly --metadata-ttl inf --ram 1G`` (``-before``: the same from --before REF)
  tiercache-ssd   the same with ``--ram 64M``: the large file is served by the SSD tier
  s3fs, rclone    s3fs ``use_cache``, rclone ``--vfs-cache-mode full`` (when installed)
  ceiling         bench/fuse_ceiling.py: same names and sizes, bytes from memory, tiercache's libfuse options
  ceiling-s3      bench/fuse_stream_ceiling.py: the same fed by boto3's 8 MiB ranged GETs, cold large read only
  library         library mode (``TieredCache.read``, no FUSE hop), bench/fs_library.py: cold with ``--ram``
                  (as the tiercache mount), again and the rest with ``--ssd-ram``

Phases (bench/fs_phases.py, bench/fs_fio.py): metadata walk; small files with N threads; large sequential
read in 1 MiB reads; 64 KiB random reads (cold on a second large file, fresh mount; warm after the large read,
page cache dropped once); 64 KiB random reads with the page cache dropped before each read (``-ssd``: SSD
tier vs the local copy at the same time); fio randread 4 KiB and 64 KiB (``--direct=1``; Python stand-in
without fio). cold = fresh mount, empty cache; warm = the mount's cache holds the data, kernel page cache
dropped; hot = read again at once. Warm and hot are the best of up to --rounds runs. Writes
bench/results/fs_LABEL.json (load averages included) and prints the phase table and issue 13's goals table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import fs_plan  # noqa: E402
import fs_report  # noqa: E402
from fs_data import check_server, host, load_average, make_data, upload  # noqa: E402
from fs_fio import fio_installed  # noqa: E402
from fs_mounts import (  # noqa: E402
    BUCKET,
    CREDS,
    ROOT,
    CeilingMount,
    RcloneMount,
    S3fsMount,
    StreamCeilingMount,
    TiercacheMount,
    code_tree,
)
from fs_phases import (  # noqa: E402
    boto3_phases,
    drop_page_cache,
)

from tiercache.config import parse_size  # noqa: E402
from tiercache.devserver import LocalS3Process  # noqa: E402

ALL_TARGETS = ("local", "boto3", "tiercache", "tiercache-ssd", "library", "s3fs", "rclone", "ceiling", "ceiling-s3")


class Bench:
    """One run: the data set, the server, the arguments, and the results as they come."""

    def __init__(self, args, work: str):
        self.args = args
        self.work = work
        self.local = os.path.join(work, "local")
        self.results: dict = {}
        self.notes: list[str] = []
        self.load: dict[str, list[float]] = {}

    def paths(self, root: str) -> tuple[list[str], str, str]:
        return ([os.path.join(root, k) for k in self.keys], os.path.join(root, self.big),
                os.path.join(root, self.rand))

    def mount_and_measure(self, makes: dict[str, object], measure) -> None:
        """Mount every ``makes`` (name -> make()) at once, store ``measure({name: mount path})`` per name,
        always unmount all."""
        print(" + ".join(makes) + " ...", flush=True)
        mounts: dict[str, object] = {}
        try:
            for name, make in makes.items():
                try:
                    mounts[name] = make()
                except Exception as exc:  # noqa: BLE001 - one target failing must not sink the others
                    self.notes.append(f"{name}: could not mount: {str(exc)[:300]}")
            if not mounts:
                return
            try:
                self.results.update(measure({name: m.path for name, m in mounts.items()}))
            except Exception as exc:  # noqa: BLE001 - e.g. a mount that fails mid-phase: note it, go on
                self.notes.append(f"{'+'.join(mounts)}: failed: {type(exc).__name__}: {str(exc)[:300]}")
            for name, mount in mounts.items():
                if isinstance(mount, TiercacheMount):
                    self.results[name + "_stats"] = {**mount.stats(), "daemon_code": mount.daemon_code()}
        finally:
            for mount in mounts.values():
                mount.close()
        for name in makes:
            self.load[name] = load_average()


def library(bench: Bench, endpoint: str, name: str, tree: str | None) -> None:
    """bench/fs_library.py (library mode: the cold read with --ram, as the tiercache mount's; the rest with
    --ssd-ram) in its own process, from ``tree`` (None: this one)."""
    args = bench.args
    print(f"{name} ...", flush=True)
    env = {**os.environ, **CREDS, **({"PYTHONPATH": tree} if tree else {})}
    cmd = [sys.executable, os.path.join(HERE, "fs_library.py"), endpoint, BUCKET, bench.big, bench.rand,
           "--ram", args.ssd_ram, "--cold-ram", args.ram, "--threads", str(args.threads),
           "--seconds", str(args.ssd_seconds / 2), "--cold-random-reads", str(args.cold_random_reads)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree or ROOT, timeout=300)
    except subprocess.TimeoutExpired:
        bench.notes.append(f"{name}: timed out")
        return
    if proc.returncode != 0:
        bench.notes.append(f"{name}: failed: {(proc.stderr.strip().splitlines() or ['?'])[-1][:300]}")
        return
    bench.results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    bench.load[name] = load_average()


def mount_groups(bench: Bench, endpoint: str, trees: dict[str, str | None]) -> list[tuple[dict, str]]:
    """({result name: make()}, phase kind) for the mounted targets chosen, in the order they run; a tiercache
    target and its ``-before`` twin are one group (mounted together, measured side by side)."""
    args, work = bench.args, bench.work
    out: list = []
    if "tiercache" in args.targets:
        out.append(({"tiercache" + suffix: lambda t=tree, s=suffix: TiercacheMount(endpoint, work, args, tree=t,
                                                                                    tag=s)
                     for suffix, tree in trees.items()}, "tree"))
    if "tiercache-ssd" in args.targets:
        out.append(({"tiercache-ssd" + suffix: lambda t=tree, s=suffix: TiercacheMount(
            endpoint, work, args, ram=args.ssd_ram, tree=t, tag="-ssd" + s) for suffix, tree in trees.items()},
            "ssd"))
    for cls in (S3fsMount, RcloneMount):
        if cls.name not in args.targets:
            continue
        if shutil.which(cls.name) is None:
            bench.notes.append(f"{cls.name}: not installed (apt-get install -y {cls.name})")
            continue
        out.append(({cls.name: lambda c=cls: c(endpoint, work, args)}, "tree"))
    if "ceiling" in args.targets:
        out.append(({"ceiling": lambda: CeilingMount(endpoint, work, args, local=bench.local)}, "ceiling"))
    if "ceiling-s3" in args.targets:
        out.append(({"ceiling-s3": lambda: StreamCeilingMount(endpoint, work, args, local=bench.local)}, "stream"))
    return out


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("label", nargs="?", default="default")
    parser.add_argument("--files", type=int, default=2000, help="small files (default 2000)")
    parser.add_argument("--file-size", default="100K", help="mean small file size (default 100K)")
    parser.add_argument("--large", default="256M", help="size of the large file (default 256M)")
    parser.add_argument("--random-size", default="128M", help="the file for cold random reads (default 128M)")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--random-reads", type=int, default=2000, help="warm 64 KiB random reads")
    parser.add_argument("--cold-random-reads", type=int, default=500, help="cold 64 KiB random reads")
    parser.add_argument("--rounds", type=int, default=5, help="best of N rounds for warm/hot phases (default 5)")
    parser.add_argument("--round-budget", type=float, default=4.0,
                        help="no new round once a phase has taken this many seconds (default 4)")
    parser.add_argument("--ram", default="1G", help="tiercache RAM tier")
    parser.add_argument("--ssd-ram", default="64M", help="RAM tier of the tiercache-ssd mount")
    parser.add_argument("--ssd-seconds", type=float, default=6.0, help="uncached 64 KiB random reads (total)")
    parser.add_argument("--fio-seconds", type=float, default=4.0, help="each fio phase")
    parser.add_argument("--latency", type=float, default=0.02, help="added time to first byte for the 2nd run")
    parser.add_argument("--targets", default=",".join(ALL_TARGETS),
                        help="comma-separated, of " + ", ".join(ALL_TARGETS))
    parser.add_argument("--before", metavar="REF", help="also mount tiercache as of git REF (\"-before\" rows)")
    parser.add_argument("--skip-others", action="store_true", help="no s3fs / rclone")
    parser.add_argument("--skip-latency", action="store_true", help="no run with added latency")
    parser.add_argument("--skip-fio", action="store_true", help="no fio phases")
    parser.add_argument("--out", default=os.path.join(HERE, "results"), help="where fs_LABEL.json goes")
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny data, one round, no s3fs/rclone/fio/latency: checks the script, measures nothing")
    args = parser.parse_args(argv)
    args.targets = {t.strip() for t in args.targets.split(",") if t.strip()}
    unknown = args.targets - set(ALL_TARGETS)
    if unknown:
        parser.error(f"--targets: unknown {', '.join(sorted(unknown))} (known: {', '.join(ALL_TARGETS)})")
    if args.skip_others:
        args.targets -= {"s3fs", "rclone"}
    if args.dry_run:
        args.files, args.large, args.random_size = min(args.files, 40), "8M", "8M"
        args.random_reads, args.cold_random_reads, args.rounds = 50, 20, 1
        args.ssd_seconds, args.fio_seconds, args.ssd_ram = 0.4, 0.5, "4M"
        args.skip_latency, args.skip_fio = True, True
        args.targets -= {"s3fs", "rclone"}
    return args


def run(bench: Bench, server) -> None:
    """Every target, then the cold phases again with added latency."""
    args = bench.args
    print(f"generating {args.files} small files, a {args.large} and a {args.random_size} file ...", flush=True)
    bench.keys, bench.big, bench.rand = make_data(bench.local, args.files, parse_size(args.file_size),
                                                  parse_size(args.large), parse_size(args.random_size))
    size = os.path.getsize(os.path.join(bench.local, bench.big))
    upload(server.endpoint, bench.local, bench.keys, [bench.big, bench.rand])
    bench.server_check = check_server(server.endpoint, bench.big, size)
    print(f"server: {bench.server_check}", flush=True)
    if bench.server_check["range_costs_the_range"] is False:
        bench.notes.append("server: a 64 KiB ranged GET costs as much as a full GET (is fast_ranges in effect?)")
    if not args.skip_fio and not fio_installed():
        bench.notes.append("fio not installed (apt-get install -y fio): fio phases use the Python equivalent")
    trees: dict[str, str | None] = {"": None}
    if args.before:
        trees["-before"] = code_tree(args.before, bench.work)
    small, large, rand = bench.paths(bench.local)
    if "local" in args.targets:
        print("local directory ...", flush=True)
        drop_page_cache([*small, large, rand])
        bench.results.update(fs_plan.tree_phases(bench, {"local": bench.local}))
        bench.load["local"] = load_average()

    def boto3(tag: str) -> None:
        print(f"raw boto3{tag} ...", flush=True)
        bench.results["boto3" + tag] = boto3_phases(server.endpoint, bench.keys, bench.big, size, args.threads,
                                                    bench.rand, args.cold_random_reads)
        bench.load["boto3" + tag] = load_average()

    if "boto3" in args.targets:
        boto3("")
    groups = mount_groups(bench, server.endpoint, trees)
    for makes, kind in groups:
        if kind == "ssd":
            bench.mount_and_measure(makes, lambda roots: fs_plan.ssd_phases(bench, roots))
        elif kind == "stream":
            bench.mount_and_measure(makes, lambda roots: fs_plan.stream_phases(bench, roots))
        else:
            bench.mount_and_measure(makes, lambda roots, k=kind: fs_plan.tree_phases(
                bench, roots, reference=bench.local, cold_random=k != "ceiling"))
    libraries = {"library" + suffix: tree for suffix, tree in trees.items()} if "library" in args.targets else {}
    for name, tree in libraries.items():
        library(bench, server.endpoint, name, tree)
    if args.skip_latency or args.latency <= 0:
        return
    server.set_latency(args.latency)
    tag = f"@{args.latency * 1000:.0f}ms"
    print(f"cold phases with {tag} to first byte ...", flush=True)
    if "boto3" in args.targets:
        boto3(tag)
    for makes, kind in groups:
        if kind in ("tree", "stream"):
            bench.mount_and_measure({name + tag: make for name, make in makes.items()},
                                    lambda roots, k=kind: fs_plan.cold_phases(bench, roots) if k == "tree"
                                    else fs_plan.stream_phases(bench, roots))
    for name, tree in libraries.items():
        library(bench, server.endpoint, name + tag, tree)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.update(CREDS)
    bench = Bench(args, tempfile.mkdtemp(prefix="tiercache-fsbench-"))
    bench.server_check = {}
    load_start = load_average()
    server = LocalS3Process(fast_ranges=True).start()
    try:
        run(bench, server)
    finally:
        server.stop()
        shutil.rmtree(bench.work, ignore_errors=True)
    results = bench.results
    order = [t for t in ("local", "boto3", "ceiling", "ceiling-s3") if t in results]
    order += sorted(t for t in results if t.startswith(("tiercache", "library")) and "@" not in t
                    and not t.endswith("_stats"))
    order += [t for t in ("s3fs", "rclone") if t in results]
    order += sorted(t for t in results if "@" in t and not t.endswith("_stats"))
    goals13 = fs_report.issue13_goals(results)
    report = {
        "label": args.label,
        "server": "moto ThreadedMotoServer in its own process, fast_ranges=True (a ranged GET costs the range); "
                  f"second run with {args.latency * 1000:.0f} ms before the first byte of every response",
        "dataset": {"small_files": args.files, "small_mean_bytes": parse_size(args.file_size),
                    "large_bytes": parse_size(args.large), "random_file_bytes": parse_size(args.random_size)},
        "threads": args.threads,
        "before": args.before,
        "dry_run": args.dry_run,
        "server_check": bench.server_check,
        "host": {**host(), "load_average_1_5_15_start": load_start, "load_average_1_5_15_end": load_average(),
                 "load_average_after_each_target": bench.load},
        "tiercache_mount": f"--mode readonly --metadata-ttl inf, --ram {args.ram} (tiercache-ssd: --ram "
                           f"{args.ssd_ram})",
        "notes": bench.notes,
        "results": results,
        "goals": fs_report.older_goals(results),
        "issue13_goals": goals13,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"fs_{args.label}.json")
    with open(path, "w") as fh:
        json.dump(report, fh, indent=1)
    print()
    print(fs_report.table(results, order))
    print()
    print(fs_report.markdown(results, order))
    print()
    print(fs_report.issue13_markdown(goals13))
    print()
    for name, ratio in report["goals"].items():
        print(f"{name:<36} {ratio if ratio is not None else '-'}")
    for note in bench.notes:
        print("note:", note)
    if not args.dry_run and fs_report.plot(goals13, path[:-len(".json")] + ".png"):
        print(f"wrote {path[:-len('.json')]}.png")
    print(f"load average start {load_start}, end {report['host']['load_average_1_5_15_end']}")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
