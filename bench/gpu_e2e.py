"""End to end on one device: a ResNet-50 training step loop fed by each input pipeline, one config per run.

Configs (``--config``):

* ``ceiling``: one synthetic bf16 channels_last batch already on the device, reused every step (compute only);
* ``tiercache_cpu``: tiercache DataLoader over a warm library-mode cache (``file://`` source, RAM tier),
  JPEG decode on CPU threads, the fused kernel on the device (``device=``, ``gpu_augment=``);
* ``tiercache_nvjpeg``: the same with the encoded bytes decoded by nvJPEG (torchvision) on the device;
* ``torch_baseline``: torch's DataLoader, worker processes, torchvision-style transforms (Pillow decode),
  pinned memory, copied to the device in the loop.

Each step: channels_last input, bf16 autocast, cross entropy on the loader's labels (synthetic labels for
the ceiling), SGD with momentum. Reported for the timed steps (after warm-up steps): images/s, GPU busy
fraction (sum of CUDA-event times around each step's compute / wall time), the consumer's stall (time
blocked in ``next()``), and for tiercache the loader's stall split over its stages (read, decode, augment,
collate, h2d) from :meth:`DataLoader.stats`. Then the input pipeline alone (no model) for a few batches.

    python bench/gpu_e2e.py --config tiercache_cpu --data /tmp/jpegs      # prints one JSON line last

On a CPU (``--device cpu``) everything runs the same way with the CPU as the device (dry runs): the kernel's
place is taken by the reference and nvJPEG's by the loader's CPU fallback; the figures mean nothing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gpu_data import BaselineFolder  # noqa: E402
from gpu_resnet import resnet50, tiny_resnet  # noqa: E402

CONFIGS = ("ceiling", "tiercache_cpu", "tiercache_nvjpeg", "torch_baseline")
STAGES = ("read", "decode", "augment", "collate", "h2d", "other")


class Skipped(Exception):
    """This config cannot run here; the message says why."""


class StepClock:
    """Busy time of each step on the device's compute stream: CUDA events there, perf_counter on a CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.pairs: list[Any] = []
        self.cpu_s = 0.0

    def start(self) -> Any:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def stop(self, started: Any) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.pairs.append((started, ev))
        else:
            self.cpu_s += time.perf_counter() - started

    def busy_s(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return sum(a.elapsed_time(b) for a, b in self.pairs) / 1e3
        return self.cpu_s


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def endless(loader: Any) -> Iterator[Any]:
    """Batches from epoch after epoch."""
    while True:
        yield from loader


# ----------------------------------------------------------------------------------------------------------
# Input pipelines.


def open_warm_cache(data: str, work: str, ram: str) -> tuple[Any, dict]:
    """A library-mode TieredCache over ``data`` (``file://``) with every file warmed into its RAM tier."""
    import tiercache

    cache = tiercache.open(f"file://{os.path.abspath(data)}", ram=ram, ssd=os.path.join(work, "ssd"),
                           ssd_size="4G", metadata_ttl="inf")
    t0 = time.perf_counter()
    report = cache.warm("", tier="ram")
    report["seconds"] = round(time.perf_counter() - t0, 3)
    if not report.get("complete"):
        raise RuntimeError(f"the cache could not be warmed completely: {report}")
    return cache, report


def nvjpeg_check(cache: Any, ds: Any, device: torch.device) -> str:
    """Decode two samples with nvJPEG outside the loader; raises Skipped (with the reason) where it cannot."""
    from tiercache.loaders.decode import decode_jpeg_cuda

    if device.type != "cuda":
        return "dry run on a CPU: the loader decodes the encoded bytes with its CPU fallback"
    try:
        images = decode_jpeg_cuda([ds.read(0), ds.read(1)], device)
    except RuntimeError as exc:
        cause = exc.__cause__
        raise Skipped(f"nvJPEG unavailable: {exc}" + (f" ({type(cause).__name__}: {cause})" if cause else "")) \
            from None
    if not all(im.is_cuda and im.dim() == 3 and im.shape[2] == 3 for im in images):
        raise Skipped("nvJPEG decode returned unexpected tensors")
    import torchvision

    return f"nvJPEG via torchvision {torchvision.__version__}"


def tiercache_loader(args: argparse.Namespace, device: torch.device, work: str, nvjpeg: bool) -> tuple[Any, dict]:
    from tiercache.loaders import Augment, DataLoader, ImageFolder

    cache, warm = open_warm_cache(args.data, work, args.ram)
    ds = ImageFolder("", cache=cache, decode="none" if nvjpeg else "cpu")
    info = {"warm": warm, "source": "library-mode TieredCache (file:// source, warmed into RAM)",
            "decode": "simplejpeg on CPU threads", "threads": args.workers}
    if nvjpeg:
        info["decode"] = nvjpeg_check(cache, ds, device)
    dtype = torch.bfloat16
    aug = Augment(args.out_size, dtype=dtype, channels_last=True, seed=0)
    loader = DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=args.workers, drop_last=True,
                        persistent_workers=True, generator=torch.Generator().manual_seed(0),
                        device=device if device.type == "cuda" else "cpu", gpu_augment=aug)
    info["augment"] = "fused Triton kernel on the device" if device.type == "cuda" else "reference (CPU dry run)"
    loader.cache_ref = cache  # keep it open for the loader's life
    return loader, info


