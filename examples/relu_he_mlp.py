"""Fix for deep_sigmoid_mlp.py: ReLU activations, He initialisation and LayerNorm."""

import torch.nn as nn


class ReluHeMLP(nn.Module):
    def __init__(self, width: int = 256, depth: int = 10):
        super().__init__()
        layers = []
        fan_in = 784
        for _ in range(depth):
            linear = nn.Linear(fan_in, width)
            nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
            nn.init.zeros_(linear.bias)
            layers += [linear, nn.LayerNorm(width), nn.ReLU()]
            fan_in = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        return self.head(self.body(x))
