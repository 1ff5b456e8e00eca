"""The phase sequences of bench/fs.py, run over one or more trees side by side.

Several ``roots`` (e.g. tiercache from this tree and from ``--before``, both mounted at once) go through every
phase together: a cold phase runs on each root in turn (each on its own fresh mount), a best-of phase
alternates its rounds between the roots, so that before and after see the same load on a shared machine.
Each function returns ``{name: {phase: result}}``.
"""

from __future__ import annotations

import time

from fs_fio import KiB, fio_phases, randread
from fs_phases import (
    drop_page_cache,
    interleaved_best,
    random_reads,
    random_uncached,
    read_files,
    read_sequential,
    walk,
)


def each(roots: dict[str, str], fn) -> dict[str, dict]:
    """``fn(root)`` for every root in turn."""
    return {name: fn(root) for name, root in roots.items()}


def alternating_best(roots: dict[str, str], fn, rounds: int, budget: float, metric: str,
                     between=None) -> dict[str, dict]:
    """Up to ``rounds`` rounds of ``fn(root)``, each round over every root in turn (no new round once
    ``budget`` seconds per root are spent); the best round per root. ``between()`` runs once per round."""
    runs: dict[str, list] = {name: [] for name in roots}
    start = time.perf_counter()
    done = 0
    while done == 0 or (done < rounds and time.perf_counter() - start < budget * len(roots)):
        for name, root in roots.items():
            runs[name].append(fn(root))
        if between is not None:
            between()
        done += 1
    return {name: interleaved_best(r, metric) for name, r in runs.items()}


def _merge(out: dict[str, dict], phase: str, results: dict[str, dict]) -> None:
    for name, result in results.items():
        out[name][phase] = result


def tree_phases(bench, roots: dict[str, str], reference: str | None = None, cold_random: bool = True,
                uncached: bool = True) -> dict[str, dict]:
    """Every phase on fresh mounts (or the local tree). With ``reference`` (the local directory) its hot
    reads are measured once per round of the hot phases (``local_*_hot``, the same figure for each root)."""
    args = bench.args
    rounds, budget, threads = args.rounds, args.round_budget, args.threads
    files = {name: bench.paths(root) for name, root in roots.items()}
    ref_small, ref_large, _ = bench.paths(reference) if reference else ([], "", "")
    out: dict[str, dict] = {name: {} for name in roots}
    refs: dict[str, list] = {"local_small_hot": [], "local_large_hot": []}
    small = {name: f[0] for name, f in files.items()}
    large = {name: f[1] for name, f in files.items()}
    if cold_random:
        _merge(out, "random_64k_cold", {n: random_reads(f[2], args.cold_random_reads, threads)
                                        for n, f in files.items()})
    _merge(out, "walk_cold", each(roots, walk))
    _merge(out, "walk_warm", alternating_best(roots, walk, rounds, budget, "files_per_s"))
    _merge(out, "small_cold", {n: read_files(p, threads) for n, p in small.items()})

    def small_warm(root: str) -> dict:
        paths = bench.paths(root)[0]
        drop_page_cache(paths)
        return read_files(paths, threads)

    _merge(out, "small_warm", alternating_best(roots, small_warm, rounds, budget, "files_per_s"))
    for paths in [*small.values(), ref_small]:
        read_files(paths, threads)  # the page cache holds every file again
    _merge(out, "small_hot", alternating_best(
        roots, lambda root: read_files(bench.paths(root)[0], threads), rounds, budget, "files_per_s",
        between=(lambda: refs["local_small_hot"].append(read_files(ref_small, threads))) if reference else None))
    _merge(out, "large_cold", {n: read_sequential(p) for n, p in large.items()})

    def large_warm(root: str) -> dict:
        path = bench.paths(root)[1]
        drop_page_cache([path])
        return read_sequential(path)

    _merge(out, "large_warm", alternating_best(roots, large_warm, rounds, budget, "mb_per_s"))
    for path in [*large.values(), *([ref_large] if reference else [])]:
        read_sequential(path)
    _merge(out, "large_hot", alternating_best(
        roots, lambda root: read_sequential(bench.paths(root)[1]), rounds, budget, "mb_per_s",
        between=(lambda: refs["local_large_hot"].append(read_sequential(ref_large))) if reference else None))
    for name, path in large.items():
        drop_page_cache([path])
        out[name]["random_64k_warm"] = random_reads(path, args.random_reads, threads)
    if uncached:
        _merge(out, "random_64k_ssd", alternating_best(
            roots, lambda root: random_uncached(bench.paths(root)[1], args.ssd_seconds / 4, threads), 2, 1e9,
            "ops_per_s"))
    if not args.skip_fio:
        for name, path in large.items():
            out[name].update(fio_phases(path, args.fio_seconds, threads))
    for phase, metric in (("local_small_hot", "files_per_s"), ("local_large_hot", "mb_per_s")):
        if refs[phase]:
            best = interleaved_best(refs[phase], metric)
            for name in roots:
                out[name][phase] = best
    return out


