"""Image decode: JPEG/PNG on the CPU (GIL-releasing), raw uint8 records zero-copy, batched nvJPEG on a GPU.

Backend choice. Measured with ``bench/loader.py`` on this project's 2-vCPU dev VM: 200 synthetic photo-like
JPEGs of about 500x375 (quality 90, ~73 KB), decoded to an RGB uint8 array, best of 3 runs::

    decoder                          1 thread   2 threads   (images/s)
    Pillow 13 (open + convert)          ~330        ~630
    simplejpeg 1.9                      ~780       ~1160
    PyTurboJPEG 1.8 (ctypes)            ~750       ~1165
    simplejpeg, DCT scale 1/2           ~870       ~1450

simplejpeg and PyTurboJPEG are equally fast (both are libjpeg-turbo and release the GIL) and 2.3x Pillow;
simplejpeg is the backend because it ships its own libjpeg-turbo (PyTurboJPEG 2.x needs libjpeg-turbo 3, the
OS here has 2.1; only the 1.x line works with it) and has a one-call header read. Pillow decodes PNG and
everything else (it releases the GIL too) and takes over for JPEGs simplejpeg refuses.

Reduced-scale decode: libjpeg-turbo can run the inverse DCT at 1/2, 1/4 or 1/8 scale (here ~15% cheaper at
1/2, ~35% at 1/4, plus a smaller image to crop and resize). :func:`dct_scale` picks the largest power-of-two
reduction that keeps a crop box at least as large as the output size, so the result is never blurrier than a
full decode (other factors such as 3/4 are *slower* than full decode). With 224-pixel crops of ~500x375
images it rarely applies; it pays off on large photos and small outputs.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Sequence

import numpy as np
import torch

try:  # pragma: no cover - import guard
    import simplejpeg
except ImportError:  # pragma: no cover - simplejpeg is a declared dependency
    simplejpeg = None

__all__ = [
    "JPEG_BACKEND",
    "decode_image",
    "decode_jpeg",
    "decode_jpeg_cuda",
    "decode_png",
    "decode_raw",
    "dct_scale",
    "image_size",
    "is_jpeg",
    "is_png",
]

JPEG_BACKEND = "simplejpeg" if simplejpeg is not None else "pillow"

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def is_jpeg(data: bytes | memoryview) -> bool:
    """True when ``data`` starts with the JPEG SOI marker."""
    return bytes(data[:3]) == b"\xff\xd8\xff"


def is_png(data: bytes | memoryview) -> bool:
    """True when ``data`` starts with the PNG signature."""
    return bytes(data[:8]) == _PNG_MAGIC


def image_size(data: bytes | memoryview) -> tuple[int, int]:
    """(height, width) of an encoded image, read from its header only."""
    if is_jpeg(data) and simplejpeg is not None:
        try:
            h, w, _, _ = simplejpeg.decode_jpeg_header(data)
            return int(h), int(w)
        except ValueError:
            pass
    if is_png(data) and len(data) >= 24:
        w, h = struct.unpack(">II", bytes(data[16:24]))
        return int(h), int(w)
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.height, im.width


def dct_scale(box_h: int, box_w: int, out_h: int, out_w: int) -> int:
    """Largest power-of-two reduction d (1, 2, 4 or 8) that keeps a ``box_h x box_w`` crop >= the output.

    Decoding at 1/d scale turns the crop into ``box/d`` pixels; it must still cover ``out_h x out_w`` so the
    final resize never upsamples more than a full-size decode would.
    """
    d = 8
    while d > 1 and (box_h // d < out_h or box_w // d < out_w):
        d //= 2
    return d


def decode_jpeg(data: bytes | memoryview, *, scale: int = 1, fast: bool = False) -> np.ndarray:
    """Decode a JPEG to an RGB uint8 HWC array, optionally at 1/``scale`` size (DCT scaling).

    Grayscale JPEGs come back as 3 identical channels. Falls back to Pillow when simplejpeg refuses the file.
    """
    if simplejpeg is not None:
        try:
            if scale > 1:
                h, w, _, _ = simplejpeg.decode_jpeg_header(data)
                return simplejpeg.decode_jpeg(
                    data, colorspace="RGB", min_height=math.ceil(h / scale), min_width=math.ceil(w / scale),
                    fastdct=fast, fastupsample=fast,
                )
            return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=fast, fastupsample=fast)
        except ValueError:
            pass
    return _decode_pillow(data, scale)


def decode_png(data: bytes | memoryview) -> np.ndarray:
    """Decode a PNG (or any Pillow-readable image) to an RGB uint8 HWC array."""
    return _decode_pillow(data, 1)


def _decode_pillow(data: bytes | memoryview, scale: int) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if scale > 1 and im.format == "JPEG":
            im.draft("RGB", (math.ceil(im.width / scale), math.ceil(im.height / scale)))
        return np.asarray(im.convert("RGB"))


def decode_image(data: bytes | memoryview, *, scale: int = 1, fast: bool = False) -> torch.Tensor:
    """Decode JPEG/PNG/other bytes to an RGB uint8 ``[H, W, 3]`` tensor (shares the decoded array's memory)."""
    arr = decode_jpeg(data, scale=scale, fast=fast) if is_jpeg(data) else decode_png(data)
    if not arr.flags.writeable:
        arr = arr.copy()
    return torch.from_numpy(arr)


def decode_raw(
    buffer: bytes | bytearray | memoryview, shape: Sequence[int], dtype: torch.dtype = torch.uint8, offset: int = 0
) -> torch.Tensor:
    """View raw records as a tensor of ``shape`` without copying (``torch.frombuffer``).

    A read-only buffer (``bytes``) yields a tensor that must not be written to; torch warns about that once,
    which is silenced here because the loader never writes into samples.
    """
    import warnings

    count = math.prod(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        flat = torch.frombuffer(buffer, dtype=dtype, count=count, offset=offset)
    return flat.view(*shape)


def decode_jpeg_cuda(datas: Sequence[bytes | torch.Tensor], device: str | torch.device = "cuda") -> list[torch.Tensor]:
    """Batched nvJPEG decode to RGB uint8 ``[H, W, 3]`` tensors on ``device`` (needs torchvision and CUDA).

    Raises RuntimeError when torchvision is not importable; callers fall back to CPU decode.
    """
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except Exception as exc:  # torchvision missing or ABI-incompatible with this torch
        raise RuntimeError("GPU JPEG decode needs torchvision") from exc
    encoded = [
        d if isinstance(d, torch.Tensor) else torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas
    ]
    images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    return [img.permute(1, 2, 0) for img in images]
