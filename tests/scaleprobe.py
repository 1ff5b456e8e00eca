"""Run by test_scale.py in a fresh process: one scale measurement over the synthetic store, as one JSON line.

    python tests/scaleprobe.py warm CACHE_DIR N      # open, list all N, warm all N into the SSD tier
    python tests/scaleprobe.py restart CACHE_DIR N   # open the warm cache dir, read one cached file

``index_reads`` counts the SSD index entries read in the foreground (``Meta.reads``; the background
validation is not counted) from open to the first read served. Memory is counted two ways: RssAnon (the
process's anonymous resident bytes) and Python allocations (``sys.getallocatedblocks``), after a
``gc.collect()``. Imports happen before the first checkpoint.
"""

from __future__ import annotations

import gc
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ["TIERCACHE_SYNTHETIC_STORE"] = "1"

import tiercache  # noqa: E402
import tiercache.cache  # noqa: E402,F401
from tiercache.store.synthetic import SyntheticStore  # noqa: E402

SIZE = 512


def checkpoint() -> dict:
    """RssAnon, RssFile (mapped file pages: LMDB's) and Python allocations now."""
    gc.collect()
    with open("/proc/self/status") as fh:
        fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh if line.startswith("Rss")}
    return {"rss_anon": fields["RssAnon"], "rss_file": fields["RssFile"], "allocations": sys.getallocatedblocks()}


def open_cache(cache_dir: str, n: int):
    """The library over N synthetic objects, a small RAM tier, an SSD tier in ``cache_dir``."""
    return tiercache.open(f"synthetic://probe?objects={n}&size={SIZE}", ram="16M", ssd=cache_dir,
                          ssd_size="1G", metadata_ttl="inf", mode="readonly")


def warm(cache_dir: str, n: int) -> dict:
    """Memory growth of the first listing of N objects, then of warming all N (one block each)."""
    cache = open_cache(cache_dir, n)
    opened = checkpoint()
    names = cache.listdir("")
    for _ in cache.namespace.files(""):  # the root answers before the listing ends: wait for all of it
        pass
    listed = checkpoint()
    report = cache.warm("", tier="ssd")
    warmed = checkpoint()
    ssd = cache.stats()["ssd"]
    index_bytes = cache.meta.page_bytes("ssd_index")
    cache.close()
    return {"top": names, "warm": {k: report[k] for k in ("files", "complete", "errors")},
            "opened": opened, "listed": listed, "warmed": warmed,
            "ssd_state_bytes": ssd["state_bytes"], "ssd_blocks": ssd["blocks"], "ssd_index_bytes": index_bytes}


def restart(cache_dir: str, n: int) -> dict:
    """Memory and allocations of reopening a warm cache dir and serving one cached file."""
    key = SyntheticStore(n, SIZE).key(n // 2)
    start = checkpoint()
    cache = open_cache(cache_dir, n)
    opened = checkpoint()
    data = bytes(cache.read(key))
    read = checkpoint()
    index_reads = {db: cache.meta.reads[db] for db in ("ssd_index", "regions")}
    gets = cache.stats()["backend"]["gets"]
    validated = cache.ssd.validated(300)
    after = checkpoint()
    ssd = cache.stats()["ssd"]
    cache.close()
    return {"start": start, "opened": opened, "read": read, "validated_at": after, "backend_gets": gets,
            "index_reads": index_reads,
            "read_ok": data == SyntheticStore(n, SIZE).content(key), "validated": validated,
            "blocks_after_validation": ssd["blocks"]}


if __name__ == "__main__":
    what, directory, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    print(json.dumps({"warm": warm, "restart": restart}[what](directory, count)))
