"""Decode (JPEG/PNG/raw, DCT scaling) and the augmentation spec (torchvision's parameter rules, kernel math)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from tiercache.loaders import IMAGENET_STD, Augment, DataLoader
from tiercache.loaders.augment import sample_seed
from tiercache.loaders.decode import (
    dct_scale,
    decode_image,
    decode_jpeg,
    decode_raw,
    image_size,
    is_jpeg,
    is_png,
)

pytestmark = pytest.mark.timeout(60)


def smooth_image(h: int, w: int, seed: int = 0, period: float = 8.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([np.sin(x / period) * 80 + 128, np.cos(y / period) * 80 + 128, (x + y) / (w + h) * 255], -1)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def encode(arr: np.ndarray, fmt: str = "JPEG", mode: str | None = None, **kw) -> bytes:
    im = Image.fromarray(arr)
    if mode:
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------------
# Decode.


def test_jpeg_decode_matches_pillow():
    arr = smooth_image(75, 101)
    data = encode(arr, quality=95)
    assert is_jpeg(data) and not is_png(data)
    got = decode_image(data)
    ref = torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB")))
    assert got.dtype == torch.uint8 and got.shape == (75, 101, 3)
    assert (got.int() - ref.int()).abs().float().mean() < 1.0
    assert (got.int() - torch.from_numpy(arr).int()).abs().float().mean() < 6.0


def test_png_decode_is_exact_and_gray_becomes_rgb():
    arr = smooth_image(40, 30)
    data = encode(arr, "PNG")
    assert is_png(data)
    assert torch.equal(decode_image(data), torch.from_numpy(arr))
    gray = decode_image(encode(arr, "PNG", mode="L"))
    assert gray.shape == (40, 30, 3) and torch.equal(gray[..., 0], gray[..., 2])


def test_gray_and_cmyk_jpegs_decode_to_rgb():
    arr = smooth_image(32, 48)
    gray = decode_image(encode(arr, mode="L"))
    assert gray.shape == (32, 48, 3) and torch.equal(gray[..., 0], gray[..., 1])
    cmyk = decode_image(encode(arr, mode="CMYK"))
    assert cmyk.shape == (32, 48, 3)
    ref = np.asarray(Image.open(io.BytesIO(encode(arr, mode="CMYK"))).convert("RGB")).astype(int)
    assert np.abs(cmyk.numpy().astype(int) - ref).max() <= 2


def test_image_size_from_headers():
    arr = smooth_image(33, 57)
    assert image_size(encode(arr)) == (33, 57)
    assert image_size(encode(arr, "PNG")) == (33, 57)
    assert image_size(encode(arr, "BMP")) == (33, 57)


def test_reduced_scale_decode_sizes_and_content():
    arr = smooth_image(403, 517, period=40.0)
    data = encode(arr, quality=95)
    full = decode_jpeg(data)
    for d in (2, 4, 8):
        small = decode_jpeg(data, scale=d)
        assert small.shape == (math.ceil(403 / d), math.ceil(517 / d), 3)
        ref = torch.nn.functional.interpolate(
            torch.from_numpy(full).permute(2, 0, 1)[None].float(), size=small.shape[:2], mode="area"
        )[0].permute(1, 2, 0)
        assert (ref - torch.from_numpy(small).float()).abs().mean() < 3.0


def test_dct_scale_keeps_the_crop_at_least_output_size():
    assert dct_scale(224, 224, 224, 224) == 1
    assert dct_scale(447, 900, 224, 224) == 1
    assert dct_scale(448, 448, 224, 224) == 2
    assert dct_scale(900, 1000, 224, 224) == 4
    assert dct_scale(4000, 4000, 224, 224) == 8
    for bh, bw in [(300, 300), (500, 1200), (1800, 1799), (3000, 2000)]:
        d = dct_scale(bh, bw, 224, 224)
        assert bh // d >= 224 and bw // d >= 224
        assert d == 8 or bh // (2 * d) < 224 or bw // (2 * d) < 224


def test_decode_raw_is_zero_copy():
    buf = bytearray(range(256)) * 4
    t = decode_raw(buf, (4, 8, 8), offset=256)
    assert t.shape == (4, 8, 8) and t.dtype == torch.uint8
    assert t[0, 0, 0].item() == 0 and t.flatten()[5].item() == 5
    buf[256] = 99
    assert t[0, 0, 0].item() == 99, "the tensor must share the buffer's memory"
    f = decode_raw(bytes(16), (2, 2), dtype=torch.float32)
    assert f.shape == (2, 2) and f.sum().item() == 0


# ----------------------------------------------------------------------------------------------------------
# Augment parameters: torchvision's algorithm, per-sample RNG.


def torchvision_rrc_get_params(height, width, scale, ratio):
    """torchvision.transforms.RandomResizedCrop.get_params (v0.2x), verbatim apart from the signature."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,)).item()
            j = torch.randint(0, width - w + 1, size=(1,)).item()
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w = width
        h = height
    i = (height - h) // 2
    j = (width - w) // 2
    return i, j, h, w


