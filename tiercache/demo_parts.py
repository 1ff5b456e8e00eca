"""The parts of ``make demo`` (demo.py) around the story: its printer, the generated dataset and its upload,
the ``tiercache`` command run as a user would, the mount's stats as records, and cleaning up a mount."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

from . import mounts
from .statsrecords import StatsReply

BUCKET = "demo-data"
CLI = [sys.executable, "-m", "tiercache.cli"]


class Story:
    """Numbered steps and indented details on stdout, flushed as they come (subprocesses share the terminal)."""

    def __init__(self, steps: int):
        self.steps = steps
        self.n = 0
        self.t0 = time.perf_counter()

    def step(self, title: str) -> None:
        """Start the next numbered step."""
        self.n += 1
        print(f"\n[{self.n}/{self.steps}] {title}  (t={time.perf_counter() - self.t0:.1f}s)", flush=True)

    def say(self, text: str = "") -> None:
        """One or more indented detail lines."""
        for line in text.splitlines() or [""]:
            print(f"      {line}", flush=True)


def mb(n: float) -> str:
    """Bytes as decimal megabytes, one decimal."""
    return f"{n / 1e6:.1f} MB"


# ---------------------------------------------------------------- 1. dataset


def _make_chunk(split: str, start: int, stop: int, classes: int, size: tuple[int, int],
                seed: int) -> list[tuple[str, bytes]]:
    """JPEGs ``start``..``stop`` of a split as (key, bytes); run in a worker process."""
    from .loaders.datasets import synthetic_jpegs

    return [(f"{split}/{rel.split('/')[0]}/{start + j:05d}.jpg", data)
            for j, (rel, data) in enumerate(synthetic_jpegs(stop - start, classes, size, seed=seed + start))]


def upload_dataset(client: Any, train: int, val: int, classes: int, size: tuple[int, int], seed: int) -> dict:
    """Generate ``train`` + ``val`` JPEGs in ImageFolder layout and upload them; returns counts and bytes.

    The images are made in worker processes (spawned: this process already runs the S3 server's threads),
    chunk by chunk, while this process uploads the chunks already made.
    """
    import multiprocessing

    client.create_bucket(Bucket=BUCKET)
    nbytes = {"train": 0, "val": 0}
    step = 64
    chunks = [(split, lo, min(count, lo + step), classes, size, seed * 7919 + k)
              for k, (split, count) in enumerate((("train", train), ("val", val)))
              for lo in range(0, count, step)]
    workers = max(1, min(len(chunks), os.cpu_count() or 1))
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as makers, \
            ThreadPoolExecutor(4) as uploaders:
        made = [makers.submit(_make_chunk, *chunk) for chunk in chunks]
        uploads = []
        for chunk, future in zip(chunks, made, strict=True):
            for key, data in future.result():
                nbytes[chunk[0]] += len(data)
                uploads.append(uploaders.submit(client.put_object, Bucket=BUCKET, Key=key, Body=data))
        for f in uploads:
            f.result()
    return {"train": train, "val": val, "bytes": nbytes}


# ---------------------------------------------------------------- the CLI


def cli(*args: str, capture: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``tiercache ARGS`` with this interpreter; output captured (text) unless ``capture`` is False."""
    return subprocess.run([*CLI, *args], capture_output=capture, text=True, timeout=timeout)


def cli_ok(*args: str, timeout: float = 300) -> str:
    """Run ``tiercache ARGS``; its stdout+stderr, or SystemExit with its one-line error."""
    proc = cli(*args, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"demo: tiercache {args[0]} failed ({proc.returncode}): "
                         f"{(proc.stderr or proc.stdout).strip()}")
    return (proc.stdout + proc.stderr).strip()


def mount_stats(mountpoint: str) -> StatsReply:
    """The daemon's stats reply (what ``tiercache stats --json`` prints) as records."""
    mount = mounts.find_mount(mountpoint)
    if mount is None:
        raise SystemExit(f"demo: {mountpoint} is not a tiercache mount any more")
    return StatsReply.from_reply(mount.client().request("stats"))


def backend_delta(before: StatsReply, after: StatsReply) -> tuple[int, int]:
    """(GETs, bytes) the mount sent to the store between two stats replies."""
    b0, b1 = before.cache.backend, after.cache.backend
    if b0 is None or b1 is None:
        return 0, 0
    return (b1.gets or 0) - (b0.gets or 0), (b1.bytes or 0) - (b0.bytes or 0)


def is_mounted(path: str) -> bool:
    """Whether ``path`` is a mountpoint right now (/proc/self/mountinfo)."""
    real = os.path.realpath(path)
    return any(mp == real for mp, _fstype, _src in mounts.mount_table())


def warm(story: Story, path: str) -> None:
    """``tiercache warm PATH --recursive`` on the shared terminal, so its progress bar shows."""
    proc = cli("warm", path, "--recursive", capture=False, timeout=600)
    if proc.returncode == 0:
        return
    if proc.returncode == 2:  # usage error: a build without the warm command; use the control socket directly
        story.say("(this build's CLI has no `warm`; warming through the mount's control socket instead)")
        _warm_over_socket(path)
        return
    raise SystemExit(f"demo: tiercache warm failed ({proc.returncode})")


def _warm_over_socket(path: str) -> None:
    from tqdm import tqdm

    mount = mounts.find_mount(path)
    if mount is None:
        raise SystemExit(f"demo: {path} is not in a tiercache mount")
    bar = tqdm(unit="B", unit_scale=True, desc="warming", disable=None, leave=False)

    def progress(msg: dict) -> None:
        bar.total = msg.get("total_bytes") or bar.total
        bar.update(max(0, int(msg.get("done_bytes") or 0) - bar.n))

    try:
        mount.client(timeout=None).request("warm", paths=[mount.relpath(path)], tier="ssd",
                                           on_progress=progress, reply_timeout=None)
    finally:
        bar.close()


def cleanup_mount(mountpoint: str) -> None:
    """Make sure ``mountpoint`` is not mounted and its daemon is gone: forced, then lazy, unmount."""
    mount = mounts.find_mount(mountpoint)
    pid = mount.pid if mount is not None and mount.mountpoint == os.path.realpath(mountpoint) else None
    if is_mounted(mountpoint):
        cli("unmount", "--force", "--timeout", "10", mountpoint, timeout=60)
    if is_mounted(mountpoint):
        for tool in (["fusermount3", "-uz"], ["umount", "-l"]):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                if subprocess.run([*tool, mountpoint], capture_output=True, timeout=30).returncode == 0:
                    break
    if pid is not None:
        deadline = time.monotonic() + 20
        while mounts.pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if mounts.pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        mounts.unregister_mount(os.path.realpath(mountpoint), pid)
