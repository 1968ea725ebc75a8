"""BatchNorm1d probed with a batch of 2: the estimator's (1 - 2/M) factor is 0 for M = 2."""
import torch.nn as nn


class BNSmallBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 16)
        self.bn = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(self.bn(self.fc1(x)).relu())
