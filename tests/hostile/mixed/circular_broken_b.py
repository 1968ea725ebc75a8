"""The other half of circular_broken_a.py's cycle."""
import torch.nn as nn

from circular_broken_a import BrokenCycle  # noqa: F401


def make_head():
    return nn.Linear(8, 2)
