"""Pathology: a 30-layer plain CNN without normalisation or skip connections
(AL102 missing-normalization, AL103 missing-residual, AL104 poor-initialization).

Fixed version: resnet_bn.py.
"""

import torch.nn as nn


class PlainDeepCNN(nn.Module):
    def __init__(self, channels: int = 32, depth: int = 30, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.body = nn.Sequential(*[
            nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU())
            for _ in range(depth)
        ])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, classes)

    def forward(self, x):
        x = self.body(self.stem(x).relu())
        return self.head(self.pool(x).flatten(1))
