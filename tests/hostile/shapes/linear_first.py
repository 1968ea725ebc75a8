"""The first layer is Linear(64, ...): an image --input-shape cannot feed it."""
import torch.nn as nn


class LinearFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(self.fc1(x).relu())
