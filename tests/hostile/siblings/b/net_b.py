"""Folder b: its own utils.py (make_body); archlint must not hand it a/utils.py."""
import torch.nn as nn
from utils import make_body


class NetB(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = make_body()
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.body(x))
