"""Pathology: a vanilla tanh RNN read over 200 steps (AL107 recurrent-horizon).

With PyTorch's default init the gradient shrinks by about 2x per step: after 200 steps nothing
of the first inputs reaches the loss. Fixed version: lstm_classifier.py. The sequence length
comes from archlint.yaml in this folder (inferred inputs use 32 steps).
"""

import torch.nn as nn


class LongVanillaRNN(nn.Module):
    def __init__(self, features: int = 16, hidden: int = 128, classes: int = 4):
        super().__init__()
        self.rnn = nn.RNN(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])
