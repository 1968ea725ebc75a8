"""A file whose import fails (a missing dependency)."""
import torch.nn as nn
import definitely_not_installed_package_xyz  # noqa: F401


class NeverBuilt(nn.Module):
    def forward(self, x):
        return x
