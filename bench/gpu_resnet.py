"""A compact ResNet-50 (torchvision's architecture: bottleneck blocks, stride on the 3x3 conv, "ResNet v1.5").

Used by ``bench/gpu_e2e.py`` when torchvision is not importable (PyPI's torchvision often does not import with
a torch of another build). :func:`resnet50` is torchvision's model when it imports, else this one, with the
same layers, shapes and parameter count (25,557,032 for 1000 classes). :func:`tiny_resnet` is a few-kFLOP
stand-in of the same shape of code for dry runs on a CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 (x4 channels), batch norm after each, projection shortcut when shapes change."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1):
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Stem (7x7/2 conv, 3x3/2 max pool), four stages of bottleneck blocks, global average pool, linear head."""

    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3), num_classes: int = 1000, base_width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, base_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages, in_ch = [], base_width
        for i, blocks in enumerate(layers):
            width = base_width * 2**i
            stage = []
            for b in range(blocks):
                stage.append(Bottleneck(in_ch, width, stride=2 if (b == 0 and i > 0) else 1))
                in_ch = width * Bottleneck.expansion
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():  # zero-init the last BN of each block, as torchvision's zero_init_residual
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50(num_classes: int = 1000) -> tuple[nn.Module, str]:
    """(ResNet-50, where it came from): torchvision's when it imports, else this module's."""
    try:
        from torchvision.models import resnet50 as tv_resnet50

        return tv_resnet50(num_classes=num_classes), "torchvision.models.resnet50"
    except Exception:  # torchvision missing or built for another torch
        return ResNet((3, 4, 6, 3), num_classes), "bench/gpu_resnet.py ResNet-50"


def tiny_resnet(num_classes: int = 10) -> tuple[nn.Module, str]:
    """A one-block-per-stage, 8-wide ResNet for CPU dry runs (same code path, a few MFLOPs)."""
    return ResNet((1, 1, 1, 1), num_classes, base_width=8), "bench/gpu_resnet.py tiny ResNet (dry run)"
