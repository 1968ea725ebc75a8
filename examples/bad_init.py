"""Pathology: weights initialised to zero, to a constant, and far too small (AL104)."""

import torch.nn as nn


class BadInitMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(128, 256)
        self.fc2 = nn.Linear(256, 256)
        self.fc3 = nn.Linear(256, 256)
        self.head = nn.Linear(256, 10)
        nn.init.zeros_(self.fc1.weight)           # no gradient reaches anything before fc2's input
        nn.init.constant_(self.fc2.weight, 0.01)  # every unit identical: symmetry never broken
        nn.init.normal_(self.fc3.weight, std=1e-3)  # 88x smaller than He init

    def forward(self, x):
        x = self.fc1(x).relu()
        x = self.fc2(x).relu()
        x = self.fc3(x).relu()
        return self.head(x)
