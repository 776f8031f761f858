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
