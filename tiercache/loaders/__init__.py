"""PyTorch data loading over tiercache: a drop-in threaded DataLoader, datasets, fast decode, fused augmentation.

Typical use (a mount or a local directory; an ``s3://`` or ``file://`` URL uses library mode, no FUSE)::

    from tiercache.loaders import Augment, DataLoader, ImageFolder

    ds = ImageFolder("/mnt/data/train", augment=Augment(224))          # decoded, cropped, normalized on CPU
    loader = DataLoader(ds, batch_size=64, shuffle=True, num_workers=4, generator=torch.Generator().manual_seed(0))
    for images, targets in loader: ...

This package imports torch; ``import tiercache`` alone does not.
"""

from __future__ import annotations

from .augment import IMAGENET_MEAN, IMAGENET_STD, Augment
from .dataloader import DataLoader
from .datasets import ArrayDataset, ImageFolder
from .plans import PlanSender, plan_sender
from .workers import current_epoch, output_slot, stage_timer, worker_id

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ArrayDataset",
    "Augment",
    "DataLoader",
    "ImageFolder",
    "PlanSender",
    "current_epoch",
    "output_slot",
    "plan_sender",
    "stage_timer",
    "worker_id",
]
