"""A 30-layer tanh MLP whose output goes through a @torch.jit.script function: x * 2.0.

Must get AL101 and AL105 exactly like the same model without the scripted function."""
import torch
import torch.nn as nn


@torch.jit.script
def double(x: torch.Tensor) -> torch.Tensor:
    return x * 2.0


class TanhJitTail(nn.Module):
    def __init__(self):
        super().__init__()
        layers = []
        for _ in range(30):
            layers += [nn.Linear(32, 32), nn.Tanh()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        return double(self.head(self.body(x)))
