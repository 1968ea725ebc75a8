"""Fix for bad_init.py: He init for the ReLU layers; a zero-initialised head is fine (it is the
identity-at-init design many classifiers use, and its gradient is not zero)."""

import torch.nn as nn


class GoodInitMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(128, 256)
        self.fc2 = nn.Linear(256, 256)
        self.fc3 = nn.Linear(256, 256)
        self.head = nn.Linear(256, 10)
        for fc in (self.fc1, self.fc2, self.fc3):
            nn.init.kaiming_normal_(fc.weight, nonlinearity="relu")
            nn.init.zeros_(fc.bias)
        nn.init.zeros_(self.head.weight)

    def forward(self, x):
        x = self.fc1(x).relu()
        x = self.fc2(x).relu()
        x = self.fc3(x).relu()
        return self.head(x)
