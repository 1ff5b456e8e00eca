"""Hit rate of the eviction policies on multi-epoch training traces with K concurrent readers (no I/O).

Traces: ``--epochs`` epochs over ``--items`` equally sized files read by K = 1, 2, 8 readers at once, each
with its own DistributedSampler-style shard per epoch (a seeded permutation per epoch, padded, ``rank::K``),
interleaved at slightly jittered paces into one merged trace. Cache sizes: 10/25/50/75 % of the data.
Policies:

- ``lru``: plain LRU, the baseline of generic FUSE caches;
- ``default``: tiercache's scan-resistant policy without plans (S3-FIFO);
- ``plan``: plan-aware, given what the loaders send: each reader its own plan (its shard for this epoch and
  the next) as its own client, at each of its epoch starts;
- ``belady``: Belady's MIN on the merged trace with the whole future known, the optimum;
- ``one_plan`` (the figure before per-client plans): plan-aware with one plan per mount, the last reader's to
  send one replacing the others' (what a mount did with several ranks before).

Writes bench/results/hit_rate.json and hit_rate.png, and prints a table (goal: plan >= 0.95 x Belady).

End to end (``--e2e``, needs root and /dev/fuse): a real mount over a local S3 server (own process, ranged
GETs that cost what the range costs, ``--latency`` to first byte) holding data twice the RAM tier (no SSD
tier, so every miss goes to the store). A reader follows a shuffled order for several epochs, doing
``--compute-ms`` of "training" per file, once without a plan and once sending the plan (this epoch and the
next, at each epoch start, as the DataLoader does) over the control socket, each on a fresh cache. Stall
time per read (open + read + close, page cache dropped after each file) is the figure: time the GPU would
wait for data. Writes the ``e2e`` section of hit_rate.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from traces import belady, merged_trace, replay, replay_readers, shard_epochs, simulate

from tiercache.tiers.planned import PlanAwarePolicy
from tiercache.tiers.policy import LRUPolicy, S3FIFOPolicy

RESULTS = Path(__file__).parent / "results"
POLICY_NAMES = ("lru", "default", "one_plan", "plan", "belady")
READERS = (1, 2, 8)
JITTER = 0.3  # readers' paces differ by up to 30 % per read


def hit_rates(shards: list, capacity: int) -> dict[str, float]:
    """Every policy's hit rate over the readers' merged trace."""
    trace, where = merged_trace(shards, JITTER, seed=1)

    def last_writer_wins(i: int) -> list:
        rank, epoch, index = where[i]
        if index:
            return []
        following = shards[epoch + 1][rank] if epoch + 1 < len(shards) else []
        return [("mount", [*shards[epoch][rank], *following])]

    return {
        "one_plan": replay(PlanAwarePolicy(), trace, capacity, last_writer_wins)[0],
        "lru": simulate(LRUPolicy(), trace, capacity),
        "default": simulate(S3FIFOPolicy(), trace, capacity),
        "plan": replay_readers(PlanAwarePolicy(), shards, capacity, JITTER, seed=1)[0],
        "belady": replay(belady(trace), trace, capacity)[0],
    }


def plot(results: dict, path: Path) -> bool:
    """Hit rate vs cache size, one panel per reader count; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    kinds = list(results["traces"])
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        rows = results["traces"][kind]
        sizes = [row["cache_fraction"] * 100 for row in rows]
        for name in POLICY_NAMES:
            style = {"linestyle": "--", "marker": "x"} if name == "belady" else {"marker": "o"}
            ax.plot(sizes, [row[name] for row in rows], label=name, **style)
        ax.set_title(f"{kind} ({results['items']} items x {results['epochs']} epochs)")
        ax.set_xlabel("cache size (% of data)")
        ax.set_ylabel("hit rate")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


# ---------------------------------------------------------------- end to end, through a mount

CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
CLI = [sys.executable, "-m", "tiercache.cli"]


def serve(latency: float) -> None:
    """Child process: a LocalS3 with fast ranged GETs and ``latency`` s to first byte, until stdin closes."""
    from tiercache.devserver import LocalS3

    server = LocalS3(fast_ranges=True).start()
    print(server.endpoint, flush=True)
    sys.stdin.readline()  # the bucket is filled without latency; then the runs start
    server.latency = latency
    print("ok", flush=True)
    sys.stdin.read()
    server.stop()


