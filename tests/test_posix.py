"""POSIX behaviour through a real mount (issue 16): rename(2) exactly, name lengths, inode numbers, extended
attributes, locks, files used after unlink. bench/posix.sh runs pjdfstest; these are the cases it found,
each on its own, since CI cannot fetch pjdfstest."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from .fusehelpers import Mounter, needs_fuse

pytestmark = [needs_fuse, pytest.mark.fuse, pytest.mark.timeout(90)]

RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


def errno_of(fn, *args) -> int:
    with pytest.raises(OSError) as info:
        fn(*args)
    return info.value.errno


def renameat2(old, new, flags: int) -> int:
    """renameat2(2) through libc; returns 0 or the errno."""
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd = -100
    rc = libc.renameat2(at_fdcwd, os.fsencode(old), at_fdcwd, os.fsencode(new), flags)
    return 0 if rc == 0 else ctypes.get_errno()


def flushed(m) -> None:
    proc = m.cli("flush")
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- rename(2)


def test_mv_onto_a_non_empty_directory_is_enotempty_and_loses_nothing(bucket, mounter):
    m = mounter.mount(bucket.url)
    for name, text in (("a", "A"), ("b", "B")):
        os.mkdir(m.path / name)
        (m.path / name / "x").write_text(text)
    (m.path / "b" / "only-b").write_text("kept")
    proc = subprocess.run(["mv", "-T", str(m.path / "a"), str(m.path / "b")], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "not empty" in proc.stderr.lower()
    assert errno_of(os.rename, m.path / "a", m.path / "b") == errno.ENOTEMPTY
    assert (m.path / "b" / "x").read_text() == "B"
    assert (m.path / "a" / "x").read_text() == "A"
    assert sorted(os.listdir(m.path / "b")) == ["only-b", "x"]
    flushed(m)
    assert bucket.get("b/x") == b"B" and bucket.get("a/x") == b"A" and bucket.get("b/only-b") == b"kept"


def test_rename_errnos_follow_rename_2(bucket, mounter):
    m = mounter.mount(bucket.url)
    p = m.path
    os.makedirs(p / "d/sub")
    (p / "d/sub/f").write_text("f")
    (p / "file").write_text("file")
    os.mkdir(p / "empty")
    assert errno_of(os.rename, p / "file", p / "empty") == errno.EISDIR
    assert errno_of(os.rename, p / "d", p / "file") == errno.ENOTDIR
    assert errno_of(os.rename, p / "d", p / "d/sub/inside") == errno.EINVAL
    assert errno_of(os.rename, p / "missing", p / "x") == errno.ENOENT
    assert (p / "file").read_text() == "file" and (p / "d/sub/f").read_text() == "f"
    os.rename(p / "d", p / "empty")  # a directory over an empty directory replaces it
    assert (p / "empty/sub/f").read_text() == "f"  # (d itself may linger as a ghost: issue 10 §3)
    (p / "other").write_text("other")
    os.rename(p / "other", p / "file")  # a file over a file replaces it
    assert (p / "file").read_text() == "other" and not (p / "other").exists()
    os.rename(p / "file", p / "file")  # the same name: nothing happens
    assert (p / "file").read_text() == "other"
    flushed(m)
    assert bucket.get("empty/sub/f") == b"f" and bucket.get("file") == b"other"
    assert not [k for k in bucket.keys() if k.startswith(("d/", "other"))]


def test_renameat2_exchange_is_refused_and_noreplace_keeps_the_target(bucket, mounter):
    m = mounter.mount(bucket.url)
    (m.path / "one").write_text("1")
    (m.path / "two").write_text("2")
    assert renameat2(m.path / "one", m.path / "two", RENAME_EXCHANGE) == errno.EINVAL
    assert renameat2(m.path / "one", m.path / "two", RENAME_NOREPLACE) == errno.EEXIST
    assert (m.path / "one").read_text() == "1" and (m.path / "two").read_text() == "2"
    assert renameat2(m.path / "one", m.path / "three", RENAME_NOREPLACE) == 0
    assert (m.path / "three").read_text() == "1" and not (m.path / "one").exists()


# ---------------------------------------------------------------- names and inode numbers


def test_names_over_255_bytes_are_enametoolong(bucket, mounter):
    m = mounter.mount(bucket.url)
    long_name, max_name = "n" * 256, "m" * 255
    assert errno_of(os.open, m.path / long_name, os.O_CREAT | os.O_WRONLY) == errno.ENAMETOOLONG
    assert errno_of(os.mkdir, m.path / long_name) == errno.ENAMETOOLONG
    assert errno_of(os.stat, m.path / long_name) == errno.ENAMETOOLONG
    (m.path / "f").write_text("x")
    assert errno_of(os.rename, m.path / "f", m.path / long_name) == errno.ENAMETOOLONG
    (m.path / max_name).write_text("255")
    os.mkdir(m.path / ("d" * 255))
    assert (m.path / max_name).read_text() == "255"
    assert sorted(os.listdir(m.path)) == sorted(["f", max_name, "d" * 255])


def test_inode_numbers_are_stable_unique_and_kept_across_rename(bucket, mounter):
    bucket.put("stored/s.bin", b"s")
    m = mounter.mount(bucket.url)
    p = m.path
    (p / "f").write_text("f")
    os.makedirs(p / "dir/inner")
    (p / "dir/inner/g").write_text("g")
    inos = {name: os.stat(p / name).st_ino for name in ("f", "dir", "dir/inner/g", "stored/s.bin")}
    assert len(set(inos.values())) == len(inos) and os.stat(p).st_ino == 1
    for _ in range(3):
        assert all(os.stat(p / name).st_ino == ino for name, ino in inos.items())
    assert {e.name: e.inode() for e in os.scandir(p)}["f"] == inos["f"]  # readdir's d_ino agrees
    os.rename(p / "f", p / "f2")
    os.rename(p / "dir", p / "dir2")
    assert os.stat(p / "f2").st_ino == inos["f"]
    assert os.stat(p / "dir2").st_ino == inos["dir"]
    assert os.stat(p / "dir2/inner/g").st_ino == inos["dir/inner/g"]
    (p / "f").write_text("new file at the old name")
    os.makedirs(p / "dir/inner", exist_ok=True)  # (exist_ok: the old dir may linger as a ghost, issue 10 §3)
    (p / "dir/inner/g").write_text("new")
    assert os.stat(p / "f").st_ino not in inos.values()
    assert os.stat(p / "dir/inner/g").st_ino not in inos.values()


# ---------------------------------------------------------------- extended attributes


def test_xattrs_set_get_list_remove_follow_renames_and_persist(bucket, mounter, tmp_path):
    write_dir = tmp_path / "wd"
    m = mounter.mount(bucket.url, write_dir=write_dir)
    f = m.path / "f"
    f.write_text("data")
    os.mkdir(m.path / "d")
    os.setxattr(f, "user.color", b"blue")
    os.setxattr(m.path / "d", "user.dir", b"\x00\xffbinary")
    assert os.getxattr(f, "user.color") == b"blue"
    assert os.listxattr(f) == ["user.color"]
    assert errno_of(os.setxattr, f, "user.color", b"x", os.XATTR_CREATE) == errno.EEXIST
    assert errno_of(os.setxattr, f, "user.new", b"x", os.XATTR_REPLACE) == errno.ENODATA
    assert errno_of(os.getxattr, f, "user.none") == errno.ENODATA
    os.setxattr(f, "user.color", b"red", os.XATTR_REPLACE)
    os.setxattr(f, "user.empty", b"")
    assert os.getxattr(f, "user.color") == b"red" and os.getxattr(f, "user.empty") == b""
    os.removexattr(f, "user.empty")
    assert errno_of(os.removexattr, f, "user.empty") == errno.ENODATA
    os.rename(f, m.path / "d/g")
    assert os.getxattr(m.path / "d/g", "user.color") == b"red"
    os.rename(m.path / "d", m.path / "e")
    assert os.getxattr(m.path / "e/g", "user.color") == b"red"
    assert os.getxattr(m.path / "e", "user.dir") == b"\x00\xffbinary"
    assert (m.path / "e/g").read_text() == "data"
    (m.path / "h").write_text("h")
    os.setxattr(m.path / "h", "user.gone", b"1")
    os.unlink(m.path / "h")
    (m.path / "h").write_text("a new file")
    assert os.listxattr(m.path / "h") == []  # the old file's attributes went with it
    assert errno_of(os.getxattr, m.path / "missing", "user.x") == errno.ENOENT
    proc = m.cli("unmount")
    assert proc.returncode == 0, proc.stderr
    again = mounter.mount(bucket.url, write_dir=write_dir, name="again")
    assert os.getxattr(again.path / "e/g", "user.color") == b"red"
    assert os.listxattr(again.path / "e") == ["user.dir"]


# ---------------------------------------------------------------- locks and unlinked open files

LOCKER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    if sys.argv[2] == "flock":
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    else:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)
except BlockingIOError:
    sys.exit(11)
"""


