"""Hypothesis strategies that write random, valid, runnable PyTorch model files.

The strategy ``model_files()`` draws a :class:`ModelCase`: the source text of a ``model.py`` the
way researchers write them (attributes, ``nn.Sequential``, ``nn.ModuleList`` loops, nested custom
blocks with constructor arguments, functional calls, parameters used with ``F.linear`` / ``@``,
every ``torch.nn`` activation, batch/layer/group/RMS/instance norms, dropout, pooling, residual
adds, concatenation skips, U-Net style down/up paths, ``self.apply(init_fn)`` and per-layer
inits from all-zero to huge, ``@torch.jit.script`` functions, scripted submodules, dataclass
configs with defaults), plus the example input it runs on and how archlint is told about it
(``--input-shape``, an ``archlint.yaml`` next to it, a config ``targets:`` entry, or nothing when
archlint can infer it from the first layer).

Shapes are tracked while the code is written, so every generated model runs on its stated input
(``validate_case`` checks that with plain torch: forward, backward). Models stay small: at most
``MAX_WEIGHT_LAYERS`` weight layers, widths <= 64, images <= 32x32.

``saturating_chains()`` draws the metamorphic pairs: the same chain of Linear + saturating
activation written plainly (must get AL101) and wrapped in residual skips or normalised (must
not get AL101).

Every feature family has a name (``FEATURES``); a strategy can be asked to leave some out or to
force one in, which is how the CI test keeps families archlint gets wrong today (known issues)
in their own strict-xfail tests.
"""

from __future__ import annotations

import collections
import textwrap
from dataclasses import dataclass, field
from typing import Optional

from hypothesis import strategies as st

MAX_WEIGHT_LAYERS = 30
MAX_WIDTH = 64

#: Feature families the generator can use. ``model_files(exclude=..., force=...)``.
FEATURES = frozenset({
    "functional",       # F.relu / torch.tanh / x.sigmoid() / F.linear on a Parameter / x @ W
    "sequential",       # nn.Sequential of layers
    "modulelist",       # nn.ModuleList of identical blocks, looped in forward
    "custom_blocks",    # nested nn.Module subclasses with constructor arguments
    "residual",         # x = x + f(x) (with a projection when f changes the width)
    "cat",              # x = torch.cat([x, f(x)], dim=1)
    "unet",             # skip = x; pool; ...; upsample; cat
    "norm",             # BatchNorm, LayerNorm, GroupNorm, RMSNorm, InstanceNorm
    "dropout",
    "pool",             # Max/Avg/Adaptive pooling, F.adaptive_avg_pool2d
    "apply_init",       # self.apply(init_fn) with a random scheme
    "layer_init",       # nn.init.<scheme>(self.fc.weight) per layer
    "dataclass_config",  # @dataclass config with defaults as the constructor argument
    "jit_function",     # @torch.jit.script def f(x): ... called in forward
    "jit_module",       # torch.jit.script(nn.Sequential(...)) as a submodule
    "tuple_output",     # return logits, features / {"logits": ...}
    "print",            # print() in forward and at import time
    "root_params",      # the top-level model itself holds parameters (F.linear / @ / F.conv2d)
    "seq",              # [B, T, C] inputs (Linear on the last dimension)
    "img",              # [B, C, H, W] inputs
})

#: How often a family is switched on for one file (percent; the rest: 75).
FEATURE_PERCENT = {"print": 15, "jit_function": 30, "jit_module": 20, "seq": 40}


# ------------------------------------------------------------------------------------------
# The generated case
# ------------------------------------------------------------------------------------------

@dataclass
class ModelCase:
    """One generated model file and how to lint it."""

    source: str
    #: Name of the class archlint should find in the file (the top-level model).
    model_name: str
    input_shape: tuple[int, ...]
    #: "cli" (--input-shape), "config" (archlint.yaml ``input:``), "config_target" (a
    #: ``targets:`` entry in archlint.yaml, run without a path), "inferred" (nothing given).
    input_mode: str
    features: frozenset = frozenset()
    #: Number of weight layers (modules / parameters with 2+ dims) in the model.
    weight_layers: int = 0
    #: For metamorphic cases: module names of the chain's layers and what is expected of it.
    chain_modules: tuple[str, ...] = ()
    expect_al101: Optional[bool] = None
    variant: str = ""

    @property
    def config_text(self) -> Optional[str]:
        shape = list(self.input_shape)
        if self.input_mode == "config":
            return f"input: {{shape: {shape}, dtype: float32}}\n"
        if self.input_mode == "config_target":
            return ("targets:\n"
                    f"  - target: model.py:{self.model_name}\n"
                    f"    input: {{shape: {shape}, dtype: float32}}\n")
        return None

    def cli_args(self, model_path: str, config_path: Optional[str]) -> list[str]:
        """archlint arguments (without --format) for the file written at ``model_path``."""
        if self.input_mode == "cli":
            return [model_path, "--isolated", "--input-shape",
                    ",".join(str(d) for d in self.input_shape)]
        if self.input_mode == "config":
            return [model_path, "--config", str(config_path)]
        if self.input_mode == "config_target":
            return ["--config", str(config_path)]
        return [model_path, "--isolated"]


@dataclass
class Shape:
    kind: str          # "vec" [B, C] | "seq" [B, T, C] | "img" [B, C, H, W]
    c: int
    h: int = 0
    w: int = 0
    t: int = 0

    def with_c(self, c: int) -> "Shape":
        return Shape(self.kind, c, self.h, self.w, self.t)

    @property
    def cat_dim(self) -> str:
        return "-1" if self.kind == "seq" else "1"


# ------------------------------------------------------------------------------------------
# Source builders
# ------------------------------------------------------------------------------------------

class ClassSrc:
    """One nn.Module subclass being written."""

    def __init__(self, name: str, init_params: str = "", pre: Optional[list[str]] = None,
                 lits: Optional[dict[int, str]] = None, decorators: str = "") -> None:
        self.name = name
        self.init_params = init_params
        self.pre = pre or []           # lines before super().__init__() (cfg = cfg or Cfg())
        self.init: list[str] = []
        self.fwd: list[str] = []
        self.counts: collections.Counter = collections.Counter()
        self.lits = lits or {}
        self.decorators = decorators
        self.extra_methods: list[str] = []
        #: May hold nn.Parameters used functionally (F.linear, @, F.conv2d)?
        self.allow_params = True
        self.is_root = False

    def fresh(self, base: str) -> str:
        k = self.counts[base]
        self.counts[base] += 1
        return f"{base}{k}"

    def lit(self, n: int) -> str:
        return self.lits.get(n, str(n))

    def render(self) -> str:
        sig = f"self, {self.init_params}" if self.init_params else "self"
        lines = [f"{self.decorators}class {self.name}(nn.Module):",
                 f"    def __init__({sig}):"]
        lines += [f"        {ln}" for ln in self.pre]
        lines.append("        super().__init__()")
        lines += [f"        {ln}" for ln in self.init]
        lines.append("")
        for m in self.extra_methods:
            lines += [f"    {ln}" if ln else "" for ln in m.splitlines()]
            lines.append("")
        lines.append("    def forward(self, x):")
        lines += [f"        {ln}" for ln in self.fwd]
        return "\n".join(lines) + "\n"