def _reader(mnt: Path, epochs: list[list[str]], compute: float, plan: bool) -> list[list[float]]:
    """Read every file of every epoch in order; stall seconds per read, per epoch."""
    from tiercache import mounts

    client = mounts.find_mount(str(mnt)).client() if plan else None
    stalls = []
    for e, order in enumerate(epochs):
        if client is not None:
            client.request("plan", paths=order + (epochs[e + 1] if e + 1 < len(epochs) else []))
        epoch = []
        for key in order:
            start = time.perf_counter()
            fd = os.open(mnt / key, os.O_RDONLY)
            try:
                while os.read(fd, 1 << 20):
                    pass
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the next epoch must ask the daemon again
            finally:
                os.close(fd)
            epoch.append(time.perf_counter() - start)
            time.sleep(compute)
        stalls.append(epoch)
    return stalls


def _run_mounted(endpoint: str, bucket: str, work: Path, name: str, ram: str, threads: int, fn):
    mnt, cache = work / name, work / f"{name}-cache"
    mnt.mkdir()
    proc = subprocess.run([*CLI, "mount", f"s3://{bucket}", str(mnt), "--ssd", str(cache), "--ssd-size", "0",
                           "--ram", ram, "--threads", str(threads), "--metadata-ttl", "inf", "--endpoint-url",
                           endpoint], capture_output=True, text=True, env={**os.environ, **CREDS})
    if proc.returncode != 0:
        raise SystemExit(f"hit_rate e2e: mount failed: {proc.stderr.strip()}")
    try:
        os.listdir(mnt / "train")  # the listing, before the clock starts
        result = fn(mnt)
        stats = json.loads(subprocess.run([*CLI, "stats", str(mnt), "--json"], capture_output=True,
                                          text=True, check=True).stdout)["cache"]
        return result, stats
    finally:
        subprocess.run([*CLI, "unmount", str(mnt)], capture_output=True, text=True)


def e2e(args: argparse.Namespace) -> dict | None:
    """Stall time per read with and without the plan, through a real mount (None if FUSE is unavailable)."""
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        print("e2e: skipped (needs root and /dev/fuse)")
        return None
    import boto3

    from tiercache.config import parse_size

    ram = parse_size(args.e2e_ram)
    count = 2 * ram // args.e2e_file_size
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(args.latency)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, **CREDS})
    work = Path(tempfile.mkdtemp(prefix="tc-hitrate-"))
    try:
        endpoint = server.stdout.readline().strip()
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"])
        bucket = "hitrate"
        s3.create_bucket(Bucket=bucket)
        rng = random.Random(args.seed)
        keys = [f"train/{i:06d}.bin" for i in range(count)]
        for key in keys:
            s3.put_object(Bucket=bucket, Key=key, Body=rng.randbytes(args.e2e_file_size))
        server.stdin.write("go\n")
        server.stdin.flush()
        server.stdout.readline()
        epochs = []
        for _ in range(args.e2e_epochs):
            order = list(keys)
            rng.shuffle(order)
            epochs.append(order)
        out = {"files": count, "file_size": args.e2e_file_size, "ram": ram, "data_bytes": count * args.e2e_file_size,
               "epochs": args.e2e_epochs, "latency_s": args.latency, "compute_s": args.compute_ms / 1000,
               "threads": args.e2e_threads, "runs": {}}
        for name, plan in (("no_plan", False), ("plan", True)):
            stalls, stats = _run_mounted(endpoint, bucket, work, name, args.e2e_ram, args.e2e_threads,
                                         lambda mnt, plan=plan: _reader(mnt, epochs, args.compute_ms / 1000, plan))
            flat = sorted(x for epoch in stalls for x in epoch)
            out["runs"][name] = {
                "mean_stall_ms": 1000 * statistics.fmean(flat),
                "p50_stall_ms": 1000 * flat[len(flat) // 2],
                "p99_stall_ms": 1000 * flat[min(len(flat) - 1, int(len(flat) * 0.99))],
                "total_stall_s": sum(flat),
                "mean_stall_ms_per_epoch": [1000 * statistics.fmean(e) for e in stalls],
                "read_hit_rate": stats.get("read_hit_rate"),
                "backend_gets": stats["backend"]["gets"],
                "prefetched_unread_bytes": stats.get("prefetcher", {}).get("prefetched_unread_bytes"),
            }
        runs = out["runs"]
        out["stall_ratio_plan_vs_no_plan"] = (runs["plan"]["total_stall_s"] / runs["no_plan"]["total_stall_s"]
                                              if runs["no_plan"]["total_stall_s"] else None)
        return out
    finally:
        with contextlib.suppress(OSError):
            server.stdin.close()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)


