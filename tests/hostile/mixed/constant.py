"""A module with a non-module object, named as the target: constant.py:WIDTH."""
import torch.nn as nn

WIDTH = 64


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(WIDTH, 2)

    def forward(self, x):
        return self.fc(x)
