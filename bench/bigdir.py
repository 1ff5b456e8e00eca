"""Big directories (issue 12): ``ls`` and ``ls -l`` of one directory of N files through a mount, beside a
local directory of N files, and the FUSE operations the daemon served for each.

    python bench/bigdir.py [--files 100K] [--label LABEL] [--ttl inf,60] [--before REF]

Run by hand, not in CI. The source is the synthetic store (``store/synthetic.py``: the N files of its
``big/`` directory, nothing held); each ``--ttl`` gets its own read-only mount on a fresh cache dir:
``inf`` (immutable data, ReadOnlyOps) and a finite metadata TTL (records expire: the timed path). The local
baseline is a directory of N empty files on the cache dir's filesystem. For each: ``ls`` (first after the
mount: the namespace lists the store), ``ls`` again (the listing known), ``ls -l`` (the kernel's dentries of
those may be reused), and a second ``ls -l``; each time with the daemon's CPU seconds (user + system: what
the step cost it, whatever the load), the operation counts (``stats``: mount.fuse_ops) it took and its RSS
after.
``--before REF`` mounts a git worktree of REF (e.g. an older commit) the same way, right after each of this
tree's mounts, so both run under the same load. Writes bench/results/bigdir[_LABEL].json and prints a table
with the ratio to the local directory.
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

from results_file import write_result  # noqa: E402

os.environ["TIERCACHE_SYNTHETIC_STORE"] = "1"

STEPS = ("ls", "ls_again", "ls_l", "ls_l_again")
WIDTHS = (10, 10, 10, 13)
COMMANDS = {"ls": ["ls"], "ls_again": ["ls"], "ls_l": ["ls", "-l"], "ls_l_again": ["ls", "-l"]}


def count(text: str) -> int:
    """ "100K", "1M" or "20000" as a number of files (powers of 1000)."""
    text = text.strip().upper()
    scale = {"K": 1000, "M": 1000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def _cli(*argv: str, timeout: float, tree: str = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tiercache.cli", *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=tree)


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


def _rss(mountpoint: str) -> int | None:
    """The daemon's resident bytes."""
    from tiercache import mounts

    found = mounts.find_mount(mountpoint)
    try:
        with open(f"/proc/{found.pid}/status") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))
    except (AttributeError, OSError, StopIteration):
        return None


def _cpu(mountpoint: str) -> float | None:
    """The daemon's CPU seconds so far (user + system): what a step cost it, whatever the load."""
    from tiercache import mounts

    found = mounts.find_mount(mountpoint)
    try:
        with open(f"/proc/{found.pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (AttributeError, OSError, IndexError, ValueError):
        return None


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


def mounted_dir(files: int, ttl: str, where: str, timeout: float, tree: str = ROOT) -> dict:
    """ls / ls -l of the synthetic store's big/ directory through a read-only mount with ``ttl``, of the
    tiercache in ``tree``."""
    cache = tempfile.mkdtemp(prefix="tc-bigdir-cache-", dir=where)
    mnt = tempfile.mkdtemp(prefix="tc-bigdir-mnt-")
    source = f"synthetic://bigdir?objects={files}&size=1K&big={files}"
    out: dict = {"ttl": ttl}
    try:
        proc = _cli("mount", source, mnt, "--ssd", cache, "--ssd-size", "64M", "--ram", "64M",
                    "--mode", "readonly", "--metadata-ttl", ttl, timeout=timeout, tree=tree)
        if proc.returncode != 0:
            return {"ttl": ttl, "error": proc.stderr.strip()[-500:]}
        try:
            big = os.path.join(mnt, "big")
            out["ops_counted"] = bool(_ops(mnt))  # an older tree may not count its FUSE calls
            for step in STEPS:
                before, cpu = _ops(mnt), _cpu(mnt)
                out[f"{step}_s"], out[f"{step}_lines"] = _timed(COMMANDS[step], big, timeout)
                spent = _cpu(mnt)
                out[f"{step}_daemon_cpu_s"] = None if cpu is None or spent is None else spent - cpu
                out[f"{step}_ops"] = _delta(_ops(mnt), before)
                out[f"{step}_rss"] = _rss(mnt)
        finally:
            done = _cli("unmount", "--force", mnt, timeout=120, tree=tree)
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
             f"{'':34}{'ls':>10}{'ls again':>10}{'ls -l':>10}{'ls -l again':>13}{'getattr (ls -l)':>17}"]
    lines.append(f"{'local dir':34}" + "".join(f"{local[f'{s}_s']:>{w}.2f}" for s, w in zip(STEPS, WIDTHS, strict=True))
                 + f"{'-':>17}")
    for run in [*result.get("before_mounts", []), *result["mounts"]]:
        name = f"{run.get('tree', 'mount')}, metadata-ttl {run['ttl']}"
        if "error" in run:
            lines.append(f"{name:34}  error: {run['error'][:80]}")
            continue
        cells = "".join(f"{run[f'{s}_s']:>{w}.2f}" for s, w in zip(STEPS, WIDTHS, strict=True))
        getattrs = f"{run.get('ls_l_ops', {}).get('getattr', 0):,}" if run.get("ops_counted") else "-"
        lines.append(f"{name:34}{cells}{getattrs:>17}")
        ratio = "".join(f"{run[f'{s}_s'] / max(local[f'{s}_s'], 1e-9):>{w - 1}.1f}x"
                        for s, w in zip(STEPS, WIDTHS, strict=True))
        lines.append(f"{'  / local':34}{ratio}")
        cpu = "".join(f"{run.get(f'{s}_daemon_cpu_s') or 0:>{w}.2f}" for s, w in zip(STEPS, WIDTHS, strict=True))
        lines.append(f"{'  daemon CPU seconds':34}{cpu}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", default="100K", help="files in the directory (default 100K)")
    parser.add_argument("--ttl", default="inf,60", help="metadata TTLs to mount with, comma-separated")
    parser.add_argument("--label", default="", help="suffix of the result file (bigdir_LABEL.json)")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the cache dirs and the local dir go")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per step")
    parser.add_argument("--before", help="a git ref whose tiercache is mounted beside this tree's")
    args = parser.parse_args()
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        print("bigdir: needs FUSE (/dev/fuse and fusermount3)", file=sys.stderr)
        return 2
    files = count(args.files)
    result: dict = {"files": files, "label": args.label or "after", "local": local_dir(files, args.dir),
                    "mounts": [], "before_mounts": []}
    old = None
    if args.before:
        old = tempfile.mkdtemp(prefix="tc-bigdir-before-")
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", old, args.before], check=True,
                       capture_output=True)
        result["before"] = args.before
    try:
        for ttl in args.ttl.split(","):
            result["mounts"].append({"tree": "after", **mounted_dir(files, ttl, args.dir, args.timeout)})
            if old is not None:
                result["before_mounts"].append({"tree": f"before ({args.before})",
                                                **mounted_dir(files, ttl, args.dir, args.timeout, old)})
    finally:
        if old is not None:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", old], capture_output=True)
    write_result("bigdir", result, args.label)
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
