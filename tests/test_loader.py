"""tiercache.loaders.DataLoader against torch.utils.data.DataLoader(num_workers=0), batch for batch."""

from __future__ import annotations

import collections
import subprocess
import sys
import threading
import time
import warnings

import pytest
import torch
from torch.utils.data import DataLoader as TorchLoader
from torch.utils.data import (
    Dataset,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    Subset,
    SubsetRandomSampler,
    WeightedRandomSampler,
)

from tiercache.loaders import DataLoader, output_slot, stage_timer, worker_id

pytestmark = pytest.mark.timeout(60)

Point = collections.namedtuple("Point", "x y")


class TensorDS(Dataset):
    def __init__(self, n: int = 37):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([i, 2 * i], dtype=torch.int64)


class DictDS(TensorDS):
    def __getitem__(self, i: int) -> dict:
        return {"x": torch.full((2, 3), float(i)), "y": i, "name": f"s{i}", "p": Point(i, -i)}


class TupleDS(TensorDS):
    def __getitem__(self, i: int) -> tuple:
        return torch.arange(i, i + 4), i % 3


class CountingIterable(IterableDataset):
    def __init__(self, n: int = 23):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for i in range(self.n):
            yield {"v": torch.tensor(i), "i": i}


class EvenBatches(Sampler):
    """A custom batch sampler: even indices in pairs, then the odd ones in threes."""

    def __init__(self, n: int):
        self.n = n

    def __iter__(self):
        ev, od = list(range(0, self.n, 2)), list(range(1, self.n, 2))
        yield from (ev[i : i + 2] for i in range(0, len(ev), 2))
        yield from (od[i : i + 3] for i in range(0, len(od), 3))

    def __len__(self) -> int:
        return -(-len(range(0, self.n, 2)) // 2) + -(-len(range(1, self.n, 2)) // 3)


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def loader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("tiercache-loader")]


def wait_no_threads(timeout: float = 5.0) -> list[threading.Thread]:
    deadline = time.monotonic() + timeout
    while loader_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    return loader_threads()


def epochs(loader, n: int = 3) -> list[list]:
    return [list(loader) for _ in range(n)]


def both(make_dataset, seed: int | None = 7, epochs_n: int = 3, num_workers: int = 0, **kw):
    """Run torch's loader and ours with the same args and seed; return both epoch lists."""
    extra = {k: kw.pop(k) for k in ("in_order", "prefetch_factor", "persistent_workers") if k in kw}
    g1 = torch.Generator().manual_seed(seed) if seed is not None else None
    g2 = torch.Generator().manual_seed(seed) if seed is not None else None
    if seed is None:
        torch.manual_seed(1234)
    ref_loader = TorchLoader(make_dataset(), generator=g1, **kw)
    ref = epochs(ref_loader, epochs_n)
    if seed is None:
        torch.manual_seed(1234)
    ours_loader = DataLoader(make_dataset(), generator=g2, num_workers=num_workers, **kw, **extra)
    ours = epochs(ours_loader, epochs_n)
    return ref, ours, ref_loader, ours_loader


# ----------------------------------------------------------------------------------------------------------
# Same batches as torch.


@pytest.mark.parametrize("num_workers", [0, 2, 4])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("ds", [TensorDS, DictDS, TupleDS])
def test_map_style_matches_torch(num_workers, shuffle, ds):
    ref, ours, rl, ol = both(ds, batch_size=5, shuffle=shuffle, num_workers=num_workers)
    assert same(ref, ours)
    assert len(ours[0]) == len(rl) == len(ol) == 8
    if shuffle:
        assert not same(ours[0], ours[1]), "consecutive epochs must be reshuffled"


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize(
    "kw",
    [
        {"batch_size": 1},
        {"batch_size": 4, "drop_last": True},
        {"batch_size": 4, "drop_last": True, "shuffle": True},
        {"batch_size": None},
        {"batch_size": None, "shuffle": True},
        {"batch_size": 64},
        {"batch_size": 6, "collate_fn": lambda batch: [int(x[0]) * 10 for x in batch]},
        {"batch_size": None, "collate_fn": lambda x: x.sum()},
    ],
    ids=["bs1", "drop_last", "drop_last_shuffle", "no_batch", "no_batch_shuffle", "one_batch", "collate", "collate1"],
)
def test_batching_options_match_torch(num_workers, kw):
    ref, ours, rl, ol = both(TensorDS, num_workers=num_workers, **kw)
    assert same(ref, ours)
    assert len(rl) == len(ol)


