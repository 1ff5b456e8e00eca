"""Sequential read-ahead (tiercache/readahead.py): the state machine alone, and in a cache."""

from __future__ import annotations

import random

import tiercache


def _local_cache(tmp_path, files: dict[str, bytes], **options):
    src = tmp_path / "src"
    for key, data in files.items():
        (src / key).parent.mkdir(parents=True, exist_ok=True)
        (src / key).write_bytes(data)
    return tiercache.open(f"file://{src}", ssd=str(tmp_path / "cache"), ssd_size="0", **options)


def _settle(cache) -> dict:
    assert cache.readahead.wait_idle(30), "the read-ahead did not settle"
    return cache.stats()["prefetcher"]


def test_readahead_window_grows_on_sequential_reads_and_resets_on_seek(tmp_path):
    bs = 64 << 10
    blob = random.Random(1).randbytes(64 * bs)
    with _local_cache(tmp_path, {"big.bin": blob}, ram="64M", block_size="64K") as cache:
        windows = []
        for i in range(5):
            assert cache.read("big.bin", i * bs, bs) == blob[i * bs:(i + 1) * bs]
            windows.append(cache.readahead.window("big.bin"))
            _settle(cache)  # each window is fetched before the next read, so the counts below are exact
        assert windows == [bs, 2 * bs, 4 * bs, 8 * bs, 16 * bs]
        blocks = cache.blocks.ids(cache.namespace.info("big.bin"))
        ahead = [i for i, block in enumerate(blocks) if cache.tiers.contains(block, "ram")]
        assert ahead == list(range(5 + 16)), "the blocks of the window are fetched ahead of the reader"
        assert cache.read("big.bin", 40 * bs, bs) == blob[40 * bs:41 * bs]  # a seek: no read-ahead ...
        assert cache.readahead.window("big.bin") == 0
        assert cache.read("big.bin", 41 * bs, bs) == blob[41 * bs:42 * bs]  # ... until the reader goes on
        assert cache.readahead.window("big.bin") == bs
        pre = _settle(cache)
        assert [i for i, block in enumerate(blocks) if cache.tiers.contains(block, "ram")] == [*ahead, 40, 41, 42]
        assert pre["readahead_bytes"] == (20 + 1) * bs and pre["prefetched_read_bytes"] == 4 * bs
        assert pre["prefetched_bytes"] == pre["readahead_bytes"]
