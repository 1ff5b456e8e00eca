"""Plans: the loader tells the cache this epoch's file order and the next one's, without changing the batches."""

from __future__ import annotations

import os
import sys
import threading
import types

import pytest
import torch
from torch.utils.data import DataLoader as TorchLoader
from torch.utils.data import Dataset, Subset

from tiercache.loaders import DataLoader, plan_sender

pytestmark = pytest.mark.timeout(60)


class RecordingCache:
    """Stands in for TieredCache: only ``set_plan`` matters here."""

    def __init__(self, fail: bool = False):
        self.plans: list[list[str]] = []
        self.clients: list[str] = []
        self.ended: list[str] = []
        self.fail = fail
        self.event = threading.Event()

    def set_plan(self, keys, client="default"):
        self.clients.append(client)
        self.plans.append(list(keys))
        self.event.set()
        if self.fail:
            raise ConnectionError("cache went away")

    def end_plan(self, client):
        self.ended.append(client)


class Files(Dataset):
    """A library-mode dataset: keys relative to the cache, samples like torchvision's ImageFolder."""

    def __init__(self, n: int = 23, cache=None, root: str = ""):
        self.samples = [(os.path.join(root, f"c{i % 3}/{i:03d}.jpg"), i % 3) for i in range(n)]
        self.cache = cache

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        return torch.tensor(i), self.samples[i][1]


def torch_orders(n: int, epochs: int, **kw) -> list[list[int]]:
    """The sample order of each epoch of torch's own loader over indices."""
    loader = TorchLoader(range(n), **kw)
    return [[int(i) for b in loader for i in (b.tolist() if isinstance(b, torch.Tensor) else [b])]
            for _ in range(epochs)]


def wait_plans(loader) -> None:
    sender = loader.plan_target()
    assert sender is not None and sender.wait(10)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_library_plan_is_this_epoch_then_next_and_batches_unchanged(num_workers):
    cache = RecordingCache()
    ds = Files(cache=cache)
    kw = {"batch_size": 4, "shuffle": True}
    orders = torch_orders(23, 4, generator=torch.Generator().manual_seed(8), **kw)
    ref = [list(TorchLoader(Files(), generator=g, **kw)) for g in [torch.Generator().manual_seed(8)] * 1
           for _ in range(3)]
    loader = DataLoader(ds, generator=torch.Generator().manual_seed(8), num_workers=num_workers, **kw)
    got = []
    for epoch in range(3):
        it = iter(loader)
        wait_plans(loader)
        got.append(list(it))
        expect = [ds.samples[i][0] for i in orders[epoch] + orders[epoch + 1]]
        assert cache.plans[epoch] == expect
    assert len(cache.plans) == 3
    for e in range(3):
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(ref[e], got[e], strict=True))


def test_plan_without_generator_leaves_global_rng_alone():
    cache = RecordingCache()
    torch.manual_seed(3)
    ref = [list(TorchLoader(Files(), batch_size=5, shuffle=True)) for _ in range(2)]
    torch.manual_seed(3)
    loader = DataLoader(Files(cache=cache), batch_size=5, shuffle=True, num_workers=2)
    got = [list(loader) for _ in range(2)]
    for e in range(2):
        assert all(torch.equal(a[0], b[0]) for a, b in zip(ref[e], got[e], strict=True))
    loader.plan_target().wait(10)
    first_epoch = [f"c{int(i) % 3}/{int(i):03d}.jpg" for b in got[0] for i in b[0]]
    second_epoch = [f"c{int(i) % 3}/{int(i):03d}.jpg" for b in got[1] for i in b[0]]
    assert cache.plans[0] == first_epoch + second_epoch


def test_plan_after_resume_starts_at_the_remaining_files():
    cache = RecordingCache()
    kw = {"batch_size": 4, "shuffle": True}
    loader = DataLoader(Files(cache=cache), generator=torch.Generator().manual_seed(2), **kw)
    it = iter(loader)
    consumed = [next(it) for _ in range(2)]
    state = loader.state_dict()
    rest = list(it)
    follow = list(loader)
    cache2 = RecordingCache()
    resumed = DataLoader(Files(cache=cache2), generator=torch.Generator(), **kw)
    resumed.load_state_dict(state)
    got = list(resumed)
    resumed.plan_target().wait(10)
    assert len(consumed) == 2
    assert all(torch.equal(a[0], b[0]) for a, b in zip(rest, got, strict=True))
    names = [f"c{int(i) % 3}/{int(i):03d}.jpg" for b in rest + follow for i in b[0]]
    assert cache2.plans[0] == names


def test_persistent_workers_next_epoch_plan_is_right():
    cache = RecordingCache()
    loader = DataLoader(Files(cache=cache), batch_size=3, shuffle=True, num_workers=2, persistent_workers=True,
                        generator=torch.Generator().manual_seed(6))
    epochs = [list(loader) for _ in range(3)]
    loader.plan_target().wait(10)
    names = [[f"c{int(i) % 3}/{int(i):03d}.jpg" for b in ep for i in b[0]] for ep in epochs]
    assert cache.plans[0] == names[0] + names[1]
    assert cache.plans[1] == names[1] + names[2]
    loader.shutdown()