def other_process_locks(path, kind: str) -> bool:
    proc = subprocess.run([sys.executable, "-c", LOCKER, str(path), kind], capture_output=True, text=True)
    assert proc.returncode in (0, 11), proc.stderr
    return proc.returncode == 0


def test_flock_and_fcntl_locks_exclude_other_processes(bucket, mounter):
    m = mounter.mount(bucket.url)
    f = m.path / "locked"
    f.write_text("x" * 100)
    fd = os.open(f, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert not other_process_locks(f, "flock")
        fcntl.flock(fd, fcntl.LOCK_UN)
        assert other_process_locks(f, "flock")
        fcntl.lockf(fd, fcntl.LOCK_EX, 10, 0)  # bytes 0-9
        assert not other_process_locks(f, "fcntl")
        fcntl.lockf(fd, fcntl.LOCK_UN, 10, 0)
        assert other_process_locks(f, "fcntl")
        fcntl.lockf(fd, fcntl.LOCK_SH, 10, 50)  # another range does not conflict
        assert other_process_locks(f, "fcntl")
    finally:
        os.close(fd)


def test_an_unlinked_open_file_stays_readable_and_writable_until_last_close(bucket, mounter):
    bucket.put("stored.txt", b"stored bytes")
    m = mounter.mount(bucket.url, "--metadata-ttl", "0")
    reader = os.open(m.path / "stored.txt", os.O_RDONLY)
    os.unlink(m.path / "stored.txt")
    flushed(m)  # the old key is deleted in the store now, and nothing of it was read (cached) before
    assert "stored.txt" not in bucket.keys()
    assert os.pread(reader, 100, 0) == b"stored bytes"
    writer = os.open(m.path / "scratch", os.O_CREAT | os.O_RDWR)
    os.write(writer, b"first ")
    os.unlink(m.path / "scratch")
    assert not (m.path / "scratch").exists()
    os.write(writer, b"second")
    assert os.pread(writer, 100, 0) == b"first second"
    assert os.fstat(writer).st_nlink == 0  # no name left
    os.fsync(writer)
    assert os.pread(reader, 5, 7) == b"bytes"
    os.close(writer)
    os.close(reader)
    flushed(m)
    assert not (m.path / "stored.txt").exists() and not (m.path / "scratch").exists()
    assert bucket.keys() == []  # neither the names nor libfuse's hidden stand-ins are left in the bucket


# ---------------------------------------------------------------- directory attributes, ctime (overlay.py)

AS_NOBODY = {"user": 65534, "group": 65534, "extra_groups": []}


@pytest.fixture
def open_mounter():
    """A Mounter whose mounts other users can reach: under a 0711 directory of /tmp, not pytest's tmp dirs
    (0700, and re-made 0700 by any pytest session that starts meanwhile)."""
    base = Path(tempfile.mkdtemp(prefix="tc-posix-"))
    os.chmod(base, 0o711)
    m = Mounter(base)
    try:
        yield m
    finally:
        m.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def test_directory_mode_owner_and_times_are_kept_and_enforced(bucket, open_mounter):
    write_dir = open_mounter.tmp_path / "wd"
    m = open_mounter.mount(bucket.url, "--allow-other", write_dir=write_dir)
    p = m.path
    os.mkdir(p / "made", 0o751)
    assert os.stat(p / "made").st_mode & 0o7777 == 0o751
    os.mkdir(p / "shared")
    os.chmod(p / "shared", 0o1777)
    os.mkdir(p / "theirs")
    os.chown(p / "theirs", 65534, 65534)
    os.utime(p / "theirs", ns=(1_000_000_000, 2_000_000_000))
    st = os.stat(p / "theirs")
    assert (st.st_uid, st.st_gid, st.st_atime_ns, st.st_mtime_ns) == (65534, 65534, 1_000_000_000, 2_000_000_000)
    assert st.st_ctime_ns > 2_000_000_000
    assert os.stat(p / "shared").st_mode & 0o7777 == 0o1777
    # the kernel enforces them (default_permissions): nobody may write in its own directory only
    ok = subprocess.run(["mkdir", str(p / "theirs/sub")], capture_output=True, text=True, **AS_NOBODY)
    assert ok.returncode == 0, ok.stderr
    denied = subprocess.run(["mkdir", str(p / "made/sub")], capture_output=True, text=True, **AS_NOBODY)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    assert not (p / "made/sub").exists()
    os.rename(p / "theirs", p / "moved")  # attributes follow the directory
    assert os.stat(p / "moved").st_uid == 65534 and os.stat(p / "moved/sub").st_uid == 65534
    proc = m.cli("unmount")
    assert proc.returncode == 0, proc.stderr
    again = open_mounter.mount(bucket.url, write_dir=write_dir, name="again")
    assert os.stat(again.path / "made").st_mode & 0o7777 == 0o751
    assert os.stat(again.path / "moved").st_uid == 65534


def test_ctime_moves_on_attribute_changes_and_parent_times_on_entries(bucket, mounter):
    m = mounter.mount(bucket.url)
    os.mkdir(m.path / "d")
    f = m.path / "d/f"
    f.write_text("x")
    before, parent = os.stat(f).st_ctime_ns, os.stat(m.path / "d").st_mtime_ns
    os.chmod(f, 0o600)
    assert os.stat(f).st_ctime_ns > before
    os.utime(f, ns=(5_000_000_000, os.stat(f).st_mtime_ns))
    assert os.stat(f).st_atime_ns == 5_000_000_000
    (m.path / "d/g").write_text("y")
    assert os.stat(m.path / "d").st_mtime_ns > parent
    parent = os.stat(m.path / "d").st_mtime_ns
    os.rename(m.path / "d/g", m.path / "d/h")
    assert os.stat(m.path / "d").st_mtime_ns > parent


# ---------------------------------------------------------------- special files


def test_fifos_device_nodes_and_sockets_are_objects_with_their_mode(bucket, mounter):
    import socket
    import stat

    m = mounter.mount(bucket.url)
    os.mkfifo(m.path / "fifo", 0o640)
    os.mknod(m.path / "blk", stat.S_IFBLK | 0o600, os.makedev(8, 1))
    os.mknod(m.path / "chr", stat.S_IFCHR | 0o644, os.makedev(1, 3))
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(m.path / "sock"))
    sock.close()
    kinds = {name: os.lstat(m.path / name) for name in ("fifo", "blk", "chr", "sock")}
    assert stat.S_ISFIFO(kinds["fifo"].st_mode) and kinds["fifo"].st_mode & 0o777 == 0o640
    assert stat.S_ISBLK(kinds["blk"].st_mode) and kinds["blk"].st_rdev == os.makedev(8, 1)
    assert stat.S_ISCHR(kinds["chr"].st_mode) and kinds["chr"].st_rdev == os.makedev(1, 3)
    assert stat.S_ISSOCK(kinds["sock"].st_mode)
    assert errno_of(os.mkfifo, m.path / "fifo") == errno.EEXIST
    # a FIFO works through the mount (the kernel serves it)
    writer = subprocess.Popen([sys.executable, "-c", f"open({str(m.path / 'fifo')!r}, 'w').write('through')"])
    with open(m.path / "fifo") as fh:
        assert fh.read() == "through"
    assert writer.wait(30) == 0
    os.rename(m.path / "fifo", m.path / "fifo2")
    assert stat.S_ISFIFO(os.lstat(m.path / "fifo2").st_mode)
    flushed(m)
    head = bucket.client.head_object(Bucket=bucket.name, Key="fifo2")
    assert head["ContentLength"] == 0 and int(head["Metadata"]["mode"]) == stat.S_IFIFO | 0o640  # as s3fs
    for name in ("fifo2", "blk", "chr", "sock"):
        os.unlink(m.path / name)