def ssd_phases(bench, roots: dict[str, str]) -> dict[str, dict]:
    """The large file served by the SSD tier (RAM smaller than it): cold read, warm sequential, and 64 KiB
    random reads with the page cache dropped before each; the local copy measured in every round."""
    args = bench.args
    threads = args.threads
    ref_large = bench.paths(bench.local)[1]
    large = {name: bench.paths(root)[1] for name, root in roots.items()}
    out: dict[str, dict] = {name: {} for name in roots}
    _merge(out, "large_cold", {n: read_sequential(p) for n, p in large.items()})
    time.sleep(2)  # the SSD write queues drain

    def large_warm(root: str) -> dict:
        path = bench.paths(root)[1]
        drop_page_cache([path])
        return read_sequential(path)

    # right after the cold read: blocks the SSD admission dropped (a disk slower than the stream) are fetched
    # again; then `tiercache warm` completes the SSD copy (as s3fs use_cache writes its whole file on the cold
    # read) so that the SSD-served phases below are served by the SSD tier only
    _merge(out, "large_warm_after_cold", each(roots, large_warm))
    _merge(out, "ssd_completed", each(roots, complete_ssd_copy))
    _merge(out, "large_warm", alternating_best(roots, large_warm, args.rounds, args.round_budget, "mb_per_s"))
    local_runs: list[dict] = []
    _merge(out, "random_64k_ssd", alternating_best(
        roots, lambda root: random_uncached(bench.paths(root)[1], args.ssd_seconds / 2, threads), 2, 1e9,
        "ops_per_s", between=lambda: local_runs.append(random_uncached(ref_large, args.ssd_seconds / 2, threads))))
    local_fio: list[dict] = []
    if not args.skip_fio:  # the same with a C client (no client GIL): fio --direct=1
        _merge(out, "fio_64k", alternating_best(
            roots, lambda root: randread(bench.paths(root)[1], 64 * KiB, args.fio_seconds, threads), 1, 1e9,
            "ops_per_s", between=lambda: local_fio.append(randread(ref_large, 64 * KiB, args.fio_seconds,
                                                                   threads))))
    for name in roots:
        out[name]["local_random_64k_ssd"] = interleaved_best(local_runs, "ops_per_s")
        if local_fio:
            out[name]["local_fio_64k"] = interleaved_best(local_fio, "ops_per_s")
    return out


def complete_ssd_copy(root: str) -> dict:
    """``tiercache warm --tier ssd`` of the mount's large file (the blocks its SSD tier lacks); seconds."""
    import os
    import subprocess
    import sys

    from fs_data import LARGE_KEY

    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tiercache.cli", "warm", "--tier", "ssd",
                           os.path.join(root, LARGE_KEY)], capture_output=True, text=True, timeout=300)
    return {"seconds": time.perf_counter() - start, "rc": proc.returncode, "out": proc.stdout.strip()[-300:]}


def cold_phases(bench, roots: dict[str, str]) -> dict[str, dict]:
    """Only the cold phases (the run with added latency), each root in turn."""
    args = bench.args
    out: dict[str, dict] = {name: {} for name in roots}
    files = {name: bench.paths(root) for name, root in roots.items()}
    _merge(out, "random_64k_cold", {n: random_reads(f[2], args.cold_random_reads, args.threads)
                                    for n, f in files.items()})
    _merge(out, "walk_cold", each(roots, walk))
    _merge(out, "small_cold", {n: read_files(f[0], args.threads) for n, f in files.items()})
    _merge(out, "large_cold", {n: read_sequential(f[1]) for n, f in files.items()})
    return out


def stream_phases(bench, roots: dict[str, str]) -> dict[str, dict]:
    """The cold large sequential read only (the streaming ceiling has no cache: every read is cold)."""
    return {name: {"large_cold": read_sequential(bench.paths(root)[1])} for name, root in roots.items()}
