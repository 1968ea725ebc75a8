"""A small U-Net: four 2x poolings, so it needs inputs of at least 16x16."""
import torch
import torch.nn as nn


def block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class UNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.down = nn.ModuleList([block(3, 8), block(8, 16), block(16, 32), block(32, 64)])
        self.pool = nn.MaxPool2d(2)
        self.mid = block(64, 64)
        self.up = nn.ModuleList([nn.ConvTranspose2d(c, c, 2, stride=2) for c in (64, 32, 16, 8)])
        self.dec = nn.ModuleList([block(128, 32), block(64, 16), block(32, 8), block(16, 8)])
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        skips = []
        for d in self.down:
            x = d(x)
            skips.append(x)
            x = self.pool(x)
        x = self.mid(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.out(x)
