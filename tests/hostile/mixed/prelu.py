"""nn.PReLU: a plain activation, but classify._activation_attrs reads module.weight while fx is
tracing (a Proxy then), so fx fails and the execution tracer is used instead."""
import torch.nn as nn


class WithPReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.act = nn.PReLU()
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.act(self.fc(x)))
