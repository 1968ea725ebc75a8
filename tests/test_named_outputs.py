"""Models whose forward builds a named tuple (torchvision's GoogLeNetOutputs, research code's
``Output(logits, aux)``) or a dataclass: the probe differentiates its first tensor field (a
dataclass's ``logits`` first, as for a mapping), and the estimate follows the same field. Before, the tuple's constructor was an op without a formula whose
inputs got no gradient: a three-layer MLP got AL106 at 299 decades."""

from __future__ import annotations

import textwrap
from collections import namedtuple
from dataclasses import dataclass
from typing import Optional

import pytest
import torch
from torch import nn

import archlint
from test_estimator_cases import _check

Output = namedtuple("Output", ["logits", "aux"])


@dataclass
class ClassifierOutput:
    aux: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None


class TwoHeads(nn.Module):
    def __init__(self, keyword: bool = False, aux: bool = True):
        super().__init__()
        self.keyword, self.aux = keyword, aux
        self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.head = nn.Linear(32, 5)
        self.aux_head = nn.Linear(32, 3)

    def forward(self, x):
        h = self.body(x)
        aux = self.aux_head(h) if self.aux else None
        if self.keyword:
            return Output(aux=aux, logits=self.head(h))
        return Output(self.head(h), aux)


class DataclassOut(TwoHeads):
    def forward(self, x):
        h = self.body(x)
        return ClassifierOutput(aux=self.aux_head(h), logits=self.head(h))


class ReadsAField(nn.Module):
    """An inner module returns a named tuple; the outer one reads a field by name."""

    def __init__(self):
        super().__init__()
        self.inner = TwoHeads()
        self.out = nn.Linear(5, 2)

    def forward(self, x):
        return self.out(torch.tanh(self.inner(x).logits))


@pytest.mark.parametrize("make", [TwoHeads, lambda: TwoHeads(keyword=True),
                                  lambda: TwoHeads(aux=False), ReadsAField, DataclassOut],
                         ids=["positional", "keyword", "none-field", "field-read", "dataclass"])
def test_named_tuple_outputs(make):
    torch.manual_seed(0)
    model = make()
    (t,) = archlint.lint(model, example_input=(8, 16)).targets
    assert t.status == "ok", t.error
    assert not any("without a formula" in n for n in t.notes), t.notes
    rms = {layer.module: layer.grad_rms for layer in t.layers}
    head = "inner.head" if isinstance(model, ReadsAField) else "head"
    assert rms[head] and rms[head] > 0
    _check(model, (8, 16), worst=0.2, spread=0.25, verdict=None)
