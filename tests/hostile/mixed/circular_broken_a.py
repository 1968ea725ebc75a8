"""A circular import that fails in plain Python too: a from-import of a name the other module
has not defined yet."""
import torch.nn as nn

from circular_broken_b import make_head


class BrokenCycle(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = make_head()

    def forward(self, x):
        return self.head(x)
