"""A model holding a torch.jit.script-ed submodule, next to a good model in the same file."""
import torch
import torch.nn as nn


class ScriptedInside(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(16, 32)
        self.body = torch.jit.script(nn.Sequential(nn.Linear(32, 32), nn.ReLU()))
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        return self.head(self.body(self.stem(x)))


class PlainToo(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(x)
