"""A torch.compile-d module at module level: archlint should analyse the eager module inside
(compile is lazy; nothing should actually be compiled)."""
import torch
import torch.nn as nn


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(torch.relu(self.fc(x)))


model = torch.compile(Small())
