"""forward() dereferences a null pointer (segfault): only a separate process can survive it."""
import ctypes
import torch.nn as nn


class Crasher(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        ctypes.string_at(0)
        return self.fc(x)
