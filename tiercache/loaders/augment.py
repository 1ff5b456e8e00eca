"""Augmentation spec: RandomResizedCrop + horizontal flip + normalize, with per-sample deterministic parameters.

Parameters are drawn exactly like torchvision's ``RandomResizedCrop.get_params`` (10 tries, then the center
crop fallback) followed by ``RandomHorizontalFlip`` (``torch.rand(1) < p``), but from a private
``torch.Generator`` seeded from ``(seed, epoch, sample index)``. Results therefore depend on neither the
number of loader threads nor their timing. The pixel work is one call of ``tiercache.kernels.fused_augment``
(Triton on CUDA, the plain-torch reference on CPU).
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Augment", "sample_seed"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Box = tuple[int, int, int, int]  # (top, left, height, width) in source pixels


_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64's finalizer: a bijective, well-mixing 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed derived from (seed, epoch, index) by chained splitmix64 mixing (stable across runs)."""
    h = _mix64(seed & _MASK64)
    h = _mix64(h ^ (epoch & _MASK64))
    return _mix64(h ^ (index & _MASK64)) & 0x7FFFFFFFFFFFFFFF


def _kernels():
    try:
        from tiercache.kernels import fused_augment
    except ImportError as exc:
        raise RuntimeError(
            "tiercache.kernels.fused_augment is not available; augmentation needs the kernels package"
        ) from exc
    return fused_augment


