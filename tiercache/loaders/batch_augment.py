"""The batch path of ``DataLoader(gpu_augment=...)``: decode (nvJPEG on the GPU when it can), stage to the device
packed, then the fused crop/flip/normalize kernel of an :class:`~tiercache.loaders.augment.Augment`."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from .batches import Batch
from .staging import DeviceStager, map_tensors, tensors_in


def augment_batch(batch: Batch, samples: list[Any], timers: dict[str, float], *, augment: Any, epoch: int,
                  device: torch.device | None, stager: DeviceStager | None,
                  collate_fn: Callable[[list[Any]], Any]) -> Any:
    """Augment one batch of ``(uint8 HWC image or encoded bytes, *rest)`` samples; ``(images, *collate_fn(rest))``.

    Stage seconds go into ``timers`` (the caller reports them once); with a ``stager`` the result is on
    its device and ``batch.event`` marks when it is ready.
    """
    from .decode import decode_image, decode_jpeg_cuda, image_size

    t0 = time.perf_counter()
    images = [s[0] for s in samples]
    rest = [tuple(s[1:]) for s in samples]
    encoded = [im.dim() == 1 for im in images]
    sizes = [
        image_size(memoryview(im.numpy())) if enc else (int(im.shape[0]), int(im.shape[1]))
        for im, enc in zip(images, encoded, strict=True)
    ]
    boxes, flips = augment.params_batch(epoch, batch.indices, sizes)
    t_params = time.perf_counter()  # header reads + crop/flip draws count as augment, not decode
    if any(encoded):
        on_gpu = device is not None and device.type == "cuda"
        if on_gpu and all(encoded):
            try:
                with torch.cuda.stream(stager.stream):  # ordered before the augment on that stream
                    images = decode_jpeg_cuda(images, device)
            except RuntimeError as exc:
                on_gpu = False
                cause = f" ({type(exc.__cause__).__name__}: {exc.__cause__})" if exc.__cause__ else ""
                warnings.warn(f"GPU JPEG decode failed, decoding on the CPU instead: {exc}{cause}",
                              RuntimeWarning, stacklevel=1)
        if not on_gpu or not all(encoded):
            images = [
                decode_image(memoryview(im.numpy())) if enc else im
                for im, enc in zip(images, encoded, strict=True)
            ]
    t1 = time.perf_counter()
    timers["decode"] = t1 - t_params
    rest_data = collate_fn(rest) if rest and rest[0] else None
    t2 = time.perf_counter()
    timers["collate"] = t2 - t1
    if stager is not None:
        host = [im for im in images if im.device.type == "cpu"]
        extra = tensors_in(rest_data) if rest_data is not None else []
        moved, event, dev_buf, offsets = stager.to_device_packed([*host, *extra])
        moved_iter = iter(moved)
        if len(host) == len(images):
            from tiercache.kernels import PackedImages

            meta = [(off, *im.shape) for off, im in zip(offsets, images, strict=False)]
            packed: Any = PackedImages(dev_buf, torch.tensor(meta, dtype=torch.int64))
            for _ in host:
                next(moved_iter)
        else:
            packed = [next(moved_iter) if im.device.type == "cpu" else im for im in images]
        if rest_data is not None:
            rest_data = map_tensors(rest_data, lambda _t: next(moved_iter))
        t3 = time.perf_counter()
        timers["h2d"] = t3 - t2
        with torch.cuda.stream(stager.stream):
            stager.stream.wait_event(event)
            out = augment.apply_batch(packed, boxes, flips)
            batch.event = torch.cuda.Event()
            batch.event.record(stager.stream)
        timers["augment"] = time.perf_counter() - t3 + (t_params - t0)
    else:
        out = augment.apply_batch(images, boxes, flips)
        timers["augment"] = time.perf_counter() - t2 + (t_params - t0)
    if rest_data is None:
        return out
    return (out, *rest_data) if isinstance(rest_data, (tuple, list)) else (out, rest_data)
