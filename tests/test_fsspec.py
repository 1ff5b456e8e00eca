"""The fsspec filesystem (protocol ``tiercache``) against the real local S3 server: listing, ranged reads,
URL chaining, writes through the durable write tier, pandas and pyarrow through the protocol, and fsspec's
own conformance suite (fsspec.tests.abstract)."""

from __future__ import annotations

import io
import itertools

import fsspec
import pytest
from fsspec.tests.abstract import AbstractCopyTests, AbstractFixtures, AbstractOpenTests, AbstractPipeTests

from tiercache import fsspec_engine
from tiercache.fsspec_fs import TiercacheFileSystem

pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

_dirs = itertools.count()


@pytest.fixture(autouse=True)
def _fresh_engines():
    """Every test gets new filesystem instances and engines; engines are closed (uploads drained) after it."""
    TiercacheFileSystem.clear_instance_cache()
    yield
    TiercacheFileSystem.clear_instance_cache()
    fsspec_engine.close_all()


def _fs(bucket, tmp_path, **options) -> TiercacheFileSystem:
    options.setdefault("ssd", str(tmp_path / f"cache{next(_dirs)}"))
    options.setdefault("ssd_size", "64M")
    options.setdefault("ram", "64M")
    return fsspec.filesystem("tiercache", target=bucket.url, **options)


def test_protocol_is_registered_through_the_entry_point():
    assert fsspec.get_filesystem_class("tiercache") is TiercacheFileSystem


def test_ls_info_find_and_ranged_cat_file_read_from_the_cache(bucket, tmp_path):
    bucket.put("data/a.bin", bytes(range(256)) * 40)
    bucket.put("data/sub/b.txt", b"hello")
    bucket.put("top.txt", b"x")
    fs = _fs(bucket, tmp_path)
    assert fs.ls("", detail=False) == ["data", "top.txt"]
    entries = {e["name"]: e for e in fs.ls("data")}
    assert entries["data/a.bin"]["type"] == "file" and entries["data/a.bin"]["size"] == 10240
    assert entries["data/sub"]["type"] == "directory"
    assert fs.info("data/sub/b.txt")["size"] == 5
    assert fs.isdir("data") and fs.isfile("top.txt") and not fs.exists("nope")
    with pytest.raises(FileNotFoundError):
        fs.info("data/missing")
    assert fs.find("data") == ["data/a.bin", "data/sub/b.txt"]
    assert fs.find("", withdirs=True) == ["data", "data/a.bin", "data/sub", "data/sub/b.txt", "top.txt"]
    assert fs.glob("data/**/*.txt") == ["data/sub/b.txt"]
    want = bytes(range(256)) * 40
    assert fs.cat_file("data/a.bin", start=100, end=300) == want[100:300]
    assert fs.cat_file("data/a.bin", start=-10) == want[-10:]
    assert fs.cat_file("data/a.bin") == want
    gets = len(bucket.gets("data/a.bin"))
    assert fs.cat_file("data/a.bin", start=5000, end=6000) == want[5000:6000]
    assert len(bucket.gets("data/a.bin")) == gets, "a resident block is served from the tiers, no GET"
    assert fs.cache_stats()["ram"]["used"] > 0


def test_open_reads_with_readahead_and_seeks(bucket, tmp_path):
    payload = bytes(i % 251 for i in range(300_000))
    bucket.put("big.bin", payload)
    fs = _fs(bucket, tmp_path, block_size="64K")
    with fs.open("big.bin", "rb") as f:
        assert f.read(10) == payload[:10]
        f.seek(200_000)
        assert f.read(70_000) == payload[200_000:270_000]
        assert f.read() == payload[270_000:]
    assert len(bucket.gets("big.bin")) <= 5  # 64K blocks: one GET per block at most, read-ahead included


def test_chained_url_reads_bucket_rooted_paths(bucket, tmp_path):
    bucket.put("csv/t.csv", b"a,b\n1,2\n3,4\n")
    bucket.put("csv/u.csv", b"a\n9\n")
    url = f"tiercache::s3://{bucket.name}/csv/t.csv"
    opts = {"tiercache": {"ssd": str(tmp_path / "c"), "ssd_size": "64M", "ram": "64M"},
            "s3": {"endpoint_url": bucket.server.endpoint}}
    with fsspec.open(url, "rb", **opts) as f:
        assert f.read() == b"a,b\n1,2\n3,4\n"
    fs, path = fsspec.core.url_to_fs(url, **opts)
    assert isinstance(fs, TiercacheFileSystem) and path == f"{bucket.name}/csv/t.csv"
    assert fs.ls(f"{bucket.name}/csv", detail=False) == [f"{bucket.name}/csv/t.csv", f"{bucket.name}/csv/u.csv"]
    assert fs.unstrip_protocol(path) == f"tiercache::s3://{bucket.name}/csv/t.csv"
    # a second file of the same bucket (another instance for fsspec) shares the one engine of that cache dir
    with fsspec.open(f"tiercache::s3://{bucket.name}/csv/u.csv", "rb", **opts) as f:
        assert f.read() == b"a\n9\n"


