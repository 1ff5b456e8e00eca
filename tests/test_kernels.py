"""Tests for tiercache.kernels: the fused Triton augmentation kernel and its torch reference.

Without a GPU the Triton kernel runs through Triton's interpreter on CPU tensors: an autouse fixture
sets ``TRITON_INTERPRET=1`` for every test here except ``TestCompiled``. That works whenever this
module is imported, because ``tiercache.kernels`` jits its kernel lazily, at the first launch in each
mode, reading ``TRITON_INTERPRET`` then (not at import). ``TestCompiled`` runs the compiled kernel on
CUDA tensors and is skipped without a GPU.

The oracle is float64: torch's own bilinear weights (taken from ``F.interpolate`` on one-hot inputs,
so they carry torch's float32 source coordinates exactly) applied to the crop in float64, then the flip
and ``(x / 255 - mean) / std`` in float64. ``test_oracle_is_torch_bilinear`` ties it to ``F.interpolate``.
"""

from __future__ import annotations

import functools
import importlib
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from tiercache.kernels import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PackedImages,
    fused_augment,
    fused_augment_reference,
    pack_images,
)

fa_module = importlib.import_module("tiercache.kernels.fused_augment")
pytest.importorskip("triton")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
GRAY = ((0.5,), (0.25,))


@pytest.fixture(autouse=True)
def _interpreter(request, monkeypatch):
    if request.cls is not TestCompiled:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


@functools.cache
def torch_weights(in_len: int, out_len: int) -> torch.Tensor:
    """[out_len, in_len] float64 matrix of the weights F.interpolate (float32, bilinear) uses along one axis."""
    eye = torch.eye(in_len, dtype=torch.float32)[:, None, :, None]
    weights = F.interpolate(eye, size=(out_len, 1), mode="bilinear", align_corners=False)[:, 0, :, 0]
    return weights.T.to(torch.float64)


