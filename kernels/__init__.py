"""Fused augmentation kernels for ragged uint8 image batches (installed as ``tiercache.kernels``).

``fused_augment`` runs one Triton kernel per batch on CUDA and falls back to ``fused_augment_reference``
(plain torch ops) elsewhere. Triton is optional: without it only the reference path is used.
"""

from .fused_augment import fused_augment, triton_available
from .reference import IMAGENET_MEAN, IMAGENET_STD, PackedImages, fused_augment_reference, pack_images

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PackedImages",
    "fused_augment",
    "fused_augment_reference",
    "pack_images",
    "triton_available",
]
