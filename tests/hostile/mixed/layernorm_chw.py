"""LayerNorm over [C, H, W]: its weight has 3 dims, so it is listed as a weight layer."""
import torch.nn as nn


class ConvLayerNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.ln = nn.LayerNorm([8, 32, 32])
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(self.ln(self.conv(x)).relu())
