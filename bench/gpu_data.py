"""Data for the end-to-end GPU bench: generated JPEGs on disk, and the torch-DataLoader baseline's dataset.

:func:`make_jpegs` writes ImageNet-like JPEGs (``tiercache.loaders.datasets.synthetic_jpegs``) into an
ImageFolder tree, in parallel processes, once per (count, size). :class:`BaselineFolder` is what a stock
torch training script feeds its DataLoader: torchvision's ``ImageFolder`` + ``RandomResizedCrop`` +
``RandomHorizontalFlip`` + ``ToTensor`` + ``Normalize`` when torchvision imports, else the same steps written
with Pillow (torchvision's default loader and resize) and plain torch ops.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from PIL import Image

from tiercache.loaders.augment import IMAGENET_MEAN, IMAGENET_STD
from tiercache.loaders.datasets import synthetic_jpegs

_CHUNK = 256


def _write_chunk(root: str, chunk: int, count: int, size: tuple[int, int], classes: int) -> int:
    written = 0
    for rel, data in synthetic_jpegs(count, classes=classes, size=size, seed=chunk):
        cls, name = rel.split("/")
        path = os.path.join(root, cls, f"{chunk:04d}-{name}")
        with open(path, "wb") as f:
            f.write(data)
        written += len(data)
    return written


def make_jpegs(root: str, count: int, size: tuple[int, int] = (375, 500), classes: int = 10,
               processes: int | None = None) -> dict:
    """``count`` JPEGs of about ``size`` (height, width) in ``classes`` folders under ``root``; reused when
    a previous call with the same arguments completed. Returns {"root", "images", "bytes"}."""
    marker = f"{root.rstrip(os.sep)}.complete-{count}-{size[0]}x{size[1]}-{classes}"  # beside root, not in it
    if os.path.exists(marker):
        with open(marker) as f:
            return {"root": root, "images": count, "bytes": int(f.read() or 0)}
    for c in range(classes):
        os.makedirs(os.path.join(root, f"class{c:02d}"), exist_ok=True)
    chunks = [(i, min(_CHUNK, count - i * _CHUNK)) for i in range(math.ceil(count / _CHUNK))]
    workers = max(1, min(processes or os.cpu_count() or 1, len(chunks)))
    if workers == 1:
        total = sum(_write_chunk(root, i, n, size, classes) for i, n in chunks)
    else:
        with ProcessPoolExecutor(workers) as ex:
            total = sum(ex.map(_write_chunk, *zip(*[(root, i, n, size, classes) for i, n in chunks], strict=True)))
    with open(marker, "w") as f:
        f.write(str(total))
    return {"root": root, "images": count, "bytes": total}


def torchvision_transforms(out_size: int):
    """torchvision's standard ImageNet training transform, or None when torchvision does not import."""
    try:
        from torchvision import transforms as T
    except Exception:  # missing, or built for another torch
        return None
    return T.Compose([T.RandomResizedCrop(out_size), T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def rrc_params(height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params on the global RNG (torch seeds it per worker process)."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
        w, h = int(round(math.sqrt(target_area * aspect))), int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return (int(torch.randint(0, height - h + 1, (1,))), int(torch.randint(0, width - w + 1, (1,))), h, w)
    side = min(width, height)
    return (height - side) // 2, (width - side) // 2, side, side


class PlainTransforms:
    """RandomResizedCrop (Pillow bilinear, as torchvision on PIL images) -> flip -> ToTensor -> Normalize."""

    def __init__(self, out_size: int):
        self.out_size = out_size
        self.mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
        self.std = torch.tensor(IMAGENET_STD)[:, None, None]

    def __call__(self, img: Image.Image) -> torch.Tensor:
        top, left, h, w = rrc_params(img.height, img.width)
        img = img.resize((self.out_size, self.out_size), Image.BILINEAR, box=(left, top, left + w, top + h))
        if torch.rand(1) < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.array(img, np.uint8, copy=True)).permute(2, 0, 1).contiguous()
        return x.to(torch.float32).div_(255).sub_(self.mean).div_(self.std)


class BaselineFolder(torch.utils.data.Dataset):
    """ImageFolder over ``root`` with the standard training transform (see the module docstring)."""

    def __init__(self, root: str, out_size: int):
        classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        self.samples = [(os.path.join(root, c, f), i) for i, c in enumerate(classes)
                        for f in sorted(os.listdir(os.path.join(root, c))) if f.endswith(".jpg")]
        tv = torchvision_transforms(out_size)
        self.transform = tv or PlainTransforms(out_size)
        self.transforms_from = "torchvision.transforms" if tv is not None else "Pillow + plain torch ops"

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, target = self.samples[i]
        with open(path, "rb") as f:  # torchvision's pil_loader
            img = Image.open(f).convert("RGB")
        return self.transform(img), target
