"""The benchmark model zoo: small architectures whose per-layer gradient scale archlint predicts.

Every entry is built from code in this file (no downloads), seeds its own construction, and runs one
forward+backward at its example input in well under a second on 2 CPU cores.  ``ZOO`` covers plain
MLPs with many activations and inits, vanishing sigmoid/tanh stacks, CNNs with and without
normalisation, residual nets (plain, BatchNorm, zero-init residual, Fixup), attention models
(custom pre-LN, ``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer``, a causal GPT with
``F.scaled_dot_product_attention``), recurrent nets, dropout, pooling, concatenation (DenseNet,
U-Net with ``ConvTranspose2d``), embeddings and a zero-initialised head.  Entries for torchvision
and Hugging Face models are added only when those packages import.

Input specs: ``{"shape": [8, 3, 32, 32], "dtype": "float32"}``, ``{"shape": [2, 64], "dtype":
"int64", "high": 1000}`` (ids uniform in ``[low, high)``, ``low`` defaults to 0), or a mapping from
``forward`` argument name to such specs.  :func:`make_inputs` turns a spec into tensors.

Run ``python benchmarks/zoo.py`` for a smoke test: every entry is built and probed with
:func:`archlint.measure.measure_grad_rms`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ZooEntry", "ZOO", "make_inputs"]

InputSpec = dict[str, Any]


@dataclass(frozen=True)
class ZooEntry:
    """One benchmark model.

    Attributes:
        name: unique identifier.
        build: constructs the model deterministically (seeds torch itself).
        input: input spec (single tensor spec, or mapping argument name -> tensor spec).
        notes: what the entry is meant to exercise / what healthy behaviour looks like.
    """

    name: str
    build: Callable[[], nn.Module]
    input: InputSpec
    notes: str = ""


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------

_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "bool": torch.bool,
}


def _is_tensor_spec(spec: InputSpec) -> bool:
    return "shape" in spec


def _make_tensor(spec: InputSpec, generator: torch.Generator) -> Tensor:
    dtype = _DTYPES[spec.get("dtype", "float32")]
    shape = tuple(spec["shape"])
    if dtype.is_floating_point:
        return torch.randn(shape, generator=generator).to(dtype)
    if dtype == torch.bool:
        return torch.rand(shape, generator=generator) < 0.5
    return torch.randint(spec.get("low", 0), spec["high"], shape, generator=generator, dtype=dtype)


def make_inputs(spec: InputSpec, seed: int = 0) -> tuple[Tensor, ...] | dict[str, Tensor]:
    """Example tensors for a spec: N(0, 1) floats, integer ids uniform in ``[low, high)``.

    Returns a 1-tuple for a single tensor spec, or a dict argument name -> tensor for a mapping
    spec (tensors drawn in the mapping's order from one generator seeded with ``seed``).
    """
    generator = torch.Generator().manual_seed(seed)
    if _is_tensor_spec(spec):
        return (_make_tensor(spec, generator),)
    return {name: _make_tensor(sub, generator) for name, sub in spec.items()}


def _floats(*shape: int) -> InputSpec:
    return {"shape": list(shape), "dtype": "float32"}


def _ids(*shape: int, high: int = 1000) -> InputSpec:
    return {"shape": list(shape), "dtype": "int64", "high": high}


# ---------------------------------------------------------------------------------------------
# Initialisers
# ---------------------------------------------------------------------------------------------


def _init_linear_like(model: nn.Module, weight_init: Callable[[Tensor], Any]) -> nn.Module:
    """Apply ``weight_init`` to every Linear/Conv weight and zero their biases."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d)):
            weight_init(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def _he(nonlinearity: str = "relu", a: float = 0.0) -> Callable[[Tensor], Any]:
    return lambda w: nn.init.kaiming_normal_(w, a=a, mode="fan_in", nonlinearity=nonlinearity)


def _xavier(gain: float) -> Callable[[Tensor], Any]:
    return lambda w: nn.init.xavier_normal_(w, gain=gain)


def _lecun(w: Tensor) -> Tensor:
    return nn.init.normal_(w, std=1.0 / math.sqrt(nn.init._calculate_correct_fan(w, "fan_in")))


# ---------------------------------------------------------------------------------------------
# MLPs
# ---------------------------------------------------------------------------------------------

_MLP_IN, _MLP_WIDTH, _MLP_OUT, _MLP_BATCH = 128, 256, 10, 32


def _mlp(
    act: Callable[[], nn.Module],
    depth: int,
    *,
    width: int = _MLP_WIDTH,
    dropout: float = 0.0,
) -> nn.Sequential:
    """``depth`` Linear layers: (Linear, act[, Dropout]) * (depth - 1), then a Linear head."""
    layers: list[nn.Module] = []
    fan_in = _MLP_IN
    for _ in range(depth - 1):
        layers += [nn.Linear(fan_in, width), act()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        fan_in = width
    layers.append(nn.Linear(fan_in, _MLP_OUT))
    return nn.Sequential(*layers)


def _mlp_builder(
    act: Callable[[], nn.Module],
    depth: int,
    init: Callable[[Tensor], Any] | None = None,
    **kwargs: Any,
) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(0)
        model = _mlp(act, depth, **kwargs)
        return _init_linear_like(model, init) if init is not None else model

    return build


def _zero_head_mlp() -> nn.Module:
    torch.manual_seed(0)
    model = _mlp(nn.ReLU, 6)
    nn.init.zeros_(model[-1].weight)
    nn.init.zeros_(model[-1].bias)
    return model


def _mlp_entry(name: str, build: Callable[[], nn.Module], notes: str) -> ZooEntry:
    return ZooEntry(name, build, _floats(_MLP_BATCH, _MLP_IN), notes)


_MLP_ENTRIES = [
    _mlp_entry("mlp_relu_d8", _mlp_builder(nn.ReLU, 8), "default init: grad^2 x1/6 per layer"),
    _mlp_entry("mlp_relu_d8_he", _mlp_builder(nn.ReLU, 8, _he()), "He init: critical"),
    _mlp_entry("mlp_relu_d20_he", _mlp_builder(nn.ReLU, 20, _he()), "deep, He init"),
    _mlp_entry("mlp_leaky_relu_d8", _mlp_builder(nn.LeakyReLU, 8), "default init"),
    _mlp_entry(
        "mlp_leaky_relu02_d8_he",
        _mlp_builder(lambda: nn.LeakyReLU(0.2), 8, _he("leaky_relu", 0.2)),
        "He init for slope 0.2",
    ),
    _mlp_entry("mlp_elu_d8", _mlp_builder(nn.ELU, 8), "default init"),
    _mlp_entry("mlp_selu_d16_lecun", _mlp_builder(nn.SELU, 16, _lecun), "self-normalising"),
    _mlp_entry("mlp_gelu_d8", _mlp_builder(nn.GELU, 8), "default init"),
    _mlp_entry("mlp_gelu_d12_he", _mlp_builder(nn.GELU, 12, _he()), "He init"),
    _mlp_entry("mlp_silu_d8", _mlp_builder(nn.SiLU, 8), "default init"),
    _mlp_entry("mlp_tanh_d8", _mlp_builder(nn.Tanh, 8), "default init"),
    _mlp_entry(
        "mlp_tanh_d8_xavier", _mlp_builder(nn.Tanh, 8, _xavier(5.0 / 3.0)), "Xavier, gain 5/3"
    ),
    _mlp_entry("mlp_sigmoid_d4", _mlp_builder(nn.Sigmoid, 4), "default init"),
    _mlp_entry("mlp_softplus_d6", _mlp_builder(nn.Softplus, 6), "default init"),
    _mlp_entry("mlp_sigmoid_d20", _mlp_builder(nn.Sigmoid, 20), "vanishing gradient"),
    _mlp_entry("mlp_tanh_d20", _mlp_builder(nn.Tanh, 20), "vanishing gradient"),
    _mlp_entry(
        "mlp_relu_dropout_d6", _mlp_builder(nn.ReLU, 6, dropout=0.3), "Dropout(0.3), train mode"
    ),
    _mlp_entry(
        "mlp_tanh_dropout_d6", _mlp_builder(nn.Tanh, 6, dropout=0.5), "Dropout(0.5), train mode"
    ),
    _mlp_entry("mlp_zero_head", _zero_head_mlp, "zero head: hidden layers get zero grad (healthy)"),
]


# ---------------------------------------------------------------------------------------------
# CNNs
# ---------------------------------------------------------------------------------------------

_IMAGE = _floats(8, 3, 32, 32)
_CLASSES = 10


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel dimension of an NCHW tensor."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _norm2d(kind: str, channels: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(8, channels)
    if kind == "ln":
        return ChannelLayerNorm(channels)
    return nn.Identity()


class ConvNet(nn.Module):
    """3x3 conv stack (two stride-2 stages) -> [norm] -> ReLU [-> pool] -> GAP -> Linear."""

    def __init__(self, norm: str = "none", pool: str = "none", width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for i in range(6):
            stride = 2 if (i in (2, 4) and pool == "none") else 1
            layers += [
                nn.Conv2d(channels, width, 3, stride=stride, padding=1),
                _norm2d(norm, width),
                nn.ReLU(),
            ]
            if pool != "none" and i in (1, 3):
                layers.append(nn.AvgPool2d(2) if pool == "avg" else nn.MaxPool2d(2))
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, _CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def _seeded(
    factory: Callable[..., nn.Module], *args: Any, **kwargs: Any
) -> Callable[[], nn.Module]:
    """A builder that seeds torch, then calls ``factory(*args, **kwargs)``."""

    def build() -> nn.Module:
        torch.manual_seed(0)
        return factory(*args, **kwargs)

    return build


class BasicBlock(nn.Module):
    """ResNet basic block ``relu(x + f(x))``, optional BatchNorm.

    ``zero_init`` zeros the last BatchNorm's gamma, so the block starts as the identity."""

    def __init__(self, channels: int, bn: bool, zero_init: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=not bn)
        self.bn1 = nn.BatchNorm2d(channels) if bn else nn.Identity()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=not bn)
        self.bn2 = nn.BatchNorm2d(channels) if bn else nn.Identity()
        if bn and zero_init:
            nn.init.zeros_(self.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(out)))


class FixupBlock(nn.Module):
    """Fixup residual block (Zhang et al. 2019): scalar biases, a multiplier, zero last conv."""

    def __init__(self, channels: int, num_blocks: int) -> None:
        super().__init__()
        self.bias1a, self.bias1b, self.bias2a, self.bias2b = (
            nn.Parameter(torch.zeros(1)) for _ in range(4)
        )
        self.scale = nn.Parameter(torch.ones(1))
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        fan_in = channels * 9
        nn.init.normal_(self.conv1.weight, std=math.sqrt(2.0 / fan_in) * num_blocks**-0.5)
        nn.init.zeros_(self.conv2.weight)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.conv1(x + self.bias1a) + self.bias1b)
        out = self.conv2(out + self.bias2a) * self.scale + self.bias2b
        return F.relu(x + out)


class ResNet(nn.Module):
    """Stem conv -> ``num_blocks`` residual blocks at 32x32 -> GAP -> Linear."""

    def __init__(self, block: str, num_blocks: int = 6, width: int = 32) -> None:
        super().__init__()
        bn = block in ("bn", "bn_zero")
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=not bn)
        self.stem_bn = nn.BatchNorm2d(width) if bn else nn.Identity()
        if block == "fixup":
            blocks = [FixupBlock(width, num_blocks) for _ in range(num_blocks)]
        else:
            blocks = [BasicBlock(width, bn, block == "bn_zero") for _ in range(num_blocks)]
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(width, _CLASSES)
        if block == "fixup":
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        return self.head(self.blocks(x).mean(dim=(2, 3)))


