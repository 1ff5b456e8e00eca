"""Big directories (issue 12): ``ls`` and ``ls -l`` of one directory of N files through a mount, beside a
local directory of N files, and the FUSE operations the daemon served for each.

    python bench/bigdir.py [--files 100K] [--label before] [--ttl inf,60]

Run by hand, not in CI. The source is the synthetic store (``store/synthetic.py``: the N files of its
``big/`` directory, nothing held); each ``--ttl`` gets its own read-only mount on a fresh cache dir:
``inf`` (immutable data, ReadOnlyOps) and a finite metadata TTL (records expire: the timed path). The local
baseline is a directory of N empty files on the cache dir's filesystem. For each: ``ls`` (first after the
mount: the namespace lists the store), ``ls -l`` (the kernel's dentries of that ``ls`` may be reused), and a
second ``ls -l``; each time with the daemon's operation counts (``stats``: mount.fuse_ops) it took.
Writes bench/results/bigdir[_LABEL].json and prints a table with the ratio to the local directory.
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
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
os.environ["TIERCACHE_SYNTHETIC_STORE"] = "1"

STEPS = ("ls", "ls_l", "ls_l_again")
WIDTHS = (10, 10, 13)
COMMANDS = {"ls": ["ls"], "ls_l": ["ls", "-l"], "ls_l_again": ["ls", "-l"]}


def count(text: str) -> int:
    """ "100K", "1M" or "20000" as a number of files (powers of 1000)."""
    text = text.strip().upper()
    scale = {"K": 1000, "M": 1000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def _cli(*argv: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tiercache.cli", *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def _timed(cmd: list[str], path: str, timeout: float) -> tuple[float, int]:
    """Seconds ``cmd path`` took, and the lines it printed."""
    t0 = time.perf_counter()
    proc = subprocess.run([*cmd, path], capture_output=True, check=True, timeout=timeout)
    return time.perf_counter() - t0, proc.stdout.count(b"\n")


def _ops(mountpoint: str) -> dict[str, int]:
    proc = _cli("stats", "--json", mountpoint, timeout=60)
    if proc.returncode != 0:
        return {}
    return dict(json.loads(proc.stdout).get("mount", {}).get("fuse_ops") or {})


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in sorted(after.items()) if v - before.get(k, 0)}


def local_dir(files: int, where: str) -> dict:
    """ls / ls -l of a local directory of ``files`` empty files."""
    path = tempfile.mkdtemp(prefix="tc-bigdir-local-", dir=where)
    try:
        for i in range(files):
            open(os.path.join(path, f"file_{i:07d}.bin"), "wb").close()
        subprocess.run(["sync"], check=False)
        out = {}
        for step in STEPS:
            out[f"{step}_s"], out[f"{step}_lines"] = _timed(COMMANDS[step], path, 600)
        return out
    finally:
        shutil.rmtree(path, ignore_errors=True)


def mounted_dir(files: int, ttl: str, where: str, timeout: float) -> dict:
    """ls / ls -l of the synthetic store's big/ directory through a read-only mount with ``ttl``."""
    cache = tempfile.mkdtemp(prefix="tc-bigdir-cache-", dir=where)
    mnt = tempfile.mkdtemp(prefix="tc-bigdir-mnt-")
    source = f"synthetic://bigdir?objects={files}&size=1K&big={files}"
    out: dict = {"ttl": ttl}
    try:
        proc = _cli("mount", source, mnt, "--ssd", cache, "--ssd-size", "64M", "--ram", "64M",
                    "--mode", "readonly", "--metadata-ttl", ttl, timeout=timeout)
        if proc.returncode != 0:
            return {"ttl": ttl, "error": proc.stderr.strip()[-500:]}
        try:
            big = os.path.join(mnt, "big")
            for step in STEPS:
                before = _ops(mnt)
                out[f"{step}_s"], out[f"{step}_lines"] = _timed(COMMANDS[step], big, timeout)
                out[f"{step}_ops"] = _delta(_ops(mnt), before)
        finally:
            done = _cli("unmount", "--force", mnt, timeout=120)
            if done.returncode != 0:
                subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)
    finally:
        os.rmdir(mnt)
        shutil.rmtree(cache, ignore_errors=True)
    return out


def table(result: dict) -> str:
    """The human table: seconds per step, mount against local, and the daemon's getattr calls."""
    local = result["local"]
    lines = [f"{result['files']:,} files in one directory ({result['label']})",
             f"{'':26}{'ls':>10}{'ls -l':>10}{'ls -l again':>13}{'getattr (ls -l)':>17}"]
    lines.append(f"{'local dir':26}" + "".join(f"{local[f'{s}_s']:>{w}.2f}" for s, w in zip(STEPS, WIDTHS, strict=True))
                 + f"{'-':>17}")
    for run in result["mounts"]:
        name = f"mount, metadata-ttl {run['ttl']}"
        if "error" in run:
            lines.append(f"{name:26}  error: {run['error'][:80]}")
            continue
        cells = "".join(f"{run[f'{s}_s']:>{w}.2f}" for s, w in zip(STEPS, WIDTHS, strict=True))
        getattrs = run.get("ls_l_ops", {}).get("getattr", 0)
        lines.append(f"{name:26}{cells}{getattrs:>17,}")
        ratio = "".join(f"{run[f'{s}_s'] / max(local[f'{s}_s'], 1e-9):>{w - 1}.1f}x"
                        for s, w in zip(STEPS, WIDTHS, strict=True))
        lines.append(f"{'  / local':26}{ratio}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", default="100K", help="files in the directory (default 100K)")
    parser.add_argument("--ttl", default="inf,60", help="metadata TTLs to mount with, comma-separated")
    parser.add_argument("--label", default="", help="suffix of the result file (bigdir_LABEL.json)")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the cache dirs and the local dir go")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per step")
    args = parser.parse_args()
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        print("bigdir: needs FUSE (/dev/fuse and fusermount3)", file=sys.stderr)
        return 2
    files = count(args.files)
    result = {"files": files, "label": args.label or "after", "local": local_dir(files, args.dir),
              "mounts": [mounted_dir(files, ttl, args.dir, args.timeout) for ttl in args.ttl.split(",")]}
    name = f"bigdir_{args.label}.json" if args.label else "bigdir.json"
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", name), "w") as fh:
        json.dump(result, fh, indent=1)
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
