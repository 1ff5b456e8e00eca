"""The mounts bench/fs.py compares: tiercache (this tree's code, or an older commit's), s3fs, rclone, and the
do-nothing mfusepy filesystem (bench/fuse_ceiling.py). Each mounts in ``__init__`` and unmounts in ``close``;
none is left behind when a bench fails (the callers close in ``finally``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUCKET = "fsbench"
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def open_log(mount, work: str):
    """A file for a third-party mount's stderr (``mount.log`` is its path): why it failed goes in the notes."""
    mount.log = os.path.join(work, f"{mount.name}.log")
    return open(mount.log, "ab")  # noqa: SIM115 - the child process holds it


def last_line(path: str | None) -> str:
    try:
        with open(path or "", errors="replace") as fh:
            lines = [ln.strip() for ln in fh if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def wait_mounted(path: str, proc: subprocess.Popen | None = None, timeout: float = 60,
                 log: str | None = None) -> None:
    """Wait until ``path`` is a mount point; RuntimeError (with the tool's last stderr line) if it never is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.ismount(path):
            return
        if proc is not None and proc.poll() is not None:
            why = last_line(log)
            raise RuntimeError(f"mount of {path} exited with {proc.returncode}" + (f": {why}" if why else ""))
        time.sleep(0.1)
    if proc is not None:
        proc.kill()
    raise RuntimeError(f"{path} not mounted after {timeout} s")


def unmount(path: str, proc: subprocess.Popen | None = None) -> None:
    """fusermount3 -u, then lazily; then wait for (or kill) the mount's process."""
    for flag in ("-u", "-uz"):
        if not os.path.ismount(path):
            break
        if subprocess.run(["fusermount3", flag, path], capture_output=True).returncode == 0:
            break
        time.sleep(1)
    if proc is not None:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def code_tree(ref: str, work: str) -> str:
    """A copy of the repository's tiercache package at git ``ref`` under ``work`` (for a "before" mount)."""
    dest = os.path.join(work, f"tree-{ref.replace('/', '_')}")
    os.makedirs(dest, exist_ok=True)
    archive = subprocess.run(["git", "-C", ROOT, "archive", ref, "tiercache"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", dest], input=archive.stdout, check=True)
    return dest


class TiercacheMount:
    """``tiercache mount`` of the bucket, read-only and immutable; ``tree`` runs another copy of the code."""

    name = "tiercache"

    def __init__(self, endpoint: str, work: str, args, ram: str | None = None, tree: str | None = None,
                 tag: str = ""):
        self.name = "tiercache" + tag
        self.path = os.path.join(work, "mnt-" + self.name)
        self.cache = os.path.join(work, "cache-" + self.name)
        os.makedirs(self.path, exist_ok=True)
        shutil.rmtree(self.cache, ignore_errors=True)
        self.env = {**os.environ, **CREDS}
        self.cwd = tree or ROOT
        if tree:
            self.env["PYTHONPATH"] = tree
        cmd = [*self._cli(), "mount", f"s3://{BUCKET}", self.path, "--ssd", self.cache,
               "--ssd-size", "2G", "--ram", ram or args.ram, "--mode", "readonly", "--metadata-ttl", "inf",
               "--endpoint-url", endpoint, "--threads", str(max(16, args.threads))]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env, cwd=self.cwd, timeout=180)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.strip())
        self.pid = self._daemon_pid()

    def _cli(self) -> list[str]:
        return [sys.executable, "-m", "tiercache.cli"]

    def _daemon_pid(self) -> int | None:
        """The daemon's pid, from the mount's registry record (``tiercache.mounts``)."""
        from tiercache import mounts

        try:
            found = mounts.find_mount(self.path)
        except Exception:  # noqa: BLE001 - an older tree's record; the pid is only for profiles
            return None
        return found.pid if found is not None else None

    def daemon_code(self) -> str | None:
        """Where the daemon's tiercache package comes from (its PYTHONPATH's first entry)."""
        try:
            with open(f"/proc/{self.pid}/environ", "rb") as fh:
                env = dict(item.split(b"=", 1) for item in fh.read().split(b"\0") if b"=" in item)
        except (OSError, TypeError):
            return None
        return env.get(b"PYTHONPATH", b"").decode(errors="replace").split(os.pathsep)[0] or None

    def stats(self) -> dict:
        """``tiercache stats --json`` of the mount ({} if it fails)."""
        proc = subprocess.run([*self._cli(), "stats", self.path, "--json"], capture_output=True, text=True,
                              env=self.env, cwd=self.cwd, timeout=60)
        return json.loads(proc.stdout) if proc.returncode == 0 else {}

    def close(self) -> None:
        subprocess.run([*self._cli(), "unmount", "--force", self.path], capture_output=True, text=True,
                       env=self.env, cwd=self.cwd, timeout=120)
        unmount(self.path)


class S3fsMount:
    """s3fs-fuse with ``use_cache`` (its disk cache) and ``parallel_count`` = the bench's threads."""

    name = "s3fs"

    def __init__(self, endpoint: str, work: str, args):
        self.path = os.path.join(work, "mnt-s3fs")
        cache = os.path.join(work, "s3fs-cache")
        shutil.rmtree(cache, ignore_errors=True)
        os.makedirs(self.path, exist_ok=True)
        os.makedirs(cache)
        passwd = os.path.join(work, "s3fs-passwd")
        with open(passwd, "w") as fh:
            fh.write("testing:testing\n")
        os.chmod(passwd, 0o600)
        self.proc = subprocess.Popen(
            ["s3fs", BUCKET, self.path, "-f", "-o", f"url={endpoint}", "-o", "use_path_request_style",
             "-o", f"passwd_file={passwd}", "-o", f"use_cache={cache}", "-o", "ro", "-o", "endpoint=us-east-1",
             "-o", f"parallel_count={args.threads}"],
            stdout=subprocess.DEVNULL, stderr=open_log(self, work))
        self.pid = self.proc.pid
        wait_mounted(self.path, self.proc, log=self.log)

    def close(self) -> None:
        unmount(self.path, self.proc)


class RcloneMount:
    """rclone mount with ``--vfs-cache-mode full`` (its disk cache)."""

    name = "rclone"

    def __init__(self, endpoint: str, work: str, args):
        self.path = os.path.join(work, "mnt-rclone")
        cache = os.path.join(work, "rclone-cache")
        shutil.rmtree(cache, ignore_errors=True)
        os.makedirs(self.path, exist_ok=True)
        self.proc = subprocess.Popen(
            ["rclone", "mount", f":s3:{BUCKET}", self.path, "--s3-provider", "Other", "--s3-endpoint", endpoint,
             "--s3-access-key-id", "testing", "--s3-secret-access-key", "testing", "--vfs-cache-mode", "full",
             "--cache-dir", cache, "--read-only", "--config", "/dev/null"],
            stdout=subprocess.DEVNULL, stderr=open_log(self, work),
            # rclone 1.60 with AWS_CA_BUNDLE set exits 1 at once: "LoadCustomCABundleError: unable to load
            # custom CA bundle, HTTPClient's transport unsupported type"
            env={k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"})
        self.pid = self.proc.pid
        wait_mounted(self.path, self.proc, log=self.log)

    def close(self) -> None:
        unmount(self.path, self.proc)


class CeilingMount:
    """bench/fuse_ceiling.py over the same tree (names and sizes from ``local``): the Python FUSE ceiling."""

    name = "ceiling"

    def __init__(self, endpoint: str, work: str, args, local: str):
        self.path = os.path.join(work, "mnt-" + self.name)
        os.makedirs(self.path, exist_ok=True)
        manifest = os.path.join(work, "ceiling.json")
        write_manifest(local, manifest)
        self.proc = subprocess.Popen([sys.executable, *self.command(manifest, endpoint)],
                                     stdout=subprocess.DEVNULL, stderr=open_log(self, work), cwd=ROOT)
        self.pid = self.proc.pid
        wait_mounted(self.path, self.proc, log=self.log)
        tune_read_ahead(self.path)

    def command(self, manifest: str, endpoint: str) -> list[str]:
        return [os.path.join(HERE, "fuse_ceiling.py"), manifest, self.path]

    def close(self) -> None:
        unmount(self.path, self.proc)


class StreamCeilingMount(CeilingMount):
    """bench/fuse_stream_ceiling.py: the do-nothing filesystem fed by ranged GETs as raw boto3 makes them (8 MiB,
    8 in flight ahead of the reader): the cold-streaming ceiling of a Python FUSE daemon."""

    name = "ceiling-s3"

    def command(self, manifest: str, endpoint: str) -> list[str]:
        return [os.path.join(HERE, "fuse_stream_ceiling.py"), manifest, self.path, endpoint, BUCKET,
                "--ahead", str(self.threads)]

    def __init__(self, endpoint: str, work: str, args, local: str):
        self.threads = args.threads
        super().__init__(endpoint, work, args, local)


def write_manifest(local: str, path: str) -> None:
    """The names and sizes of every file under ``local``, as bench/fuse_ceiling.py reads them."""
    files = {}
    for dirpath, _dirs, names in os.walk(local):
        for name in names:
            full = os.path.join(dirpath, name)
            files[os.path.relpath(full, local)] = os.path.getsize(full)
    with open(path, "w") as fh:
        json.dump({"files": files}, fh)


def tune_read_ahead(mountpoint: str) -> None:
    """The kernel read-ahead a tiercache mount sets for itself (MountSpec.read_ahead_kb, 1 MiB: sequential FUSE
    reads then come in 1 MiB requests instead of 128 KiB); root only, best effort."""
    from tiercache.fuse.mount import MountSpec

    kb = MountSpec(source="s3://x", mountpoint=mountpoint).read_ahead_kb
    dev = os.stat(mountpoint).st_dev
    try:
        with open(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb", "w") as fh:
            fh.write(str(kb))
    except OSError:
        pass