def torch_loader(args: argparse.Namespace, device: torch.device) -> tuple[Any, dict]:
    ds = BaselineFolder(args.data, args.out_size)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                                         pin_memory=device.type == "cuda", drop_last=True,
                                         persistent_workers=args.workers > 0,
                                         generator=torch.Generator().manual_seed(0))
    return loader, {"processes": args.workers, "transforms": ds.transforms_from, "source": "local files",
                    "decode": "Pillow in worker processes"}


# ----------------------------------------------------------------------------------------------------------
# The loop.


def loader_totals(loader: Any) -> tuple[float, dict[str, float]]:
    """(consumer wait seconds, worker seconds per stage) summed over every epoch so far."""
    stats = loader.stats()
    worker = {k: sum(s["worker_s"].get(k, 0.0) for s in stats) for k in STAGES}
    return sum(s["wait_s"] for s in stats), worker


def train(args: argparse.Namespace, device: torch.device, batches: Iterator[Any], to_device: bool,
          loader: Any = None) -> dict:
    """Warm-up steps, then ``args.steps`` timed steps; figures for the timed ones."""
    model, model_name = (resnet50(1000) if args.model == "resnet50" else tiny_resnet(1000))
    model = model.to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    clock = StepClock(device)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        x, y = next(batches)
        if to_device:
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
        return x, y

    for _ in range(args.warmup):
        step(*next_batch())
    sync(device)
    before = loader_totals(loader) if loader is not None and hasattr(loader, "stats") else None
    stall = 0.0
    images = 0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        t = time.perf_counter()
        x, y = next_batch()
        stall += time.perf_counter() - t
        started = clock.start()
        step(x, y)
        clock.stop(started)
        images += x.shape[0]
    sync(device)
    wall = time.perf_counter() - t0
    busy = clock.busy_s()
    out = {"model": model_name, "images": images, "steps": args.steps, "wall_s": round(wall, 4),
           "images_per_s": round(images / wall, 1), "gpu_busy_fraction": round(min(1.0, busy / wall), 4),
           "busy_s": round(busy, 4), "stall_s": round(stall, 4), "stall_fraction": round(stall / wall, 4),
           "input": {"dtype": str(x.dtype).replace("torch.", ""), "shape": list(x.shape),
                     "channels_last": x.is_contiguous(memory_format=torch.channels_last)}}
    if before is not None:
        out["loader"] = stall_split(before, loader_totals(loader), stall, images)
    return out


