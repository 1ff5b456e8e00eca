"""The POSIX rules of the mount without a mount: name lengths, rename(2)'s checks, inode numbers, the xattr
table (the same code tests/test_posix.py drives through a real mount)."""

from __future__ import annotations

import errno

import pytest

from tiercache.fuse.inodes import ROOT_INO, InodeTable
from tiercache.fuse.names import check_path
from tiercache.fuse.renames import RENAME_EXCHANGE, RENAME_NOREPLACE, RenamePlan, plan_rename
from tiercache.fuse.xattrs import XATTR_CREATE, XATTR_REPLACE, XattrTable


def errno_of(fn, *args) -> int:
    with pytest.raises(OSError) as info:
        fn(*args)
    return info.value.errno


def test_name_and_key_lengths():
    check_path("/" + "a" * 255)
    check_path("/" + "/".join(["d" * 200] * 5))  # 1,004-byte key: fine
    assert errno_of(check_path, "/" + "a" * 256) == errno.ENAMETOOLONG
    assert errno_of(check_path, "/ok/" + "é" * 128) == errno.ENAMETOOLONG  # 256 bytes in UTF-8
    assert errno_of(check_path, "/" + "/".join(["d" * 200] * 6)) == errno.ENAMETOOLONG  # over 1,024


TREE = {"d": True, "d/sub": True, "d/sub/f": False, "e": True, "f": False, "g": False, "full": True,
        "full/x": False}


def plan(old: str, new: str, flags: int = 0) -> RenamePlan:
    return plan_rename(old, new, flags, TREE.get, lambda d: any(p.startswith(d + "/") for p in TREE))


def test_rename_plans_and_errnos():
    assert plan("f", "new") is RenamePlan.MOVE
    assert plan("f", "g") is RenamePlan.MOVE
    assert plan("f", "f") is RenamePlan.NOTHING
    assert plan("d", "e") is RenamePlan.REPLACE_EMPTY_DIR
    assert errno_of(plan, "d", "full") == errno.ENOTEMPTY
    assert errno_of(plan, "d", "d/sub/x") == errno.EINVAL
    assert errno_of(plan, "d/sub", "d") == errno.ENOTEMPTY
    assert errno_of(plan, "f", "e") == errno.EISDIR
    assert errno_of(plan, "d", "f") == errno.ENOTDIR
    assert errno_of(plan, "nothing", "x") == errno.ENOENT
    assert errno_of(plan, "f", "g", RENAME_NOREPLACE) == errno.EEXIST
    assert plan("f", "new", RENAME_NOREPLACE) is RenamePlan.MOVE
    assert errno_of(plan, "f", "g", RENAME_EXCHANGE) == errno.EINVAL


def test_inode_numbers_follow_renames_and_stay_unique():
    table = InodeTable()
    assert table.ino("") == ROOT_INO
    a, ax, c = table.ino("a"), table.ino("a/x"), table.ino("c")
    assert len({a, ax, c, ROOT_INO}) == 4 and table.ino("a") == a
    table.renamed("a", "b")
    assert (table.ino("b"), table.ino("b/x")) == (a, ax)
    assert table.ino("a") not in (a, ax, c) and table.ino("a/x") not in (a, ax, c)
    table.renamed("c", "b/x")  # replaces b/x
    assert table.ino("b/x") == c
    table.renamed("b", "a2")
    assert (table.ino("a2"), table.ino("a2/x")) == (a, c)
    table.removed("a2")
    fresh = InodeTable()
    assert fresh.ino("a") == a  # the same path: the same number in every table


def test_xattr_table(tmp_path):
    table = XattrTable(tmp_path / "x")
    assert table.never_set("security.capability") and not table.never_set("user.k")
    long_path = "/".join(["p" * 200] * 4)  # past an LMDB key: stored under its digest
    for path in ("f", long_path, "dir/child", "dir-sibling"):
        table.set(path, "user.k", path.encode()[:10])
    assert table.get(long_path, "user.k") == long_path.encode()[:10]
    assert errno_of(table.set, "f", "user.k", b"x", XATTR_CREATE) == errno.EEXIST
    assert errno_of(table.set, "f", "user.none", b"x", XATTR_REPLACE) == errno.ENODATA
    assert errno_of(table.set, "f", "system.posix_acl_access", b"x") == errno.ENOTSUP
    assert errno_of(table.set, "f", "user." + "n" * 251, b"x") == errno.ERANGE
    assert errno_of(table.get, "f", "user.none") == errno.ENODATA
    table.renamed("dir", "moved")
    assert table.get("moved/child", "user.k") == b"dir/child"
    assert table.names("dir/child") == [] and table.names("dir-sibling") == ["user.k"]
    table.renamed(long_path, "short")
    assert table.get("short", "user.k") == long_path.encode()[:10] and table.names(long_path) == []
    table.removed("moved")
    assert table.names("moved/child") == []
    table.remove("f", "user.k")
    assert errno_of(table.remove, "f", "user.k") == errno.ENODATA
    table.close()
    again = XattrTable(tmp_path / "x")
    assert again.names("short") == ["user.k"] and again.names("f") == []
    again.set("f", "security.selinux", b"ctx")
    assert not again.never_set("security.capability")
    again.close()
    reopened = XattrTable(tmp_path / "x")
    assert not reopened.never_set("security.capability")  # remembered
    reopened.close()


def test_attribute_overlay(tmp_path):
    from tiercache.fuse.overlay import AttrOverlay

    overlay = AttrOverlay(tmp_path / "attrs")
    base = {"st_mode": 0o40755, "st_uid": 0, "st_gid": 0, "st_mtime": 5, "st_atime": 5, "st_ctime": 5}
    assert overlay.apply("d", dict(base)) == base
    overlay.record("d", mode=0o1777, uid=65534, gid=65533, mtime=7, atime=3)
    got = overlay.apply("d", dict(base))
    assert got["st_mode"] == 0o41777 and (got["st_uid"], got["st_gid"]) == (65534, 65533)
    assert (got["st_mtime"], got["st_atime"]) == (7, 3) and got["st_ctime"] > 7
    file_attrs = {"st_mode": 0o100644, "st_mtime": 10**20, "st_ctime": 10**20}
    overlay.record("d/f")
    assert overlay.apply("d/f", dict(file_attrs))["st_ctime"] == 10**20  # a later write: ctime follows mtime
    overlay.renamed("d", "e")
    assert overlay.get("d") == {} and overlay.get("e")["uid"] == 65534 and overlay.get("e/f")
    overlay.removed("e")
    assert overlay.get("e") == {} and overlay.get("e/f") == {}
    overlay.close()