def oracle(images, boxes, flips, out_size, mean, std) -> torch.Tensor:
    """Float64 [B, C, OH, OW]: crop, torch-bilinear resize, flip, normalise."""
    oh, ow = out_size
    results = []
    for img, (top, left, h, w), flip in zip(images, boxes.tolist(), flips.tolist(), strict=True):
        crop = img[top:top + h, left:left + w].cpu().to(torch.float64).permute(2, 0, 1)
        y = torch_weights(h, oh) @ crop @ torch_weights(w, ow).T
        if flip:
            y = y.flip(-1)
        m = torch.tensor(mean, dtype=torch.float64).expand(crop.shape[0])[:, None, None]
        s = torch.tensor(std, dtype=torch.float64).expand(crop.shape[0])[:, None, None]
        results.append((y / 255 - m) / s)
    return torch.stack(results)


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |a - b| / max(1, |b|)."""
    a = actual.detach().cpu().to(torch.float64)
    return ((a - expected).abs() / expected.abs().clamp_min(1.0)).max().item()


def make_batch(seed: int, n: int = 6, channels: int = 3, max_side: int = 40, device: str = "cpu"):
    """Random-sized images with crops of every kind: full, 1x1, at each border, random; mixed flips."""
    gen = torch.Generator().manual_seed(seed)

    def randint(lo: int, hi: int) -> int:  # inclusive
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    images, boxes = [], []
    for i in range(n):
        h, w = randint(1, max_side), randint(1, max_side)
        images.append(torch.randint(0, 256, (h, w, channels), dtype=torch.uint8, generator=gen).to(device))
        kind = i % 5
        if kind == 0:
            box = (0, 0, h, w)
        elif kind == 1:
            box = (randint(0, h - 1), randint(0, w - 1), 1, 1)
        elif kind == 2:  # touching the bottom-right corner
            bh, bw = randint(1, h), randint(1, w)
            box = (h - bh, w - bw, bh, bw)
        elif kind == 3:  # touching the top-left corner
            box = (0, 0, randint(1, h), randint(1, w))
        else:
            bh, bw = randint(1, h), randint(1, w)
            box = (randint(0, h - bh), randint(0, w - bw), bh, bw)
        boxes.append(box)
    flips = torch.tensor([bool(i % 2) ^ bool(randint(0, 1)) for i in range(n)])
    flips[:2] = torch.tensor([True, False])[:n]
    return images, torch.tensor(boxes, dtype=torch.int32), flips


def poisoned(shape, dtype, channels_last: bool, device: str = "cpu") -> torch.Tensor:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(shape, dtype=dtype, device=device, memory_format=fmt).fill_(float("nan"))


def norm_args(channels: int):
    return (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else GRAY


def check_against_oracle(fn, images, boxes, flips, out_size, channels, dtype, channels_last, device="cpu",
                         **kwargs):
    mean, std = norm_args(channels)
    out = poisoned((len(images), channels, *out_size), dtype, channels_last, device)
    result = fn(images, boxes, flips, out_size, mean, std, dtype, channels_last, out=out, **kwargs)
    assert result.data_ptr() == out.data_ptr()
    assert not torch.isnan(result).any(), "some output elements were not written"
    assert result.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    err = rel_err(result, oracle(images, boxes, flips, out_size, mean, std))
    assert err <= TOL[dtype], f"relative error {err:.3g} > {TOL[dtype]}"
    # Without out=: the layout asked for, same values.
    fresh = fn(images, boxes, flips, out_size, mean, std, dtype, channels_last, **kwargs)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert fresh.is_contiguous(memory_format=fmt) and fresh.dtype == dtype
    assert torch.equal(fresh, result)
    return result


triton_path = functools.partial(fused_augment, backend="triton")


class TestOracle:
    def test_oracle_is_torch_bilinear(self):
        images, boxes, flips = make_batch(0, n=10)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        want = oracle(images, boxes, flips, (17, 23), mean, std)
        m = torch.tensor(mean, dtype=torch.float64)[:, None, None]
        s = torch.tensor(std, dtype=torch.float64)[:, None, None]
        for i, (img, (top, left, h, w), flip) in enumerate(zip(images, boxes.tolist(), flips.tolist(),
                                                               strict=True)):
            crop = img[top:top + h, left:left + w].permute(2, 0, 1)[None]
            for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-4)):
                # float64 interpolate computes source coordinates in float64, torch's float32 path (and the
                # kernel) in float32: up to ~1e-5 px apart here, hence the looser bound for it.
                y = F.interpolate(crop.to(dtype), size=(17, 23), mode="bilinear", align_corners=False)[0]
                y = y.to(torch.float64).flip(-1) if flip else y.to(torch.float64)
                assert rel_err(want[i], (y / 255 - m) / s) <= tol


class TestTritonInterpreted:
    @pytest.mark.parametrize("channels", [1, 3])
    @pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    def test_matches_oracle(self, dtype, channels_last, channels):
        images, boxes, flips = make_batch(1 + channels, channels=channels)
        check_against_oracle(triton_path, images, boxes, flips, (17, 23), channels, dtype, channels_last)

    @pytest.mark.parametrize("out_size", [(1, 1), (3, 2), (45, 38), (64, 7)])
    def test_up_and_down_scales(self, out_size):
        gen = torch.Generator().manual_seed(5)
        images = [torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=gen)
                  for h, w in [(64, 64), (1, 1), (5, 60), (60, 5)]]
        boxes = torch.tensor([[0, 0, 64, 64], [0, 0, 1, 1], [0, 0, 5, 60], [7, 1, 50, 3]])
        flips = torch.tensor([True, False, True, True])
        check_against_oracle(triton_path, images, boxes, flips, out_size, 3, torch.float32, False)

    @pytest.mark.slow
    @pytest.mark.parametrize("backend", ["triton", "reference"])
    def test_imagenet_sized_downscale(self, backend):
        # Large source coordinates: float32 rounding of scale * (dst + 0.5) - 0.5 shows at ~1e-4 unless the
        # kernel computes it exactly as torch does (one FMA).
        gen = torch.Generator().manual_seed(6)
        images = [torch.randint(0, 256, (375, 500, 3), dtype=torch.uint8, generator=gen)]
        boxes, flips = torch.tensor([[0, 0, 375, 500]]), torch.tensor([True])
        check_against_oracle(functools.partial(fused_augment, backend=backend), images, boxes, flips,
                             (224, 224), 3, torch.float32, False)

    def test_flip_mirrors_the_resized_crop(self):
        images, boxes, _ = make_batch(7)
        n = len(images)
        plain = fused_augment(images, boxes, torch.zeros(n, dtype=torch.bool), (9, 13), backend="triton",
                              out_dtype=torch.float32)
        flipped = fused_augment(images, boxes, torch.ones(n, dtype=torch.bool), (9, 13), backend="triton",
                                out_dtype=torch.float32)
        assert torch.equal(flipped, plain.flip(-1))

    def test_matches_reference(self):
        images, boxes, flips = make_batch(8)
        got = fused_augment(images, boxes, flips, (19, 11), out_dtype=torch.float32, backend="triton")
        want = fused_augment_reference(images, boxes, flips, (19, 11), out_dtype=torch.float32)
        assert (got - want).abs().max().item() <= 1e-5


class TestReference:
    @pytest.mark.parametrize("channels", [1, 3])
    @pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    def test_matches_oracle(self, dtype, channels_last, channels):
        images, boxes, flips = make_batch(11 + channels, n=8, channels=channels)
        check_against_oracle(fused_augment_reference, images, boxes, flips, (17, 23), channels, dtype,
                             channels_last)

    def test_antialias_matches_torch(self):
        gen = torch.Generator().manual_seed(14)
        images = [torch.randint(0, 256, (40, 50, 3), dtype=torch.uint8, generator=gen) for _ in range(2)]
        boxes = torch.tensor([[0, 0, 40, 50], [5, 3, 30, 20]])
        flips = torch.tensor([False, True])
        got = fused_augment_reference(images, boxes, flips, (8, 9), out_dtype=torch.float32, antialias=True)
        m = torch.tensor(IMAGENET_MEAN, dtype=torch.float64)[:, None, None]
        s = torch.tensor(IMAGENET_STD, dtype=torch.float64)[:, None, None]
        for i, (top, left, h, w) in enumerate(boxes.tolist()):
            crop = images[i][top:top + h, left:left + w].permute(2, 0, 1)[None].to(torch.float32)
            y = F.interpolate(crop, size=(8, 9), mode="bilinear", align_corners=False, antialias=True)[0]
            y = y.to(torch.float64).flip(-1) if flips[i] else y.to(torch.float64)
            assert rel_err(got[i], (y / 255 - m) / s) <= 1e-5
        plain = fused_augment_reference(images, boxes, flips, (8, 9), out_dtype=torch.float32)
        assert (plain - got).abs().max() > 0.1  # a 5x downscale: antialiasing must change the result


class TestPacking:
    def test_pack_images_table_and_views(self):
        images, _, _ = make_batch(20, n=4)
        images[1] = images[1].transpose(0, 1)  # a non-contiguous view packs too
        packed = pack_images(images)
        assert len(packed) == 4 and packed.channels == 3 and packed.data.is_contiguous()
        offset = 0
        for i, img in enumerate(images):
            h, w, c = img.shape
            assert packed.meta[i].tolist() == [offset, h, w, c]
            assert torch.equal(packed.image(i), img)
            offset += h * w * c
        assert packed.data.numel() == offset

    @pytest.mark.parametrize("backend", ["triton", "reference"])
    def test_packed_equals_list(self, backend):
        images, boxes, flips = make_batch(21, n=5)
        from_list = fused_augment(images, boxes, flips, (12, 10), backend=backend)
        from_packed = fused_augment(pack_images(images), boxes, flips, (12, 10), backend=backend)
        assert torch.equal(from_list, from_packed)
        # Offsets are honoured: the same images at other places in a bigger buffer.
        packed = pack_images(images)
        meta = packed.meta.clone()
        meta[:, 0] = meta[:, 0] * 2 + 7
        data = torch.zeros(int(meta[-1, 0]) + images[-1].numel() + 3, dtype=torch.uint8)
        for i, img in enumerate(images):
            data[int(meta[i, 0]):int(meta[i, 0]) + img.numel()] = img.reshape(-1)
        shifted = fused_augment(PackedImages(data, meta), boxes, flips, (12, 10), backend=backend)
        assert torch.equal(from_list, shifted)


def _imgs(*shapes, dtype=torch.uint8):
    return [torch.zeros(s, dtype=dtype) for s in shapes]


_B1 = torch.tensor([[0, 0, 4, 4]])
_F1 = torch.tensor([False])
INVALID = {
    "negative top": (lambda: (_imgs((8, 8, 3)), torch.tensor([[-1, 0, 4, 4]]), _F1, {}), ValueError, "box 0"),
    "zero height": (lambda: (_imgs((8, 8, 3)), torch.tensor([[0, 0, 0, 4]]), _F1, {}), ValueError, "box 0"),
    "past the edge": (lambda: (_imgs((8, 8, 3)), torch.tensor([[0, 5, 4, 4]]), _F1, {}), ValueError,
                      "outside its 8x8"),
    "float images": (lambda: (_imgs((8, 8, 3), dtype=torch.float32), _B1, _F1, {}), TypeError, "uint8"),
    "float boxes": (lambda: (_imgs((8, 8, 3)), _B1.float(), _F1, {}), TypeError, "integer"),
    "int flips": (lambda: (_imgs((8, 8, 3)), _B1, torch.tensor([0]), {}), TypeError, "bool"),
    "boxes short": (lambda: (_imgs((8, 8, 3), (8, 8, 3)), _B1, torch.tensor([False, True]), {}), ValueError,
                    "must match"),
    "flips short": (lambda: (_imgs((8, 8, 3)), _B1, torch.tensor([False, True]), {}), ValueError, "must match"),
    "boxes shape": (lambda: (_imgs((8, 8, 3)), torch.tensor([[0, 0, 4]]), _F1, {}), ValueError, r"\[B, 4\]"),
    "out_size zero": (lambda: (_imgs((8, 8, 3)), _B1, _F1, {"out_size": (0, 4)}), ValueError, "positive"),
    "out_size triple": (lambda: (_imgs((8, 8, 3)), _B1, _F1, {"out_size": (4, 4, 4)}), ValueError, "pair"),
    "mean length": (lambda: (_imgs((8, 8, 3)), _B1, _F1, {"mean": (0.5, 0.5)}), ValueError, "3 channel"),
    "std for gray": (lambda: (_imgs((8, 8, 1)), _B1, _F1, {"mean": (0.5,)}), ValueError, "std has 3"),
    "zero std": (lambda: (_imgs((8, 8, 3)), _B1, _F1, {"std": (1.0, 0.0, 1.0)}), ValueError, "non-zero"),
    "two channels": (lambda: (_imgs((8, 8, 2)), _B1, _F1, {}), ValueError, "1 or 3"),
    "mixed channels": (lambda: (_imgs((8, 8, 3), (8, 8, 1)), _B1.repeat(2, 1), _F1.repeat(2), {}), ValueError,
                       "same channel count"),
    "not HWC": (lambda: (_imgs((8, 8)), _B1, _F1, {}), ValueError, "HWC"),
    "no images": (lambda: ([], torch.zeros(0, 4, dtype=torch.int64), torch.zeros(0, dtype=torch.bool), {}),
                  ValueError, "empty"),
    "single tensor": (lambda: (torch.zeros(1, 8, 8, 3, dtype=torch.uint8), _B1, _F1, {}), TypeError, "list"),
    "uint8 out": (lambda: (_imgs((8, 8, 3)), _B1, _F1, {"out_dtype": torch.uint8}), TypeError, "out_dtype"),
    "out shape": (lambda: (_imgs((8, 8, 3)), _B1, _F1, {"out": torch.empty(1, 3, 5, 5)}), ValueError, "shape"),
}


@pytest.mark.parametrize("fn", [triton_path, fused_augment_reference], ids=["triton", "reference"])
@pytest.mark.parametrize("case", INVALID, ids=list(INVALID))
def test_invalid_input_raises(case, fn):
    build, exc, match = INVALID[case]
    images, boxes, flips, kwargs = build()
    kwargs = {"out_size": (4, 4), "out_dtype": torch.float32, **kwargs}
    with pytest.raises(exc, match=match):
        fn(images, boxes, flips, **kwargs)


class TestBackends:
    def test_auto_uses_reference_on_cpu(self, monkeypatch):
        def boom(*args, **kwargs):
            raise AssertionError("Triton launched for CPU tensors")

        monkeypatch.setattr(fa_module, "launch_triton", boom)
        images, boxes, flips = make_batch(30, n=3)
        got = fused_augment(images, boxes, flips, (6, 7))
        assert torch.equal(got, fused_augment_reference(images, boxes, flips, (6, 7)))
        with pytest.raises(AssertionError, match="launched"):
            fused_augment(images, boxes, flips, (6, 7), backend="triton")

    def test_triton_on_cpu_without_interpreter_is_refused(self, monkeypatch):
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        images, boxes, flips = make_batch(31, n=2)
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            fused_augment(images, boxes, flips, (6, 7), backend="triton")

    def test_antialias(self):
        images, boxes, flips = make_batch(32, n=3)
        with pytest.raises(NotImplementedError, match="antialias"):
            fused_augment(images, boxes, flips, (6, 7), antialias=True, backend="triton")
        got = fused_augment(images, boxes, flips, (6, 7), antialias=True)
        assert torch.equal(got, fused_augment_reference(images, boxes, flips, (6, 7), antialias=True))

    def test_import_without_triton(self):
        code = (
            "import sys; sys.modules['triton'] = None\n"
            "import torch\n"
            "from tiercache.kernels import fused_augment, triton_available\n"
            "img = [torch.zeros(4, 4, 3, dtype=torch.uint8)]\n"
            "box, flip = torch.tensor([[0, 0, 4, 4]]), torch.tensor([False])\n"
            "assert not triton_available() and fused_augment(img, box, flip, (2, 2)).shape == (1, 3, 2, 2)\n"
            "try:\n"
            "    fused_augment(img, box, flip, (2, 2), backend='triton')\n"
            "except RuntimeError as e:\n"
            "    assert 'needs the triton package' in str(e)\n"
            "else:\n"
            "    raise AssertionError('no error')\n"
        )
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr

    def test_unknown_backend(self):
        images, boxes, flips = make_batch(33, n=2)
        with pytest.raises(ValueError, match="backend"):
            fused_augment(images, boxes, flips, (6, 7), backend="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
class TestCompiled:
    """The compiled kernel on CUDA tensors, at sizes the interpreter could not afford."""

    @pytest.fixture(autouse=True)
    def _compiled(self, monkeypatch):
        monkeypatch.setenv("TRITON_INTERPRET", "0")

    @pytest.mark.parametrize("vector_stores", [False, True], ids=["lane-per-pixel", "vector-stores"])
    @pytest.mark.parametrize("channels", [1, 3])
    @pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    def test_matches_oracle(self, dtype, channels_last, channels, vector_stores, monkeypatch):
        if vector_stores:
            launch = fa_module.launch_triton
            monkeypatch.setattr(fa_module, "launch_triton",
                                lambda plan, out: launch(plan, out, vector_stores=True))
        images, boxes, flips = make_batch(40 + channels, n=12, channels=channels, max_side=400, device="cuda")
        for out_size in [(224, 224), (37, 301)]:
            check_against_oracle(triton_path, images, boxes, flips, out_size, channels, dtype, channels_last,
                                 device="cuda")

    def test_auto_uses_triton_on_cuda(self, monkeypatch):
        calls = []
        launch = fa_module.launch_triton
        monkeypatch.setattr(fa_module, "launch_triton", lambda *a, **k: (calls.append(1), launch(*a, **k)))
        images, boxes, flips = make_batch(50, n=8, max_side=300, device="cuda")
        packed = pack_images(images)
        got = fused_augment(packed, boxes, flips, (64, 64), out_dtype=torch.float32)
        assert calls == [1]
        want = fused_augment_reference(packed, boxes, flips, (64, 64), out_dtype=torch.float32)
        assert (got - want).abs().max().item() <= 1e-5
