"""A model whose constructor raises (next to a good one)."""
import torch.nn as nn


class Broken(nn.Module):
    def __init__(self):
        super().__init__()
        raise ValueError("width must be a multiple of 8")

    def forward(self, x):
        return x


class Fine(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(x)
