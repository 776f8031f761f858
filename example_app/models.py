"""The two model families of the example: an MLP and a small CNN, both for 8x8 images in 10 classes."""

from __future__ import annotations

import torch
from torch import nn

N_PIXELS = 64
N_CLASSES = 10


class MLP(nn.Module):
    def __init__(self, hidden: int = 128, layers: int = 2):
        super().__init__()
        blocks: list[nn.Module] = []
        width = N_PIXELS
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        blocks.append(nn.Linear(width, N_CLASSES))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.view(len(x), N_PIXELS))


class CNN(nn.Module):
    def __init__(self, channels: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4 -> 2x2
        )
        self.head = nn.Linear(2 * channels * 4, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x.view(len(x), 1, 8, 8))
        return self.head(features.flatten(1))


class ResNet(nn.Module):
    """A small residual network: a stem, `blocks` residual blocks of two convolutions each, a linear head. The
    example's GPU model (conf/model/resnet.yaml asks a GPU for it); it trains on a CPU too, more slowly."""

    def __init__(self, channels: int = 32, blocks: int = 2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
                          nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels))
            for _ in range(blocks))
        self.head = nn.Linear(channels, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x.view(len(x), 1, 8, 8))
        for block in self.blocks:
            h = torch.relu(h + block(h))
        return self.head(h.mean((2, 3)))
