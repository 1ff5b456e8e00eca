"""Fused GPU augmentation: ragged uint8 HWC batch → crop + bilinear resize + flip + normalise + CHW + cast.

One Triton launch per batch over a grid of (output-pixel blocks, images). Each program reads its
image's row of a small int64 table (buffer offset, row stride, crop box, flip, float32 scales as bits),
computes torch's bilinear source taps for a block of output pixels, gathers the 4 uint8 taps per channel,
lerps in float32 in torch's order, normalises with one FMA and stores through the output strides
(so contiguous NCHW and channels_last share the kernel).

Triton is optional: without it only the reference path is available. ``antialias=True`` is served by
the reference (torch ops, on the images' device); the Triton path does not implement it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import torch

from .reference import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentPlan,
    PackedImages,
    check_out,
    run_reference,
    validate,
)

try:
    import triton
    import triton.language as tl
except ImportError:  # the reference path still works
    triton = tl = None

BLOCK = 1024
_META_COLS = 9  # offset, row stride (W*C), top, left, crop h, crop w, flip, y scale bits, x scale bits


def _fused_augment_kernel(src_ptr, meta_ptr, out_ptr,
                          scale0, scale1, scale2, bias0, bias1, bias2,
                          stride_b, stride_c, stride_h, stride_w,
                          OH: tl.constexpr, OW: tl.constexpr, C: tl.constexpr, BLOCK: tl.constexpr,
                          META_COLS: tl.constexpr):
    """Triton kernel body; jitted on first use by :func:`_kernel`. Grid: (cdiv(OH*OW, BLOCK), B)."""
    b = tl.program_id(1)
    row = meta_ptr + b * META_COLS
    base = tl.load(row)  # int64 byte offset of the image in the flat buffer
    row_stride = tl.load(row + 1).to(tl.int32)
    top = tl.load(row + 2).to(tl.int32)
    left = tl.load(row + 3).to(tl.int32)
    crop_h = tl.load(row + 4).to(tl.int32)
    crop_w = tl.load(row + 5).to(tl.int32)
    flip = tl.load(row + 6).to(tl.int32)
    scale_y = tl.load(row + 7).to(tl.int32).to(tl.float32, bitcast=True)
    scale_x = tl.load(row + 8).to(tl.int32).to(tl.float32, bitcast=True)

    pix = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = pix < OH * OW
    oy = pix // OW
    ox = pix % OW
    sx = tl.where(flip != 0, OW - 1 - ox, ox)  # flip after the resize: read the mirrored column

    # torch's align_corners=False taps; torch's kernels compile scale * (dst + 0.5) - 0.5 to one FMA.
    src_y = tl.maximum(tl.fma(scale_y, oy.to(tl.float32) + 0.5, -0.5), 0.0)
    y0 = tl.minimum(src_y.to(tl.int32), crop_h - 1)
    wy1 = tl.minimum(tl.maximum(src_y - y0.to(tl.float32), 0.0), 1.0)
    wy0 = 1.0 - wy1
    y1 = y0 + (y0 < crop_h - 1).to(tl.int32)
    src_x = tl.maximum(tl.fma(scale_x, sx.to(tl.float32) + 0.5, -0.5), 0.0)
    x0 = tl.minimum(src_x.to(tl.int32), crop_w - 1)
    wx1 = tl.minimum(tl.maximum(src_x - x0.to(tl.float32), 0.0), 1.0)
    wx0 = 1.0 - wx1
    x1 = x0 + (x0 < crop_w - 1).to(tl.int32)

    # Offsets within one image fit int32 (checked on the host); the image base is int64.
    r0 = (top + y0) * row_stride
    r1 = (top + y1) * row_stride
    c0 = (left + x0) * C
    c1 = (left + x1) * C
    img = src_ptr + base
    dst = out_ptr + b.to(tl.int64) * stride_b + oy * stride_h + ox * stride_w
    for c in tl.static_range(C):
        p00 = tl.load(img + (r0 + c0 + c), mask=mask, other=0).to(tl.float32)
        p01 = tl.load(img + (r0 + c1 + c), mask=mask, other=0).to(tl.float32)
        p10 = tl.load(img + (r1 + c0 + c), mask=mask, other=0).to(tl.float32)
        p11 = tl.load(img + (r1 + c1 + c), mask=mask, other=0).to(tl.float32)
        value = wy0 * (wx0 * p00 + wx1 * p01) + wy1 * (wx0 * p10 + wx1 * p11)  # torch's order
        if c == 0:
            y = tl.fma(value, scale0, bias0)
        elif c == 1:
            y = tl.fma(value, scale1, bias1)
        else:
            y = tl.fma(value, scale2, bias2)
        tl.store(dst + c * stride_c, y.to(out_ptr.dtype.element_ty), mask=mask)


_jitted: dict[tuple[bool, bool], object] = {}
_STRIDES = ["stride_b", "stride_c", "stride_h", "stride_w"]


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _kernel(vector_stores: bool = False):
    """The jitted kernel, compiled or interpreted per ``TRITON_INTERPRET`` as it is at the first launch.

    By default the output strides are not specialised, so Triton keeps one output pixel per lane and a
    warp's byte gathers stay within a few cache lines. ``vector_stores=True`` lets it specialise them
    (16-byte stores for contiguous NCHW, but each lane then owns 8 pixels and the gathers spread out).
    """
    key = (_interpreting(), vector_stores)
    if key not in _jitted:
        _jitted[key] = triton.jit(_fused_augment_kernel, do_not_specialize=[] if vector_stores else _STRIDES)
    return _jitted[key]


def triton_available() -> bool:
    """Whether the Triton path can run here: Triton importable and either a GPU or the interpreter."""
    return triton is not None and (torch.cuda.is_available() or _interpreting())


def kernel_meta(plan: AugmentPlan) -> torch.Tensor:
    """The per-image int64 table the kernel reads, built on the host ([B, 9], see ``_META_COLS``)."""
    packed = plan.packed
    offset, width, channels = packed.meta[:, 0], packed.meta[:, 2], packed.meta[:, 3]
    top, left, crop_h, crop_w = plan.boxes.unbind(1)
    # float32 scale = in/out exactly as torch computes it, passed bit for bit
    scale_y = (crop_h.to(torch.float32) / plan.out_h).view(torch.int32).to(torch.int64)
    scale_x = (crop_w.to(torch.float32) / plan.out_w).view(torch.int32).to(torch.int64)
    return torch.stack([offset, width * channels, top, left, crop_h, crop_w, plan.flips.to(torch.int64),
                        scale_y, scale_x], dim=1).contiguous()


def launch_triton(plan: AugmentPlan, out: torch.Tensor, *, meta: torch.Tensor | None = None,
                  vector_stores: bool = False) -> None:
    """Run the kernel once for a validated plan into ``out`` (any strides).

    ``meta``: :func:`kernel_meta` already on the device (built and copied here if None);
    ``vector_stores``: see :func:`_kernel`.
    """
    packed = plan.packed
    device = packed.device
    if device.type != "cuda" and not _interpreting():
        raise RuntimeError(f"the Triton path needs CUDA tensors (got {device}), or TRITON_INTERPRET=1 to run "
                           "it through Triton's interpreter on the CPU (slow; for tests)")
    if len(packed) > 65535:
        raise ValueError(f"the Triton path takes at most 65535 images per launch, got {len(packed)}")
    if meta is None:
        meta = kernel_meta(plan).to(device)
    c = packed.channels
    scale = list(plan.scale) + [0.0] * (3 - c)
    bias = list(plan.bias) + [0.0] * (3 - c)
    grid = (triton.cdiv(plan.out_h * plan.out_w, BLOCK), len(packed))
    _kernel(vector_stores)[grid](packed.data, meta, out, *scale, *bias, *out.stride(),
                                OH=plan.out_h, OW=plan.out_w, C=c, BLOCK=BLOCK, META_COLS=_META_COLS,
                                num_warps=4, enable_fp_fusion=False)


def fused_augment(images: Sequence[torch.Tensor] | PackedImages, boxes: torch.Tensor, flips: torch.Tensor,
                  out_size: Sequence[int] | int = (224, 224), mean: Sequence[float] = IMAGENET_MEAN,
                  std: Sequence[float] = IMAGENET_STD, out_dtype: torch.dtype = torch.bfloat16,
                  channels_last: bool = False, *, antialias: bool = False, out: torch.Tensor | None = None,
                  backend: Literal["auto", "triton", "reference"] = "auto") -> torch.Tensor:
    """Crop, bilinear-resize, flip, normalise and cast a ragged uint8 HWC batch in one kernel launch.

    ``images``: list of uint8 HWC tensors (C = 1 or 3, the same for all) or a :class:`PackedImages`;
    ``boxes``: int [B, 4] of (top, left, height, width) in source pixels; ``flips``: bool [B].
    Per image this equals ``interpolate(crop, out_size, mode="bilinear", align_corners=False)``, a
    horizontal flip after the resize if ``flips[i]``, then ``(x / 255 - mean) / std`` as one multiply-add,
    cast to ``out_dtype`` (float32, float16 or bfloat16). Returns [B, C, OH, OW], in channels_last memory
    format if asked; with ``out=`` that tensor is filled through its own strides and returned.

    ``backend``: "auto" runs Triton for CUDA images and the reference otherwise; "triton" forces the
    kernel (CUDA, or CPU tensors under ``TRITON_INTERPRET=1``); "reference" forces plain torch ops.
    ``antialias=True`` (torch's antialiased bilinear) is only in the reference: "auto" falls back to it,
    "triton" raises NotImplementedError. Boxes and flips are read on the host; keep them on the CPU.
    """
    if backend not in ("auto", "triton", "reference"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'reference', got {backend!r}")
    if backend == "triton" and antialias:
        raise NotImplementedError("antialias=True is not implemented in the Triton kernel; use "
                                  "backend='auto' or 'reference' (torch's antialiased interpolate)")
    if backend == "triton" and triton is None:
        raise RuntimeError("backend='triton' needs the triton package")
    plan = validate(images, boxes, flips, out_size, mean, std, out_dtype)
    result = check_out(out, plan, channels_last)
    use_triton = backend == "triton" or (
        backend == "auto" and not antialias and triton is not None and plan.packed.device.type == "cuda")
    if not use_triton:
        return run_reference(plan, result, antialias)
    launch_triton(plan, result)
    return result