class Ctx:
    def __init__(self, draw, features: frozenset) -> None:
        self.draw = draw
        self.features = features
        self.layers_left = MAX_WEIGHT_LAYERS
        self.weight_layers = 0
        self.top: list[str] = []        # module-level code blocks, in definition order
        self.block_names: collections.Counter = collections.Counter()
        self.jit_fns: list[str] = []
        self.init_fns: dict[str, str] = {}
        self.used: set[str] = set()

    def has(self, feature: str) -> bool:
        return feature in self.features

    def use(self, feature: str) -> None:
        self.used.add(feature)

    def spend(self, n: int = 1) -> None:
        self.layers_left -= n
        self.weight_layers += n


@dataclass
class Piece:
    """A simple stage: a module (``ctor``) and/or a forward expression (``call``: ``@X`` is the
    input variable, ``@A`` the attribute holding its parameters)."""

    shape: Shape
    ctor: Optional[str] = None
    call: Optional[str] = None
    params: list[str] = field(default_factory=list)
    prefix: str = "layer"
    weight: bool = False        # has a .weight to initialise per layer
    features: tuple[str, ...] = ()


# ------------------------------------------------------------------------------------------
# Simple pieces
# ------------------------------------------------------------------------------------------

# (constructor arguments, functional form or None); the first entries are the simplest
# (hypothesis shrinks towards them).
_ACTS = [
    ("ReLU", "", "F.relu(@X)"), ("Tanh", "", "torch.tanh(@X)"),
    ("Sigmoid", "", "torch.sigmoid(@X)"), ("GELU", "", "F.gelu(@X)"),
    ("ReLU6", "", "F.relu6(@X)"), ("LeakyReLU", "0.1", "F.leaky_relu(@X, 0.1)"),
    ("PReLU", "", None), ("RReLU", "", None), ("ELU", "", "F.elu(@X)"),
    ("SELU", "", "F.selu(@X)"), ("CELU", "", "F.celu(@X)"),
    ("GELU", "approximate='tanh'", "F.gelu(@X, approximate='tanh')"),
    ("SiLU", "", "F.silu(@X)"), ("Mish", "", "F.mish(@X)"),
    ("Hardtanh", "", "F.hardtanh(@X)"), ("Hardsigmoid", "", "F.hardsigmoid(@X)"),
    ("Hardswish", "", "F.hardswish(@X)"), ("Hardshrink", "", "F.hardshrink(@X)"),
    ("Softshrink", "", "F.softshrink(@X)"), ("Tanhshrink", "", "F.tanhshrink(@X)"),
    ("Softplus", "", "F.softplus(@X)"), ("Softsign", "", "F.softsign(@X)"),
    ("LogSigmoid", "", "F.logsigmoid(@X)"), ("Threshold", "0.1, 0.0", "F.threshold(@X, 0.1, 0.0)"),
    ("Identity", "", None),
]
_METHOD_ACTS = ["@X.relu()", "@X.tanh()", "@X.sigmoid()", "torch.relu(@X)", "@X.clamp(min=0)",
                "@X * torch.sigmoid(@X)"]
_SOFTMAXES = [("Softmax", "F.softmax(@X, dim=@D)"), ("Softmin", "F.softmin(@X, dim=@D)"),
              ("LogSoftmax", "F.log_softmax(@X, dim=@D)")]
_JIT_BODIES = [
    "return x * 2.0",
    "return x * torch.sigmoid(x)",
    "return torch.tanh(x) * 1.5",
    "return torch.where(x > 0, x, 0.1 * x)",
    "return x.clamp(-3.0, 3.0)",
]
_INIT_SCHEMES = [
    "nn.init.xavier_uniform_(@W)",
    "nn.init.kaiming_normal_(@W, nonlinearity='relu')",
    "nn.init.zeros_(@W)",
    "nn.init.constant_(@W, 0.05)",
    "nn.init.normal_(@W, std=10.0)",
    "nn.init.normal_(@W, std=1e-4)",
    "nn.init.orthogonal_(@W)",
    "nn.init.kaiming_uniform_(@W, a=math.sqrt(5))",
    "nn.init.xavier_normal_(@W, gain=nn.init.calculate_gain('tanh'))",
    "nn.init.trunc_normal_(@W, std=0.02)",
    "nn.init.uniform_(@W, -0.1, 0.1)",
]


def _width(draw, lo: int = 1) -> int:
    return draw(st.integers(lo, MAX_WIDTH))


def weight_piece(ctx: Ctx, cb: ClassSrc, shape: Shape, keep_spatial: bool = False,
                 out: Optional[int] = None) -> Piece:
    draw = ctx.draw
    ctx.spend()
    c = shape.c
    if shape.kind in ("vec", "seq"):
        cout = out if out is not None else _width(draw)
        style = draw(st.sampled_from(["module", "module", "module", "flinear", "matmul"]))
        if not ctx.has("functional") or not cb.allow_params:
            style = "module"
        new = shape.with_c(cout)
        if style == "module":
            bias = draw(st.booleans())
            return Piece(new, ctor=f"nn.Linear({cb.lit(c)}, {cb.lit(cout)}"
                                   f"{'' if bias else ', bias=False'})", prefix="fc", weight=True)
        if style == "flinear":
            ctx.use("functional")
            return Piece(new, call="F.linear(@X, self.@A_w, self.@A_b)",
                         params=[f"self.@A_w = nn.Parameter(torch.randn({cb.lit(cout)}, "
                                 f"{cb.lit(c)}) / math.sqrt({cb.lit(c)}))",
                                 f"self.@A_b = nn.Parameter(torch.zeros({cb.lit(cout)}))"],
                         prefix="proj", features=("functional",))
        ctx.use("functional")
        return Piece(new, call="@X @ self.@A",
                     params=[f"self.@A = nn.Parameter(torch.randn({cb.lit(c)}, {cb.lit(cout)})"
                             f" * {draw(st.sampled_from(['0.1', '0.02', '1.0']))})"],
                     prefix="W", features=("functional",))
    # images
    kind = draw(st.sampled_from(["conv", "conv", "conv", "depthwise", "fconv"]))
    if (not ctx.has("functional") or not cb.allow_params) and kind == "fconv":
        kind = "conv"
    k = draw(st.sampled_from([3, 1, 5]))
    stride = 1 if keep_spatial else draw(st.sampled_from([1, 1, 2]))
    pad = k // 2
    h = (shape.h + 2 * pad - k) // stride + 1
    w = (shape.w + 2 * pad - k) // stride + 1
    if kind == "depthwise" and out is None:
        mult = draw(st.sampled_from([1, 2]))
        cout = c * mult if c * mult <= MAX_WIDTH else c
        return Piece(Shape("img", cout, h, w),
                     ctor=f"nn.Conv2d({cb.lit(c)}, {cb.lit(cout)}, {k}, stride={stride}, "
                          f"padding={pad}, groups={cb.lit(c)}, bias=False)",
                     prefix="dw", weight=True)
    cout = out if out is not None else _width(draw)
    if kind == "fconv":
        ctx.use("functional")
        return Piece(Shape("img", cout, h, w),
                     call=f"F.conv2d(@X, self.@A, stride={stride}, padding={pad})",
                     params=[f"self.@A = nn.Parameter(torch.randn({cb.lit(cout)}, {cb.lit(c)}, "
                             f"{k}, {k}) / math.sqrt({cb.lit(c)} * {k * k}))"],
                     prefix="kernel", features=("functional",))
    bias = draw(st.booleans())
    return Piece(Shape("img", cout, h, w),
                 ctor=f"nn.Conv2d({cb.lit(c)}, {cb.lit(cout)}, {k}, stride={stride}, "
                      f"padding={pad}{'' if bias else ', bias=False'})",
                 prefix="conv", weight=True)


