"""The typed stats records against the real producers: every field a record names is one the cache and the
write tier really report (a renamed stats key fails here, not in a blank column), and the readers (the
table, the metrics, drain_status) show the producers' numbers."""

from __future__ import annotations

import dataclasses

import pytest

from tiercache.cache import TieredCache
from tiercache.cli_format import format_stats
from tiercache.config import CacheConfig
from tiercache.metrics import StatsCollector
from tiercache.statsrecords import (
    DRAIN_FIELDS,
    BackendStats,
    MountInfo,
    PlanRow,
    PrefetchStats,
    StatsReply,
    TierRow,
    WriteStats,
)
from tiercache.store.local import LocalStore
from tiercache.writeback.front import WriteTier


@pytest.fixture
def reply(tmp_path):
    """A stats reply as the daemon's ``stats`` op makes it, from a real cache and write tier that did work."""
    root = tmp_path / "store"
    root.mkdir()
    (root / "a").write_bytes(b"x" * 5000)
    store = LocalStore(root)
    config = CacheConfig.build(store.url, ram="32M", ssd=tmp_path / "cache", ssd_size="64M")
    cache = TieredCache(config, store=store)
    tier = WriteTier(store, tmp_path / "wd", cache=cache, reserve_bytes=0)
    try:
        cache.read("a")
        cache.read("a")
        cache.set_plan(["a"], client="rank0")
        fh = tier.create("b")
        tier.write(fh, b"y" * 300, 0)
        tier.release(fh)
        tier.flush_all(timeout=30)
        yield {"mount": {"mountpoint": "/mnt/t", "source": store.url, "mode": "writeback", "pid": 42},
               "cache": cache.stats(), "writes": tier.stats(), "jobs": {"warm": 0}}
    finally:
        tier.close(timeout=10)
        cache.close()


def names(record: type) -> set[str]:
    return {f.name for f in dataclasses.fields(record)}


def test_every_record_field_is_one_the_producers_report(reply):
    cache = reply["cache"]
    assert names(WriteStats) <= set(reply["writes"])
    assert names(BackendStats) <= set(cache["backend"])
    assert names(PrefetchStats) <= set(cache["prefetcher"])
    assert names(TierRow) - {"name"} <= set(cache["ram"]) & set(cache["ssd"])
    assert names(PlanRow) <= set(cache["plans"][0])
    assert set(DRAIN_FIELDS) <= names(WriteStats)
    assert names(MountInfo) - {"cache_dir", "write_dir", "started"} <= set(reply["mount"])


def test_the_records_carry_the_producers_numbers(reply):
    records = StatsReply.from_reply(reply)
    cache, writes = reply["cache"], reply["writes"]
    assert [t.name for t in records.cache.tiers] == ["ram", "ssd"]
    ram = records.cache.tiers[0]
    assert (ram.used, ram.capacity, ram.hits, ram.misses) == tuple(cache["ram"][k] for k in
                                                                   ("used", "capacity", "hits", "misses"))
    assert records.cache.backend.gets == cache["backend"]["gets"] >= 1
    assert records.cache.plans[0].client == "rank0"
    assert records.writes.uploaded_files == writes["uploaded_files"] == 1
    assert records.writes.drain_status() == {k: writes[k] for k in DRAIN_FIELDS}
    assert records.mount.pid == 42


def test_table_and_metrics_show_the_same_numbers(reply):
    text = format_stats("/mnt/t", reply)
    gets = reply["cache"]["backend"]["gets"]
    assert f"{gets:,} GETs" in text
    assert "rank0" in text and "uploaded 1 file(s)" in text
    samples = {s.name: s.value for family in StatsCollector(lambda: reply, "/mnt/t").collect()
               for s in family.samples if not s.labels.get("tier") and not s.labels.get("client")}
    assert samples["tiercache_backend_gets_total"] == gets
    assert samples["tiercache_uploaded_bytes_total"] == reply["writes"]["uploaded_bytes"] == 300
    assert samples["tiercache_plans"] == 1


def test_a_reply_without_parts_formats_with_blanks():
    records = StatsReply.from_reply({})
    assert records.writes is None and records.cache.tiers == [] and records.mount.source == "?"
    text = format_stats("/mnt/t", {"cache": {"ram": {"used": 1}}, "writes": {"mode": "writeback"}})
    assert "ram" in text and "writes: writeback, dirty - in - file(s)" in text
