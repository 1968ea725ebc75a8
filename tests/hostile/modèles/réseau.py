"""A non-ASCII path and class name; the model has AL101 and AL105 findings."""
import torch.nn as nn


class RéseauSigmoïde(nn.Module):
    def __init__(self):
        super().__init__()
        layers = []
        for _ in range(8):
            layers += [nn.Linear(16, 16), nn.Sigmoid()]
        self.corps = nn.Sequential(*layers)

    def forward(self, x):
        return self.corps(x)
