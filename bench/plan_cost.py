"""What a large plan costs: accept time, memory per entry, and the longest read while a plan arrives.

For each size (``--entries``, default 100 K and 1 M distinct files) and each way in:

- ``library``: ``cache.set_plan(keys, client=...)`` in-process, while a reader thread keeps reading hot
  files through ``cache.read`` (RAM tier hits, so each read takes the RAM tier's lock);
- ``mount`` (root and /dev/fuse): the plan over the control socket of a real mount (what the DataLoader
  sends), from its own process, while a reader thread reads hot files through the mount (open, read, drop
  the page cache, close, so every read reaches the daemon).

Figures: accept time (call to return), plan memory per entry (the plan's arrays; the key table per
distinct key separately; and the process's RSS growth per entry, comparable across versions), and the
longest read that overlapped the accept (plus half a second after it), beside the longest read of the
second before the plan (the same reader with no plan arriving: what the machine's load alone costs). The
planned files beyond the hot ones do not exist (a million files would not fit a quick run); prefetch skips
them.

Run it against another checkout for a baseline (``PYTHONPATH=/path/to/old/checkout python bench/plan_cost.py
--tag before``): the old API's ``set_plan(keys)`` is used when ``client=`` is not accepted. Results go to
bench/results/plan_cost.json under the tag (default "after"), printed as a table with the other tag's
figures beside them when present.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
HOT = 64  # hot files the reader cycles through
CLI = [sys.executable, "-m", "tiercache.cli"]


def rss(pid: int | str = "self") -> int:
    """Resident bytes of a process."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def plan_keys(entries: int) -> list[str]:
    """The hot files first, then ``entries - HOT`` distinct files that are not there."""
    return [f"hot/{i:03d}.bin" for i in range(HOT)] + [
        f"train/n{i % 1000:04d}/{i:08d}.JPEG" for i in range(entries - HOT)]


class Reader:
    """A thread reading hot files in a loop; keeps (start, seconds) of every read."""

    def __init__(self, read_one):
        self.read_one = read_one
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            start = time.perf_counter()
            self.read_one(i % HOT)
            self.samples.append((start, time.perf_counter() - start))
            i += 1

    def __enter__(self) -> Reader:
        self._thread.start()
        time.sleep(1.2)  # the last second before the plan is the no-plan baseline
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def quantile(self, t0: float, t1: float, q: float) -> float:
        """The ``q`` quantile of the reads overlapping [t0, t1]."""
        window = sorted(s for start, s in self.samples if start <= t1 and start + s >= t0)
        return window[min(len(window) - 1, int(q * len(window)))] if window else 0.0

    def longest(self, t0: float, t1: float) -> tuple[float, int]:
        """(longest read overlapping [t0, t1], reads in that window)."""
        window = [s for start, s in self.samples if start <= t1 and start + s >= t0]
        return (max(window) if window else 0.0), len(window)


def make_source(root: Path) -> Path:
    src = root / "src" / "hot"
    src.mkdir(parents=True)
    for i in range(HOT):
        (src / f"{i:03d}.bin").write_bytes(os.urandom(64 << 10))
    return root / "src"


def library(entries: int, work: Path, client_api: bool) -> dict:
    import tiercache

    src = make_source(work / f"lib{entries}")
    cache = tiercache.open(f"file://{src}", ram="64M", ssd=str(work / f"lib{entries}-cache"), ssd_size="256M")
    try:
        for i in range(HOT):
            cache.read(f"hot/{i:03d}.bin")
        keys = plan_keys(entries)
        before = rss()
        with Reader(lambda i: cache.read(f"hot/{i:03d}.bin")) as reader:
            t0, c0 = time.perf_counter(), time.thread_time()
            if client_api:
                cache.set_plan(keys, client="bench")
            else:
                cache.set_plan(keys)
            t1, c1 = time.perf_counter(), time.thread_time()
            time.sleep(0.5)
        longest, reads = reader.longest(t0, t1 + 0.5)
        out = {"accept_s": t1 - t0, "accept_cpu_s": c1 - c0, "longest_read_ms": 1000 * longest, "reads_during": reads,
               "longest_read_no_plan_ms": 1000 * reader.longest(t0 - 1.0, t0 - 1e-6)[0],
               "p99_read_ms": 1000 * reader.quantile(t0, t1 + 0.5, 0.99),
               "p99_read_no_plan_ms": 1000 * reader.quantile(t0 - 1.0, t0 - 1e-6, 0.99),
               "rss_bytes_per_entry": (rss() - before) / entries}
        book = getattr(cache, "plans", None)
        if book is not None and hasattr(book, "get"):
            plan = book.get("bench")
            out["plan_bytes_per_entry"] = plan.nbytes / len(plan)
            out["key_table_bytes_per_key"] = book.table.nbytes / len(book.table)
        return out
    finally:
        cache.close()


