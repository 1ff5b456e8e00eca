"""Ragged-batch augmentation in plain torch ops: the CPU path and the oracle for the Triton kernel.

Also home of what both paths share: the packed batch form (:class:`PackedImages`), :func:`pack_images`,
and input validation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FLOAT_OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class PackedImages:
    """A ragged batch of uint8 HWC images in one flat buffer.

    ``data`` is a 1-D uint8 tensor (on any device); ``meta`` is a CPU int64 tensor [B, 4] of
    (offset, H, W, C) per image, offsets in bytes into ``data``. Build one with :func:`pack_images`.
    """

    data: torch.Tensor
    meta: torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.data, torch.Tensor) or self.data.dtype != torch.uint8 or self.data.dim() != 1:
            raise TypeError("PackedImages.data must be a 1-D uint8 tensor")
        if not self.data.is_contiguous():
            raise ValueError("PackedImages.data must be contiguous")
        meta = self.meta
        if not isinstance(meta, torch.Tensor) or meta.dtype != torch.int64 or meta.device.type != "cpu":
            raise TypeError("PackedImages.meta must be a CPU int64 tensor of (offset, H, W, C) rows")
        if meta.dim() != 2 or meta.shape[1] != 4 or meta.shape[0] == 0:
            raise ValueError(f"PackedImages.meta must have shape [B>0, 4], got {list(meta.shape)}")
        offset, h, w, c = meta.unbind(1)
        size = h * w * c
        checks = [((h <= 0) | (w <= 0), "is empty"),
                  ((c != 1) & (c != 3), "must have 1 or 3 channels"),
                  (size > _INT32_MAX, "has more than 2**31-1 bytes"),
                  ((offset < 0) | (offset + size > self.data.numel()),
                   f"lies outside the buffer of {self.data.numel()} bytes")]
        for bad, what in checks:
            if bad.any():
                i = int(bad.nonzero()[0])
                raise ValueError(f"image {i} (offset {int(offset[i])}, shape {tuple(meta[i, 1:].tolist())}) "
                                 f"{what}")
        channels = set(meta[:, 3].tolist())
        if len(channels) != 1:
            raise ValueError(f"all images of a batch must have the same channel count, got "
                             f"{sorted(channels)}")

    def __len__(self) -> int:
        return self.meta.shape[0]

    @property
    def channels(self) -> int:
        """The channel count C shared by every image."""
        return int(self.meta[0, 3])

    @property
    def device(self) -> torch.device:
        """Where the pixel buffer lives."""
        return self.data.device

    def image(self, i: int) -> torch.Tensor:
        """Image ``i`` as an HWC uint8 view into the buffer."""
        offset, h, w, c = self.meta[i].tolist()
        return self.data[offset:offset + h * w * c].view(h, w, c)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedImages:
        """The same batch with its pixel buffer on ``device`` (one copy; the table stays on the host)."""
        return PackedImages(self.data.to(device, non_blocking=non_blocking), self.meta)


def pack_images(images: Sequence[torch.Tensor], device: torch.device | str | None = None) -> PackedImages:
    """Pack a list of uint8 HWC tensors into one :class:`PackedImages` with one concatenation.

    CPU images are concatenated on the host and, if ``device`` is given, moved with one copy;
    images already on a GPU are concatenated there.
    """
    if isinstance(images, torch.Tensor) or not isinstance(images, Sequence):
        raise TypeError("images must be a list of uint8 HWC tensors (or a PackedImages)")
    if len(images) == 0:
        raise ValueError("images is empty")
    devices = set()
    for i, img in enumerate(images):
        if not isinstance(img, torch.Tensor):
            raise TypeError(f"image {i}: expected a torch.Tensor, got {type(img).__name__}")
        if img.dtype != torch.uint8:
            raise TypeError(f"image {i}: images must be uint8, got {img.dtype}")
        if img.dim() != 3:
            raise ValueError(f"image {i}: images must be HWC (3-D), got shape {list(img.shape)}")
        devices.add(img.device)
    if len(devices) != 1:
        raise ValueError(f"all images must be on one device, got {sorted(map(str, devices))}")
    rows, offset = [], 0
    for img in images:
        h, w, c = img.shape
        rows.append((offset, h, w, c))
        offset += h * w * c
    data = torch.cat([img.reshape(-1) for img in images])
    if device is not None:
        data = data.to(device)
    return PackedImages(data, torch.tensor(rows, dtype=torch.int64))


@dataclass(frozen=True)
class AugmentPlan:
    """Validated, normalised arguments shared by the reference and the Triton path (host-side values)."""

    packed: PackedImages
    boxes: torch.Tensor  # CPU int64 [B, 4]: top, left, height, width
    flips: torch.Tensor  # CPU bool [B]
    out_h: int
    out_w: int
    scale: tuple[float, ...]  # per channel, float32-representable: 1 / (255 * std)
    bias: tuple[float, ...]  # per channel, float32-representable: -mean / std
    out_dtype: torch.dtype


def _per_channel(name: str, values: Sequence[float] | float, channels: int) -> list[float]:
    if isinstance(values, (int, float)):
        values = (values,)
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a sequence of numbers, got {values!r}") from None
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ValueError(f"{name} has {len(values)} values but the images have {channels} channel(s)")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name} must be finite, got {values}")
    return values


def _out_size(out_size: Sequence[int] | int) -> tuple[int, int]:
    if isinstance(out_size, int) and not isinstance(out_size, bool):
        out_size = (out_size, out_size)
    if (not isinstance(out_size, Sequence) or len(out_size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in out_size)):
        raise ValueError(f"out_size must be an int or a pair of ints (height, width), got {out_size!r}")
    oh, ow = out_size
    if oh <= 0 or ow <= 0:
        raise ValueError(f"out_size must be positive, got {out_size!r}")
    if oh * ow * 3 > _INT32_MAX:
        raise ValueError(f"out_size {out_size!r} is too large")
    return oh, ow


def validate(images: Sequence[torch.Tensor] | PackedImages, boxes: torch.Tensor, flips: torch.Tensor,
             out_size: Sequence[int] | int, mean: Sequence[float], std: Sequence[float],
             out_dtype: torch.dtype) -> AugmentPlan:
    """Check every argument of :func:`fused_augment_reference` and return them normalised.

    Raises TypeError for wrong types or dtypes and ValueError for wrong shapes, lengths or boxes.
    Boxes and flips are read on the host (a device sync if they live on a GPU).
    """
    packed = images if isinstance(images, PackedImages) else pack_images(images)
    n = len(packed)
    if not isinstance(boxes, torch.Tensor):
        boxes = torch.as_tensor(boxes)
    if boxes.dtype.is_floating_point or boxes.dtype.is_complex or boxes.dtype == torch.bool:
        raise TypeError(f"boxes must be an integer tensor, got {boxes.dtype}")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape [B, 4] (top, left, height, width), got {list(boxes.shape)}")
    if not isinstance(flips, torch.Tensor):
        flips = torch.as_tensor(flips)
    if flips.dtype != torch.bool:
        raise TypeError(f"flips must be a bool tensor, got {flips.dtype}")
    if flips.dim() != 1:
        raise ValueError(f"flips must have shape [B], got {list(flips.shape)}")
    if boxes.shape[0] != n or flips.shape[0] != n:
        raise ValueError(f"got {n} images, {boxes.shape[0]} boxes and {flips.shape[0]} flips; "
                         "they must match")
    boxes = boxes.to("cpu", torch.int64)
    flips = flips.to("cpu")
    top, left, h, w = boxes.unbind(1)
    bad = (top < 0) | (left < 0) | (h <= 0) | (w <= 0) | (top + h > packed.meta[:, 1]) | \
        (left + w > packed.meta[:, 2])
    if bad.any():
        i = int(bad.nonzero()[0])
        ih, iw = packed.meta[i, 1:3].tolist()
        raise ValueError(f"box {i} (top={int(top[i])}, left={int(left[i])}, height={int(h[i])}, "
                         f"width={int(w[i])}) is empty or outside its {ih}x{iw} image")
    oh, ow = _out_size(out_size)
    if out_dtype not in FLOAT_OUT_DTYPES:
        raise TypeError(f"out_dtype must be one of {FLOAT_OUT_DTYPES}, got {out_dtype}")
    c = packed.channels
    mean_c, std_c = _per_channel("mean", mean, c), _per_channel("std", std, c)
    if any(s == 0 for s in std_c):
        raise ValueError(f"std must be non-zero, got {std_c}")
    # Rounded to float32 once, so every path multiplies by the very same constants.
    scale = torch.tensor([1.0 / (255.0 * s) for s in std_c], dtype=torch.float64).float().tolist()
    bias = torch.tensor([-m / s for m, s in zip(mean_c, std_c, strict=True)],
                        dtype=torch.float64).float().tolist()
    return AugmentPlan(packed, boxes, flips, oh, ow, tuple(scale), tuple(bias), out_dtype)


def check_out(out: torch.Tensor | None, plan: AugmentPlan, channels_last: bool) -> torch.Tensor:
    """Return ``out`` after checking it fits the plan, or a new output tensor in the requested layout."""
    shape = (len(plan.packed), plan.packed.channels, plan.out_h, plan.out_w)
    device = plan.packed.device
    if out is None:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return torch.empty(shape, dtype=plan.out_dtype, device=device, memory_format=fmt)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out must be a tensor, got {type(out).__name__}")
    if tuple(out.shape) != shape or out.dtype != plan.out_dtype or out.device != device:
        raise ValueError(f"out must be a {plan.out_dtype} tensor of shape {list(shape)} on {device}, "
                         f"got {out.dtype} {list(out.shape)} on {out.device}")
    return out


def run_reference(plan: AugmentPlan, out: torch.Tensor, antialias: bool = False) -> torch.Tensor:
    """Fill ``out`` from an already validated plan (see :func:`validate`, :func:`check_out`) and return it.

    One ``F.interpolate`` per image (the contract's definition, and on the CPU much faster than any
    batched gather in torch ops), then flip, normalise and cast straight into ``out[i]``.
    """
    dev = out.device
    scale = torch.tensor(plan.scale, dtype=torch.float32, device=dev)[:, None, None]
    bias = torch.tensor(plan.bias, dtype=torch.float32, device=dev)[:, None, None]
    size = (plan.out_h, plan.out_w)
    for i, ((top, left, h, w), flip) in enumerate(zip(plan.boxes.tolist(), plan.flips.tolist(), strict=True)):
        crop = plan.packed.image(i)[top:top + h, left:left + w].permute(2, 0, 1)[None].to(torch.float32)
        y = F.interpolate(crop, size=size, mode="bilinear", align_corners=False, antialias=antialias)[0]
        if flip:
            y = y.flip(-1)
        out[i].copy_(torch.addcmul(bias, y, scale))
    return out


def fused_augment_reference(images: Sequence[torch.Tensor] | PackedImages, boxes: torch.Tensor,
                            flips: torch.Tensor, out_size: Sequence[int] | int = (224, 224),
                            mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                            out_dtype: torch.dtype = torch.bfloat16, channels_last: bool = False, *,
                            antialias: bool = False, out: torch.Tensor | None = None) -> torch.Tensor:
    """Crop, bilinear-resize, flip, normalise and cast a ragged uint8 HWC batch with plain torch ops.

    Same contract as :func:`tiercache.kernels.fused_augment`; runs on whatever device the images are on.
    Per image: ``interpolate(crop, out_size, mode="bilinear", align_corners=False, antialias=antialias)``,
    horizontal flip after the resize if ``flips[i]``, then ``x * (1 / (255 * std)) + (-mean / std)``.
    Returns [B, C, OH, OW] (channels_last memory format if asked), or ``out`` filled in place.
    """
    plan = validate(images, boxes, flips, out_size, mean, std, out_dtype)
    return run_reference(plan, check_out(out, plan, channels_last), antialias)
