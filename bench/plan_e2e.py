"""End to end through a mount: two rank processes, each with torch's own DistributedSampler, with and without plans.

The bucket lives on a local S3 server in its own process that waits ``--latency`` (default 20 ms) before the
first byte of every response (``tiercache.devserver.LocalS3Process``: real S3 is remote). The data is twice
the mount's RAM tier and there is no SSD tier, so a block that leaves RAM costs a GET again. Each rank is a
process running tiercache's DataLoader over an ImageFolder-style dataset of the mount's files with
``torch.utils.data.DistributedSampler`` (shuffle, ``set_epoch``), a simulated training step per batch, and a
barrier between epochs (as DDP's collectives make them). Every read drops the file from the page cache, so
each one reaches the daemon.

The same script runs both variants on a fresh mount each: ``plans``, the loader sending each rank's order
(this epoch and the next), and ``no plans`` (``plans=False``: read-ahead and the default policy only).
Figures per variant: time per read as the dataset sees it (mean, p50, p95, p99: the stall a read costs the
training loop), the time the loop waited for batches, wall time, GETs, and the RAM hit rate. JSON goes to
bench/results/plan_e2e.json; the table is printed.

    python bench/plan_e2e.py                      # about a minute here
    python bench/plan_e2e.py --files 2048 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
CLI = [sys.executable, "-m", "tiercache.cli"]
BUCKET = "e2e"


# ---------------------------------------------------------------- one rank (a child process)


def rank_main(root: str, rank: int, world: int, epochs: int, plans: bool, step_s: float, barrier: str) -> None:
    """One rank: read the epochs through the mount, print one JSON line with its read times."""
    import torch
    from torch.utils.data import Dataset, DistributedSampler

    from tiercache.loaders import DataLoader

    class Files(Dataset):
        """ImageFolder-style samples over the mount's files; each item is the file's bytes, read once."""

        def __init__(self) -> None:
            self.samples = sorted((str(p), 0) for p in Path(root).rglob("*.bin"))
            self.read_s: list[float] = []

        def __len__(self) -> int:
            return len(self.samples)

        def __getitem__(self, i: int):
            start = time.perf_counter()
            fd = os.open(self.samples[i][0], os.O_RDONLY)
            try:
                size = 0
                while chunk := os.read(fd, 1 << 20):
                    size += len(chunk)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the next read reaches the daemon again
            finally:
                os.close(fd)
            self.read_s.append(time.perf_counter() - start)
            return torch.tensor(size)

    ds = Files()
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(ds, batch_size=8, sampler=sampler, num_workers=4, plans=plans, plan_client=f"rank{rank}")
    out: dict = {"epochs": []}
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        ds.read_s = []
        waited, start = 0.0, time.perf_counter()
        it = iter(loader)
        while True:
            t0 = time.perf_counter()
            try:
                next(it)
            except StopIteration:
                break
            waited += time.perf_counter() - t0
            time.sleep(step_s)  # the training step
        out["epochs"].append({"reads_s": ds.read_s, "waited_s": waited, "wall_s": time.perf_counter() - start})
        Path(barrier, f"{epoch}-{rank}").touch()
        deadline = time.monotonic() + 120
        while not all(Path(barrier, f"{epoch}-{r}").exists() for r in range(world)):
            if time.monotonic() > deadline:
                raise SystemExit(f"rank {rank}: the other rank did not reach the barrier of epoch {epoch}")
            time.sleep(0.01)
    print(json.dumps(out), flush=True)


# ---------------------------------------------------------------- the driver


def make_bucket(server, files: int, size: int) -> None:
    client = server.client()
    client.create_bucket(Bucket=BUCKET)
    body = os.urandom(size)
    for i in range(files):
        client.put_object(Bucket=BUCKET, Key=f"train/c{i % 8}/{i:06d}.bin", Body=body[i % 97:] + body[:i % 97])


def variant(endpoint: str, work: Path, name: str, plans: bool, args: argparse.Namespace) -> dict:
    mnt, cache = work / f"mnt-{name}", work / f"cache-{name}"
    mnt.mkdir()
    proc = subprocess.run([*CLI, "mount", f"s3://{BUCKET}", str(mnt), "--endpoint-url", endpoint, "--ram", args.ram,
                           "--ssd", str(cache), "--ssd-size", "0", "--mode", "readonly", "--metadata-ttl", "inf",
                           "--threads", str(args.threads)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"plan_e2e: mount failed: {proc.stderr.strip()}")
    try:
        barrier = work / f"barrier-{name}"
        barrier.mkdir()
        start = time.perf_counter()
        ranks = [subprocess.Popen([sys.executable, __file__, "--rank", str(mnt), str(r), "2", str(args.epochs),
                                   str(int(plans)), str(args.step), str(barrier)], stdout=subprocess.PIPE, text=True)
                 for r in range(2)]
        outs = [json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1]) for p in ranks]
        wall = time.perf_counter() - start
        if any(p.returncode for p in ranks):
            raise SystemExit(f"plan_e2e: a rank failed ({name})")
        stats = json.loads(subprocess.run([*CLI, "stats", str(mnt), "--json"], capture_output=True, text=True,
                                          check=True).stdout)["cache"]
    finally:
        subprocess.run([*CLI, "unmount", str(mnt)], capture_output=True, text=True)
    return summarize(outs, wall, stats, args.epochs)


def summarize(outs: list[dict], wall: float, stats: dict, epochs: int) -> dict:
    """Read times per epoch (both ranks together) and overall."""

    def figures(reads: list[float]) -> dict:
        reads = sorted(reads)
        q = lambda f: 1000 * reads[min(len(reads) - 1, int(f * len(reads)))]  # noqa: E731
        return {"reads": len(reads), "mean_ms": 1000 * statistics.fmean(reads), "p50_ms": q(0.5), "p95_ms": q(0.95),
                "p99_ms": q(0.99)}

    per_epoch = [figures([s for o in outs for s in o["epochs"][e]["reads_s"]]) for e in range(epochs)]
    every = [s for o in outs for e in o["epochs"] for s in e["reads_s"]]
    return {"epochs": per_epoch, **figures(every), "wall_s": wall,
            "loader_wait_s": sum(e["waited_s"] for o in outs for e in o["epochs"]),
            "backend_gets": stats["backend"]["gets"], "ram_hit_rate": stats["ram"]["hit_rate"],
            "prefetched_mib": stats["prefetcher"].get("prefetched_bytes", 0) / 2**20,
            "prefetched_unread_mib": stats["prefetcher"].get("prefetched_unread_bytes", 0) / 2**20}


def main() -> None:
    if len(sys.argv) == 9 and sys.argv[1] == "--rank":
        a = sys.argv[2:]
        rank_main(a[0], int(a[1]), int(a[2]), int(a[3]), a[4] == "1", float(a[5]), a[6])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=768)
    parser.add_argument("--file-size", type=int, default=128 << 10, help="bytes per file (default 128 KiB)")
    parser.add_argument("--ram", default="48M", help="RAM tier (default 48M: the data is twice that)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=32, help="the mount's store requests (half for plan prefetch)")
    parser.add_argument("--step", type=float, default=0.08, help="simulated training step per batch of 8 (s)")
    parser.add_argument("--latency", type=float, default=0.02, help="time to first byte of every response (s)")
    args = parser.parse_args()
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        raise SystemExit("plan_e2e: needs root and /dev/fuse (it mounts)")
    from tiercache.devserver import LocalS3Process

    work = Path(tempfile.mkdtemp(prefix="tc-plane2e-"))
    results: dict = {"args": vars(args), "load_before": os.getloadavg()[0]}
    try:
        with LocalS3Process(fast_ranges=True) as server:
            make_bucket(server, args.files, args.file_size)
            server.set_latency(args.latency)
            for name, plans in (("no plans", False), ("plans", True)):
                print(f"{name} ...", flush=True)
                results[name] = variant(server.endpoint, work, name.replace(" ", "-"), plans, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["load_after"] = os.getloadavg()[0]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "plan_e2e.json").write_text(json.dumps(results, indent=2))
    base, new = results["no plans"], results["plans"]
    print(f"two ranks, DistributedSampler, {args.files} files of {args.file_size >> 10} KiB = 2x RAM {args.ram}, "
          f"{args.latency * 1000:.0f} ms to first byte, {args.epochs} epochs")
    print(f"{'':<22}{'no plans':>10}{'plans':>10}{'ratio':>8}")
    for label, key in (("read mean ms", "mean_ms"), ("read p50 ms", "p50_ms"), ("read p95 ms", "p95_ms"),
                       ("read p99 ms", "p99_ms"), ("loader wait s", "loader_wait_s"), ("wall s", "wall_s"),
                       ("GETs", "backend_gets"), ("RAM hit rate", "ram_hit_rate"),
                       ("prefetched MiB", "prefetched_mib"), ("... never read MiB", "prefetched_unread_mib")):
        b, n = base[key], new[key]
        print(f"{label:<22}{b:>10.2f}{n:>10.2f}{(b / n if n else float('inf')):>8.1f}")
    for e in range(args.epochs):
        b, n = base["epochs"][e]["mean_ms"], new["epochs"][e]["mean_ms"]
        print(f"{f'epoch {e} read mean ms':<22}{b:>10.2f}{n:>10.2f}{b / n:>8.1f}")


if __name__ == "__main__":
    main()