@pytest.mark.parametrize("num_workers", [0, 3])
@pytest.mark.parametrize(
    "make_sampler",
    [
        lambda g: SubsetRandomSampler(list(range(0, 37, 3)), generator=g),
        lambda g: RandomSampler(range(37), replacement=True, num_samples=50, generator=g),
        lambda g: RandomSampler(range(37), num_samples=80),
        lambda g: WeightedRandomSampler([1.0] * 20 + [5.0] * 17, 40, generator=g),
        lambda g: [5, 3, 1, 30, 2, 2],
        lambda g: SequentialSampler(range(11)),
    ],
    ids=["subset", "replacement", "num_samples_global", "weighted", "list", "sequential"],
)
def test_custom_samplers_match_torch(num_workers, make_sampler):
    def run(cls, **extra):
        torch.manual_seed(99)
        s = make_sampler(torch.Generator().manual_seed(5))
        return epochs(cls(TensorDS(), batch_size=4, sampler=s, **extra))

    assert same(run(TorchLoader), run(DataLoader, num_workers=num_workers))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_custom_batch_sampler_matches_torch(num_workers):
    ref = epochs(TorchLoader(TensorDS(), batch_sampler=EvenBatches(37)), 2)
    loader = DataLoader(TensorDS(), batch_sampler=EvenBatches(37), num_workers=num_workers)
    assert same(ref, epochs(loader, 2))
    assert len(loader) == len(EvenBatches(37))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_global_rng_without_generator_matches_torch(num_workers):
    ref, ours, _, _ = both(TensorDS, seed=None, batch_size=5, shuffle=True, num_workers=num_workers)
    assert same(ref, ours)
    assert torch.initial_seed() == 1234


def test_generator_state_after_epochs_matches_torch():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    epochs(TorchLoader(TensorDS(), batch_size=4, shuffle=True, generator=g1), 2)
    epochs(DataLoader(TensorDS(), batch_size=4, shuffle=True, generator=g2, num_workers=2), 2)
    assert torch.equal(g1.get_state(), g2.get_state())


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("kw", [{"batch_size": 4}, {"batch_size": 4, "drop_last": True}, {"batch_size": None}])
def test_iterable_dataset_matches_torch(num_workers, kw):
    ref, ours, rl, ol = both(CountingIterable, num_workers=num_workers, **kw)
    assert same(ref, ours)
    assert len(rl) == len(ol)


def test_iterable_dataset_rejects_shuffle_like_torch():
    with pytest.raises(ValueError, match="shuffle"):
        TorchLoader(CountingIterable(), shuffle=True)
    with pytest.raises(ValueError, match="shuffle"):
        DataLoader(CountingIterable(), shuffle=True)


def test_argument_errors_like_torch():
    for kw in (
        {"batch_sampler": EvenBatches(4), "batch_size": 3},
        {"sampler": [1, 2], "shuffle": True},
        {"num_workers": -1},
        {"timeout": -1},
        {"prefetch_factor": 2},
        {"persistent_workers": True},
        {"batch_size": None, "drop_last": True},
    ):
        with pytest.raises(ValueError):
            TorchLoader(TensorDS(), **kw)
        with pytest.raises(ValueError):
            DataLoader(TensorDS(), **kw)


def test_accepts_every_torch_argument_positionally():
    args = (TensorDS(), 5, True, None, None, 2, None, False, False, 5.0, None, "spawn", torch.Generator())
    loader = DataLoader(*args, prefetch_factor=3, persistent_workers=True, pin_memory_device="", in_order=True)
    assert isinstance(loader, TorchLoader)
    assert sum(len(b) for b in loader) == 37
    loader.shutdown()


