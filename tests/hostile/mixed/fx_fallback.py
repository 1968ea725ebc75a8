"""fx traces this model but cannot propagate shapes (torch.nonzero is data-dependent), so
archlint falls back to the execution tracer; the model itself analyses fine."""
import torch
import torch.nn as nn


class KeepRows(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        rows = torch.nonzero(x[:, 0] > -1e9).squeeze(1)
        return self.head(torch.relu(self.fc(x[rows])))
