"""Namespace: keys ↔ POSIX paths, unrepresentable keys, listing cache with a TTL, overlay entries."""

from __future__ import annotations

import logging
import threading

import pytest

from tiercache.errors import IsADirectory, NotADirectory, NotFound
from tiercache.namespace import Namespace, key_problem, normalize
from tiercache.namespace_index import NamespaceIndex
from tiercache.namespace_listings import Listings
from tiercache.store.base import ObjectInfo
from tiercache.tiers.meta import Meta

pytestmark = pytest.mark.timeout(30)


class DictStore:
    """An in-memory ObjectStore with request counters (the namespace only lists and heads)."""

    url = "mem://test"

    def __init__(self, objects: dict[str, bytes]):
        self.objects = dict(objects)
        self.lists = 0
        self.heads = 0
        self.version = 0

    def set(self, key: str, data: bytes) -> None:
        self.version += 1
        self.objects[key] = data

    def _info(self, key: str) -> ObjectInfo:
        return ObjectInfo(key, len(self.objects[key]), f"{hash(self.objects[key]) & 0xffff:x}", 1.0)

    def list(self, prefix: str = ""):
        self.lists += 1
        return [self._info(k) for k in sorted(self.objects) if k.startswith(prefix)]

    def head(self, key: str) -> ObjectInfo:
        self.heads += 1
        if key not in self.objects:
            raise NotFound(key)
        return self._info(key)


class GatedDictStore(DictStore):
    """A DictStore whose listings wait until ``go`` is set."""

    def __init__(self, objects: dict[str, bytes]):
        super().__init__(objects)
        self.go = threading.Event()

    def list(self, prefix: str = ""):
        self.go.wait(10)
        return super().list(prefix)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


TREE = {
    "train/cat/1.jpg": b"c1",
    "train/cat/2.jpg": b"c22",
    "train/dog/1.jpg": b"d1",
    "val/x.bin": b"x" * 10,
    "README": b"hi",
    "empty_dir/": b"",
}


def test_tree_listdir_and_stat(meta):
    ns = Namespace(DictStore(TREE), meta, ttl=60)
    assert ns.listdir("") == ["README", "empty_dir", "train", "val"]
    assert ns.listdir("train") == ["cat", "dog"] == ns.listdir("/train/")
    assert ns.listdir("empty_dir") == []
    entry = ns.stat("train/cat/2.jpg")
    assert (entry.name, entry.is_dir, entry.size, entry.path) == ("2.jpg", False, 3, "train/cat/2.jpg")
    assert entry.etag
    assert ns.stat("train").is_dir and ns.stat("train").etag is None and ns.stat("").is_dir
    assert ns.exists("val/x.bin") and not ns.exists("val/y.bin") and not ns.exists("../etc/passwd")
    with pytest.raises(NotFound):
        ns.stat("train/cow")
    with pytest.raises(NotFound):
        ns.listdir("nope")
    with pytest.raises(NotADirectory):
        ns.listdir("README")
    with pytest.raises(IsADirectory):
        ns.info("train")
    assert sorted(i.key for i in ns.files("train")) == [
        "train/cat/1.jpg", "train/cat/2.jpg", "train/dog/1.jpg",
    ]
    assert [i.key for i in ns.files("README")] == ["README"]
    assert len(list(ns.files(""))) == 5


def test_a_first_listing_that_ends_while_a_reader_looks_is_not_listed_again(meta, monkeypatch):
    """The race behind a flaky test: a reader saw the tree unlisted, then the first listing ended before the
    reader asked for it, and the reader listed the whole tree a second time."""

    store = GatedDictStore(TREE)
    first = Listings.first

    def first_after_the_listing_ended(self):
        job = self.jobs.get("")
        store.go.set()
        if job is not None:
            job.finished.wait(10)
        return first(self)

    monkeypatch.setattr(Listings, "first", first_after_the_listing_ended)
    ns = Namespace(store, meta, ttl=60)
    assert ns.listdir("") == ["README", "empty_dir", "train", "val"]
    assert store.lists == 1 and ns.stats()["lists"] == 1  # before: 2 (the tree listed again)


def test_a_file_looked_up_as_the_first_listing_ends_is_found(meta, monkeypatch):
    """The other side of that race (test_cache's pinned-blocks test, 2 reads in 100 under load): the lookup
    missed while the listing ran, the listing ended before the freshness check, and the file was NotFound."""
    store = GatedDictStore(TREE)
    ns = Namespace(store, meta, ttl=60)
    kind = NamespaceIndex.kind
    first_look: list[str] = []

    def kind_then_the_listing_ends(self, path):
        found = kind(self, path)
        if not first_look:
            first_look.append(path)
            store.go.set()
            ns.listings.jobs[""].finished.wait(10)
        return found

    monkeypatch.setattr(NamespaceIndex, "kind", kind_then_the_listing_ends)
    assert ns.stat("val/x.bin").size == 10 and first_look == ["val/x.bin"]  # before: NotFound
    assert store.lists == 1