def test_persistent_workers_match_torch_persistent_workers():
    """torch draws the base seed once per persistent iterator; consecutive epochs must follow suit."""
    kw = {"batch_size": 5, "shuffle": True, "num_workers": 1, "persistent_workers": True}
    ref = epochs(TorchLoader(TensorDS(), generator=torch.Generator().manual_seed(4),
                             multiprocessing_context="fork", **kw), 3)
    loader = DataLoader(TensorDS(), generator=torch.Generator().manual_seed(4), **kw)
    assert same(ref, epochs(loader, 3))
    loader.shutdown()
    assert not wait_no_threads()


def test_in_order_false_yields_the_same_batches():
    class Slow(TensorDS):
        def __getitem__(self, i):
            if i == 0:
                time.sleep(0.2)
            return super().__getitem__(i)

    loader = DataLoader(Slow(), batch_size=3, num_workers=3, in_order=False)
    got = list(loader)
    ref = list(TorchLoader(Slow(), batch_size=3))
    assert sorted(b[0, 0].item() for b in got) == sorted(b[0, 0].item() for b in ref)
    assert same(sorted(got, key=lambda b: b[0, 0].item()), ref)
    assert got[0][0, 0].item() != 0, "the slow first batch should not hold the others back"


# ----------------------------------------------------------------------------------------------------------
# Threads: errors, timeouts, shutdown.


class Failing(TensorDS):
    def __getitem__(self, i):
        if i == 7:
            raise ValueError("bad record")
        return super().__getitem__(i)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_worker_exception_surfaces_with_index(num_workers):
    loader = DataLoader(Failing(), batch_size=4, num_workers=num_workers)
    it = iter(loader)
    assert same(next(it), torch.tensor([[0, 0], [1, 2], [2, 4], [3, 6]]))
    with pytest.raises(ValueError, match="sample index 7") as info:
        next(it)
    assert isinstance(info.value.__cause__, ValueError)
    assert str(info.value.__cause__) == "bad record"
    assert not wait_no_threads()


def test_exception_type_without_message_constructor_becomes_runtime_error():
    class Odd(Exception):
        def __init__(self, a, b):
            super().__init__(a, b)

    class DS(TensorDS):
        def __getitem__(self, i):
            raise Odd(1, 2)

    with pytest.raises(RuntimeError, match="sample index 0") as info:
        next(iter(DataLoader(DS(), num_workers=2)))
    assert isinstance(info.value.__cause__, Odd)


def test_collate_errors_name_the_batch():
    class Ragged(TensorDS):
        def __getitem__(self, i):
            return torch.zeros(i + 1)

    with pytest.raises(RuntimeError, match=r"collating the batch of sample indices \[0, 1\]") as info:
        list(DataLoader(Ragged(), batch_size=2, num_workers=2))
    assert "stack expects each tensor to be equal size" in str(info.value.__cause__)


def test_timeout_raises_runtime_error():
    release = threading.Event()

    class Stuck(TensorDS):
        def __getitem__(self, i):
            if i == 2:
                release.wait(10)
            return super().__getitem__(i)

    loader = DataLoader(Stuck(), batch_size=2, num_workers=2, timeout=0.3)
    it = iter(loader)
    next(it)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="timed out after 0.3 seconds"):
        next(it)
    assert time.monotonic() - t0 < 3
    release.set()
    assert not wait_no_threads()


def test_no_threads_left_after_full_iteration_break_and_del():
    loader = DataLoader(TensorDS(200), batch_size=2, num_workers=3)
    for _ in loader:
        pass
    assert not wait_no_threads()
    for i, _ in enumerate(loader):
        if i == 3:
            break
    assert not wait_no_threads()
    it = iter(loader)
    next(it)
    assert loader_threads(), "workers run while an epoch is being consumed"
    del it
    assert not wait_no_threads()


@pytest.mark.parametrize("persistent", [False, True])
def test_interpreter_exits_promptly_with_a_half_consumed_loader(persistent):
    code = f"""
import threading, time, torch
from tiercache.loaders import DataLoader

class Slow(torch.utils.data.Dataset):
    def __len__(self):
        return 1000
    def __getitem__(self, i):
        if i == 9:
            time.sleep(60)  # a worker stuck in I/O at exit
        return torch.tensor(i)

loader = DataLoader(Slow(), batch_size=4, num_workers=3, persistent_workers={persistent})
it = iter(loader)
next(it)
print("ok", flush=True)
"""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
    assert time.monotonic() - t0 < 15


