"""Pathology: a deep MLP of sigmoid layers with PyTorch's default init (AL101 saturating-stack).

Each sigmoid's derivative is at most 0.25, so ten of them in a row shrink the gradient of the
first layers by more than a million. Fixed version: relu_he_mlp.py.
"""

import torch.nn as nn


class DeepSigmoidMLP(nn.Module):
    def __init__(self, width: int = 256, depth: int = 10):
        super().__init__()
        layers = [nn.Linear(784, width), nn.Sigmoid()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.Sigmoid()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        return self.head(self.body(x))
