"""Warm profiles (record the files a run read, replay with warm --from-profile: zero GETs on the replayed files,
counted at the real S3 server) and bucket listings exported once and mounted from without a LIST."""

from __future__ import annotations

import os

import pytest

from tiercache.errors import ConfigError
from tiercache.profiles import ProfileRecorder, read_profile, write_profile

from .fusehelpers import assert_one_line_error, needs_fuse, run_cli

KiB = 1 << 10


def test_recorder_keeps_first_read_order_once_per_file(tmp_path):
    rec = ProfileRecorder(tmp_path / "p.rec")
    for key in ["b", "a", "b", "c", "a", "d"]:
        rec(key, 0)
    assert rec.paths() == ["b", "a", "c", "d"] and rec.reads == 6
    rec.close()
    write_profile(tmp_path / "run.profile", rec.paths(), "s3://bkt")
    assert read_profile(str(tmp_path / "run.profile")) == ["b", "a", "c", "d"]
    (tmp_path / "other").write_text("a\nb\n")
    with pytest.raises(ConfigError, match="not a tiercache profile"):
        read_profile(str(tmp_path / "other"))


def _lists(bucket) -> int:
    return sum(1 for r in list(bucket.server.requests) if r.bucket == bucket.name and r.method == "GET" and not r.key)




@needs_fuse
@pytest.mark.fuse
@pytest.mark.timeout(240)
def test_profile_record_then_replay_gives_zero_gets_on_the_replayed_files(bucket, mounter, tmp_path):
    keys = [f"train/{i:02d}.bin" for i in range(12)]
    for i, key in enumerate(keys):
        bucket.put(key, bytes([i]) * (64 * KiB + i))
    first = mounter.mount(bucket.url, "--metadata-ttl", "inf", endpoint=bucket.server.endpoint, name="a")
    run_cli("profile", "start", str(first.path), check=True)
    order = [keys[7], keys[2], keys[9], keys[2], keys[0], keys[5]]
    for key in order:
        with open(first.path / key, "rb") as f:
            f.read(1000)  # a partial read still counts as reading the file
    profile = tmp_path / "run.profile"
    proc = run_cli("profile", "save", str(first.path), str(profile), "--stop", check=True)
    assert "5 file(s)" in proc.stderr
    assert read_profile(str(profile)) == [keys[7], keys[2], keys[9], keys[0], keys[5]]
    assert "not recording" in run_cli("profile", "status", str(first.path), check=True).stdout

    second = mounter.mount(bucket.url, "--metadata-ttl", "inf", endpoint=bucket.server.endpoint, name="b")
    proc = run_cli("warm", "--from-profile", str(profile), str(second.path), check=True)
    assert "warm complete" in proc.stderr and "5 file(s)" in proc.stderr
    replayed = read_profile(str(profile))
    before = {key: len(bucket.gets(key)) for key in keys}
    for key in replayed:
        assert (second.path / key).read_bytes() == bytes([keys.index(key)]) * (64 * KiB + keys.index(key))
    after = {key: len(bucket.gets(key)) for key in keys}
    assert all(after[key] == before[key] for key in replayed), "a replayed file was fetched again"
    assert (second.path / keys[1]).read_bytes()  # a file not in the profile: fetched now
    assert len(bucket.gets(keys[1])) > before[keys[1]]


@needs_fuse
@pytest.mark.fuse
@pytest.mark.timeout(120)
def test_warm_from_profile_bad_input_is_one_line(bucket, mounter, tmp_path):
    bucket.put("x", b"1")
    m = mounter.mount(bucket.url, endpoint=bucket.server.endpoint)
    assert_one_line_error(run_cli("warm", "--from-profile", str(tmp_path / "none"), str(m.path)), "none")
    profile = tmp_path / "p"
    write_profile(profile, ["missing.bin"], bucket.url)
    assert_one_line_error(run_cli("warm", "--from-profile", str(profile), str(m.path)), "missing.bin")
    assert_one_line_error(run_cli("profile", "save", str(m.path), str(profile)), "profile start")


@needs_fuse
@pytest.mark.fuse
@pytest.mark.timeout(180)
def test_listing_exported_once_and_mounted_from_without_a_list(bucket, mounter, tmp_path):
    for i in range(30):
        bucket.put(f"d{i % 3}/f{i:02d}", b"v" * (i + 1))
    listing = tmp_path / "listing.jsonl.gz"
    proc = run_cli("listing", "export", bucket.url, str(listing), "--endpoint-url", bucket.server.endpoint,
                   check=True)
    assert "30 object(s)" in proc.stderr
    bucket.put("d0/added-later", b"new")  # not in the listing: proof the mount did not LIST
    lists = _lists(bucket)
    m = mounter.mount(bucket.url, "--listing", str(listing), "--metadata-ttl", "inf",
                      endpoint=bucket.server.endpoint)
    assert sorted(os.listdir(m.path)) == ["d0", "d1", "d2"]
    assert len(os.listdir(m.path / "d0")) == 10 and "added-later" not in os.listdir(m.path / "d0")
    assert (m.path / "d1" / "f07").read_bytes() == b"v" * 8
    assert _lists(bucket) == lists, "the mount LISTed the bucket despite --listing"


