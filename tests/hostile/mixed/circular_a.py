"""A circular import that works in plain Python: circular_a imports circular_b, which imports
circular_a back and only uses it lazily (inside a function)."""
import torch.nn as nn

import circular_b


class CircularNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.head = circular_b.make_head()

    def forward(self, x):
        return self.head(self.fc(x).relu())