@pytest.mark.parametrize(
    "h,w,scale,ratio",
    [
        (375, 500, (0.08, 1.0), (3 / 4, 4 / 3)),
        (500, 333, (0.5, 1.0), (3 / 4, 4 / 3)),
        (10, 1000, (0.9, 1.0), (1.0, 1.0)),  # no try fits: center-crop fallback, wide
        (1000, 10, (0.9, 1.0), (1.0, 1.0)),  # and tall
        (64, 64, (2.0, 3.0), (1.0, 1.0)),  # fallback with the ratio inside the range
    ],
)
def test_params_follow_torchvision_with_the_sample_seed(h, w, scale, ratio):
    aug = Augment(224, scale=scale, ratio=ratio, flip_p=0.5, seed=42)
    state = torch.get_rng_state()
    try:
        for epoch, index in [(0, 0), (0, 1), (3, 17), (1, 123456)]:
            box, flip = aug.params(epoch, index, h, w)
            torch.manual_seed(sample_seed(42, epoch, index))
            assert box == torchvision_rrc_get_params(h, w, scale, ratio)
            assert flip == bool(torch.rand(1) < 0.5)
            top, left, bh, bw = box
            assert top >= 0 and left >= 0 and top + bh <= h and left + bw <= w and bh > 0 and bw > 0
    finally:
        torch.set_rng_state(state)


def test_params_depend_on_seed_epoch_and_index_only():
    aug = Augment(224, seed=1)
    a = [aug.params(0, i, 375, 500) for i in range(50)]
    assert a == [aug.params(0, i, 375, 500) for i in range(50)]
    assert a != [aug.params(1, i, 375, 500) for i in range(50)]
    assert a != [Augment(224, seed=2).params(0, i, 375, 500) for i in range(50)]
    flips = [f for _, f in a]
    assert 10 < sum(flips) < 40
    assert [f for _, f in (Augment(224, flip_p=0.0).params(0, i, 9, 9) for i in range(20))] == [False] * 20


def test_params_batch_shapes():
    aug = Augment((128, 96))
    boxes, flips = aug.params_batch(2, [5, 9, 1], [(300, 400), (50, 60), (128, 96)])
    assert boxes.shape == (3, 4) and boxes.dtype == torch.int64
    assert flips.shape == (3,) and flips.dtype == torch.bool
    assert tuple(boxes[1].tolist()) == aug.params(2, 9, 50, 60)[0]


def test_invalid_spec_is_rejected():
    with pytest.raises(ValueError):
        Augment(224, scale=(1.0, 0.5))
    with pytest.raises(ValueError):
        Augment(224, mean=(0.5,), std=(0.5, 0.5))


# ----------------------------------------------------------------------------------------------------------
# Augment pixels: equal to the kernels' reference.


@pytest.fixture
def kernels():
    return pytest.importorskip("tiercache.kernels", reason="tiercache.kernels (fused_augment) not available")



