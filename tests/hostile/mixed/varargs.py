"""forward(self, *inputs): no named tensor argument."""
import torch
import torch.nn as nn


class VarArgs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, *inputs):
        x = torch.cat(inputs, dim=-1)
        return self.head(torch.relu(self.fc(x)))
