"""Random concurrent writes, overwrites, renames, unlinks, truncates and sparse growth against a model of the
expected files, with a slow and flaky store and a restart midway: read-your-writes holds at every step, and
the store ends exactly as the model says. (A local-directory store: this checks the write tier's ordering, not S3.)"""

from __future__ import annotations

import os
import random
import threading
import time

import pytest

from tiercache.errors import StoreError
from tiercache.store.local import LocalStore
from tiercache.writeback.front import WriteTier


class FlakyStore:
    """Slow store calls (so changes overlap in flight) that fail with probability ``fail``."""

    def __init__(self, inner: LocalStore, seed: int):
        self.inner, self.url = inner, inner.url
        self.fail = 0.0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def _call(self, fn, *args):
        with self._lock:
            pause, failing = self._rng.random() * 0.005, self._rng.random() < self.fail
        time.sleep(pause)
        if failing:
            raise StoreError("injected failure")
        return fn(*args)

    def put_file(self, key, path, attrs=None):
        return self._call(self.inner.put_file, key, path, attrs)

    def copy(self, src, dst):
        return self._call(self.inner.copy, src, dst)

    def delete(self, key):
        return self._call(self.inner.delete, key)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def apply_patch(old: bytes, offset: int, patch: bytes) -> bytes:
    new = bytearray(old.ljust(offset + len(patch), b"\0"))
    new[offset:offset + len(patch)] = patch
    return bytes(new)


def random_ops(tier: WriteTier, store: LocalStore, thread: int, seed: int, model: dict, errors: list) -> None:
    """One thread's random operations on its own few names, mirrored in ``model``."""
    rng = random.Random(seed * 100 + thread)
    names = [f"t{thread}/n{i}" for i in range(4)]

    def release(fh):
        try:
            tier.release(fh)
        except StoreError:  # writethrough upload failed: committed anyway, retried later
            assert tier.mode == "writethrough"

    try:
        for _ in range(120):
            op, name = rng.random(), rng.choice(names)
            if op < 0.35:
                data = rng.randbytes(rng.randrange(0, 5000))
                fh = tier.create(name)
                for pos in range(0, len(data), 1000):
                    tier.write(fh, data[pos:pos + 1000], pos)
                release(fh)
                model[name] = data
            elif name not in model:
                continue
            elif op < 0.55:
                offset, patch = rng.randrange(len(model[name]) + 10), rng.randbytes(rng.randrange(1, 50))
                fh = tier.open(name)
                tier.write(fh, patch, offset)
                release(fh)
                model[name] = apply_patch(model[name], offset, patch)
            elif op < 0.7:
                dest = rng.choice(names)
                if dest != name:
                    tier.rename(name, dest)
                    model[dest] = model.pop(name)
            elif op < 0.8:
                tier.unlink(name)
                del model[name]
            elif op < 0.87:
                length = rng.randrange(len(model[name]) + 20)
                fh = tier.open(name)
                tier.truncate(fh, length)
                release(fh)
                model[name] = model[name].ljust(length, b"\0")[:length]
            elif op < 0.92:  # grow by a hole (sparse), then write into it
                length = len(model[name]) + rng.randrange(1, 200_000)
                offset, patch = rng.randrange(length), rng.randbytes(rng.randrange(1, 5000))
                fh = tier.open(name)
                tier.truncate(fh, length)
                tier.write(fh, patch, offset)
                release(fh)
                model[name] = apply_patch(model[name].ljust(length, b"\0"), offset, patch)
            for path, want in model.items():  # read-your-writes: pending change, else the store
                got = tier.read_pending(path, 0, 1 << 20)
                if got is None:
                    got = (store.root / path).read_bytes()
                assert got == want, path
    except Exception as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)
        raise


@pytest.mark.parametrize("mode", ["writeback", "writethrough"])
@pytest.mark.parametrize("seed", [1, 2])
def test_random_concurrent_changes_match_the_model(tmp_path, mode, seed):
    root = tmp_path / "store"
    root.mkdir()
    store = LocalStore(root)
    flaky = FlakyStore(store, seed)
    flaky.fail = 0.15 if seed == 2 else 0.0
    kwargs = {"mode": mode, "uploaders": 3, "retry_attempts": 1, "retry_interval": 0.01}
    tier = WriteTier(flaky, tmp_path / "wd", **kwargs)
    models: list[dict] = [{} for _ in range(4)]
    errors: list = []
    threads = [
        threading.Thread(target=random_ops, args=(tier, store, t, seed, models[t], errors)) for t in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads) and not errors, errors
    flaky.fail = 1.0  # stop with changes still pending: the next start replays them
    tier.close(drain=False, timeout=10)
    flaky.fail = 0.0
    tier = WriteTier(flaky, tmp_path / "wd", **kwargs)
    try:
        report = {"left": ["?"]}
        for _ in range(20):  # each flush_all waits until every change ran or failed once
            report = tier.flush_all(timeout=30)
            if not report["left"]:
                break
        assert report["left"] == []
    finally:
        tier.close(timeout=10)
    want = {path: data for model in models for path, data in model.items()}
    got = {info.key: (root / info.key).read_bytes() for info in store.list()}
    assert sorted(got) == sorted(want)
    assert all(got[path] == data for path, data in want.items())
    assert os.listdir(tmp_path / "wd" / "staging") == []