@needs_fuse
@pytest.mark.fuse
@pytest.mark.timeout(120)
def test_a_listing_of_another_source_or_a_bad_file_is_one_line(bucket, mounter, tmp_path):
    bucket.put("a", b"1")
    listing = tmp_path / "l.gz"
    run_cli("listing", "export", bucket.url, str(listing), "--endpoint-url", bucket.server.endpoint, check=True)
    path = tmp_path / "mnt"
    path.mkdir()
    proc = run_cli("mount", f"{bucket.url}/other", str(path), "--listing", str(listing), "--ssd",
                   str(tmp_path / "c"), "--endpoint-url", bucket.server.endpoint)
    assert_one_line_error(proc, "not s3://")
    (tmp_path / "junk").write_bytes(b"not gzip")
    proc = run_cli("mount", bucket.url, str(path), "--listing", str(tmp_path / "junk"), "--ssd", str(tmp_path / "c"),
                   "--endpoint-url", bucket.server.endpoint)
    assert_one_line_error(proc, "not a tiercache listing")


def test_library_mode_and_fsspec_start_from_a_listing_without_a_list(bucket, tmp_path):
    import fsspec

    import tiercache
    from tiercache import fsspec_engine
    from tiercache.fsspec_fs import TiercacheFileSystem
    from tiercache.listing import export_listing
    from tiercache.store import open_store

    for i in range(5):
        bucket.put(f"k/{i}", bytes([i]) * 10)
    store = open_store(bucket.url, bucket.server.endpoint)
    try:
        assert export_listing(store, bucket.url, tmp_path / "l.gz") == 5
    finally:
        store.close()
    lists = _lists(bucket)
    with tiercache.open(bucket.url, ram="8M", ssd=str(tmp_path / "c1"), ssd_size="16M", listing=tmp_path / "l.gz",
                        metadata_ttl="inf") as cache:
        assert cache.listdir("k") == ["0", "1", "2", "3", "4"] and cache.read("k/3") == bytes([3]) * 10
    TiercacheFileSystem.clear_instance_cache()
    try:
        fs = fsspec.filesystem("tiercache", target=bucket.url, ram="8M", ssd=str(tmp_path / "c2"),
                               ssd_size="16M", listing=str(tmp_path / "l.gz"), metadata_ttl="inf")
        assert fs.find("k") == [f"k/{i}" for i in range(5)]
    finally:
        TiercacheFileSystem.clear_instance_cache()
        fsspec_engine.close_all()
    assert _lists(bucket) == lists
    (tmp_path / "junk.gz").write_bytes(b"{}")
    with pytest.raises(ConfigError, match="not a tiercache listing"):
        tiercache.open(bucket.url, ssd=str(tmp_path / "c3"), listing=tmp_path / "junk.gz")
    with pytest.raises(ConfigError, match="No such file"):
        tiercache.open(bucket.url, ssd=str(tmp_path / "c3"), listing=tmp_path / "none.gz")


def test_a_directory_listed_before_the_tree_comes_from_the_file_too(bucket, tmp_path):
    from tiercache.listing import SeededStore, export_listing
    from tiercache.store import open_store

    for i in range(6):
        bucket.put(f"d{i % 2}/f{i}", b"x")
    store = open_store(bucket.url, bucket.server.endpoint)
    try:
        export_listing(store, bucket.url, tmp_path / "l.gz")
        bucket.put("d0/added-later", b"new")
        seeded = SeededStore(store, tmp_path / "l.gz", bucket.url)
        lists = _lists(bucket)
        assert [i.key for i in seeded.list("d0/")] == ["d0/f0", "d0/f2", "d0/f4"]  # a lookup racing the mount
        tree = seeded.list("")
        first = next(tree)
        assert [i.key for i in seeded.list("d0/")] == ["d0/f0", "d0/f2", "d0/f4"]  # while the tree is listed
        assert len([first, *tree]) == 6 and _lists(bucket) == lists  # the tree: from the file still
        assert "d0/added-later" in [i.key for i in seeded.list("d0/")]  # after the tree: the store's listing
        assert _lists(bucket) > lists and seeded.seeded_lists == 3
    finally:
        store.close()
