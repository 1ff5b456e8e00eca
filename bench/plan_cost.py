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
            t0 = time.perf_counter()
            if client_api:
                cache.set_plan(keys, client="bench")
            else:
                cache.set_plan(keys)
            t1 = time.perf_counter()
            time.sleep(0.5)
        longest, reads = reader.longest(t0, t1 + 0.5)
        out = {"accept_s": t1 - t0, "longest_read_ms": 1000 * longest, "reads_during": reads,
               "longest_read_no_plan_ms": 1000 * reader.longest(t0 - 1.0, t0 - 1e-6)[0],
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
        keys = plan_keys(entries)
        before = rss(found.pid)
        listed = work / f"mnt{entries}-plan.json"
        listed.write_text(json.dumps(keys))
        sender = subprocess.Popen([sys.executable, __file__, "--send", str(mnt), str(listed), str(int(client_api))],
                                  stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
        sender.stdout.readline()  # loaded, connected: ready to send
        with Reader(read_one) as reader:
            sender.stdin.write("go\n")
            sender.stdin.flush()
            t0 = time.perf_counter()
            accept = float(sender.stdout.readline())
            t1 = time.perf_counter()
            sender.wait(60)
            time.sleep(0.5)
        longest, reads = reader.longest(t0, t1 + 0.5)
        return {"accept_s": accept, "longest_read_ms": 1000 * longest, "reads_during": reads,
                "longest_read_no_plan_ms": 1000 * reader.longest(t0 - 1.0, t0 - 1e-6)[0],
                "daemon_rss_bytes_per_entry": (rss(found.pid) - before) / entries}
    finally:
        subprocess.run([*CLI, "unmount", str(mnt)], capture_output=True, text=True)


def send(mountpoint: str, listed: str, client_api: bool) -> None:
    """Child process: send the plan in ``listed`` to the mount when told; print the seconds it took."""
    from tiercache import mounts

    keys = json.loads(Path(listed).read_text())
    found = mounts.find_mount(mountpoint)
    print("ready", flush=True)
    sys.stdin.readline()
    t0 = time.perf_counter()
    if client_api:
        found.send_plan(keys, "bench")
    else:
        found.client(timeout=600).request("plan", paths=keys)
    print(time.perf_counter() - t0, flush=True)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--send":  # the plan sender of a mount run (its own process)
        send(sys.argv[2], sys.argv[3], sys.argv[4] == "1")
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--modes", nargs="+", default=["library", "mount"], choices=["library", "mount"])
    parser.add_argument("--tag", default="after", help="results key (before: a baseline checkout)")
    args = parser.parse_args()
    import inspect

    import tiercache

    client_api = "client" in inspect.signature(tiercache.TieredCache.set_plan).parameters
    results_path = RESULTS / "plan_cost.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    runs = results.setdefault(args.tag, {})
    runs["tiercache"] = str(Path(tiercache.__file__).parent)
    work = Path(tempfile.mkdtemp(prefix="tc-plancost-"))
    try:
        for entries in args.entries:
            for mode in args.modes:
                out = library(entries, work, client_api) if mode == "library" else mount(entries, work, client_api)
                if out is not None:
                    runs[f"{mode}/{entries}"] = out
    finally:
        with contextlib.suppress(Exception):
            subprocess.run(["rm", "-rf", str(work)], check=False)
    RESULTS.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(results, indent=2))
    other = {"after": "before", "before": "after"}.get(args.tag)
    base = results.get(other, {})
    print(f"{'run':<16}{'accept s':>10}{'longest read ms':>17}{'(no plan)':>10}{'B/entry (plan)':>16}"
          f"{'RSS B/entry':>13}"
          + (f"   {other}: accept s, longest ms" if base else ""))
    for name, run in runs.items():
        if not isinstance(run, dict):
            continue
        mem = run.get("rss_bytes_per_entry", run.get("daemon_rss_bytes_per_entry", 0))
        line = (f"{name:<16}{run['accept_s']:>10.2f}{run['longest_read_ms']:>17.1f}"
                f"{run.get('longest_read_no_plan_ms', float('nan')):>10.1f}"
                f"{run.get('plan_bytes_per_entry', float('nan')):>16.1f}{mem:>13.0f}")
        if name in base:
            line += f"   {base[name]['accept_s']:.2f}, {base[name]['longest_read_ms']:.0f}"
        print(line)


if __name__ == "__main__":
    main()