def act_piece(ctx: Ctx, cb: ClassSrc, shape: Shape) -> Piece:
    draw = ctx.draw
    choices = ["plain"] * 6 + ["softmax"]
    if shape.c % 2 == 0:
        choices.append("glu")
    if ctx.has("functional"):
        choices += ["method"]
    if ctx.has("jit_function"):
        choices += ["jit"]
    if shape.kind == "img":
        choices.append("softmax2d")
    kind = draw(st.sampled_from(choices))
    dim = shape.cat_dim
    if kind == "plain":
        name, args, fn = draw(st.sampled_from(_ACTS))
        use_fn = fn is not None and ctx.has("functional") and draw(st.booleans())
        if use_fn:
            ctx.use("functional")
            return Piece(shape, call=fn, features=("functional",))
        return Piece(shape, ctor=f"nn.{name}({args})", prefix="act")
    if kind == "softmax":
        name, fn = draw(st.sampled_from(_SOFTMAXES))
        if ctx.has("functional") and draw(st.booleans()):
            ctx.use("functional")
            return Piece(shape, call=fn.replace("@D", dim), features=("functional",))
        return Piece(shape, ctor=f"nn.{name}(dim={dim})", prefix="act")
    if kind == "softmax2d":
        return Piece(shape, ctor="nn.Softmax2d()", prefix="act")
    if kind == "glu":
        new = shape.with_c(shape.c // 2)
        if ctx.has("functional") and draw(st.booleans()):
            ctx.use("functional")
            return Piece(new, call=f"F.glu(@X, dim={dim})", features=("functional",))
        return Piece(new, ctor=f"nn.GLU(dim={dim})", prefix="act")
    if kind == "method":
        ctx.use("functional")
        return Piece(shape, call=draw(st.sampled_from(_METHOD_ACTS)), features=("functional",))
    # a @torch.jit.script function
    body = draw(st.sampled_from(_JIT_BODIES))
    name = f"scripted_{_JIT_BODIES.index(body)}"
    if name not in ctx.jit_fns:
        ctx.jit_fns.append(name)
        ctx.top.append(f"@torch.jit.script\ndef {name}(x: torch.Tensor) -> torch.Tensor:\n"
                       f"    {body}\n")
    ctx.use("jit_function")
    return Piece(shape, call=f"{name}(@X)", features=("jit_function",))


def norm_piece(ctx: Ctx, cb: ClassSrc, shape: Shape) -> Piece:
    draw = ctx.draw
    c = shape.c
    divisors = [g for g in (1, 2, 4, 8, 16, 32) if c % g == 0]
    ctx.use("norm")
    if shape.kind == "vec":
        kind = draw(st.sampled_from(["bn", "ln", "rms", "gn", "fln"]))
        if kind == "bn":
            return Piece(shape, ctor=f"nn.BatchNorm1d({cb.lit(c)})", prefix="bn")
        if kind == "ln":
            return Piece(shape, ctor=f"nn.LayerNorm({cb.lit(c)})", prefix="ln")
        if kind == "rms":
            return Piece(shape, ctor=f"nn.RMSNorm({cb.lit(c)})", prefix="rms")
        if kind == "gn":
            return Piece(shape, ctor=f"nn.GroupNorm({draw(st.sampled_from(divisors))}, "
                                     f"{cb.lit(c)})", prefix="gn")
        if not ctx.has("functional"):
            return Piece(shape, ctor=f"nn.LayerNorm({cb.lit(c)})", prefix="ln")
        return Piece(shape, call=_layer_norm_call(ctx, c))
    if shape.kind == "seq":
        kind = draw(st.sampled_from(["ln", "rms", "fln"]))
        if kind == "ln":
            return Piece(shape, ctor=f"nn.LayerNorm({cb.lit(c)})", prefix="ln")
        if kind == "rms":
            return Piece(shape, ctor=f"nn.RMSNorm({cb.lit(c)}, eps=1e-6)", prefix="rms")
        if not ctx.has("functional"):
            return Piece(shape, ctor=f"nn.LayerNorm({cb.lit(c)})", prefix="ln")
        return Piece(shape, call=_layer_norm_call(ctx, c))
    kinds = ["bn", "gn", "ln"]
    if shape.h * shape.w > 1:
        kinds.append("in")
    kind = draw(st.sampled_from(kinds))
    if kind == "bn":
        return Piece(shape, ctor=f"nn.BatchNorm2d({cb.lit(c)})", prefix="bn")
    if kind == "gn":
        return Piece(shape, ctor=f"nn.GroupNorm({draw(st.sampled_from(divisors))}, {cb.lit(c)})",
                     prefix="gn")
    if kind == "in":
        return Piece(shape, ctor=f"nn.InstanceNorm2d({cb.lit(c)}, affine=True)", prefix="inorm")
    return Piece(shape, ctor=f"nn.LayerNorm([{cb.lit(c)}, {shape.h}, {shape.w}])", prefix="ln")


def _layer_norm_call(ctx: Ctx, c: int) -> str:
    if ctx.draw(st.booleans()):
        return f"F.layer_norm(@X, ({c},))"
    return "F.layer_norm(@X, @X.shape[-1:])"


def dropout_piece(ctx: Ctx, cb: ClassSrc, shape: Shape) -> Piece:
    draw = ctx.draw
    ctx.use("dropout")
    p = draw(st.sampled_from(["0.1", "0.5", "0.0"]))
    kind = draw(st.sampled_from(["module", "functional", "alpha"] +
                                (["2d"] if shape.kind == "img" else [])))
    if kind == "functional" and ctx.has("functional"):
        return Piece(shape, call=f"F.dropout(@X, p={p}, training=self.training)")
    if kind == "alpha":
        return Piece(shape, ctor=f"nn.AlphaDropout({p})", prefix="drop")
    if kind == "2d":
        return Piece(shape, ctor=f"nn.Dropout2d({p})", prefix="drop")
    return Piece(shape, ctor=f"nn.Dropout({p})", prefix="drop")


def pool_piece(ctx: Ctx, cb: ClassSrc, shape: Shape) -> Piece:
    draw = ctx.draw
    ctx.use("pool")
    kind = draw(st.sampled_from(["max", "avg", "fmax", "adaptive", "fadaptive", "adaptive_max"]))
    if not ctx.has("functional"):
        kind = {"fmax": "max", "fadaptive": "adaptive"}.get(kind, kind)
    if kind in ("max", "avg", "fmax"):
        new = Shape("img", shape.c, shape.h // 2, shape.w // 2)
        if kind == "max":
            return Piece(new, ctor="nn.MaxPool2d(2)", prefix="pool")
        if kind == "avg":
            return Piece(new, ctor="nn.AvgPool2d(2)", prefix="pool")
        return Piece(new, call="F.max_pool2d(@X, 2)")
    k = draw(st.integers(1, min(shape.h, shape.w)))
    new = Shape("img", shape.c, k, k)
    if kind == "adaptive":
        return Piece(new, ctor=f"nn.AdaptiveAvgPool2d({k})", prefix="pool")
    if kind == "adaptive_max":
        return Piece(new, ctor=f"nn.AdaptiveMaxPool2d(({k}, {k}))", prefix="pool")
    return Piece(new, call=f"F.adaptive_avg_pool2d(@X, {k})")


def jit_module_piece(ctx: Ctx, cb: ClassSrc, shape: Shape) -> Piece:
    ctx.spend()
    ctx.use("jit_module")
    c = shape.c
    if shape.kind == "img":
        inner = f"nn.Conv2d({cb.lit(c)}, {cb.lit(c)}, 3, padding=1), nn.ReLU()"
    else:
        inner = f"nn.Linear({cb.lit(c)}, {cb.lit(c)}), nn.ReLU()"
    return Piece(shape, ctor=f"torch.jit.script(nn.Sequential({inner}))", prefix="scripted",
                 features=("jit_module",))


def simple_piece(ctx: Ctx, cb: ClassSrc, shape: Shape, keep_spatial: bool = False) -> Piece:
    draw = ctx.draw
    kinds = ["weight", "weight", "act", "act"]
    if ctx.layers_left <= 0:
        kinds = ["act"]
    if ctx.has("norm"):
        kinds.append("norm")
    if ctx.has("dropout"):
        kinds.append("dropout")
    if ctx.has("pool") and shape.kind == "img" and shape.h >= 2 and shape.w >= 2 \
            and not keep_spatial:
        kinds.append("pool")
    if ctx.has("jit_module") and ctx.layers_left > 0 and draw(st.integers(0, 9)) == 0:
        kinds.append("jit_module")
    kind = draw(st.sampled_from(kinds))
    if kind == "weight":
        return weight_piece(ctx, cb, shape, keep_spatial)
    if kind == "act":
        return act_piece(ctx, cb, shape)
    if kind == "norm":
        return norm_piece(ctx, cb, shape)
    if kind == "dropout":
        return dropout_piece(ctx, cb, shape)
    if kind == "pool":
        return pool_piece(ctx, cb, shape)
    return jit_module_piece(ctx, cb, shape)


# ------------------------------------------------------------------------------------------
# Emitting pieces and compound stages
# ------------------------------------------------------------------------------------------

def _layer_init(ctx: Ctx, cb: ClassSrc, attr: str) -> None:
    if ctx.has("layer_init") and ctx.draw(st.integers(0, 3)) == 0:
        ctx.use("layer_init")
        scheme = ctx.draw(st.sampled_from(_INIT_SCHEMES + ["no_grad_scale"]))
        if scheme == "no_grad_scale":
            cb.init.append("with torch.no_grad():")
            cb.init.append(f"    self.{attr}.weight.mul_({ctx.draw(st.sampled_from(['0.1', '3.0']))})")
        else:
            cb.init.append(scheme.replace("@W", f"self.{attr}.weight"))


def emit_piece(ctx: Ctx, cb: ClassSrc, piece: Piece, src: str, dst: str) -> None:
    if piece.ctor is not None:
        attr = cb.fresh(piece.prefix)
        cb.init.append(f"self.{attr} = {piece.ctor}")
        if piece.weight:
            _layer_init(ctx, cb, attr)
        cb.fwd.append(f"{dst} = self.{attr}({src})")
        return
    assert piece.call is not None
    attr = cb.fresh(piece.prefix) if piece.params else ""
    if piece.params and getattr(cb, "is_root", False):
        ctx.use("root_params")
    for p in piece.params:
        cb.init.append(p.replace("@A", attr))
    cb.fwd.append(f"{dst} = " + piece.call.replace("@A", attr).replace("@X", src))


def emit_stages(ctx: Ctx, cb: ClassSrc, src: str, dst: str, shape: Shape, n: int, depth: int,
                keep_spatial: bool = False) -> Shape:
    """``n`` stages reading ``src``, the last one writing ``dst`` (intermediates too)."""
    cur = src
    for _ in range(n):
        shape = emit_stage(ctx, cb, cur, dst, shape, depth, keep_spatial)
        cur = dst
    if cur != dst:
        cb.fwd.append(f"{dst} = {cur}")
    return shape


def emit_stage(ctx: Ctx, cb: ClassSrc, src: str, dst: str, shape: Shape, depth: int,
               keep_spatial: bool = False) -> Shape:
    draw = ctx.draw
    kinds = ["simple"] * 4
    if depth < 2 and ctx.layers_left >= 2:
        if ctx.has("sequential"):
            kinds.append("sequential")
        if ctx.has("residual"):
            kinds += ["residual", "residual"]
        if ctx.has("cat") and shape.c <= MAX_WIDTH // 2:
            kinds.append("cat")
        if ctx.has("custom_blocks"):
            kinds.append("block")
        if ctx.has("modulelist") and ctx.layers_left >= 4:
            kinds.append("modulelist")
        if ctx.has("unet") and shape.kind == "img" and shape.h >= 2 and shape.w >= 2 \
                and shape.h % 2 == 0 and shape.w % 2 == 0 and shape.c <= MAX_WIDTH // 2:
            kinds.append("unet")
    kind = draw(st.sampled_from(kinds))
    if kind == "simple":
        piece = simple_piece(ctx, cb, shape, keep_spatial)
        emit_piece(ctx, cb, piece, src, dst)
        return piece.shape
    if kind == "sequential":
        return emit_sequential(ctx, cb, src, dst, shape, keep_spatial)
    if kind == "residual":
        return emit_residual(ctx, cb, src, dst, shape, depth)
    if kind == "cat":
        return emit_cat(ctx, cb, src, dst, shape, depth)
    if kind == "block":
        return emit_block(ctx, cb, src, dst, shape, depth, keep_spatial)
    if kind == "modulelist":
        return emit_modulelist(ctx, cb, src, dst, shape, depth)
    return emit_unet(ctx, cb, src, dst, shape, depth)


def emit_sequential(ctx: Ctx, cb: ClassSrc, src: str, dst: str, shape: Shape,
                    keep_spatial: bool) -> Shape:
    ctx.use("sequential")
    n = ctx.draw(st.integers(1, 6))
    ctors = []
    saved = ctx.features  # only modules go into a Sequential
    ctx.features = ctx.features - {"functional", "jit_function"}
    pieces = []
    try:
        for _ in range(n):
            pieces.append(simple_piece(ctx, cb, shape, keep_spatial))
            shape = pieces[-1].shape
    finally:
        ctx.features = saved
    for piece in pieces:
        assert piece.ctor is not None, piece
        ctors.append(piece.ctor)
    if not ctors:
        ctors.append("nn.Identity()")
    attr = cb.fresh("body")
    if len(ctors) == 1 or ctx.draw(st.booleans()):
        cb.init.append(f"self.{attr} = nn.Sequential(" + ", ".join(ctors) + ")")
    else:
        cb.init.append(f"self.{attr} = nn.Sequential(")
        cb.init += [f"    {c}," for c in ctors]
        cb.init.append(")")
    cb.fwd.append(f"{dst} = self.{attr}({src})")
    return shape


def _fresh_var(cb: ClassSrc, base: str = "h") -> str:
    return cb.fresh(base)


def _projection(ctx: Ctx, cb: ClassSrc, shape: Shape, new: Shape) -> Optional[str]:
    """A module mapping ``shape`` to ``new`` on the skip path, or None when equal."""
    if (shape.c, shape.h, shape.w) == (new.c, new.h, new.w):
        return None
    ctx.spend()
    if shape.kind == "img":
        return f"nn.Conv2d({cb.lit(shape.c)}, {cb.lit(new.c)}, 1, bias=False)"
    return f"nn.Linear({cb.lit(shape.c)}, {cb.lit(new.c)}, bias=False)"


def emit_residual(ctx: Ctx, cb: ClassSrc, src: str, dst: str, shape: Shape, depth: int) -> Shape:
    draw = ctx.draw
    ctx.use("residual")
    n = draw(st.integers(1, 4))
    style = draw(st.sampled_from(["inline", "block"] if ctx.has("custom_blocks")
                                 else ["inline"]))
    h = _fresh_var(cb)
    if style == "inline":
        new = emit_stages(ctx, cb, src, h, shape, n, depth + 1, keep_spatial=True)
    else:
        new = emit_block(ctx, cb, src, h, shape, depth, keep_spatial=True, n=n)
    proj = _projection(ctx, cb, shape, new)
    skip = src
    if proj is not None:
        attr = cb.fresh("shortcut")
        cb.init.append(f"self.{attr} = {proj}")
        skip = f"self.{attr}({src})"
    form = draw(st.sampled_from(["{s} + {h}", "{h} + {s}", "{s} + 0.1 * {h}",
                                 "torch.add({s}, {h})"]))
    cb.fwd.append(f"{dst} = " + form.format(s=skip, h=h))
    return new


def emit_cat(ctx: Ctx, cb: ClassSrc, src: str, dst: str, shape: Shape, depth: int) -> Shape:
    draw = ctx.draw
    ctx.use("cat")
    n = draw(st.integers(1, 3))
    h = _fresh_var(cb)
    new = emit_stages(ctx, cb, src, h, shape, n, depth + 1, keep_spatial=True)
    if new.c + shape.c > MAX_WIDTH:  # keep widths bounded: squeeze the branch
        piece = weight_piece(ctx, cb, new, keep_spatial=True, out=max(1, MAX_WIDTH - shape.c))
        emit_piece(ctx, cb, piece, h, h)
        new = piece.shape
    order = draw(st.booleans())
    parts = f"[{src}, {h}]" if order else f"[{h}, {src}]"
    cb.fwd.append(f"{dst} = torch.cat({parts}, dim={shape.cat_dim})")
    return shape.with_c(shape.c + new.c)


def emit_unet(ctx: Ctx, cb: ClassSrc, src: str, dst: str, shape: Shape, depth: int) -> Shape:
    draw = ctx.draw
    ctx.use("unet")
    skip = _fresh_var(cb, "skip")
    h = _fresh_var(cb)
    cb.fwd.append(f"{skip} = {src}")
    down = draw(st.sampled_from(["F.max_pool2d(@X, 2)", "F.avg_pool2d(@X, 2)"]))
    cb.fwd.append(f"{h} = " + down.replace("@X", src))
    inner = Shape("img", shape.c, shape.h // 2, shape.w // 2)
    new = emit_stages(ctx, cb, h, h, inner, draw(st.integers(1, 3)), depth + 1,
                      keep_spatial=True)
    up = draw(st.sampled_from(["interp", "upsample", "convT"]))
    if up == "interp":
        cb.fwd.append(f"{h} = F.interpolate({h}, scale_factor=2, mode='nearest')")
    elif up == "upsample":
        attr = cb.fresh("up")
        cb.init.append(f"self.{attr} = nn.Upsample(scale_factor=2, mode='bilinear', "
                       "align_corners=False)")
        cb.fwd.append(f"{h} = self.{attr}({h})")
    else:
        ctx.spend()
        attr = cb.fresh("up")
        cb.init.append(f"self.{attr} = nn.ConvTranspose2d({cb.lit(new.c)}, {cb.lit(new.c)}, 2, "
                       "stride=2)")
        cb.fwd.append(f"{h} = self.{attr}({h})")
    c = new.c
    if c + shape.c > MAX_WIDTH:
        piece = weight_piece(ctx, cb, Shape("img", c, shape.h, shape.w), keep_spatial=True,
                             out=max(1, MAX_WIDTH - shape.c))
        emit_piece(ctx, cb, piece, h, h)
        c = piece.shape.c
    cb.fwd.append(f"{dst} = torch.cat([{h}, {skip}], dim=1)")
    return shape.with_c(shape.c + c)


def _new_block_class(ctx: Ctx, shape: Shape) -> ClassSrc:
    draw = ctx.draw
    base = draw(st.sampled_from(["Block", "ResBlock", "Stage", "MLPBlock", "ConvUnit"]))
    ctx.block_names[base] += 1
    name = f"{base}{ctx.block_names[base]}"
    ctx.use("custom_blocks")
    argname = "channels" if shape.kind == "img" else "dim"
    default = draw(st.booleans())
    params = f"{argname}: int = {shape.c}" if default else f"{argname}: int"
    return ClassSrc(name, params, lits={shape.c: argname})


def _finish_block(ctx: Ctx, blk: ClassSrc, var: str) -> None:
    blk.fwd.append(f"return {var}")
    if ctx.has("apply_init") and ctx.draw(st.integers(0, 4)) == 0:
        _add_apply(ctx, blk)
    ctx.top.append(blk.render())


def emit_block(ctx: Ctx, cb: ClassSrc, src: str, dst: str, shape: Shape, depth: int,
               keep_spatial: bool = False, n: Optional[int] = None,
               preserve: bool = False) -> Shape:
    """A custom nn.Module subclass holding ``n`` stages, instantiated with its width."""
    draw = ctx.draw
    blk = _new_block_class(ctx, shape)
    n = n if n is not None else draw(st.integers(1, 4))
    new = emit_stages(ctx, blk, "x", "x", shape, n, depth + 1, keep_spatial=keep_spatial)
    if preserve and (new.c, new.h, new.w) != (shape.c, shape.h, shape.w):
        piece = weight_piece(ctx, blk, new, keep_spatial=True, out=shape.c)
        emit_piece(ctx, blk, piece, "x", "x")
        new = piece.shape
    _finish_block(ctx, blk, "x")
    attr = cb.fresh("block")
    kw = draw(st.booleans())
    argname = "channels" if shape.kind == "img" else "dim"
    arg = f"{argname}={cb.lit(shape.c)}" if kw else cb.lit(shape.c)
    cb.init.append(f"self.{attr} = {blk.name}({arg})")
    cb.fwd.append(f"{dst} = self.{attr}({src})")
    return new


def emit_modulelist(ctx: Ctx, cb: ClassSrc, src: str, dst: str, shape: Shape,
                    depth: int) -> Shape:
    """``nn.ModuleList([Block(w) for _ in range(n)])`` of shape-preserving blocks, looped."""
    draw = ctx.draw
    ctx.use("modulelist")
    before = ctx.layers_left
    blk = _new_block_class(ctx, shape)
    inner_n = draw(st.integers(1, 3))
    resid = draw(st.booleans())
    if resid:
        new = emit_stages(ctx, blk, "x", "h", shape, inner_n, depth + 1, keep_spatial=True)
        if new.c != shape.c:
            piece = weight_piece(ctx, blk, new, keep_spatial=True, out=shape.c)
            emit_piece(ctx, blk, piece, "h", "h")
        blk.fwd.append("x = x + h")
    else:
        new = emit_stages(ctx, blk, "x", "x", shape, inner_n, depth + 1, keep_spatial=True)
        if new.c != shape.c:
            piece = weight_piece(ctx, blk, new, keep_spatial=True, out=shape.c)
            emit_piece(ctx, blk, piece, "x", "x")
    _finish_block(ctx, blk, "x")
    per_block = before - ctx.layers_left
    reps = draw(st.integers(2, 4))
    # each extra repetition costs as many weight layers as the first one
    while reps > 1 and ctx.layers_left - per_block * (reps - 1) < 0:
        reps -= 1
    ctx.spend(per_block * (reps - 1))
    attr = cb.fresh("blocks")
    container = draw(st.sampled_from(["ModuleList", "Sequential"]))
    if container == "ModuleList":
        cb.init.append(f"self.{attr} = nn.ModuleList([{blk.name}({cb.lit(shape.c)}) "
                       f"for _ in range({reps})])")
        if src != dst:
            cb.fwd.append(f"{dst} = {src}")
        cb.fwd.append(f"for blk in self.{attr}:")
        cb.fwd.append(f"    {dst} = blk({dst})")
    else:
        cb.init.append(f"self.{attr} = nn.Sequential(*[{blk.name}({cb.lit(shape.c)}) "
                       f"for _ in range({reps})])")
        cb.fwd.append(f"{dst} = self.{attr}({src})")
    return shape


def _add_apply(ctx: Ctx, cb: ClassSrc) -> None:
    draw = ctx.draw
    ctx.use("apply_init")
    scheme = draw(st.sampled_from(_INIT_SCHEMES))
    method = draw(st.booleans())
    body = (f"if isinstance(m, (nn.Linear, nn.Conv2d)):\n"
            f"    {scheme.replace('@W', 'm.weight')}\n"
            f"    if m.bias is not None:\n"
            f"        nn.init.zeros_(m.bias)\n")
    if method:
        if not any(m.startswith("def _init_weights") for m in cb.extra_methods):
            cb.extra_methods.append("def _init_weights(self, m):\n" +
                                    textwrap.indent(body, "    "))
        cb.init.append("self.apply(self._init_weights)")
        return
    name = f"init_{_INIT_SCHEMES.index(scheme)}"
    if name not in ctx.init_fns:
        ctx.init_fns[name] = f"def {name}(m):\n" + textwrap.indent(body, "    ")
        ctx.top.append(ctx.init_fns[name])
    cb.init.append(f"self.apply({name})")


# ------------------------------------------------------------------------------------------
# Whole files
# ------------------------------------------------------------------------------------------

HEADER = """\
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
"""


def _emit_head(ctx: Ctx, cb: ClassSrc, shape: Shape, n_out: int) -> Shape:
    draw = ctx.draw
    ctx.spend()
    if shape.kind == "img":
        kinds = ["gap", "mean", "conv"]
        if shape.c * shape.h * shape.w <= 4096:
            kinds.append("flatten")
        kind = draw(st.sampled_from(kinds))
        if kind == "conv":
            attr = cb.fresh("head")
            cb.init.append(f"self.{attr} = nn.Conv2d({cb.lit(shape.c)}, {cb.lit(n_out)}, 1)")
            cb.fwd.append(f"x = self.{attr}(x)")
            return Shape("img", n_out, shape.h, shape.w)
        if kind == "gap":
            cb.fwd.append(draw(st.sampled_from([
                "x = F.adaptive_avg_pool2d(x, 1).flatten(1)",
                "x = torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)"])))
            feat = shape.c
        elif kind == "mean":
            cb.fwd.append(draw(st.sampled_from(["x = x.mean(dim=(2, 3))",
                                                "x = x.mean([-2, -1])"])))
            feat = shape.c
        else:
            cb.fwd.append(draw(st.sampled_from(["x = x.flatten(1)", "x = torch.flatten(x, 1)",
                                                "x = x.view(x.size(0), -1)",
                                                "x = x.reshape(x.shape[0], -1)"])))
            feat = shape.c * shape.h * shape.w
        attr = cb.fresh("head")
        cb.init.append(f"self.{attr} = nn.Linear({cb.lit(feat)}, {cb.lit(n_out)})")
        cb.fwd.append(f"x = self.{attr}(x)")
        return Shape("vec", n_out)
    if shape.kind == "seq":
        kind = draw(st.sampled_from(["tokens", "mean", "last"]))
        if kind == "mean":
            cb.fwd.append("x = x.mean(dim=1)")
        elif kind == "last":
            cb.fwd.append("x = x[:, -1]")
        attr = cb.fresh("head")
        cb.init.append(f"self.{attr} = nn.Linear({cb.lit(shape.c)}, {cb.lit(n_out)})")
        cb.fwd.append(f"x = self.{attr}(x)")
        return Shape("seq" if kind == "tokens" else "vec", n_out, t=shape.t)
    attr = cb.fresh("head")
    cb.init.append(f"self.{attr} = nn.Linear({cb.lit(shape.c)}, {cb.lit(n_out)})")
    cb.fwd.append(f"x = self.{attr}(x)")
    return Shape("vec", n_out)


@st.composite
def model_files(draw, exclude: frozenset = frozenset(), force: frozenset = frozenset(),
                max_stages: int = 8) -> ModelCase:
    """A random, valid model file. ``exclude``: feature families never used; ``force``:
    families that must appear (the draw is rejected otherwise)."""
    features = frozenset(f for f in sorted(FEATURES) if f not in exclude and
                         (f in force or draw(st.integers(0, 99)) < FEATURE_PERCENT.get(f, 75)))
    ctx = Ctx(draw, features)
    kinds = ["vec"] + (["img", "img"] if ctx.has("img") else []) + \
        (["seq"] if ctx.has("seq") else [])
    kind = draw(st.sampled_from(kinds))
    if kind != "vec":
        ctx.use(kind)
    input_mode = draw(st.sampled_from(["cli", "config", "config_target", "inferred"]))
    batch = draw(st.sampled_from([8, 2, 4]))
    if input_mode == "inferred":
        batch = 8
    c0 = _width(draw)
    if kind == "img":
        c0 = draw(st.sampled_from([3, 1, 4, 8, 16]))
        h = w = 32 if input_mode == "inferred" else draw(st.sampled_from([8, 16, 32, 7, 12]))
        shape = Shape("img", c0, h, w)
        input_shape: tuple[int, ...] = (batch, c0, h, w)
    elif kind == "seq":
        t = 32 if input_mode == "inferred" else draw(st.integers(1, 16))
        shape = Shape("seq", c0, t=t)
        input_shape = (batch, t, c0)
        if input_mode == "inferred":
            input_mode = "cli"  # archlint infers [8, 32, C] only from a LayerNorm first
    else:
        shape = Shape("vec", c0)
        input_shape = (batch, c0)
    n_out = draw(st.integers(1, 16))

    # constructor signature
    name = draw(st.sampled_from(["Model", "Net", "Classifier", "TinyNet"]))
    sig_style = draw(st.sampled_from(["plain", "kwargs"] +
                                     (["dataclass", "dataclass_none"]
                                      if ctx.has("dataclass_config") else [])))
    cfg_name = f"{name}Config"
    if sig_style == "plain":
        cb = ClassSrc(name)
    elif sig_style == "kwargs":
        argname = "in_channels" if kind == "img" else "in_dim"
        cb = ClassSrc(name, f"{argname}: int = {c0}, num_classes: int = {n_out}",
                      lits={c0: argname, n_out: "num_classes"})
    else:
        ctx.use("dataclass_config")
        fields = {"in_dim": c0, "num_classes": n_out}
        cfg_src = (f"@dataclass\nclass {cfg_name}:\n"
                   f"    in_dim: int = {c0}\n    num_classes: int = {n_out}\n"
                   f"    dropout: float = 0.1\n")
        ctx.top.append(cfg_src)
        lits = {v: f"cfg.{k}" for k, v in fields.items()}
        if sig_style == "dataclass":
            cb = ClassSrc(name, f"cfg: {cfg_name} = {cfg_name}()", lits=lits)
        else:
            cb = ClassSrc(name, f"cfg: Optional[{cfg_name}] = None",
                          pre=[f"cfg = cfg or {cfg_name}()"], lits=lits)
        cb.init.append("self.cfg = cfg")

    cb.allow_params = ctx.has("root_params")
    cb.is_root = True
    if ctx.has("print"):
        ctx.use("print")
        cb.fwd.append('print("forward:", x.shape)')

    # the first stage: archlint infers the input from a first Linear / Conv2d
    if input_mode == "inferred":
        ctx.spend()
        first_out = _width(draw)
        attr = cb.fresh("stem")
        if kind == "img":
            cb.init.append(f"self.{attr} = nn.Conv2d({cb.lit(c0)}, {first_out}, 3, padding=1)")
        else:
            cb.init.append(f"self.{attr} = nn.Linear({cb.lit(c0)}, {first_out})")
        cb.fwd.append(f"x = self.{attr}(x)")
        shape = shape.with_c(first_out)

    n = draw(st.integers(1, max_stages))
    shape = emit_stages(ctx, cb, "x", "x", shape, n, depth=0)
    # forced families the draw did not use: add one stage of them before the head
    if "jit_function" in force and "jit_function" not in ctx.used:
        body = draw(st.sampled_from(_JIT_BODIES))
        fname = f"scripted_{_JIT_BODIES.index(body)}"
        ctx.top.append(f"@torch.jit.script\ndef {fname}(x: torch.Tensor) -> torch.Tensor:\n"
                       f"    {body}\n")
        ctx.use("jit_function")
        cb.fwd.append(f"x = {fname}(x)")
    if "jit_module" in force and "jit_module" not in ctx.used:
        emit_piece(ctx, cb, jit_module_piece(ctx, cb, shape), "x", "x")
    if "root_params" in force and "root_params" not in ctx.used and shape.kind != "img":
        ctx.spend()
        emit_piece(ctx, cb, Piece(shape, call="@X @ self.@A", prefix="W",
                                  params=[f"self.@A = nn.Parameter(torch.randn({shape.c}, "
                                          f"{shape.c}) / math.sqrt({shape.c}))"]), "x", "x")
    _emit_head(ctx, cb, shape, n_out)

    if ctx.has("apply_init") and draw(st.booleans()):
        _add_apply(ctx, cb)
    out = "plain"
    if ctx.has("tuple_output"):
        out = draw(st.sampled_from(["plain", "tuple", "dict"]))
    if out == "tuple":
        ctx.use("tuple_output")
        cb.fwd.append("return x, x.detach()")
    elif out == "dict":
        ctx.use("tuple_output")
        cb.fwd.append('return {"logits": x}')
    else:
        cb.fwd.append("return x")

    parts = [HEADER]
    if "print" in ctx.used:
        parts.append('print("importing the model file")\n')
    parts += ctx.top
    parts.append(cb.render())
    source = "\n\n".join(p.rstrip("\n") + "\n" for p in parts)
    missing = force - ctx.used
    if missing:
        from hypothesis import reject

        reject()
    return ModelCase(source=source, model_name=name, input_shape=input_shape,
                     input_mode=input_mode, features=frozenset(ctx.used),
                     weight_layers=ctx.weight_layers)


# ------------------------------------------------------------------------------------------
# Metamorphic: a saturating chain, plain vs wrapped in skips
# ------------------------------------------------------------------------------------------

_SAT_MODULES = [("Tanh", "torch.tanh(@X)"), ("Sigmoid", "torch.sigmoid(@X)"),
                ("Hardtanh", "F.hardtanh(@X)"), ("Softsign", "F.softsign(@X)"),
                ("Sigmoid", "@X.sigmoid()"), ("Tanh", "@X.tanh()")]

CHAIN_VARIANTS = ("plain", "res_each", "res_whole", "norm_each")


@st.composite
def saturating_chains(draw, variants: tuple[str, ...] = CHAIN_VARIANTS,
                      jit_tail: bool = False) -> list[ModelCase]:
    """The same saturating chain written in each of ``variants`` (same widths, same style).

    plain: Linear + saturating activation, ``n`` times (n >= 5 > AL101's max-chain 4): AL101.
    res_each: ``x = x + act(fc(x))`` around each pair; res_whole: ``x = x + chain(x)``;
    norm_each: a LayerNorm between each Linear and its activation: no AL101.
    """
    n = draw(st.integers(5, 10))
    width = draw(st.integers(2, MAX_WIDTH))
    d_in = draw(st.integers(1, MAX_WIDTH))
    n_out = draw(st.integers(1, 10))
    act_mod, act_fn = draw(st.sampled_from(_SAT_MODULES))
    style = draw(st.sampled_from(["sequential", "attrs", "modulelist", "block"]))
    functional = draw(st.booleans())
    stem = draw(st.sampled_from(["linear", "linear_relu", "none"]))
    if stem == "none":
        d_in = width
    init = draw(st.sampled_from([None] + _INIT_SCHEMES))
    batch = draw(st.sampled_from([8, 2]))
    input_mode = draw(st.sampled_from(["cli", "config"]))
    cases = []
    for variant in variants:
        cases.append(_render_chain(variant, n, width, d_in, n_out, act_mod, act_fn, style,
                                   functional, stem, init, batch, input_mode, jit_tail))
    return cases


def _render_chain(variant, n, width, d_in, n_out, act_mod, act_fn, style, functional, stem,
                  init, batch, input_mode, jit_tail) -> ModelCase:
    top: list[str] = []
    init_lines: list[str] = []
    fwd: list[str] = []
    chain_modules: list[str] = []
    norm = variant == "norm_each"

    def act(x: str) -> str:
        return act_fn.replace("@X", x)

    if stem == "linear":
        init_lines.append(f"self.stem = nn.Linear({d_in}, {width})")
        fwd.append("x = self.stem(x)")
    elif stem == "linear_relu":
        init_lines.append(f"self.stem = nn.Sequential(nn.Linear({d_in}, {width}), nn.ReLU())")
        fwd.append("x = self.stem(x)")
    src = "x"
    if variant == "res_whole":
        fwd.append("h = x")
        src = "h"

    if style == "sequential" or (style == "attrs" and variant == "res_whole" and False):
        pair = [f"nn.Linear({width}, {width})"] + ([f"nn.LayerNorm({width})"] if norm else []) \
            + [f"nn.{act_mod}()"]
        if variant == "res_each":
            top.append("class Residual(nn.Module):\n"
                       "    def __init__(self, fn: nn.Module):\n"
                       "        super().__init__()\n"
                       "        self.fn = fn\n\n"
                       "    def forward(self, x):\n"
                       "        return x + self.fn(x)\n")
            init_lines.append(f"self.body = nn.Sequential(*[Residual(nn.Sequential("
                              f"{', '.join(pair)})) for _ in range({n})])")
            chain_modules += [f"body.{i}.fn.0" for i in range(n)]
        else:
            init_lines.append("layers = []")
            init_lines.append(f"for _ in range({n}):")
            init_lines.append(f"    layers += [{', '.join(pair)}]")
            init_lines.append("self.body = nn.Sequential(*layers)")
            per = len(pair)
            chain_modules += [f"body.{i * per}" for i in range(n)]
        fwd.append(f"{src} = self.body({src})")
    elif style == "attrs":
        for i in range(n):
            init_lines.append(f"self.fc{i} = nn.Linear({width}, {width})")
            chain_modules.append(f"fc{i}")
            if norm:
                init_lines.append(f"self.norm{i} = nn.LayerNorm({width})")
            if not functional:
                init_lines.append(f"self.act{i} = nn.{act_mod}()")
        for i in range(n):
            inner = f"self.fc{i}({src})"
            if norm:
                inner = f"self.norm{i}({inner})"
            y = act(inner) if functional else f"self.act{i}({inner})"
            fwd.append(f"{src} = {src} + {y}" if variant == "res_each" else f"{src} = {y}")
    elif style == "modulelist":
        init_lines.append(f"self.layers = nn.ModuleList([nn.Linear({width}, {width}) "
                          f"for _ in range({n})])")
        chain_modules += [f"layers.{i}" for i in range(n)]
        if norm:
            init_lines.append(f"self.norms = nn.ModuleList([nn.LayerNorm({width}) "
                              f"for _ in range({n})])")
            fwd.append("for layer, norm in zip(self.layers, self.norms):")
            inner = f"norm(layer({src}))"
        else:
            fwd.append("for layer in self.layers:")
            inner = f"layer({src})"
        if not functional:
            init_lines.append(f"self.act = nn.{act_mod}()")
        y = act(inner) if functional else f"self.act({inner})"
        fwd.append(f"    {src} = {src} + {y}" if variant == "res_each" else f"    {src} = {y}")
    else:  # block
        blk_init = [f"self.fc = nn.Linear(dim, dim)"]
        if norm:
            blk_init.append("self.norm = nn.LayerNorm(dim)")
        inner = "self.norm(self.fc(x))" if norm else "self.fc(x)"
        if not functional:
            blk_init.append(f"self.act = nn.{act_mod}()")
        y = act(inner) if functional else f"self.act({inner})"
        ret = f"x + {y}" if variant == "res_each" else y
        top.append("class Pair(nn.Module):\n"
                   "    def __init__(self, dim: int):\n"
                   "        super().__init__()\n" +
                   "".join(f"        {ln}\n" for ln in blk_init) +
                   "\n    def forward(self, x):\n"
                   f"        return {ret}\n")
        init_lines.append(f"self.pairs = nn.Sequential(*[Pair({width}) for _ in range({n})])")
        chain_modules += [f"pairs.{i}.fc" for i in range(n)]
        fwd.append(f"{src} = self.pairs({src})")
    if variant == "res_whole":
        fwd.append("x = x + h")
    if jit_tail:
        top.append("@torch.jit.script\ndef scale(x: torch.Tensor) -> torch.Tensor:\n"
                   "    return x * 2.0\n")
    init_lines.append(f"self.head = nn.Linear({width}, {n_out})")
    if init is not None:
        top.append("def init_weights(m):\n"
                   "    if isinstance(m, nn.Linear):\n"
                   f"        {init.replace('@W', 'm.weight')}\n")
        init_lines.append("self.apply(init_weights)")
    fwd.append("x = self.head(x)")
    if jit_tail:
        fwd.append("x = scale(x)")
    fwd.append("return x")
    cls = ("class Model(nn.Module):\n"
           "    def __init__(self):\n"
           "        super().__init__()\n" +
           "".join(f"        {ln}\n" for ln in init_lines) +
           "\n    def forward(self, x):\n" +
           "".join(f"        {ln}\n" for ln in fwd))
    source = "\n\n".join(p.rstrip("\n") + "\n" for p in [HEADER, *top, cls])
    first = d_in if stem != "none" else width
    return ModelCase(source=source, model_name="Model", input_shape=(batch, first),
                     input_mode=input_mode, features=frozenset({"chain"}),
                     weight_layers=n + 1 + (stem != "none"),
                     chain_modules=tuple(chain_modules), expect_al101=(variant == "plain"),
                     variant=variant)
