"""The merged read view (merged_view.MergedView: the cache's listings ∪ pending writes − pending deletes)
against a reference model of the filesystem, over random sequences of creates, overwrites, unlinks, renames,
mkdir/rmdir and objects put by another writer, checked after every step while uploads run in the
background on a slow store, then after a restart. No mount: this is the view FUSE and fsspec both read.

(A local-directory store, slowed down so that uploads, copies and deletes overlap the listings; this checks
the view's merging, not S3.)"""

from __future__ import annotations

import random
import threading
import time

import pytest

from tiercache.cache import TieredCache
from tiercache.config import CacheConfig
from tiercache.errors import NotFound
from tiercache.merged_view import MergedView
from tiercache.store.local import LocalStore
from tiercache.writeback.front import WriteTier


class SlowStore:
    """Store calls that take a random few milliseconds, so the uploader's changes overlap the reads."""

    def __init__(self, inner: LocalStore, seed: int):
        self.inner, self.url = inner, inner.url
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def _pause(self) -> None:
        with self._lock:
            pause = self._rng.random() * 0.004
        time.sleep(pause)

    def put_file(self, key, path, attrs=None):
        self._pause()
        return self.inner.put_file(key, path, attrs)

    def copy(self, src, dst):
        self._pause()
        return self.inner.copy(src, dst)

    def delete(self, key):
        self._pause()
        return self.inner.delete(key)

    def _answer(self, items):
        # LocalStore lists its own uploads in progress (".tc-upload-*" temp files beside the target): a
        # store/local.py matter, left out here so that the view is what this test checks
        items = [i for i in items if isinstance(i, str) or ".tc-upload-" not in i.key]
        self._pause()  # the listing is taken, then answered a moment later
        return iter(items)

    def list(self, prefix=""):
        return self._answer(self.inner.list(prefix))

    def list_level(self, prefix):  # the namespace's walk lists by level where the store can
        return self._answer(self.inner.list_level(prefix))

    def list_after(self, prefix, start_after):
        return self._answer(self.inner.list_after(prefix, start_after))

    def __getattr__(self, name):
        return getattr(self.inner, name)