def test_persistent_pool_survives_epochs_and_stops_with_loader():
    calls = []
    loader = DataLoader(TensorDS(), batch_size=4, num_workers=2, persistent_workers=True,
                        worker_init_fn=calls.append)
    list(loader)
    first = {t.ident for t in loader_threads()}
    assert len(first) == 2
    list(loader)
    assert {t.ident for t in loader_threads()} == first
    assert sorted(calls) == [0, 1]
    del loader
    assert not wait_no_threads()


def test_worker_init_fn_once_per_thread_with_ids():
    seen, lock = [], threading.Lock()

    def init(wid):
        with lock:
            seen.append((wid, threading.current_thread().name))

    class WhoLoads(TensorDS):
        def __getitem__(self, i):
            return torch.tensor(worker_id())

    ids = torch.cat(list(DataLoader(WhoLoads(), batch_size=4, num_workers=3, worker_init_fn=init)))
    assert sorted(w for w, _ in seen) == [0, 1, 2]
    assert len({n for _, n in seen}) == 3
    assert set(ids.tolist()) <= {0, 1, 2}


def test_worker_init_failure_is_reported():
    def init(wid):
        raise OSError("no gpu for you")

    with pytest.raises(RuntimeError, match="worker_init_fn failed"):
        list(DataLoader(TensorDS(), batch_size=4, num_workers=2, worker_init_fn=init))
    assert not wait_no_threads()


def test_get_worker_info_is_none_in_threads():
    class Info(TensorDS):
        def __getitem__(self, i):
            return torch.tensor(torch.utils.data.get_worker_info() is None)

    assert all(b.all() for b in DataLoader(Info(8), batch_size=4, num_workers=2))