def print_e2e(out: dict) -> None:
    """The end-to-end table."""
    print(f"\ne2e through a mount: {out['files']} files x {out['file_size'] >> 10} KiB = "
          f"{out['data_bytes'] >> 20} MiB over a {out['ram'] >> 20} MiB RAM tier, {out['epochs']} shuffled epochs, "
          f"{out['latency_s'] * 1000:.0f} ms to first byte, {out['compute_s'] * 1000:.0f} ms compute per file")
    print(f"{'run':<9}{'mean ms':>9}{'p50 ms':>8}{'p99 ms':>8}{'stall s':>9}{'hit rate':>10}{'GETs':>7}"
          "  per epoch (ms)")
    for name, run in out["runs"].items():
        per_epoch = " ".join(f"{x:.1f}" for x in run["mean_stall_ms_per_epoch"])
        print(f"{name:<9}{run['mean_stall_ms']:>9.2f}{run['p50_stall_ms']:>8.2f}{run['p99_stall_ms']:>8.1f}"
              f"{run['total_stall_s']:>9.2f}{run['read_hit_rate']:>10.3f}{run['backend_gets']:>7}  {per_epoch}")
    if out.get("stall_ratio_plan_vs_no_plan") is not None:
        print(f"stall with the plan / without: {out['stall_ratio_plan_vs_no_plan']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=8_000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--e2e", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the end-to-end mount benchmark (root and /dev/fuse)")
    parser.add_argument("--e2e-ram", default="32M", help="RAM tier of the e2e mount; the data is twice that")
    parser.add_argument("--e2e-file-size", type=int, default=256 << 10)
    parser.add_argument("--e2e-epochs", type=int, default=3)
    parser.add_argument("--e2e-threads", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.02, help="e2e: seconds to first byte per GET")
    parser.add_argument("--compute-ms", type=float, default=5.0, help="e2e: simulated training per file")
    parser.add_argument("--serve", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve)
        return
    fractions = (0.10, 0.25, 0.50, 0.75)
    results = {"items": args.items, "epochs": args.epochs, "seed": args.seed, "jitter": JITTER, "traces": {}}
    print(f"{'readers':<9}{'cache':>6}" + "".join(f"{n:>9}" for n in POLICY_NAMES) + f"{'plan/MIN':>10}{'def/LRU':>9}")
    for readers in READERS:
        shards = shard_epochs(args.items, args.epochs, readers, args.seed)
        rows = []
        for fraction in fractions:
            t0 = time.perf_counter()
            row = {"cache_fraction": fraction, **hit_rates(shards, int(args.items * fraction))}
            row["plan_vs_belady"] = row["plan"] / row["belady"] if row["belady"] else 1.0
            row["default_vs_lru"] = row["default"] / row["lru"] if row["lru"] else float("inf")
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
            print(f"K={readers:<7}{fraction:>6.0%}" + "".join(f"{row[n]:>9.3f}" for n in POLICY_NAMES)
                  + f"{row['plan_vs_belady']:>10.3f}{row['default_vs_lru']:>9.2f}")
        results["traces"][f"K={readers}"] = rows
    if args.e2e:
        results["e2e"] = e2e(args)
        if results["e2e"] is not None:
            print_e2e(results["e2e"])
    elif (RESULTS / "hit_rate.json").exists():  # keep the last end-to-end run's figures
        previous = json.loads((RESULTS / "hit_rate.json").read_text()).get("e2e")
        if previous:
            results["e2e"] = previous
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "hit_rate.json").write_text(json.dumps(results, indent=2))
    if plot(results, RESULTS / "hit_rate.png"):
        print(f"wrote {RESULTS / 'hit_rate.json'} and hit_rate.png")


if __name__ == "__main__":
    main()