def test_unrepresentable_keys_are_skipped_with_a_warning(meta, caplog):
    keys = {
        "ok/a": b"1",
        "a//b": b"2",
        "../escape": b"3",
        "x/./y": b"4",
        "z/" + "n" * 256: b"5",
        "nul\0key": b"6",
        "both": b"7",  # also a directory below: the directory wins
        "both/child": b"8",
    }
    store = DictStore(keys)
    ns = Namespace(store, meta, ttl=60)
    with caplog.at_level(logging.WARNING, logger="tiercache.namespace"):
        assert ns.listdir("") == ["both", "ok"]
    assert "skipped 6 key(s)" in caplog.text
    assert ns.stats()["skipped_keys"] == 6
    assert ns.stat("both").is_dir and ns.listdir("both") == ["child"]
    for bad in ("a//b", "../escape", "x/./y", "both/../../etc"):
        assert not ns.exists(bad)
    assert key_problem("fine/name.jpg") is None and key_problem("a/../b")
    with pytest.raises(NotFound):
        normalize("a/../../b")


def test_listing_is_cached_in_lmdb_across_restarts(tmp_path):
    store = DictStore(TREE)
    clock = Clock()
    meta = Meta(tmp_path / "meta")
    ns = Namespace(store, meta, ttl=60, clock=clock)
    assert ns.listdir("train/cat") == ["1.jpg", "2.jpg"]
    ns.close()  # as the cache closes it: a listing still running ends (or stops) before the index closes
    assert store.lists == 1
    meta.close()
    meta = Meta(tmp_path / "meta")
    ns = Namespace(store, meta, ttl=60, clock=clock)
    assert ns.listdir("train/cat") == ["1.jpg", "2.jpg"] and ns.stat("val/x.bin").size == 10
    assert store.lists == 1 and store.heads == 0
    clock.now += 61  # expired: the next restart lists again
    meta.close()
    meta = Meta(tmp_path / "meta")
    ns = Namespace(store, meta, ttl=60, clock=clock)
    ns.listdir("")
    assert store.lists == 2
    meta.close()


def test_ttl_expiry_relists_directories_and_heads_files(meta):
    store = DictStore(TREE)
    clock = Clock()
    ns = Namespace(store, meta, ttl=10, clock=clock)
    assert ns.listdir("train/cat") == ["1.jpg", "2.jpg"]
    store.set("train/cat/3.jpg", b"new")
    store.set("train/cat/1.jpg", b"changed!")
    assert ns.listdir("train/cat") == ["1.jpg", "2.jpg"]  # within the TTL
    old = ns.stat("train/cat/1.jpg")
    clock.now += 11
    assert ns.listdir("train/cat") == ["1.jpg", "2.jpg", "3.jpg"]
    assert store.lists == 2
    assert ns.stat("train/cat/1.jpg").size == 8 != old.size
    clock.now += 11
    changed = []
    ns.on_change = lambda path, info: changed.append((path, info.size if info else None))
    store.set("val/x.bin", b"y" * 3)
    assert ns.stat("val/x.bin").size == 3 and store.heads == 1
    assert changed == [("val/x.bin", 3)]
    del store.objects["README"]
    clock.now += 11
    with pytest.raises(NotFound):
        ns.stat("README")
    assert "README" not in ns.listdir("")


def test_ttl_zero_always_revalidates(meta):
    store = DictStore(TREE)
    ns = Namespace(store, meta, ttl=0)
    ns.stat("val/x.bin")
    ns.stat("val/x.bin")
    assert store.heads == 2


def test_overlay_entries_survive_relists_until_listed(meta):
    store = DictStore(TREE)
    clock = Clock()
    ns = Namespace(store, meta, ttl=10, clock=clock)
    ns.add(ObjectInfo("train/cat/new.jpg", 5, "pending", 2.0))
    ns.add_dir("train/newdir")
    assert "new.jpg" in ns.listdir("train/cat") and "newdir" in ns.listdir("train")
    clock.now += 11
    assert "new.jpg" in ns.listdir("train/cat")  # not uploaded yet: still shown
    assert ns.stat("train/cat/new.jpg").etag == "pending"
    with pytest.raises(IsADirectory):
        ns.add(ObjectInfo("train", 1, "e", 1.0))
    ns.remove("train/cat/new.jpg")
    assert "new.jpg" not in ns.listdir("train/cat")
    with pytest.raises(NotFound):
        ns.stat("train/cat/new.jpg")
    ns.forget("val/x.bin")
    heads = store.heads
    ns.info("val/x.bin")
    assert store.heads == heads + 1
