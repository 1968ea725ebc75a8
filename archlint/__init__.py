"""archlint: find vanishing and exploding gradients in PyTorch architectures before training."""

__version__ = "0.1.0"
