"""The device= / gpu_augment= code paths, run on the CPU with stand-ins for CUDA streams and events.

There is no GPU here: these tests route batches through the real staging code (packing into one buffer, the
"device" copy, events, PackedImages for the fused kernel) with the target device being the CPU, so wrong
offsets, shapes or orderings show up as wrong batches. On a CUDA machine the real path runs instead.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.utils.data import DataLoader as TorchLoader
from torch.utils.data import Dataset

from tiercache.loaders import Augment, DataLoader, output_slot, staging

pytestmark = pytest.mark.timeout(60)


class FakeEvent:
    recorded = 0

    def record(self, stream=None):
        FakeEvent.recorded += 1

    def query(self):
        return True


class FakeStream:
    def __init__(self, *a, **k):
        self.waited = 0

    def wait_event(self, event):
        self.waited += 1


class CPUStager(staging.DeviceStager):
    """The real stager with the CPU as its 'device' and unpinned staging buffers."""

    def __init__(self):
        self.device = torch.device("cpu")
        self.stream = FakeStream()
        self.pool = staging.PinnedPool()
        self.pool_allocs = 0
        real_acquire = self.pool.acquire

        def acquire(nbytes):
            with self.pool._lock:
                if not any(b.numel() >= nbytes for b, _ in self.pool._free):
                    self.pool_allocs += 1
            return real_acquire(nbytes)

        self.pool.acquire = acquire


@pytest.fixture
def fake_cuda(monkeypatch):
    consumer = FakeStream()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: consumer)
    real_empty = torch.empty

    def empty(*args, pin_memory=False, **kw):
        return real_empty(*args, **kw)

    monkeypatch.setattr(torch, "empty", empty)
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self, *a: False)
    return consumer


def cuda_loader(*args, **kw) -> DataLoader:
    loader = DataLoader(*args, device="cuda", **kw)
    loader._device_stager = CPUStager()
    return loader


class Mixed(Dataset):
    def __len__(self):
        return 23

    def __getitem__(self, i):
        return {"x": torch.arange(6, dtype=torch.float32).reshape(2, 3) + i, "y": i,
                "m": torch.tensor([i % 2 == 0]), "h": torch.full((5,), i, dtype=torch.float16)}


def same(a, b):
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize("num_workers", [0, 2])
def test_device_batches_equal_torchs_after_the_staged_copy(fake_cuda, num_workers):
    g = torch.Generator().manual_seed(1)
    ref = [list(TorchLoader(Mixed(), batch_size=4, shuffle=True, generator=g)) for _ in range(2)]
    loader = cuda_loader(Mixed(), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(1),
                         num_workers=num_workers)
    FakeEvent.recorded = 0
    got = [list(loader) for _ in range(2)]
    assert same(ref, got)
    assert FakeEvent.recorded == 12, "one copy event per batch"
    assert fake_cuda.waited == 12, "the consumer's stream waits on every batch's event"
    assert loader._device_stager.pool_allocs <= 4, "staging buffers are reused"
    assert all(s["worker_s"]["h2d"] > 0 for s in loader.stats())


class SlotImages(Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        out = output_slot((3, 4, 4), torch.float32)
        x = torch.full((3, 4, 4), float(i)) if out is None else out.fill_(float(i))
        return x, i


def test_slot_batches_are_built_in_staging_memory(fake_cuda):
    loader = cuda_loader(SlotImages(), batch_size=4, num_workers=2)
    got = list(loader)
    ref = list(TorchLoader(SlotImages(), batch_size=4))
    assert same(ref, got)
    # the batch was written into pooled staging buffers (acquired for the slot), not stacked from copies
    assert loader._device_stager.pool_allocs >= 1


class Ragged(Dataset):
    def __len__(self):
        return 9

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        img = torch.randint(0, 256, (20 + 3 * i, 30 - i, 3), dtype=torch.uint8, generator=g)
        return img, i


def test_gpu_augment_through_packed_staging_equals_the_kernel_reference(fake_cuda):
    kernels = pytest.importorskip("tiercache.kernels", reason="tiercache.kernels not available")
    aug = Augment(8, seed=2)
    loader = cuda_loader(Ragged(), batch_size=4, num_workers=2, gpu_augment=aug)
    got = list(loader)
    ds = Ragged()
    for b, (x, y) in enumerate(got):
        idx = list(range(4 * b, min(4 * b + 4, 9)))
        assert y.tolist() == idx
        imgs = [ds[i][0] for i in idx]
        boxes, flips = aug.params_batch(0, idx, [im.shape[:2] for im in imgs])
        ref = kernels.fused_augment_reference(imgs, boxes, flips, out_size=(8, 8), out_dtype=torch.float32)
        assert torch.allclose(x, ref, atol=1e-5)
