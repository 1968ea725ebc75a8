"""A module-level instance: reported as module_instance.py:model, not by an index."""
import torch.nn as nn

model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
