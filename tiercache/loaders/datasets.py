"""Datasets over a tiercache mount, a local directory or an object store URL (library mode, no FUSE).

:class:`ImageFolder` finds classes and samples with torchvision's rules (sorted class directories, files from
``os.walk(followlinks=True)`` sorted per directory, the same extension filter), so ``classes``,
``class_to_idx``, ``samples`` and ``targets`` equal torchvision's for the same tree. A sample is decoded to a
uint8 ``[H, W, 3]`` tensor, or, with ``augment=``, cropped/resized/flipped/normalized to ``[C, H, W]`` right
after a reduced-scale JPEG decode. :class:`ArrayDataset` serves fixed-size raw records without copying.

Files are read through :mod:`.sources` (local paths or a TieredCache). Both report their read/decode/augment
time to the tiercache DataLoader via :func:`~tiercache.loaders.dataloader.stage_timer`.
"""

from __future__ import annotations

import bisect
import io
import math
import mmap
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from .augment import Augment
from .decode import dct_scale, decode_image, decode_raw, image_size
from .sources import CacheFS, LocalFS, open_source
from .workers import current_epoch, output_slot, stage_timer

__all__ = ["IMG_EXTENSIONS", "ArrayDataset", "ImageFolder", "find_classes", "make_dataset", "synthetic_jpegs"]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


# ----------------------------------------------------------------------------------------------------------
# torchvision's discovery rules.


def has_file_allowed_extension(filename: str, extensions: str | tuple[str, ...]) -> bool:
    """torchvision's case-insensitive extension test."""
    return filename.lower().endswith(extensions if isinstance(extensions, str) else tuple(extensions))


def find_classes(directory: str, fs: Any = None) -> tuple[list[str], dict[str, int]]:
    """Sorted class directory names and their indices, as torchvision's ``find_classes``."""
    fs = fs or LocalFS()
    classes = sorted(fs.list_dirs(directory))
    if not classes:
        raise FileNotFoundError(f"Couldn't find any class folder in {directory}.")
    return classes, {name: i for i, name in enumerate(classes)}


def make_dataset(
    directory: str,
    class_to_idx: dict[str, int],
    extensions: str | tuple[str, ...] | None = None,
    is_valid_file: Callable[[str], bool] | None = None,
    allow_empty: bool = False,
    fs: Any = None,
) -> list[tuple[str, int]]:
    """(path, class index) pairs in torchvision's ``make_dataset`` order, with its errors."""
    fs = fs or LocalFS()
    if (extensions is None) == (is_valid_file is None):
        raise ValueError("Both extensions and is_valid_file cannot be None or not None at the same time")
    if extensions is not None:
        exts = extensions

        def is_valid_file(x: str) -> bool:
            return has_file_allowed_extension(x, exts)

    instances: list[tuple[str, int]] = []
    available: set[str] = set()
    for target_class in sorted(class_to_idx):
        class_index = class_to_idx[target_class]
        target_dir = fs.join(directory, target_class)
        if not fs.isdir(target_dir):
            continue
        for root, _, fnames in sorted(fs.walk(target_dir)):
            for fname in sorted(fnames):
                path = fs.join(root, fname)
                if is_valid_file(path):
                    instances.append((path, class_index))
                    available.add(target_class)
    empty = set(class_to_idx) - available
    if empty and not allow_empty:
        msg = f"Found no valid file for the classes {', '.join(sorted(empty))}. "
        if extensions is not None:
            msg += f"Supported extensions are: {extensions if isinstance(extensions, str) else ', '.join(extensions)}"
        raise FileNotFoundError(msg)
    return instances


# ----------------------------------------------------------------------------------------------------------