def mount(entries: int, work: Path, client_api: bool) -> dict | None:
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        return None
    from tiercache import mounts

    src = make_source(work / f"mnt{entries}")
    mnt = work / f"mnt{entries}-mp"
    mnt.mkdir()
    proc = subprocess.run([*CLI, "mount", f"file://{src}", str(mnt), "--ram", "64M", "--ssd",
                           str(work / f"mnt{entries}-cache"), "--ssd-size", "256M"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"plan_cost: mount failed: {proc.stderr.strip()}")
    try:
        found = mounts.find_mount(str(mnt))

        def read_one(i: int) -> None:
            fd = os.open(mnt / "hot" / f"{i:03d}.bin", os.O_RDONLY)
            try:
                while os.read(fd, 1 << 20):
                    pass
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

        for i in range(HOT):
            read_one(i)

        def sender_for(keys: list[str], client: str) -> subprocess.Popen:
            listed = work / f"mnt{entries}-{client}.json"
            listed.write_text(json.dumps(keys))
            sender = subprocess.Popen([sys.executable, __file__, "--send", str(mnt), str(listed), client,
                                       str(int(client_api))], stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
            sender.stdout.readline()  # loaded, connected: ready to send
            return sender

        def accept(sender: subprocess.Popen) -> tuple[float, float, float]:
            c0 = cpu_seconds(found.pid)
            sender.stdin.write("go\n")
            sender.stdin.flush()
            took, sender_cpu = map(float, sender.stdout.readline().split())
            sender.wait(60)
            return took, sender_cpu, cpu_seconds(found.pid) - c0

        # first with no reader: the daemon's CPU seconds are then the plan's alone (other files, same shape)
        quiet = accept(sender_for([f"q{k}" for k in plan_keys(entries)], "quiet"))
        sender = sender_for(plan_keys(entries), "bench")
        before = rss(found.pid)
        with Reader(read_one) as reader:
            t0 = time.perf_counter()
            took, sender_cpu, daemon_cpu = accept(sender)
            t1 = time.perf_counter()
            time.sleep(0.5)
        longest, reads = reader.longest(t0, t1 + 0.5)
        return {"accept_s": took, "accept_cpu_s": quiet[1] + quiet[2], "accept_quiet_s": quiet[0],
                "daemon_cpu_quiet_s": quiet[2], "longest_read_ms": 1000 * longest, "reads_during": reads,
                "longest_read_no_plan_ms": 1000 * reader.longest(t0 - 1.0, t0 - 1e-6)[0],
                "p99_read_ms": 1000 * reader.quantile(t0, t1 + 0.5, 0.99),
                "p99_read_no_plan_ms": 1000 * reader.quantile(t0 - 1.0, t0 - 1e-6, 0.99),
                "daemon_rss_bytes_per_entry": (rss(found.pid) - before) / entries}
    finally:
        subprocess.run([*CLI, "unmount", str(mnt)], capture_output=True, text=True)


def send(mountpoint: str, listed: str, client: str, client_api: bool) -> None:
    """Child process: send the plan in ``listed`` to the mount when told; print the seconds it took."""
    from tiercache import mounts

    keys = json.loads(Path(listed).read_text())
    found = mounts.find_mount(mountpoint)
    print("ready", flush=True)
    sys.stdin.readline()
    t0, c0 = time.perf_counter(), time.process_time()
    if client_api:
        found.send_plan(keys, client)
    else:
        found.client(timeout=600).request("plan", paths=keys)
    print(time.perf_counter() - t0, time.process_time() - c0, flush=True)


def run_one(mode: str, entries: int) -> dict | None:
    """One measurement in this process (the code under test is whatever ``import tiercache`` finds)."""
    import inspect

    import tiercache

    client_api = "client" in inspect.signature(tiercache.TieredCache.set_plan).parameters
    work = Path(tempfile.mkdtemp(prefix="tc-plancost-"))
    try:
        out = library(entries, work, client_api) if mode == "library" else mount(entries, work, client_api)
    finally:
        with contextlib.suppress(Exception):
            subprocess.run(["rm", "-rf", str(work)], check=False)
    if out is not None:
        out["tiercache"] = str(Path(tiercache.__file__).parent)
    return out


def measure(mode: str, entries: int, pythonpath: str | None) -> dict | None:
    """``run_one`` in a child process, with ``pythonpath`` first on its path (a baseline checkout)."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, __file__, "--one", mode, str(entries)], capture_output=True, text=True,
                          env=env, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"plan_cost: {mode}/{entries} failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--send":  # the plan sender of a mount run (its own process)
        send(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] == "1")
        return
    if len(sys.argv) == 4 and sys.argv[1] == "--one":  # one measurement (a child of main)
        print(json.dumps(run_one(sys.argv[2], int(sys.argv[3]))), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--modes", nargs="+", default=["library", "mount"], choices=["library", "mount"])
    parser.add_argument("--baseline", metavar="CHECKOUT",
                        help="an older checkout: each run is measured with it too, alternately, in this run")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each (the median is reported)")
    args = parser.parse_args()
    versions = [("before", args.baseline), ("after", None)] if args.baseline else [("after", None)]
    results_path = RESULTS / "plan_cost.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    runs: dict[str, dict] = {tag: {} for tag, _ in versions}
    for entries in args.entries:
        for mode in args.modes:
            rounds: dict[str, list[dict]] = {tag: [] for tag, _ in versions}
            for _ in range(args.rounds):
                for tag, path in versions:
                    out = measure(mode, entries, path)
                    if out is not None:
                        rounds[tag].append(out)
            for tag, got in rounds.items():
                if got:
                    got.sort(key=lambda r: r["accept_s"])
                    runs[tag][f"{mode}/{entries}"] = {**got[len(got) // 2], "rounds": len(got)}
    results.update(runs)
    RESULTS.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(results, indent=2))
    print_table(runs)


def print_table(runs: dict[str, dict]) -> None:
    """One line per run and version: accept (wall, CPU, with no reader), reads while it arrives, memory."""
    nan = float("nan")
    print(f"{'run':<16}{'version':>8}{'accept s':>10}{'CPU s':>7}{'quiet s':>8}{'longest ms':>11}{'no plan':>8}"
          f"{'p99 ms':>8}{'no plan':>8}{'plan B/entry':>13}{'keys B/key':>11}{'RSS B/entry':>12}")
    for name in runs.get("after", {}):
        for tag in ("before", "after"):
            run = runs.get(tag, {}).get(name)
            if run is None:
                continue
            g = run.get
            mem = g("rss_bytes_per_entry", g("daemon_rss_bytes_per_entry", nan))
            print(f"{name:<16}{tag:>8}{run['accept_s']:>10.2f}{g('accept_cpu_s', nan):>7.2f}"
                  f"{g('accept_quiet_s', nan):>8.2f}{run['longest_read_ms']:>11.1f}"
                  f"{g('longest_read_no_plan_ms', nan):>8.1f}{g('p99_read_ms', nan):>8.1f}"
                  f"{g('p99_read_no_plan_ms', nan):>8.1f}{g('plan_bytes_per_entry', nan):>13.1f}"
                  f"{g('key_table_bytes_per_key', nan):>11.1f}{mem:>12.0f}")


if __name__ == "__main__":
    main()