@dataclass(frozen=True)
class Augment:
    """RandomResizedCrop(size, scale, ratio) -> flip(p) -> normalize(mean, std) -> dtype / memory format.

    ``mean``/``std`` are in [0, 1] pixel units like torchvision's ``Normalize`` after ``ToTensor``.
    ``cpu_exact``: make the per-sample CPU path (:meth:`apply`) use the kernels' float arithmetic
    instead of torch's faster uint8 resize (within one grey level); see :meth:`apply`.
    """

    size: int | tuple[int, int]
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    dtype: torch.dtype = torch.float32
    channels_last: bool = False
    seed: int = 0
    cpu_exact: bool = False

    def __post_init__(self) -> None:
        if self.scale[0] > self.scale[1] or self.ratio[0] > self.ratio[1]:
            raise ValueError(f"scale and ratio must be (min, max) pairs, got scale={self.scale} ratio={self.ratio}")
        if len(self.mean) != len(self.std):
            raise ValueError("mean and std must have the same number of channels")

    @property
    def out_size(self) -> tuple[int, int]:
        """Output (height, width)."""
        return (self.size, self.size) if isinstance(self.size, int) else (int(self.size[0]), int(self.size[1]))

    def generator(self, epoch: int, index: int) -> torch.Generator:
        """The private RNG of one sample in one epoch (a fresh generator; :meth:`params` reuses one per thread)."""
        return torch.Generator().manual_seed(sample_seed(self.seed, epoch, index))

    def params(self, epoch: int, index: int, height: int, width: int) -> tuple[Box, bool]:
        """Crop box (top, left, h, w) and flip flag for sample ``index`` of ``epoch`` in a ``height x width`` image."""
        g = getattr(_tls, "generator", None)
        if g is None:
            g = _tls.generator = torch.Generator()
        g.manual_seed(sample_seed(self.seed, epoch, index))
        box = _rrc_params(height, width, self.scale, tuple(self.ratio), g)
        u = _tls.scratch[0]
        flip = bool(u.uniform_(0.0, 1.0, generator=g).item() < self.flip_p)
        return box, flip

    def params_batch(
        self, epoch: int, indices: Sequence[int], sizes: Sequence[tuple[int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes ``int64 [B, 4]`` and flips ``bool [B]`` for a batch of samples with (height, width) ``sizes``."""
        drawn = [self.params(epoch, i, h, w) for i, (h, w) in zip(indices, sizes, strict=True)]
        boxes = torch.tensor([b for b, _ in drawn], dtype=torch.int64).reshape(len(drawn), 4)
        flips = torch.tensor([f for _, f in drawn], dtype=torch.bool)
        return boxes, flips

    def apply_batch(
        self,
        images: Sequence[torch.Tensor] | Any,
        boxes: torch.Tensor,
        flips: torch.Tensor,
        device: str | torch.device | None = None,
    ) -> torch.Tensor:
        """Crop, resize, flip, normalize a ragged batch of uint8 HWC images -> ``[B, C, OH, OW]``.

        ``images`` is a list of uint8 HWC tensors or a ``tiercache.kernels.PackedImages``, moved to ``device``
        when given. On CUDA this is one ``fused_augment`` launch; on the CPU each image goes through
        :meth:`apply` (``F.interpolate``, ~10x faster than the kernels' gather-based reference and equal to
        it within float rounding). ``boxes``/``flips`` stay on the host (the kernel reads them there).
        """
        if device is not None:
            dev = torch.device(device)
            if isinstance(images, (list, tuple)):
                images = [im if im.device == dev else im.to(dev, non_blocking=True) for im in images]
            elif images.device != dev:
                images = images.to(dev, non_blocking=True)
        on_cpu = (images[0] if isinstance(images, (list, tuple)) else images).device.type == "cpu"
        if on_cpu and isinstance(images, (list, tuple)):
            out = torch.stack([self.apply(im, tuple(b), bool(f)) for im, b, f in zip(
                images, boxes.tolist(), flips.tolist(), strict=True)])
            return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out
        return _kernels()(
            images,
            boxes.cpu(),
            flips.cpu(),
            out_size=self.out_size,
            mean=self.mean,
            std=self.std,
            out_dtype=self.dtype,
            channels_last=self.channels_last,
        )

    def apply(self, image: torch.Tensor, box: Box, flip: bool, out: torch.Tensor | None = None) -> torch.Tensor:
        """One uint8 HWC image -> ``[C, OH, OW]``: crop, bilinear resize (align_corners=False), flip, normalize.

        With ``cpu_exact=True`` this is the arithmetic of ``fused_augment_reference`` (``interpolate`` in
        float32, then one multiply-add with float32 constants ``1 / (255 * std)`` and ``-mean / std``), equal
        to it within float rounding. By default uint8 images are resized with torch's fixed-point uint8
        bilinear kernel, twice as fast and within one grey level of the reference (the rounding a Pillow
        pipeline does too). ``out``: a contiguous ``[C, OH, OW]`` tensor of ``dtype`` to write into.
        """
        top, left, h, w = box
        crop = image[top : top + h, left : left + w]
        if flip:  # flipping the crop = flipping the resized output (the bilinear taps are mirror-symmetric)
            crop = crop.flip(1)
        x = crop.unsqueeze(0)
        if self.cpu_exact or x.dtype != torch.uint8:
            x = x.to(torch.float32)
        # NHWC -> NCHW view in channels_last memory: torch's fastest CPU bilinear path
        y = F.interpolate(x.permute(0, 3, 1, 2), size=self.out_size, mode="bilinear", align_corners=False)[0]
        scale, bias = self._affine(image.shape[2], y.device)
        if y.dtype != torch.float32:
            y = y.to(torch.float32)
        if self.dtype == torch.float32:
            if out is None:
                out = torch.empty((y.shape[0], *self.out_size), device=y.device)
            return torch.addcmul(bias, y, scale, out=out)
        result = torch.addcmul(bias, y, scale)
        if out is None:
            return result.to(self.dtype, memory_format=torch.contiguous_format)
        return out.copy_(result)

    def _affine(self, channels: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return _affine_constants(tuple(self.mean), tuple(self.std), channels, str(device))


@functools.lru_cache(maxsize=64)
def _affine_constants(
    mean: tuple[float, ...], std: tuple[float, ...], channels: int, device: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel float32 ``1 / (255 * std)`` and ``-mean / std`` as ``[C, 1, 1]`` tensors (cached, read-only)."""
    mean = mean * channels if len(mean) == 1 else mean
    std = std * channels if len(std) == 1 else std
    if len(mean) != channels:
        raise ValueError(f"mean has {len(mean)} values but the image has {channels} channel(s)")
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], dtype=torch.float64).float()
    bias = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)], dtype=torch.float64).float()
    return scale.to(device)[:, None, None], bias.to(device)[:, None, None]


_tls = threading.local()


def _rrc_params(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], g: torch.Generator
) -> Box:
    """torchvision's RandomResizedCrop.get_params, drawing from ``g`` instead of the global RNG.

    Same draws in the same order (so the same results for the same generator state), with the scratch
    tensors reused per thread.
    """
    scratch = getattr(_tls, "scratch", None)
    if scratch is None:
        scratch = _tls.scratch = (torch.empty(1), torch.empty(1))
    u, e = scratch
    area = height * width
    log_lo, log_hi = _log_ratio(ratio)
    for _ in range(10):
        target_area = area * u.uniform_(scale[0], scale[1], generator=g).item()
        aspect_ratio = torch.exp(u.uniform_(log_lo, log_hi, generator=g), out=e).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = int(torch.randint(0, height - h + 1, size=(1,), generator=g).item())
            j = int(torch.randint(0, width - w + 1, size=(1,), generator=g).item())
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@functools.lru_cache(maxsize=64)
def _log_ratio(ratio: tuple[float, float]) -> tuple[float, float]:
    """torchvision's ``torch.log(torch.tensor(ratio))`` (float32), as Python floats."""
    lo, hi = torch.log(torch.tensor(ratio)).tolist()
    return lo, hi