def test_pin_memory_without_cuda_warns_and_loads():
    if torch.cuda.is_available():
        pytest.skip("this checks the CPU-only behaviour")
    with pytest.warns(UserWarning, match="pin_memory"):
        got = list(DataLoader(TensorDS(), batch_size=8, pin_memory=True, num_workers=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = list(TorchLoader(TensorDS(), batch_size=8, pin_memory=True))
    assert same(ref, got)


def test_device_cuda_without_cuda_fails_clearly():
    if torch.cuda.is_available():
        pytest.skip("this checks the CPU-only behaviour")
    loader = DataLoader(TensorDS(), batch_size=8, num_workers=2, device="cuda")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        iter(loader)
    assert not wait_no_threads()


def test_device_cpu_is_plain_loading():
    assert same(list(DataLoader(TensorDS(), batch_size=8, device="cpu", num_workers=2)),
                list(TorchLoader(TensorDS(), batch_size=8)))


def test_getitems_batched_fetch_like_torch():
    class Batched(TensorDS):
        calls = 0

        def __getitems__(self, indices):
            type(self).calls += 1
            return [self[i] * 10 for i in indices]

    ref = list(TorchLoader(Batched(), batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(2)))
    Batched.calls = 0
    got = list(DataLoader(Batched(), batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(2),
                          num_workers=2))
    assert same(ref, got)
    assert Batched.calls == 8


def test_thread_loading_overlaps_slow_reads():
    """Reads that release the GIL (sleep stands in for I/O) run in parallel across threads."""

    class SlowIO(TensorDS):
        def __getitem__(self, i):
            time.sleep(0.02)
            return super().__getitem__(i)

    t0 = time.perf_counter()
    list(DataLoader(SlowIO(40), batch_size=4, num_workers=8))
    assert time.perf_counter() - t0 < 0.02 * 40 / 2  # at least 2x faster than serial


# ----------------------------------------------------------------------------------------------------------
# Resume.


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("seed", [11, None])
def test_resume_mid_epoch_yields_the_remaining_batches(num_workers, seed):
    def gen():
        return torch.Generator().manual_seed(seed) if seed is not None else None

    if seed is None:
        torch.manual_seed(5)
    ref = epochs(TorchLoader(TensorDS(), batch_size=4, shuffle=True, generator=gen()), 3)

    if seed is None:
        torch.manual_seed(5)
    first = DataLoader(TensorDS(), batch_size=4, shuffle=True, generator=gen(), num_workers=num_workers)
    assert same(list(first), ref[0])
    it = iter(first)
    head = [next(it) for _ in range(3)]
    state = first.state_dict()
    del it
    assert same(head, ref[1][:3])

    torch.manual_seed(777)  # the resumed process starts with other RNG states
    resumed = DataLoader(TensorDS(), batch_size=4, shuffle=True, num_workers=num_workers,
                         generator=torch.Generator().manual_seed(123) if seed is not None else None)
    resumed.load_state_dict(state)
    assert same(list(resumed), ref[1][3:])
    assert same(list(resumed), ref[2])


def test_state_dict_between_epochs_and_iterable_resume():
    ref = epochs(TorchLoader(CountingIterable(), batch_size=3), 1)[0]
    loader = DataLoader(CountingIterable(), batch_size=3, num_workers=2)
    it = iter(loader)
    [next(it) for _ in range(2)]
    state = loader.state_dict()
    assert state["batches_yielded"] == 2
    fresh = DataLoader(CountingIterable(), batch_size=3, num_workers=2)
    fresh.load_state_dict(state)
    assert same(list(fresh), ref[2:])
    assert fresh.state_dict()["batches_yielded"] == 0
    assert fresh.state_dict()["epoch"] == 1


def test_resume_after_out_of_order_consumption_covers_the_epoch_once():
    class Jittery(TensorDS):
        def __getitem__(self, i):
            time.sleep(0.01 if i % 7 == 0 else 0)
            return super().__getitem__(i)

    loader = DataLoader(Jittery(60), batch_size=3, num_workers=3, in_order=False,
                        shuffle=True, generator=torch.Generator().manual_seed(9))
    it = iter(loader)
    head = [next(it) for _ in range(6)]
    state = loader.state_dict()
    del it
    resumed = DataLoader(Jittery(60), batch_size=3, num_workers=3, in_order=False,
                         shuffle=True, generator=torch.Generator())
    resumed.load_state_dict(state)
    it = iter(resumed)
    middle = [next(it) for _ in range(4)]
    state2 = resumed.state_dict()
    del it
    again = DataLoader(Jittery(60), batch_size=3, num_workers=3, in_order=False, shuffle=True,
                       generator=torch.Generator())
    again.load_state_dict(state2)
    seen = sorted(int(i) for b in head + middle + list(again) for i in b[:, 0])
    assert seen == list(range(60)), "two resumes in a row still cover the epoch exactly once"


def test_resume_survives_torch_save(tmp_path):
    loader = DataLoader(TensorDS(), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(1))
    it = iter(loader)
    next(it)
    rest = list(it)
    loader2 = DataLoader(TensorDS(), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(1))
    it2 = iter(loader2)
    next(it2)
    torch.save(loader2.state_dict(), tmp_path / "s.pt")
    loader3 = DataLoader(TensorDS(), batch_size=4, shuffle=True, generator=torch.Generator())
    loader3.load_state_dict(torch.load(tmp_path / "s.pt"))
    assert same(list(loader3), rest)


# ----------------------------------------------------------------------------------------------------------
# Stall attribution.


def test_stats_split_worker_time_and_count_waits():
    class Timed(TensorDS):
        def __getitem__(self, i):
            with stage_timer("read"):
                time.sleep(0.004)
            with stage_timer("decode"):
                time.sleep(0.002)
            return super().__getitem__(i)

    loader = DataLoader(Timed(30), batch_size=5, num_workers=2)
    list(loader)
    list(loader)
    stats = loader.stats()
    assert [s["epoch"] for s in stats] == [0, 1]
    s = stats[0]
    assert s["batches"] == 6 and s["samples"] == 30
    assert s["worker_s"]["read"] >= 30 * 0.004 * 0.9
    assert s["worker_s"]["decode"] >= 30 * 0.002 * 0.9
    assert s["worker_s"]["read"] > s["worker_s"]["decode"]
    assert s["wait_s"] > 0
    assert abs(sum(s["wait_split_s"].values()) - s["wait_s"]) < 1e-3
    assert s["wait_split_s"]["read"] > s["wait_split_s"]["decode"]


def test_set_epoch_and_subset_are_plain_torch_behaviour():
    sub = Subset(TensorDS(), [3, 1, 4, 1, 5])
    assert same(list(DataLoader(sub, batch_size=2, num_workers=2)), list(TorchLoader(sub, batch_size=2)))
    threads = set()

    class WhoLoads(TensorDS):
        def __getitem__(self, i):
            threads.add(threading.current_thread().name)
            time.sleep(0.01)
            return super().__getitem__(i)

    list(DataLoader(Subset(WhoLoads(), list(range(8))), batch_size=8, num_workers=4))
    assert len(threads) > 1, "a Subset's samples are still spread over the threads"
    loader = DataLoader(TensorDS(), batch_size=4)
    loader.set_epoch(7)
    list(loader)
    assert loader.stats()[-1]["epoch"] == 7


# ----------------------------------------------------------------------------------------------------------
# Zero-copy collation through output slots.


class SlotWriter(TensorDS):
    """Builds its sample in the loader's batch slot when offered one (like ImageFolder with augment=)."""

    def __init__(self, n=37, as_tuple=True, refuse=()):
        super().__init__(n)
        self.as_tuple, self.refuse = as_tuple, set(refuse)

    def __getitem__(self, i):
        out = None if i in self.refuse else output_slot((2, 3), torch.float32)
        x = torch.full((2, 3), float(i)) if out is None else out.fill_(float(i))
        return (x, i) if self.as_tuple else x


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("as_tuple", [True, False])
def test_output_slots_give_torchs_batches_without_copies(num_workers, as_tuple):
    kw = {"batch_size": 5, "shuffle": True}
    ref = list(TorchLoader(SlotWriter(as_tuple=as_tuple), generator=torch.Generator().manual_seed(0), **kw))
    got = list(DataLoader(SlotWriter(as_tuple=as_tuple), generator=torch.Generator().manual_seed(0),
                          num_workers=num_workers, **kw))
    assert same(ref, got)
    assert output_slot((2, 3), torch.float32) is None, "no slot outside the loader"
    refused = list(DataLoader(SlotWriter(as_tuple=as_tuple, refuse={3}), generator=torch.Generator().manual_seed(0),
                              num_workers=num_workers, **kw))
    assert same(ref, refused), "a sample that ignores its slot makes the batch fall back to stacking"


def test_output_slot_is_the_batch_memory():
    ptrs = []

    class Recorder(SlotWriter):
        def __getitem__(self, i):
            x, t = super().__getitem__(i)
            ptrs.append(x.data_ptr())
            return x, t

    (batch, _), = list(DataLoader(Recorder(4), batch_size=4, num_workers=2))
    assert sorted(ptrs) == [batch[k].data_ptr() for k in range(4)]
    custom = list(DataLoader(SlotWriter(4), batch_size=4, collate_fn=lambda b: b))
    assert len(custom[0]) == 4 and torch.equal(custom[0][2][0], torch.full((2, 3), 2.0))


def test_staging_layout_round_trip():
    """The packing used for one-copy H2D transfers (exercised here on the CPU)."""
    from tiercache.loaders.staging import _layout, _pack, _unpack, map_tensors, tensors_in

    data = {"img": torch.rand(2, 3, 5), "y": torch.tensor([1, 2]), "p": Point(torch.tensor([1.5]), "name"),
            "odd": torch.arange(7, dtype=torch.uint8), "t": (torch.ones(3, dtype=torch.float16).t(),)}
    tensors = tensors_in(data)
    assert len(tensors) == 5
    offsets, total = _layout(tensors)
    assert all(o % 64 == 0 for o in offsets) and total % 64 == 0
    buf = torch.zeros(total, dtype=torch.uint8)
    _pack(tensors, buf, offsets)
    views = _unpack(buf, tensors, offsets)
    assert all(v.data_ptr() >= buf.data_ptr() for v in views)
    it = iter(views)
    rebuilt = map_tensors(data, lambda _t: next(it))
    assert same(rebuilt, data)
    assert isinstance(rebuilt["p"], Point) and rebuilt["p"].y == "name"
