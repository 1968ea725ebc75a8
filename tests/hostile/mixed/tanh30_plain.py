"""The control of tanh30_jit_tail.py: the same model, x * 2.0 written in Python."""
import torch
import torch.nn as nn


class TanhPlain(nn.Module):
    def __init__(self):
        super().__init__()
        layers = []
        for _ in range(30):
            layers += [nn.Linear(32, 32), nn.Tanh()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        return self.head(self.body(x)) * 2.0