class Model:
    """What the filesystem holds: files (path -> bytes) and directories (made with mkdir; all of them here,
    so a directory outlives its files)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.dirs: set[str] = {""}

    def children(self, d: str) -> dict[str, bool]:
        """name -> is_dir of what directory ``d`` holds."""
        prefix = d + "/" if d else ""
        out: dict[str, bool] = {}
        for path in [*self.files, *self.dirs]:
            if path and path.startswith(prefix):
                name, sep, _ = path[len(prefix):].partition("/")
                out[name] = out.get(name, False) or bool(sep) or path in self.dirs
        return dict(sorted(out.items()))

    def below(self, d: str) -> list[str]:
        prefix = d + "/"
        return [p for p in [*self.files, *self.dirs] if p.startswith(prefix)]


def random_step(rng: random.Random, model: Model, tier: WriteTier, store: LocalStore, counter: list[int]) -> str:
    """One random operation, applied to the write tier (or the store, as another writer) and the model."""
    dirs = sorted(model.dirs)
    files = sorted(model.files)
    parent = rng.choice(dirs)
    prefix = parent + "/" if parent else ""
    name, dir_name = f"{prefix}f{rng.randrange(4)}", f"{prefix}d{rng.randrange(3)}"  # files and dirs apart
    op = rng.random()
    taken = name in model.files
    dir_taken = dir_name in model.dirs
    if op < 0.3:
        data = rng.randbytes(rng.randrange(0, 3000))
        fh = tier.create(name)
        tier.write(fh, data, 0)
        tier.release(fh)
        model.files[name] = data
        return f"write {name}"
    if op < 0.42 and not dir_taken:
        tier.mkdir(dir_name)
        model.dirs.add(dir_name)
        return f"mkdir {dir_name}"
    if op < 0.55 and files:
        victim = rng.choice(files)
        tier.unlink(victim)
        del model.files[victim]
        return f"unlink {victim}"
    if op < 0.68 and files:
        src = rng.choice(files)
        if src != name:
            tier.rename(src, name)
            model.files[name] = model.files.pop(src)
            return f"rename {src} {name}"
    if op < 0.76:
        empty = [d for d in dirs if d and not model.below(d)]
        if empty:
            victim = rng.choice(empty)
            tier.rmdir(victim)
            model.dirs.discard(victim)
            return f"rmdir {victim}"
    if op < 0.82 and not dir_taken:
        src = rng.choice([d for d in dirs if d] or [""])
        if src and not dir_name.startswith(src + "/") and dir_name != src:
            tier.rename(src, dir_name)
            moved = {p: dir_name + p[len(src):] for p in [src, *model.below(src)]}
            model.files = {moved.get(p, p): v for p, v in model.files.items()}
            model.dirs = {moved.get(p, p) for p in model.dirs}
            return f"rename-dir {src} {dir_name}"
    if op < 0.9 and not taken:
        counter[0] += 1
        data = b"external %d" % counter[0]
        target = store.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)  # another writer, straight to the store
        model.files[name] = data
        return f"external {name}"
    return "nothing"


def check_view(view: MergedView, model: Model, step: str, gone: set[str]) -> None:
    """The view shows exactly the model: every directory's names and kinds (both ways of reading it), every
    file's size and bytes, and none of the names removed."""
    for d in sorted(model.dirs):
        want = model.children(d)
        listing = {name: child.is_dir for name, child in view.listing(d).items()}
        assert listing == want, (step, d)
        prefix = d + "/" if d else ""
        nodes = {n.key[len(prefix):]: (n.is_dir, None if n.is_dir else n.size) for n in view.children(d)}
        assert nodes == {n: (is_dir, None if is_dir else len(model.files[prefix + n]))
                         for n, is_dir in want.items()}, (step, d)
        entries = {n: (e.is_dir, None if e.is_dir else e.size) for n in want for e in [view.entry(prefix + n)]}
        assert entries == nodes, (step, d)  # what FUSE's getattr answers (view.entry) is what readdir lists
    assert [n.key for n in view.files("")] == sorted(model.files), step
    for path, data in model.files.items():
        assert view.read(path, 0, None) == data, (step, path)
    for path in gone - model.files.keys() - model.dirs:
        if not any(p.startswith(path + "/") for p in model.files):
            with pytest.raises(NotFound):
                view.node(path)
        parent, _, name = path.rpartition("/")
        try:
            view.entry(path)
            found = True
        except NotFound:
            found = False
        listed = parent in model.dirs and name in view.listing(parent)
        assert found == listed, (step, path)  # getattr and readdir agree on a removed name


def open_view(tmp_path, store: SlowStore):
    config = CacheConfig.build(store.url, ram="32M", ssd=tmp_path / "cache", ssd_size=0, metadata_ttl=0)
    cache = TieredCache(config, store=store)
    tier = WriteTier(store, tmp_path / "wd", cache=cache, uploaders=3, reserve_bytes=0)
    return cache, tier, MergedView(cache, tier)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_changes_show_in_the_merged_view_as_in_the_model(tmp_path, seed):
    root = tmp_path / "store"
    root.mkdir()
    local = LocalStore(root)
    store = SlowStore(local, seed)
    rng = random.Random(seed)
    model, counter = Model(), [0]
    gone: set[str] = set()
    cache, tier, view = open_view(tmp_path, store)
    try:
        for i in range(80):
            before = set(model.files) | model.dirs
            step = f"{i}: {random_step(rng, model, tier, local, counter)}"
            gone |= before - set(model.files) - model.dirs
            check_view(view, model, step, gone)
            if rng.random() < 0.1:
                assert tier.flush_all(timeout=30)["left"] == []
                check_view(view, model, step + " (flushed)", gone)
        tier.close(drain=False, timeout=10)  # a restart with changes pending: the journal replays them
        cache.close()
        cache, tier, view = open_view(tmp_path, store)
        check_view(view, model, "restarted", gone)
        assert tier.flush_all(timeout=30)["left"] == []
        check_view(view, model, "restarted, flushed", gone)
        assert sorted(info.key for info in local.list()) == sorted(model.files)
    finally:
        tier.close(timeout=10)
        cache.close()
