"""A module-level instance that is itself a ScriptModule (torch.jit.script of a whole model)."""
import torch
import torch.nn as nn

model = torch.jit.script(nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4)))
