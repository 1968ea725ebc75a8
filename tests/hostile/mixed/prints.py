"""print() at import time, in __init__ and in forward: stdout belongs to the report."""
import torch.nn as nn

print("hello from import time")


class Chatty(nn.Module):
    def __init__(self):
        super().__init__()
        print("building Chatty")
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        print("forward got", x.shape)
        return self.fc(x)