def stall_split(before: tuple[float, dict], after: tuple[float, dict], stall: float, images: int) -> dict:
    """The loader's worker seconds per stage over the timed steps and the consumer's stall split over them."""
    worker = {k: round(after[1][k] - before[1][k], 4) for k in STAGES}
    total = sum(worker.values())
    split = {k: round(stall * v / total, 4) if total else 0.0 for k, v in worker.items()}
    bound = max(worker, key=worker.get) if total else None
    return {"worker_s": worker, "stall_split_s": split, "loader_wait_s": round(after[0] - before[0], 4),
            "worker_ms_per_image": {k: round(v * 1e3 / images, 4) for k, v in worker.items()},
            "busiest_stage": bound}


def input_only(batches: Iterator[Any], device: torch.device, n: int, to_device: bool) -> dict:
    """Images/s of the input pipeline alone: ``n`` batches pulled (and landed on the device) with no model."""
    sync(device)
    t0 = time.perf_counter()
    images = 0
    for _ in range(n):
        x, _y = next(batches)
        if to_device:
            x = x.to(device, non_blocking=True)
        images += x.shape[0]
    sync(device)
    wall = time.perf_counter() - t0
    return {"batches": n, "images": images, "images_per_s": round(images / wall, 1)}


def run(args: argparse.Namespace, work: str) -> tuple[dict, list]:
    """One config: (its figures, what to close afterwards: the loader, the cache)."""
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    result: dict = {"config": args.config, "device": str(device), "batch": args.batch, "out_size": args.out_size,
                    "workers": args.workers}
    if args.config == "ceiling":
        x = torch.randn(args.batch, 3, args.out_size, args.out_size, device=device).to(
            torch.bfloat16, memory_format=torch.channels_last)
        y = torch.randint(0, 1000, (args.batch,), device=device)
        result["input_pipeline"] = {"source": "one synthetic batch already on the device, every step"}
        result.update(train(args, device, itertools.repeat((x, y)), to_device=False))
        return result, []
    if args.config == "torch_baseline":
        loader, info = torch_loader(args, device)
        to_device = True
    else:
        loader, info = tiercache_loader(args, device, work, nvjpeg=args.config == "tiercache_nvjpeg")
        to_device = False
    result["input_pipeline"] = info
    batches = endless(loader)
    result.update(train(args, device, batches, to_device, loader))
    result["input_only"] = input_only(batches, device, args.input_batches, to_device)
    return result, [batches, loader, getattr(loader, "cache_ref", None)]


def close(things: list) -> None:
    """Stop the loader's threads or processes and close the cache (after the figures are out)."""
    batches, loader, cache = (things + [None, None, None])[:3]
    if batches is not None:
        batches.close()
    if hasattr(loader, "shutdown"):
        loader.shutdown()
    del loader
    if cache is not None:
        cache.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help=f"one of {', '.join(CONFIGS)}, or several comma-separated "
                   "(run one after the other in this process; one JSON line each)")
    p.add_argument("--data", help="ImageFolder tree of JPEGs (bench/gpu_data.py make_jpegs)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--out-size", type=int, default=224)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--input-batches", type=int, default=10, help="batches for the input-only measurement")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    p.add_argument("--model", choices=["resnet50", "tiny"], default="resnet50")
    p.add_argument("--ram", default="4G", help="RAM tier of the warm cache")
    args = p.parse_args(argv)
    configs = args.config.split(",")
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        p.error(f"unknown config(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    if configs != ["ceiling"] and not args.data:
        p.error("--data is needed for the loader configs")
    for config in configs:
        args.config = config
        with tempfile.TemporaryDirectory(prefix="tiercache-gpu-e2e-") as work:
            opened: list = []
            try:
                result, opened = run(args, work)
            except Skipped as exc:
                result = {"config": config, "skipped": str(exc)}
            print(json.dumps(result), flush=True)  # before the clean-up: a hang there loses no figures
            close(opened)
    return 0


if __name__ == "__main__":
    sys.exit(main())