class ImageFolder(Dataset):
    """torchvision-compatible ImageFolder over a local/mount path or an ``s3://`` / ``file://`` URL.

    Args (torchvision's first): ``root``, ``transform`` (applied to the sample), ``target_transform``,
    ``loader`` (called with the path, or with a file object holding the bytes in library mode; replaces the
    built-in decode), ``is_valid_file``, ``allow_empty``. Then:

    * ``decode``: ``"cpu"`` (default) -> uint8 ``[H, W, 3]`` tensor; ``"none"`` -> the encoded bytes as a 1-D
      uint8 tensor (the DataLoader's ``gpu_augment`` decodes those with nvJPEG on a GPU); ``"pil"`` -> an RGB
      PIL image like torchvision's default loader.
    * ``augment``: an :class:`Augment`; the sample becomes the augmented ``[C, H, W]`` tensor, with parameters
      from (augment.seed, epoch, index) and a reduced-scale JPEG decode when the crop allows it
      (``dct_scaling``). The epoch comes from the tiercache DataLoader, or from :meth:`set_epoch`.
    * ``cache``: an open ``TieredCache``; ``root`` is then a path inside it. Without it a URL root opens one
      with ``tiercache.open(root, endpoint_url=..., **cache_options)``, closed by :meth:`close`.

    In library mode ``samples`` hold keys relative to the cache's source (``"cat/001.jpg"``) and ``cache`` is
    the TieredCache, which is how the DataLoader finds where to send plans.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[Any], Any] | None = None,
        loader: Callable[[Any], Any] | None = None,
        is_valid_file: Callable[[str], bool] | None = None,
        allow_empty: bool = False,
        *,
        decode: Literal["cpu", "none", "pil"] = "cpu",
        augment: Augment | None = None,
        dct_scaling: bool = True,
        cache: Any = None,
        endpoint_url: str | None = None,
        cache_options: dict[str, Any] | None = None,
    ) -> None:
        if decode not in ("cpu", "none", "pil"):
            raise ValueError(f"decode must be 'cpu', 'none' or 'pil', got {decode!r}")
        if augment is not None and decode != "cpu":
            raise ValueError("augment= needs decode='cpu'")
        self.root = os.fspath(root)
        self.transform = transform
        self.target_transform = target_transform
        self.loader = loader
        self.decode = decode
        self.augment = augment
        self.dct_scaling = dct_scaling
        self.epoch = 0
        self._fs, self.cache, top, self._owns_cache = open_source(self.root, cache, endpoint_url, cache_options)
        try:
            self.classes, self.class_to_idx = find_classes(top, self._fs)
            extensions = IMG_EXTENSIONS if is_valid_file is None else None
            self.samples = make_dataset(top, self.class_to_idx, extensions, is_valid_file, allow_empty, self._fs)
        except BaseException:
            self.close()
            raise
        self.extensions = extensions
        self.imgs = self.samples
        self.targets = [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def path_of(self, index: int) -> str:
        """The file of sample ``index`` (a local path, or a key relative to the cache in library mode)."""
        return self.samples[index][0]

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for augmentation parameters when not loaded by a tiercache DataLoader."""
        self.epoch = int(epoch)

    def read(self, index: int) -> bytes:
        """The encoded bytes of sample ``index``."""
        with stage_timer("read"):
            return self._fs.read(self.samples[index][0])

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        path, target = self.samples[index]
        if self.loader is not None:
            with stage_timer("decode"):
                sample = self.loader(path if self.cache is None else io.BytesIO(self._fs.read(path)))
        else:
            sample = self._load(self.read(index), index)
        if self.transform is not None:
            sample = self.transform(sample)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return sample, target

    def _load(self, data: bytes, index: int) -> Any:
        if self.decode == "none":
            return torch.frombuffer(bytearray(data), dtype=torch.uint8)
        if self.decode == "pil":
            from PIL import Image

            with stage_timer("decode"), Image.open(io.BytesIO(data)) as im:
                return im.convert("RGB")
        if self.augment is None:
            with stage_timer("decode"):
                return decode_image(data)
        aug = self.augment
        with stage_timer("augment"):
            epoch = current_epoch()
            h, w = image_size(data)
            box, flip = aug.params(self.epoch if epoch is None else epoch, index, h, w)
        out_h, out_w = aug.out_size
        scale = dct_scale(box[2], box[3], out_h, out_w) if self.dct_scaling else 1
        with stage_timer("decode"):
            image = decode_image(data, scale=scale)
        with stage_timer("augment"):
            if image.shape[0] != h or image.shape[1] != w:
                box = _scale_box(box, h, w, image.shape[0], image.shape[1])
            out = output_slot((image.shape[2], out_h, out_w), aug.dtype) if self.transform is None else None
            return aug.apply(image, box, flip, out=out)

    def close(self) -> None:
        """Close the TieredCache this dataset opened itself (not one passed in)."""
        if self._owns_cache and self.cache is not None:
            self.cache.close()
            self._owns_cache = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={self.root!r}, samples={len(self.samples)}, classes={len(self.classes)})"


def _scale_box(box: tuple[int, int, int, int], h: int, w: int, dh: int, dw: int) -> tuple[int, int, int, int]:
    """Map a crop box from an ``h x w`` image onto its ``dh x dw`` reduced-scale decode."""
    top, left, bh, bw = box
    t, left2 = int(top * dh / h), int(left * dw / w)
    nh = max(1, min(dh - t, round(bh * dh / h)))
    nw = max(1, min(dw - left2, round(bw * dw / w)))
    return t, left2, nh, nw