ONE_GREY_LEVEL = 1 / 255 / min(IMAGENET_STD)  # in normalized units


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("exact", [True, False])
def test_apply_equals_fused_reference(kernels, flip, dtype, exact):
    img = torch.from_numpy(smooth_image(97, 131, seed=3))
    aug = Augment((40, 56), dtype=dtype, cpu_exact=exact)
    box = (5, 11, 70, 90)
    got = aug.apply(img, box, flip)
    ref = kernels.fused_augment_reference(
        [img], torch.tensor([box]), torch.tensor([flip]), out_size=(40, 56), out_dtype=dtype
    )[0]
    assert got.shape == (3, 40, 56) and got.dtype == dtype and got.is_contiguous()
    if dtype == torch.bfloat16:
        tol = 2e-2 + (0 if exact else ONE_GREY_LEVEL)
    else:
        tol = 1e-5 if exact else ONE_GREY_LEVEL * 1.01
    assert (got.float() - ref.float()).abs().max() <= tol
    if not exact:
        assert not torch.equal(got, aug.apply(img, box, not flip))


def test_apply_batch_cpu_and_kernel_agree(kernels):
    imgs = [torch.from_numpy(smooth_image(h, w, seed=h)) for h, w in [(50, 70), (64, 64), (90, 45)]]
    aug = Augment(32, channels_last=True, cpu_exact=True)
    boxes, flips = aug.params_batch(0, [0, 1, 2], [im.shape[:2] for im in imgs])
    got = aug.apply_batch(imgs, boxes, flips)
    assert got.shape == (3, 3, 32, 32) and got.is_contiguous(memory_format=torch.channels_last)
    ref = kernels.fused_augment(imgs, boxes, flips, out_size=(32, 32), out_dtype=torch.float32)
    assert torch.allclose(got, ref, atol=1e-5)
    packed = kernels.pack_images(imgs)
    assert torch.allclose(aug.apply_batch(packed, boxes, flips), ref, atol=1e-5)


class RaggedImages(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 12

    def __getitem__(self, i):
        return torch.from_numpy(smooth_image(40 + 3 * i, 70 - 2 * i, seed=i)), i


@pytest.mark.parametrize("num_workers", [0, 2, 4])
def test_gpu_augment_on_cpu_is_deterministic_across_threads(num_workers):
    aug = Augment(24, seed=5)

    def run(nw):
        loader = DataLoader(RaggedImages(), batch_size=5, shuffle=True, num_workers=nw,
                            generator=torch.Generator().manual_seed(0), gpu_augment=aug)
        return [list(loader) for _ in range(2)]

    got, ref = run(num_workers), run(0)
    for ep_got, ep_ref in zip(got, ref, strict=True):
        for (x, y), (rx, ry) in zip(ep_got, ep_ref, strict=True):
            assert x.shape[1:] == (3, 24, 24) and torch.equal(x, rx) and torch.equal(y, ry)
    # batch content = the per-sample spec applied by hand, epoch by epoch
    ds = RaggedImages()
    for epoch, batches in enumerate(got):
        for x, y in batches:
            for row, idx in zip(x, y.tolist(), strict=True):
                img = ds[idx][0]
                box, flip = aug.params(epoch, idx, img.shape[0], img.shape[1])
                assert torch.allclose(row, aug.apply(img, box, flip), atol=1e-6)
    assert not torch.equal(got[0][0][0], got[1][0][0])


def test_gpu_augment_decodes_encoded_samples_on_cpu():
    class Encoded(RaggedImages):
        def __getitem__(self, i):
            img, t = super().__getitem__(i)
            return torch.frombuffer(bytearray(encode(img.numpy(), "PNG")), dtype=torch.uint8), t

    aug = Augment(16)
    enc = list(DataLoader(Encoded(), batch_size=4, gpu_augment=aug, num_workers=2))
    dec = list(DataLoader(RaggedImages(), batch_size=4, gpu_augment=aug, num_workers=2))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(enc, dec, strict=True))
