"""fio-style random-read phases for bench/fs.py: ``fio --rw=randread`` at 4 KiB and 64 KiB, or, where fio is
not installed, the same access pattern in Python (and the JSON says which).

fio runs ``--ioengine=psync --numjobs=THREADS --thread --time_based --norandommap`` over the whole file with
``--direct=1`` (every read reaches the filesystem: the FUSE daemon, not the kernel page cache), falling back to
``--direct=0 --invalidate=1`` where O_DIRECT is refused (tmpfs). The Python equivalent is THREADS threads of
``pread`` at random block-aligned offsets with the page cache dropped for the range before each read.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

from fs_phases import random_uncached

KiB = 1 << 10


def fio_installed() -> bool:
    """Is fio on PATH (apt-get install -y fio)."""
    return shutil.which("fio") is not None


def _fio(path: str, block: int, seconds: float, threads: int, direct: bool) -> subprocess.CompletedProcess:
    size = os.path.getsize(path) // block * block
    cmd = ["fio", "--name=randread", f"--filename={path}", "--rw=randread", f"--bs={block}",
           "--ioengine=psync", f"--numjobs={threads}", "--thread", "--group_reporting", "--time_based",
           f"--runtime={max(1, round(seconds))}", f"--size={size}", "--norandommap", "--randrepeat=1",
           "--readonly", "--output-format=json", f"--direct={int(direct)}", "--invalidate=1"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)


def _parse(stdout: str) -> dict | None:
    start = stdout.find("{")
    if start < 0:
        return None
    try:
        job = json.loads(stdout[start:])["jobs"][0]["read"]
    except (ValueError, KeyError, IndexError):
        return None
    pct = (job.get("clat_ns") or {}).get("percentile") or {}
    return {"ops_per_s": job["iops"], "mb_per_s": job["bw_bytes"] / 1e6, "reads": job["total_ios"],
            "clat_p50_us": round(pct.get("50.000000", 0) / 1e3, 1),
            "clat_p99_us": round(pct.get("99.000000", 0) / 1e3, 1)}


def randread(path: str, block: int, seconds: float, threads: int) -> dict:
    """Random reads of ``block`` bytes over ``path`` for ``seconds`` with ``threads`` readers: reads/s (as
    ``ops_per_s``), MB/s, and how it was measured (``engine``: "fio direct=1", "fio direct=0" or "python")."""
    if fio_installed():
        errors = []
        for direct in (True, False):
            proc = _fio(path, block, seconds, threads, direct)
            result = _parse(proc.stdout) if proc.returncode == 0 else None
            if result is not None and result["reads"] > 0:
                return {**result, "engine": f"fio direct={int(direct)}"}
            errors.append((proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"])
        python = random_uncached(path, seconds, threads, block)
        return {**python, "engine": "python (fio failed: " + " / ".join(e[0] for e in errors)[:200] + ")"}
    return {**random_uncached(path, seconds, threads, block), "engine": "python (fio not installed)"}


def fio_phases(path: str, seconds: float, threads: int) -> dict:
    """``fio_4k`` and ``fio_64k`` on ``path``."""
    return {"fio_4k": randread(path, 4 * KiB, seconds, threads),
            "fio_64k": randread(path, 64 * KiB, seconds, threads)}
