"""The device= / gpu_augment= code paths: on the CPU with stand-ins for CUDA streams and events, and for real on a GPU.

Without a GPU the first tests route batches through the real staging code (packing into one buffer, the
"device" copy, events, PackedImages for the fused kernel) with the target device being the CPU, so wrong
offsets, shapes or orderings show up as wrong batches. The ``test_cuda_*`` tests run the real path (side
stream, pinned pool under a lagging consumer, the compiled kernel, nvJPEG) and are skipped without CUDA;
``bash bench/gpu.sh`` runs them on a GPU machine.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

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


def test_gpu_augment_stage_seconds_are_counted_once_per_batch(monkeypatch):
    from tiercache.loaders import epochstats

    added = []
    real_add = epochstats.EpochStats.add

    def spy(self, timers):
        added.append(dict(timers))
        real_add(self, timers)

    monkeypatch.setattr(epochstats.EpochStats, "add", spy)
    loader = DataLoader(Ragged(), batch_size=4, num_workers=2, gpu_augment=Augment(8, seed=2))
    assert len(list(loader)) == 3
    with_augment = [t for t in added if "augment" in t]
    assert len(with_augment) == 3  # one report per batch: the stall split would double otherwise
    assert loader.stats()[0]["worker_s"]["augment"] == pytest.approx(sum(t["augment"] for t in with_augment), abs=1e-5)


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


# ----------------------------------------------------------------------------------------------------------
# The real device path (CUDA streams, pinned pool, the compiled kernel, nvJPEG); skipped without a GPU.

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def to_cpu(data):
    if isinstance(data, torch.Tensor):
        return data.cpu()
    if isinstance(data, dict):
        return {k: to_cpu(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(to_cpu(v) for v in data)
    return data


def all_cuda(data) -> bool:
    return all(t.is_cuda for t in staging.tensors_in(data))


@needs_cuda
@pytest.mark.parametrize("num_workers", [0, 3])
def test_cuda_batches_equal_torchs(num_workers):
    ref = list(TorchLoader(Mixed(), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(1)))
    loader = DataLoader(Mixed(), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(1),
                        num_workers=num_workers, device="cuda")
    got = list(loader)
    assert all(all_cuda(b) for b in got)
    assert same(ref, to_cpu(got))


class Filled(Dataset):
    """Sample i: a 3x64x64 float image of value i, built in the loader's pinned slot when it offers one."""

    def __len__(self):
        return 96

    def __getitem__(self, i):
        out = output_slot((3, 64, 64), torch.float32)
        return (torch.full((3, 64, 64), float(i)) if out is None else out.fill_(float(i))), i


@needs_cuda
def test_cuda_batches_stay_intact_while_the_consumer_lags():
    # The consumer's stream is kept busy after every batch, so the side-stream copies run ahead and pooled
    # pinned buffers come back while earlier batches are still in use: every batch, kept until the end, must
    # still hold its own samples (pool reuse waits on copy events; record_stream guards the device memory).
    loader = DataLoader(Filled(), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(3),
                        num_workers=4, device="cuda")
    kept = []
    for x, y in loader:
        assert x.is_cuda and y.is_cuda
        torch.cuda._sleep(2_000_000)
        kept.append((x, y, x.sum()))
    torch.cuda.synchronize()
    assert sorted(torch.cat([y for _, y, _ in kept]).tolist()) == list(range(96))
    for x, y, total in kept:
        want = y.to(torch.float32)[:, None, None, None].expand_as(x)
        assert torch.equal(x, want)
        assert total.item() == want.sum().item()


@needs_cuda
@pytest.mark.parametrize("dtype, channels_last, tol", [(torch.float32, False, 1e-5), (torch.bfloat16, True, 2**-5)],
                         ids=["fp32-nchw", "bf16-nhwc"])
def test_cuda_gpu_augment_matches_the_reference(dtype, channels_last, tol):
    from tiercache.kernels import fused_augment_reference

    aug = Augment(16, seed=2, dtype=dtype, channels_last=channels_last)
    loader = DataLoader(Ragged(), batch_size=4, num_workers=2, device="cuda", gpu_augment=aug)
    ds = Ragged()
    batches = list(loader)
    assert len(batches) == 3
    for b, (x, y) in enumerate(batches):
        assert x.is_cuda and y.is_cuda and x.dtype == dtype
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        assert x.is_contiguous(memory_format=fmt)
        idx = list(range(4 * b, min(4 * b + 4, 9)))
        assert y.cpu().tolist() == idx
        imgs = [ds[i][0] for i in idx]
        boxes, flips = aug.params_batch(0, idx, [im.shape[:2] for im in imgs])
        ref = fused_augment_reference(imgs, boxes, flips, out_size=(16, 16), out_dtype=torch.float32)
        err = (x.float().cpu() - ref).abs().max().item()
        assert err <= tol, f"batch {b}: max |loader - reference| = {err:.3g} > {tol}"