class DenseNet(nn.Module):
    """DenseNet-style: each BN-ReLU-Conv layer's output is concatenated to its input."""

    def __init__(self, layers: int = 6, growth: int = 12, stem: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, stem, 3, padding=1, bias=False)
        self.layers = nn.ModuleList()
        channels = stem
        for _ in range(layers):
            self.layers.append(
                nn.Sequential(
                    nn.BatchNorm2d(channels),
                    nn.ReLU(),
                    nn.Conv2d(channels, growth, 3, padding=1, bias=False),
                )
            )
            channels += growth
        self.norm = nn.BatchNorm2d(channels)
        self.head = nn.Linear(channels, _CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = torch.cat([x, layer(x)], dim=1)
        return self.head(F.relu(self.norm(x)).mean(dim=(2, 3)))


class UNet(nn.Module):
    """Two-level U-Net: strided-conv down, ConvTranspose2d up, skip concatenation."""

    def __init__(self, base: int = 16, out_channels: int = 4) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(3, base, 3, padding=1), nn.ReLU())
        self.down1 = nn.Sequential(nn.Conv2d(base, 2 * base, 3, stride=2, padding=1), nn.ReLU())
        self.down2 = nn.Sequential(
            nn.Conv2d(2 * base, 4 * base, 3, stride=2, padding=1), nn.ReLU()
        )
        self.up2 = nn.ConvTranspose2d(4 * base, 2 * base, 2, stride=2)
        self.dec2 = nn.Sequential(nn.Conv2d(4 * base, 2 * base, 3, padding=1), nn.ReLU())
        self.up1 = nn.ConvTranspose2d(2 * base, base, 2, stride=2)
        self.dec1 = nn.Sequential(nn.Conv2d(2 * base, base, 3, padding=1), nn.ReLU())
        self.out = nn.Conv2d(base, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        e1 = self.enc1(x)
        e2 = self.down1(e1)
        bottom = self.down2(e2)
        d2 = self.dec2(torch.cat([self.up2(bottom), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.out(d1)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))


class MobileBlock(nn.Module):
    """Inverted residual: 1x1 expand -> BN -> hardswish -> depthwise 3x3 -> BN -> SE -> 1x1."""

    def __init__(self, channels: int, expand: int = 4) -> None:
        super().__init__()
        hidden = channels * expand
        self.expand = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False),
                                    nn.BatchNorm2d(hidden), nn.Hardswish())
        self.depthwise = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden,
                                                 bias=False), nn.BatchNorm2d(hidden),
                                       nn.Hardswish())
        self.se = SqueezeExcite(hidden, hidden // 4)
        self.project = nn.Sequential(nn.Conv2d(hidden, channels, 1, bias=False),
                                     nn.BatchNorm2d(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.project(self.se(self.depthwise(self.expand(x))))


class MobileSE(nn.Module):
    def __init__(self, width: int = 16, blocks: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.Hardswish())
        self.blocks = nn.Sequential(*(MobileBlock(width) for _ in range(blocks)))
        self.head = nn.Linear(width, _CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def _drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    if not training or p == 0.0:
        return x
    keep = torch.rand(x.shape[0], 1, 1, 1) >= p
    return x * keep / (1 - p)


class GNBlock(nn.Module):
    def __init__(self, channels: int, p: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.gn1 = nn.GroupNorm(8, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.gn2 = nn.GroupNorm(8, channels)
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        out = self.gn2(self.conv2(F.relu(self.gn1(self.conv1(x)))))
        return F.relu(x + _drop_path(out, self.p, self.training))


class ResNetGN(nn.Module):
    def __init__(self, width: int = 32, blocks: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.blocks = nn.Sequential(*(GNBlock(width, 0.1 * i / blocks) for i in range(blocks)))
        self.head = nn.Linear(width, _CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(F.relu(self.stem(x))).mean((2, 3)))


_CNN_ENTRIES = [
    ZooEntry("cnn_relu_plain", _seeded(ConvNet), _IMAGE, "6 convs, no norm"),
    ZooEntry("cnn_batchnorm", _seeded(ConvNet, norm="bn"), _IMAGE, "Conv-BN-ReLU, train mode"),
    ZooEntry("cnn_groupnorm", _seeded(ConvNet, norm="gn"), _IMAGE, "Conv-GN(8)-ReLU"),
    ZooEntry("cnn_layernorm", _seeded(ConvNet, norm="ln"), _IMAGE, "Conv-LN(channels)-ReLU"),
    ZooEntry("cnn_avgpool", _seeded(ConvNet, pool="avg"), _IMAGE, "AvgPool2d(2) downsampling"),
    ZooEntry("cnn_maxpool", _seeded(ConvNet, pool="max"), _IMAGE, "MaxPool2d(2) downsampling"),
    ZooEntry("resnet_plain", _seeded(ResNet, "plain"), _IMAGE, "no BN: grows with depth"),
    ZooEntry("resnet_bn", _seeded(ResNet, "bn"), _IMAGE, "BN residual blocks"),
    ZooEntry(
        "resnet_bn_zero_init",
        _seeded(ResNet, "bn_zero"),
        _IMAGE,
        "last BN gamma = 0: every block's bn2 gets zero weight grad by design",
    ),
    ZooEntry(
        "resnet_fixup",
        _seeded(ResNet, "fixup"),
        _IMAGE,
        "Fixup: zero conv2 and zero head at init -> only the head gets gradient (healthy)",
    ),
    ZooEntry("densenet_concat", _seeded(DenseNet), _IMAGE, "dense concatenation"),
    ZooEntry("unet_small", _seeded(UNet), _IMAGE, "ConvTranspose2d + skip concat"),
    ZooEntry("mobile_se", _seeded(MobileSE), _IMAGE,
             "depthwise-separable convs, squeeze-excitation gates, hardswish, residual"),
    ZooEntry("resnet_gn_stochdepth", _seeded(ResNetGN), _IMAGE,
             "GroupNorm residual blocks with per-sample stochastic depth"),
]


# ---------------------------------------------------------------------------------------------
# Attention models
# ---------------------------------------------------------------------------------------------

_VOCAB, _SEQ, _DIM, _HEADS = 1000, 32, 64, 4


class SelfAttention(nn.Module):
    """Multi-head softmax attention with separate Linear q/k/v/out projections."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def _split(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        mixed = torch.softmax(scores, dim=-1) @ v
        b, h, t, d = mixed.shape
        return self.out(mixed.transpose(1, 2).reshape(b, t, h * d))


class PreLNBlock(nn.Module):
    """``x + attn(LN(x))`` then ``x + MLP(LN(x))``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class PreLNTransformer(nn.Module):
    """Token classifier: Embedding -> pre-LN blocks -> LN -> Linear over the vocabulary."""

    def __init__(self, layers: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(_VOCAB, _DIM)
        self.blocks = nn.Sequential(*(PreLNBlock(_DIM, _HEADS) for _ in range(layers)))
        self.ln_f = nn.LayerNorm(_DIM)
        self.head = nn.Linear(_DIM, _VOCAB)

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(self.ln_f(self.blocks(self.embed(ids))))


class MHABlock(nn.Module):
    """Post-LN block around ``nn.MultiheadAttention``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln1 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.ln2 = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.ln1(x + self.attn(x, x, x, need_weights=False)[0])
        return self.ln2(x + self.ff(x))


class MHAClassifier(nn.Module):
    """Sequence classifier: Linear in -> MHA blocks -> mean pool -> Linear."""

    def __init__(self, in_dim: int = 32, layers: int = 2) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, _DIM)
        self.blocks = nn.Sequential(*(MHABlock(_DIM, _HEADS) for _ in range(layers)))
        self.head = nn.Linear(_DIM, _CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.proj(x)).mean(dim=1))


class TorchEncoder(nn.Module):
    """``nn.TransformerEncoder`` of ``nn.TransformerEncoderLayer`` (post-LN, dropout 0.1)."""

    def __init__(self, in_dim: int = 32, layers: int = 3) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, _DIM)
        layer = nn.TransformerEncoderLayer(
            _DIM, _HEADS, dim_feedforward=2 * _DIM, dropout=0.1, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(_DIM, _CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(self.proj(x)).mean(dim=1))


class CausalBlock(nn.Module):
    """GPT block: fused qkv Linear, ``scaled_dot_product_attention(is_causal=True)``, MLP."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.fc_out = nn.Linear(4 * dim, dim)

    def _attend(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self._attend(self.ln1(x))
        return x + self.fc_out(F.gelu(self.fc(self.ln2(x))))


class TinyGPT(nn.Module):
    """Causal LM: token + positional Embedding, causal blocks, LN, tied LM head.

    Returns a dict ``{"logits": ..., "hidden": ...}`` (the probe must pick ``logits``).
    """

    def __init__(self, layers: int = 3, max_len: int = 64) -> None:
        super().__init__()
        self.wte = nn.Embedding(_VOCAB, _DIM)
        self.wpe = nn.Embedding(max_len, _DIM)
        self.blocks = nn.ModuleList(CausalBlock(_DIM, _HEADS) for _ in range(layers))
        self.ln_f = nn.LayerNorm(_DIM)
        self.lm_head = nn.Linear(_DIM, _VOCAB, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying

    def forward(self, ids: Tensor) -> dict[str, Tensor]:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.wte(ids) + self.wpe(positions)
        for block in self.blocks:
            x = block(x)
        hidden = self.ln_f(x)
        return {"logits": self.lm_head(hidden), "hidden": hidden}


_SEQ_FEATURES = _floats(8, 16, 32)

_ATTENTION_ENTRIES = [
    ZooEntry("transformer_preln", _seeded(PreLNTransformer), _ids(4, _SEQ), "custom attention"),
    ZooEntry("mha_classifier", _seeded(MHAClassifier), _SEQ_FEATURES, "nn.MultiheadAttention"),
    ZooEntry("torch_encoder", _seeded(TorchEncoder), _SEQ_FEATURES, "nn.TransformerEncoderLayer"),
    ZooEntry("gpt_causal", _seeded(TinyGPT), _ids(4, _SEQ), "SDPA causal, tied head, dict output"),
]


# ---------------------------------------------------------------------------------------------
# Recurrent models
# ---------------------------------------------------------------------------------------------


class RecurrentClassifier(nn.Module):
    """``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` over the sequence, Linear head on the last step."""

    def __init__(self, kind: str, in_dim: int = 32, hidden: int = 128, **kwargs: Any) -> None:
        super().__init__()
        cls = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[kind]
        self.rnn = cls(in_dim, hidden, batch_first=True, **kwargs)
        self.head = nn.Linear(hidden, _CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


_RNN_ENTRIES = [
    ZooEntry(
        "rnn_tanh_t32",
        _seeded(RecurrentClassifier, "rnn", nonlinearity="tanh"),
        _floats(8, 32, 32),
        "long-range gradient decays ~0.21^k per step",
    ),
    ZooEntry(
        "rnn_relu_t32",
        _seeded(RecurrentClassifier, "rnn", nonlinearity="relu"),
        _floats(8, 32, 32),
        "ReLU RNN, default init",
    ),
    ZooEntry("lstm_t32", _seeded(RecurrentClassifier, "lstm"), _floats(8, 32, 32), "LSTM"),
    ZooEntry(
        "lstm2_t16",
        _seeded(RecurrentClassifier, "lstm", num_layers=2),
        _floats(8, 16, 32),
        "two-layer LSTM",
    ),
    ZooEntry("gru_t64", _seeded(RecurrentClassifier, "gru"), _floats(8, 64, 32), "GRU, 64 steps"),
]


# ---------------------------------------------------------------------------------------------
# Embedding models
# ---------------------------------------------------------------------------------------------


class BagOfWords(nn.Module):
    """``nn.EmbeddingBag`` (mean) -> MLP classifier."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.embed = nn.EmbeddingBag(_VOCAB, dim, mode="mean")
        self.mlp = nn.Sequential(nn.Linear(dim, 128), nn.ReLU(), nn.Linear(128, _CLASSES))

    def forward(self, ids: Tensor) -> Tensor:
        return self.mlp(self.embed(ids))


class WideAndDeep(nn.Module):
    """Two inputs: token ids (mean-pooled embedding) and dense features, fused by concatenation.

    Returns ``(logits, fused)`` -- the probe must pick the first element.
    """

    def __init__(self, dense_dim: int = 13, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(_VOCAB, dim)
        self.dense = nn.Sequential(nn.Linear(dense_dim, 64), nn.ReLU(), nn.Linear(64, dim))
        self.head = nn.Sequential(nn.Linear(2 * dim, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, ids: Tensor, features: Tensor) -> tuple[Tensor, Tensor]:
        fused = torch.cat([self.embed(ids).mean(dim=1), self.dense(features)], dim=1)
        return self.head(fused), fused


_EMBEDDING_ENTRIES = [
    ZooEntry("bag_of_words", _seeded(BagOfWords), _ids(16, 64), "EmbeddingBag(mean) classifier"),
    ZooEntry(
        "wide_and_deep",
        _seeded(WideAndDeep),
        {"ids": _ids(16, 20), "features": _floats(16, 13)},
        "two named inputs, tuple output",
    ),
]


# ---------------------------------------------------------------------------------------------
# Optional third-party models
# ---------------------------------------------------------------------------------------------


# A missing package raises ImportError; a torchvision wheel built for another torch fails while
# registering its C++ operators (RuntimeError) or loading its libraries (OSError).
_OPTIONAL_IMPORT_ERRORS = (ImportError, RuntimeError, OSError)


def _torchvision_entries() -> list[ZooEntry]:
    try:
        import torchvision.models as tvm
    except _OPTIONAL_IMPORT_ERRORS:
        return []
    image = _floats(2, 3, 64, 64)
    return [
        ZooEntry("tv_resnet18", _seeded(tvm.resnet18, weights=None), image, "torchvision"),
        ZooEntry(
            "tv_mobilenet_v3_small",
            _seeded(tvm.mobilenet_v3_small, weights=None),
            image,
            "torchvision; hardswish, SE blocks",
        ),
    ]


def _transformers_entries() -> list[ZooEntry]:
    try:
        import transformers
    except _OPTIONAL_IMPORT_ERRORS:
        return []

    def gpt2() -> nn.Module:
        torch.manual_seed(0)
        config = transformers.GPT2Config(
            vocab_size=_VOCAB,
            n_positions=64,
            n_embd=64,
            n_layer=2,
            n_head=2,
            use_cache=False,
            bos_token_id=_VOCAB - 1,
            eos_token_id=_VOCAB - 1,
        )
        return transformers.GPT2LMHeadModel(config)

    def bert() -> nn.Module:
        torch.manual_seed(0)
        config = transformers.BertConfig(
            vocab_size=_VOCAB,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=64,
        )
        return transformers.BertModel(config)

    ids = {"input_ids": _ids(2, _SEQ)}
    return [
        ZooEntry("hf_gpt2_tiny", gpt2, ids, "transformers GPT-2 from config, tied head"),
        ZooEntry("hf_bert_tiny", bert, ids, "transformers BERT from config"),
    ]


ZOO: list[ZooEntry] = [
    *_MLP_ENTRIES,
    *_CNN_ENTRIES,
    *_ATTENTION_ENTRIES,
    *_RNN_ENTRIES,
    *_EMBEDDING_ENTRIES,
    *_torchvision_entries(),
    *_transformers_entries(),
]


def _smoke() -> None:
    """Build every entry, probe it once, print a one-line summary."""
    import time

    try:
        from archlint.measure import measure_grad_rms
    except ImportError:  # run as a script from a checkout: put the repository root on the path
        import pathlib
        import sys

        sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
        from archlint.measure import measure_grad_rms

    header = f"{'name':26s} {'layers':>6s} {'min rms':>10s} {'max rms':>10s}"
    print(f"{header} {'build':>7s} {'probe':>7s} {'again':>7s}")
    total = time.perf_counter()
    for entry in ZOO:
        start = time.perf_counter()
        model = entry.build()
        inputs = make_inputs(entry.input)
        built = time.perf_counter()
        result = measure_grad_rms(model, inputs, seed=0)
        probed = time.perf_counter()
        measure_grad_rms(model, inputs, seed=0)  # steady state, without one-time warm-up
        again = time.perf_counter()
        values = [v for v in result.rms.values() if v is not None]
        print(
            f"{entry.name:26s} {len(result.rms):6d} {min(values):10.3e} {max(values):10.3e} "
            f"{built - start:6.3f}s {probed - built:6.3f}s {again - probed:6.3f}s"
        )
    print(f"{len(ZOO)} entries in {time.perf_counter() - total:.1f}s")


if __name__ == "__main__":
    _smoke()