class ArrayDataset(Dataset):
    """Fixed-size raw records (uint8 by default) in one or many files, served as zero-copy tensors.

    Record ``i`` is ``record_shape`` elements of ``dtype`` at ``header_bytes + k * record_bytes`` of the file
    holding it (files in the given order, each holding ``(size - header_bytes) // record_bytes`` records).
    Local files (a mount included) are memory-mapped copy-on-write, so a sample is a view of the page cache
    that may be written without touching the file; ``s3://``/``file://`` URLs or ``cache=`` read each record
    with one ranged ``cache.read``. ``labels`` makes samples ``(record, label)``.
    """

    def __init__(
        self,
        files: str | Sequence[str],
        record_shape: Sequence[int],
        dtype: torch.dtype = torch.uint8,
        *,
        labels: Sequence[int] | torch.Tensor | None = None,
        header_bytes: int = 0,
        transform: Callable[[torch.Tensor], Any] | None = None,
        cache: Any = None,
        endpoint_url: str | None = None,
        cache_options: dict[str, Any] | None = None,
    ) -> None:
        self.files = [files] if isinstance(files, str) else [os.fspath(f) for f in files]
        if not self.files:
            raise ValueError("ArrayDataset needs at least one file")
        self.record_shape = tuple(int(d) for d in record_shape)
        self.dtype = dtype
        self.record_bytes = math.prod(self.record_shape) * torch.empty((), dtype=dtype).element_size()
        if self.record_bytes <= 0:
            raise ValueError(f"record_shape {record_shape} is empty")
        self.header_bytes = header_bytes
        self.transform = transform
        first = self.files[0]
        if cache is None and "://" in first:
            prefix = os.path.commonprefix(self.files)
            base = prefix[: prefix.rfind("/")]
            self._fs, self.cache, _, self._owns_cache = open_source(base, None, endpoint_url, cache_options)
            self._keys = [f[len(base) :].lstrip("/") for f in self.files]
        elif cache is not None:
            self._fs, self.cache, self._owns_cache = CacheFS(cache), cache, False
            self._keys = list(self.files)
        else:
            self._fs, self.cache, self._owns_cache = LocalFS(), None, False
            self._keys = list(self.files)
        counts = [max(0, (self._fs.size(k) - header_bytes) // self.record_bytes) for k in self._keys]
        self._starts = [0]
        for c in counts:
            self._starts.append(self._starts[-1] + c)
        self.labels = None if labels is None else torch.as_tensor(labels)
        if self.labels is not None and len(self.labels) != len(self):
            raise ValueError(f"{len(self.labels)} labels for {len(self)} records")
        self._maps: list[mmap.mmap | None] = [None] * len(self._keys)

    def __len__(self) -> int:
        return self._starts[-1]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_maps"] = [None] * len(self._keys)  # mappings are per process
        return state

    def _locate(self, index: int) -> tuple[int, int]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} out of range for {len(self)} records")
        f = bisect.bisect_right(self._starts, index) - 1
        return f, self.header_bytes + (index - self._starts[f]) * self.record_bytes

    def _map(self, f: int) -> mmap.mmap | None:
        m = self._maps[f]
        if m is None and self.cache is None:
            try:
                with open(self._keys[f], "rb", buffering=0) as fh:
                    m = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
            except (OSError, ValueError):  # e.g. a FUSE mount with direct_io: fall back to reads
                return None
            self._maps[f] = m
        return m

    def record(self, index: int) -> torch.Tensor:
        """Record ``index`` as a tensor of ``record_shape`` (a view of the mapped file when local)."""
        f, offset = self._locate(index)
        with stage_timer("read"):
            m = self._map(f)
            if m is not None:
                return decode_raw(m, self.record_shape, self.dtype, offset)
            data = self._fs.read(self._keys[f], offset, self.record_bytes)
        return decode_raw(data, self.record_shape, self.dtype)

    def __getitem__(self, index: int) -> Any:
        sample = self.record(index)
        if self.transform is not None:
            sample = self.transform(sample)
        if self.labels is not None:
            return sample, int(self.labels[index])
        return sample

    def close(self) -> None:
        """Close the TieredCache this dataset opened itself."""
        if self._owns_cache and self.cache is not None:
            self.cache.close()
            self._owns_cache = False


def synthetic_jpegs(
    count: int, classes: int = 10, size: tuple[int, int] = (375, 500), seed: int = 0, quality: int = 90
) -> Iterator[tuple[str, bytes]]:
    """``count`` JPEGs in an ImageFolder layout, as ("classNN/NNNNN.jpg", bytes) pairs, for demos and benches.

    Sizes vary by up to +-20% around ``size`` (height, width), a third of them portrait. Each class has its
    own dominant colour and stripe orientation, with per-image texture and noise, so a small CNN can learn
    the classes and the files compress (and decode) like photos rather than flat colour.
    """
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    base_h, base_w = size
    for i in range(count):
        label = i % classes
        h = int(base_h * rng.uniform(0.8, 1.2))
        w = int(base_w * rng.uniform(0.8, 1.2))
        if rng.random() < 1 / 3:
            h, w = w, h
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        angle = math.pi * label / classes
        stripes = np.sin((x * math.cos(angle) + y * math.sin(angle)) / rng.uniform(6, 14) + rng.uniform(0, 6.3))
        hue = np.array([math.cos(2 * math.pi * label / classes + k * 2.1) for k in range(3)], dtype=np.float32)
        img = 128 + 60 * hue * stripes[..., None] + rng.normal(0, 12, (h, w, 3)).astype(np.float32)
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
        yield f"class{label:02d}/{i:05d}.jpg", buf.getvalue()