def test_failing_sink_does_not_break_loading():
    cache = RecordingCache(fail=True)
    got = list(DataLoader(Files(cache=cache), batch_size=4, num_workers=2))
    assert sum(len(b[0]) for b in got) == 23
    assert cache.event.wait(5)


def test_a_sampler_that_cannot_tell_its_next_order_sends_this_epoch_and_says_so():
    class MySampler(torch.utils.data.Sampler):
        def __iter__(self):
            return iter(torch.randperm(23).tolist())

        def __len__(self):
            return 23

    torch.manual_seed(4)
    expect = [list(TorchLoader(Files(), batch_size=4, sampler=MySampler())) for _ in range(2)]
    torch.manual_seed(4)
    cache = RecordingCache()
    loader = DataLoader(Files(cache=cache), batch_size=4, sampler=MySampler(), num_workers=2)
    for epoch in range(2):
        got = list(loader)
        wait_plans(loader)
        assert all(torch.equal(a[0], b[0]) for a, b in zip(expect[epoch], got, strict=True)), "batches unchanged"
        assert cache.plans[epoch] == [f"c{int(i) % 3}/{int(i):03d}.jpg" for b in got for i in b[0]]
        plan = loader.stats()[epoch]["plan"]
        assert plan["epochs"] == 1 and plan["files"] == 23 and "MySampler" in plan["reason"]


def test_each_loader_is_its_own_client_and_its_plan_ends_with_it():
    import gc

    cache = RecordingCache()
    train = DataLoader(Files(cache=cache), batch_size=4, shuffle=True, plan_client="train")
    val = DataLoader(Files(cache=cache), batch_size=4)
    list(train)
    wait_plans(train)
    list(val)
    wait_plans(val)
    assert cache.clients[0] == "train" and cache.clients[1].startswith(f"pid{os.getpid()}-loader")
    assert train.stats()[0]["plan"]["epochs"] == 2
    del train
    gc.collect()
    assert cache.ended == ["train"]


def test_no_plan_for_plain_datasets():
    cache = RecordingCache()
    assert plan_sender(torch.utils.data.TensorDataset(torch.zeros(3))) is None
    assert plan_sender(Files(cache=None)) is None  # relative keys, no cache, no mount
    assert DataLoader(Files(cache=cache), plans=False).plan_target() is None


def test_subset_maps_through_its_indices():
    cache = RecordingCache()
    ds = Files(cache=cache)
    sub = Subset(ds, [5, 2, 9])
    list(DataLoader(sub, batch_size=2))
    assert cache.event.wait(5)
    assert cache.plans[0] == [ds.samples[i][0] for i in [5, 2, 9, 5, 2, 9]]


def test_mount_mode_plan_goes_to_the_control_socket(tmp_path, monkeypatch):
    mountpoint = tmp_path / "mnt"
    (mountpoint / "train").mkdir(parents=True)
    requests = []

    class Client:
        def request(self, op, **kw):
            requests.append((op, kw))
            return {"ok": True}

        def close(self):
            requests.append(("closed", {}))

    class Mount:
        def __init__(self, mp):
            self.mountpoint = mp

        def session(self):
            return Client()

        def send_plan(self, paths, client, bind=False, session=None):
            return session.request("plan", paths=paths, client=client, bind=bind)

    def find_mount(path):
        return Mount(str(mountpoint)) if os.path.realpath(path).startswith(str(mountpoint)) else None

    fake = types.ModuleType("tiercache.mounts")
    fake.find_mount = find_mount
    monkeypatch.setitem(sys.modules, "tiercache.mounts", fake)

    ds = Files(root=str(mountpoint / "train"))
    ds.root = str(mountpoint / "train")
    loader = DataLoader(ds, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(1), num_workers=2)
    first = list(loader)
    loader.plan_target().wait(10)
    second = list(loader)
    loader.plan_target().wait(10)
    assert [op for op, _ in requests] == ["plan", "plan"]
    assert all(kw["bind"] and kw["client"] == loader.plan_client for _, kw in requests)
    names = [[f"train/c{int(i) % 3}/{int(i):03d}.jpg" for b in ep for i in b[0]] for ep in (first, second)]
    assert requests[0][1]["paths"] == names[0] + names[1]
    assert requests[1][1]["paths"][: len(names[1])] == names[1]

    outside = Files(root=str(tmp_path / "elsewhere"))
    outside.root = str(tmp_path / "elsewhere")
    assert plan_sender(outside) is None


def test_mount_mode_without_the_mounts_module_loads_without_plans(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tiercache.mounts", None)  # import fails
    ds = Files(root=str(tmp_path))
    ds.root = str(tmp_path)
    assert plan_sender(ds) is None
    assert sum(len(b[0]) for b in DataLoader(ds, batch_size=4)) == 23
