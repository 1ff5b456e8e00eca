"""A name changed through the write tier never shows wrongly in the merged view, whatever a concurrent
reader's LIST or HEAD was doing: a deleted name does not come back from an answer the store gave before the
delete, and a renamed file has no moment where neither the write tier nor the cache shows it.

Each race is set up exactly: the store wrapper holds a reader's answer until the delete is done."""

from __future__ import annotations

import inspect
import threading

import pytest

from tiercache.cache import TieredCache
from tiercache.config import CacheConfig
from tiercache.errors import NotFound
from tiercache.merged_view import MergedView
from tiercache.store.local import LocalStore
from tiercache.writeback.front import WriteTier


class HeldStore:
    """A LocalStore whose next ``list`` or ``head`` (once armed) takes its answer, then waits for ``go``."""

    def __init__(self, inner: LocalStore):
        self.inner, self.url = inner, inner.url
        self.hold: str | None = None  # "list" or "head"
        self.answered, self.go = threading.Event(), threading.Event()

    def _held(self, op: str, answer):
        if self.hold == op:
            self.hold = None
            self.answered.set()
            assert self.go.wait(30)
        return answer

    def list(self, prefix=""):
        return iter(self._held("list", list(self.inner.list(prefix))))

    def list_level(self, prefix):  # the namespace's walk lists by level where the store can
        return iter(self._held("list", list(self.inner.list_level(prefix))))

    def list_after(self, prefix, start_after):
        return iter(self._held("list", list(self.inner.list_after(prefix, start_after))))

    def head(self, key):
        return self._held("head", self.inner.head(key))

    def __getattr__(self, name):
        return getattr(self.inner, name)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world(tmp_path):
    """(store, cache, tier, view, clock) over a local store holding d/x and d/y; metadata TTL 60 s on a
    clock the test moves."""
    root = tmp_path / "store"
    (root / "d").mkdir(parents=True)
    (root / "d" / "x").write_bytes(b"x")
    (root / "d" / "y").write_bytes(b"y")
    store = HeldStore(LocalStore(root))
    config = CacheConfig.build(store.url, ram="32M", ssd=tmp_path / "cache", ssd_size=0, metadata_ttl=60)
    cache = TieredCache(config, store=store)
    clock = Clock()
    cache.namespace.clock = clock
    tier = WriteTier(store, tmp_path / "wd", cache=cache, reserve_bytes=0)
    assert cache.listdir("d") == ["x", "y"]
    yield store, cache, tier, MergedView(cache, tier), clock
    store.go.set()
    tier.close(timeout=10)
    cache.close()


def in_thread(fn) -> tuple[threading.Thread, list]:
    out: list = []

    def run():
        try:
            out.append(fn())
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_a_listing_answered_before_a_delete_does_not_bring_the_name_back(world):
    store, cache, tier, view, clock = world
    clock.now += 100  # the listing of d is past its TTL: the next use lists again
    store.hold = "list"
    lister, _ = in_thread(lambda: cache.listdir("d"))
    assert store.answered.wait(30)  # the store's answer (x and y) is out, not yet applied
    tier.unlink("d/x")
    assert tier.flush_all(timeout=30)["left"] == []  # done at the store, in the cache, in the write tier
    assert not (store.inner.root / "d" / "x").exists()
    store.go.set()
    lister.join(30)
    assert cache.listdir("d") == ["y"]  # within the TTL of that listing: no relist would correct it
    assert list(view.listing("d")) == ["y"]
    with pytest.raises(NotFound):
        cache.stat("d/x")


def test_a_head_answered_before_a_delete_does_not_bring_the_name_back(world):
    store, cache, tier, view, clock = world
    clock.now += 100  # d/x's info is past its TTL: the next stat HEADs
    store.hold = "head"
    statter, _ = in_thread(lambda: cache.stat("d/x"))
    assert store.answered.wait(30)  # the HEAD's answer (x exists) is out, not yet recorded
    tier.unlink("d/x")
    assert tier.flush_all(timeout=30)["left"] == []
    store.go.set()
    statter.join(30)
    with pytest.raises(NotFound):  # the HEAD's answer, older than the delete, is not taken for fresh
        cache.stat("d/x")
    assert list(view.listing("d")) == ["y"]


def test_the_cache_knows_a_renamed_file_before_the_rename_stops_being_pending(world):
    _store, cache, tier, view, _clock = world
    seen: list[tuple[str, bool]] = []
    add = cache.namespace.add

    def watching_add(info):  # when the cache learns the new name, the write tier must still show it
        seen.append((info.key, tier.pending_entry(info.key) is not None))
        add(info)

    cache.namespace.add = watching_add
    tier.rename("d/x", "d/z")
    assert tier.flush_all(timeout=30)["left"] == []
    assert seen == [("d/z", True)]
    assert list(view.listing("d")) == ["y", "z"]


def test_the_cache_forgets_a_deleted_file_before_the_delete_stops_being_pending(world):
    _store, cache, tier, view, _clock = world
    assert cache.read("d/x") == b"x"  # cached
    seen: list[tuple[str, bool]] = []
    invalidate = cache.invalidate

    def watching_invalidate(path):  # the uploader's, after the store's delete: while the name is still hidden
        if any(frame.function == "_delete" for frame in inspect.stack()):
            seen.append((path, tier.is_deleted(path)))
        invalidate(path)

    cache.invalidate = watching_invalidate
    tier.unlink("d/x")
    assert tier.flush_all(timeout=30)["left"] == []
    assert seen == [("d/x", True)]
    assert list(view.listing("d")) == ["y"]