def _torchvision_io():
    try:
        import torchvision.io  # noqa: F401
    except Exception as exc:  # missing, or built for another torch
        pytest.skip(f"nvJPEG needs torchvision, which does not import here: {type(exc).__name__}: {exc}")


@needs_cuda
def test_cuda_nvjpeg_decode_is_close_to_the_cpu_decoder():
    _torchvision_io()
    from tiercache.loaders.datasets import synthetic_jpegs
    from tiercache.loaders.decode import decode_image, decode_jpeg_cuda

    blobs = [data for _, data in synthetic_jpegs(6, size=(60, 80))]
    gpu = decode_jpeg_cuda(blobs, "cuda")
    for blob, img in zip(blobs, gpu, strict=True):
        cpu = decode_image(blob)
        assert img.is_cuda and img.dtype == torch.uint8 and img.shape == cpu.shape
        diff = (img.cpu().to(torch.int16) - cpu.to(torch.int16)).abs().float()
        # IDCT and chroma upsampling differ between decoders by a grey level or two; a wrong colour space,
        # channel order or orientation is tens of levels off
        assert diff.mean().item() < 3, "nvJPEG and libjpeg-turbo differ by more than decoder rounding"


@needs_cuda
def test_cuda_nvjpeg_through_the_loader(tmp_path, monkeypatch):
    _torchvision_io()
    from tiercache.kernels import fused_augment_reference

    from tiercache.loaders import ImageFolder
    from tiercache.loaders import decode as decode_module
    from tiercache.loaders.datasets import synthetic_jpegs

    for rel, data in synthetic_jpegs(8, classes=2, size=(60, 80)):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    ds = ImageFolder(str(tmp_path), decode="none")
    reference_images = [decode_module.decode_image(Path(path).read_bytes()) for path, _ in ds.samples]

    def no_cpu_decode(*a, **k):
        raise AssertionError("the loader decoded on the CPU: nvJPEG was not used")

    monkeypatch.setattr(decode_module, "decode_image", no_cpu_decode)
    aug = Augment(24, seed=4)
    loader = DataLoader(ds, batch_size=4, num_workers=2, device="cuda", gpu_augment=aug)
    for b, (x, y) in enumerate(loader):
        assert x.is_cuda and x.shape == (4, 3, 24, 24)
        idx = list(range(4 * b, 4 * b + 4))
        assert y.cpu().tolist() == [ds.targets[i] for i in idx]
        imgs = [reference_images[i] for i in idx]
        boxes, flips = aug.params_batch(0, idx, [im.shape[:2] for im in imgs])
        ref = fused_augment_reference(imgs, boxes, flips, out_size=(24, 24), out_dtype=torch.float32)
        # decoders differ by IDCT/upsampling rounding, a grey level or two (one is 1/(255*0.225) = 0.017 here)
        assert (x.cpu() - ref).abs().mean().item() < 0.06


class EncodedJpegs(Dataset):
    """Sample i: the encoded bytes of a small JPEG (a 1-D uint8 tensor, as ImageFolder(decode="none")), i."""

    def __init__(self):
        from tiercache.loaders.datasets import synthetic_jpegs

        self.blobs = [data for _, data in synthetic_jpegs(6, size=(30, 40))]

    def __len__(self):
        return len(self.blobs)

    def __getitem__(self, i):
        return torch.frombuffer(bytearray(self.blobs[i]), dtype=torch.uint8), i


def test_nvjpeg_failure_warns_and_decodes_on_the_cpu(fake_cuda, monkeypatch):
    from tiercache.kernels import fused_augment_reference

    from tiercache.loaders import decode as decode_module

    def unavailable(datas, device="cuda"):
        raise RuntimeError("GPU JPEG decode needs torchvision")

    monkeypatch.setattr(decode_module, "decode_jpeg_cuda", unavailable)
    aug = Augment(8, seed=5)
    ds = EncodedJpegs()
    loader = cuda_loader(ds, batch_size=3, num_workers=2, gpu_augment=aug)
    with pytest.warns(RuntimeWarning, match="GPU JPEG decode failed, decoding on the CPU instead: .*torchvision"):
        got = list(loader)
    assert len(got) == 2
    for b, (x, y) in enumerate(got):
        idx = [3 * b, 3 * b + 1, 3 * b + 2]
        assert y.tolist() == idx
        imgs = [decode_module.decode_image(ds.blobs[i]) for i in idx]
        boxes, flips = aug.params_batch(0, idx, [im.shape[:2] for im in imgs])
        ref = fused_augment_reference(imgs, boxes, flips, out_size=(8, 8), out_dtype=torch.float32)
        assert torch.allclose(x, ref, atol=1e-5)
    worker = loader.stats()[-1]["worker_s"]
    assert worker["decode"] > 0 and worker["augment"] > 0