def test_pandas_reads_and_writes_csv_through_the_protocol(bucket, tmp_path):
    bucket.put("tables/t.csv", b"name,n\nx,1\ny,2\nz,3\n")
    opts = {"tiercache": {"ssd": str(tmp_path / "c"), "ssd_size": "64M", "ram": "64M"}}
    frame = pd.read_csv(f"tiercache::s3://{bucket.name}/tables/t.csv", storage_options=opts)
    assert list(frame["name"]) == ["x", "y", "z"] and frame["n"].sum() == 6
    frame.assign(n=frame["n"] * 10).to_csv(f"tiercache::s3://{bucket.name}/tables/out.csv", index=False,
                                          storage_options=opts)
    back = pd.read_csv(f"tiercache::s3://{bucket.name}/tables/out.csv", storage_options=opts)
    assert list(back["n"]) == [10, 20, 30]  # read-your-writes, before or after the upload
    fsspec_engine.close_all()  # drains the upload
    assert bucket.get("tables/out.csv").decode().splitlines() == ["name,n", "x,10", "y,20", "z,30"]


def test_pyarrow_reads_a_parquet_dataset_through_the_protocol(bucket, tmp_path):
    for part in range(3):
        table = pa.table({"part": [part] * 100, "value": list(range(part * 100, part * 100 + 100))})
        sink = io.BytesIO()
        pq.write_table(table, sink)
        bucket.put(f"ds/part-{part}.parquet", sink.getvalue())
    fs = _fs(bucket, tmp_path)
    table = pq.read_table("ds", filesystem=fs)
    assert table.num_rows == 300 and sorted(table.column("value").to_pylist()) == list(range(300))
    frame = pd.read_parquet(f"tiercache::s3://{bucket.name}/ds",
                            storage_options={"tiercache": {"ssd": str(tmp_path / "c2"), "ram": "64M"}})
    assert len(frame) == 300 and set(frame["part"]) == {0, 1, 2}
    before = len(bucket.gets())
    assert pq.read_table("ds", filesystem=fs).num_rows == 300
    assert len(bucket.gets()) == before, "the second read of the dataset is served from the cache"


def test_writes_go_through_the_durable_write_tier(bucket, tmp_path):
    fs = _fs(bucket, tmp_path)
    fs.pipe_file("out/a.bin", b"abc" * 1000)
    assert fs.cat_file("out/a.bin") == b"abc" * 1000  # visible at once, pending upload
    assert fs.info("out")["type"] == "directory"
    with fs.open("out/a.bin", "ab") as f:
        f.write(b"tail")
    assert fs.cat_file("out/a.bin", start=-4) == b"tail"
    fs.makedirs("empty/dir")
    assert fs.isdir("empty/dir") and fs.ls("empty", detail=False) == ["empty/dir"]
    fs.mv("out/a.bin", "out/b.bin")
    assert fs.ls("out", detail=False) == ["out/b.bin"]
    report = fs.engine.writes.flush_all(timeout=60)
    assert not report["left"], report
    assert bucket.get("out/b.bin") == b"abc" * 1000 + b"tail"
    assert "out/a.bin" not in bucket.keys()
    fs.rm("out", recursive=True)
    fs.engine.writes.flush_all(timeout=60)
    assert not fs.exists("out/b.bin") and "out/b.bin" not in bucket.keys()


def test_readonly_mode_refuses_writes_with_a_clear_error(bucket, tmp_path):
    bucket.put("f", b"1")
    fs = _fs(bucket, tmp_path, mode="readonly")
    assert fs.cat_file("f") == b"1"
    with pytest.raises(OSError, match="read-only"):
        fs.pipe_file("g", b"2")


def test_bad_options_are_one_clear_error(bucket, tmp_path):
    with pytest.raises(ValueError, match="ram"):
        _fs(bucket, tmp_path, ram="lots")
    with pytest.raises(ValueError, match="target="):
        fsspec.filesystem("tiercache")


# ---------------------------------------------------------------- fsspec's own conformance tests


class _Fixtures(AbstractFixtures):
    @pytest.fixture
    def fs(self, bucket, tmp_path):
        return _fs(bucket, tmp_path)

    @pytest.fixture
    def fs_path(self):
        return "conformance"

    @pytest.fixture
    def supports_empty_directories(self):
        return True


class TestConformanceOpen(_Fixtures, AbstractOpenTests):
    """fsspec.tests.abstract: open."""


class TestConformancePipe(_Fixtures, AbstractPipeTests):
    """fsspec.tests.abstract: pipe."""


class TestConformanceCopy(_Fixtures, AbstractCopyTests):
    """fsspec.tests.abstract: copy within the filesystem."""
