"""Every rule on models that must trigger it and models that must not (as documented in each
rule's docstring), with the location, module and count of each finding."""

from __future__ import annotations

import textwrap

import pytest

from archlint.rules.exploding_gradient import ExplodingGradient
from archlint.rules.missing_normalization import MissingNormalization
from archlint.rules.missing_residual import MissingResidual
from archlint.rules.poor_initialization import PoorInitialization
from archlint.rules.saturating_stack import SaturatingStack
from archlint.rules.vanishing_gradient import VanishingGradient
from conftest import codes

# Thresholds come from the rules' own defaults, so the boundary tests follow any retuning.
MAX_CHAIN = SaturatingStack.options["max-chain"]
NORM_DEPTH = MissingNormalization.options["max-depth"]
RESIDUAL_DEPTH = MissingResidual.options["max-depth"]
MAX_FACTOR = PoorInitialization.options["max-factor"]


def line_of(source: str, needle: str, nth: int = 0) -> int:
    hits = [i for i, line in enumerate(textwrap.dedent(source).splitlines(), 1) if needle in line]
    assert len(hits) > nth, f"{needle!r} not in source"
    return hits[nth]


def only(result, code):
    return [f for f in result.findings if f.code == code]


def mlp(n_layers: int, act: str = "nn.ReLU()", norm: str = "", width: int = 16) -> str:
    """``n_layers`` Linear layers (+ optional norm) + activation, built in a loop."""
    return f"""
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        layers = []
        for _ in range({n_layers}):
            layers += [nn.Linear({width}, {width}), {norm + ', ' if norm else ''}{act}]
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)
"""


# ====================================================================== AL101 saturating-stack

class TestSaturatingStack:
    def test_deep_sigmoid_stack_triggers_once_at_first_activation(self, lint):
        n = MAX_CHAIN + 4
        src = mlp(n, "nn.Sigmoid()")
        r = lint(src, select=["AL101"])
        assert codes(r) == ["AL101"]
        f = r.findings[0]
        assert f.module == "body.1"
        assert f.line == line_of(src, "nn.Sigmoid()")
        assert f.data["length"] == n
        assert f.data["chain"] == [f"body.{2 * i + 1}" for i in range(n)]
        assert (f.severity, f.name) == ("warning", "saturating-stack")

    def test_chain_at_the_limit_is_clean(self, lint):
        r = lint(mlp(MAX_CHAIN, "nn.Tanh()"), select=["AL101"])
        assert codes(r) == []

    def test_chain_one_over_the_limit_triggers(self, lint):
        r = lint(mlp(MAX_CHAIN + 1, "nn.Tanh()"), select=["AL101"])
        assert codes(r) == ["AL101"]
        assert r.findings[0].data["length"] == MAX_CHAIN + 1

    @pytest.mark.parametrize("act", ["nn.Hardtanh()", "nn.Softsign()", "nn.Hardsigmoid()",
                                     "nn.LogSigmoid()"])
    def test_other_saturating_activations(self, act, lint):
        r = lint(mlp(MAX_CHAIN + 2, act), select=["AL101"])
        assert codes(r) == ["AL101"]

    @pytest.mark.parametrize("act", ["nn.ReLU()", "nn.GELU()", "nn.SiLU()", "nn.LeakyReLU()"])
    def test_non_saturating_activations_never_trigger(self, act, lint):
        r = lint(mlp(12, act), select=["AL101"])
        assert codes(r) == []

    @pytest.mark.parametrize("norm", ["nn.LayerNorm(16)", "nn.BatchNorm1d(16)"])
    def test_normalisation_inside_the_stack_breaks_the_chain(self, norm, lint):
        r = lint(mlp(MAX_CHAIN + 4, "nn.Sigmoid()", norm=norm), select=["AL101"])
        assert codes(r) == []

    def test_norm_every_third_layer_allows_short_chains_only(self, lint):
        # 3 tanh, LayerNorm, 3 tanh, ... : no chain longer than 3
        assert MAX_CHAIN >= 3
        src = """
        import torch.nn as nn


        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                layers = []
                for _ in range(4):
                    for _ in range(3):
                        layers += [nn.Linear(8, 8), nn.Tanh()]
                    layers.append(nn.LayerNorm(8))
                self.body = nn.Sequential(*layers)

            def forward(self, x):
                return self.body(x)
        """
        assert codes(lint(src, select=["AL101"])) == []
        # ... but with max-chain 2, every group of 3 is too long (one finding per line merged)
        r = lint(src, select=["AL101"], options={"AL101": {"max-chain": 2}})
        assert codes(r) == ["AL101"]
        assert r.findings[0].data["length"] == 3

    def test_residual_around_each_tanh_gives_the_gradient_a_way_around(self, lint):
        src = """
        import torch
        import torch.nn as nn


        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(16, 16)

            def forward(self, x):
                return x + torch.tanh(self.fc(x))


        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                self.blocks = nn.Sequential(*[Block() for _ in range(10)])

            def forward(self, x):
                return self.blocks(x)
        """
        assert codes(lint(src, select=["AL101"])) == []

    def test_max_chain_option_and_severity(self, lint):
        r = lint(mlp(4, "nn.Sigmoid()"), select=["AL101"],
                 options={"AL101": {"max-chain": 3, "severity": "error"}})  # 4 > 3
        assert codes(r) == ["AL101"]
        assert r.findings[0].severity == "error"
        assert r.findings[0].data["limit"] == 3

    def test_severity_off_disables_the_rule(self, lint):
        r = lint(mlp(MAX_CHAIN + 4, "nn.Sigmoid()"), options={"AL101": {"severity": "off"}})
        assert "AL101" not in codes(r)


# ====================================================================== AL102 missing-normalization

class TestMissingNormalization:
    def test_deep_unnormalised_relu_stack_triggers(self, lint):
        n = NORM_DEPTH + 4
        src = mlp(n)
        r = lint(src, select=["AL102"])
        assert codes(r) == ["AL102"]
        f = r.findings[0]
        assert (f.module, f.line) == ("body.0", line_of(src, "nn.Linear("))
        assert f.data["depth"] == n
        assert f.data["layers"] == [f"body.{2 * i}" for i in range(n)]

    def test_stack_at_the_limit_is_clean(self, lint):
        assert codes(lint(mlp(NORM_DEPTH), select=["AL102"])) == []

    def test_stack_one_over_the_limit_triggers(self, lint):
        r = lint(mlp(NORM_DEPTH + 1), select=["AL102"])
        assert codes(r) == ["AL102"]
        assert r.findings[0].data["depth"] == NORM_DEPTH + 1

    @pytest.mark.parametrize("norm", ["nn.BatchNorm1d(16)", "nn.LayerNorm(16)",
                                      "nn.GroupNorm(4, 16)"])
    def test_normalised_stack_is_clean(self, norm, lint):
        assert codes(lint(mlp(NORM_DEPTH + 8, norm=norm), select=["AL102"])) == []

    def test_functional_layer_norm_counts(self, lint):
        src = """
        import torch.nn as nn
        import torch.nn.functional as F


        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                self.fcs = nn.ModuleList([nn.Linear(16, 16) for _ in range(DEPTH)])

            def forward(self, x):
                for fc in self.fcs:
                    x = F.relu(NORM)
                return x
        """.replace("DEPTH", str(NORM_DEPTH + 4))
        assert codes(lint(src.replace("NORM", "F.layer_norm(fc(x), (16,))"),
                          select=["AL102"])) == []
        assert codes(lint(src.replace("NORM", "fc(x)"), select=["AL102"])) == ["AL102"]

    def test_deep_conv_stack_triggers(self, lint):
        src = """
        import torch.nn as nn


        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = nn.Sequential(*[nn.Sequential(nn.Conv2d(4, 4, 3, padding=1),
                                                          nn.ReLU()) for _ in range(DEPTH)])

            def forward(self, x):
                return self.body(x)

        INPUT = {"shape": [2, 4, 8, 8]}
        """.replace("DEPTH", str(NORM_DEPTH + 2))
        r = lint(src, select=["AL102"])
        assert codes(r) == ["AL102"]
        assert r.findings[0].module == "body.0.0"
        assert r.findings[0].line == line_of(src, "nn.Conv2d(")

    def test_residual_connections_around_an_unnormalised_stack(self, lint):
        src = """
        import torch
        import torch.nn as nn


        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(16, 16)

            def forward(self, x):
                return x + torch.relu(self.fc(x))


        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                self.blocks = nn.Sequential(*[Block() for _ in range(DEPTH)])

            def forward(self, x):
                return self.blocks(x)
        """.replace("DEPTH", str(NORM_DEPTH + 8))
        assert codes(lint(src, select=["AL102"])) == []

    def test_max_depth_option(self, lint):
        r = lint(mlp(6), select=["AL102"], options={"AL102": {"max-depth": 5}})
        assert codes(r) == ["AL102"]
        assert r.findings[0].data["limit"] == 5


# ====================================================================== AL103 missing-residual

RESNET = """
import torch
import torch.nn as nn


class BasicBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        ZERO_INIT

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + x)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(*[BasicBlock(8) for _ in range(BLOCKS)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.blocks(torch.relu(self.stem(x)))
        return self.head(self.pool(x).flatten(1))

INPUT = {"shape": [2, 3, 8, 8]}
"""
RESNET_BLOCKS = RESIDUAL_DEPTH // 2 + 2  # 2 convs a block: deeper than the limit
RESNET = RESNET.replace("BLOCKS", str(RESNET_BLOCKS))

PLAIN_CNN = """
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(*[
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            for _ in range(DEPTH)
        ])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.body(torch.relu(self.stem(x)))
        return self.head(self.pool(x).flatten(1))

INPUT = {"shape": [2, 3, 8, 8]}
"""

DENSENET = """
import torch
import torch.nn as nn


class DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.bn = nn.BatchNorm1d(cin)
        self.fc = nn.Linear(cin, growth)

    def forward(self, x):
        y = self.fc(torch.relu(self.bn(x)))
        return JOIN


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(16, 8)
        self.layers = nn.Sequential(*[DenseLayer(WIDTH_IN, WIDTH_OUT) for i in range(DEPTH)])
        self.head = nn.Linear(HEAD_IN, 10)

    def forward(self, x):
        return self.head(self.layers(self.stem(x)))
"""
DENSE_LAYERS = RESIDUAL_DEPTH + 4
DENSE_CAT = (DENSENET.replace("JOIN", "torch.cat([x, y], dim=1)")
             .replace("WIDTH_IN", "8 + 4 * i").replace("WIDTH_OUT", "4")
             .replace("HEAD_IN", f"8 + 4 * {DENSE_LAYERS}").replace("DEPTH", str(DENSE_LAYERS)))
DENSE_PLAIN = (DENSENET.replace("JOIN", "y").replace("WIDTH_IN", "8")
               .replace("WIDTH_OUT", "8").replace("HEAD_IN", "8")
               .replace("DEPTH", str(DENSE_LAYERS)))

PRE_LN_TRANSFORMER = """
import math

import torch
import torch.nn as nn


class SelfAttention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        b, t, d = x.shape
        h = self.heads
        q = self.q(x).view(b, t, h, d // h).transpose(1, 2)
        k = self.k(x).view(b, t, h, d // h).transpose(1, 2)
        v = self.v(x).view(b, t, h, d // h).transpose(1, 2)
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // h), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        return self.proj(y)


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = SelfAttention(d, 2)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        RESIDUAL1
        RESIDUAL2
        return x


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.pos = nn.Parameter(torch.zeros(1, 12, 16))
        self.blocks = nn.Sequential(*[Block(16) for _ in range(BLOCKS)])
        self.ln_f = nn.LayerNorm(16)
        self.head = nn.Linear(16, 50)

    def forward(self, ids):
        x = self.embed(ids) + self.pos
        return self.head(self.ln_f(self.blocks(x)))

INPUT = {"shape": [2, 12], "dtype": "int64", "high": 50}
"""
# 4 weight layers a block on the shortest path (v, proj, 2 MLP): deeper than the limit
TRANSFORMER_BLOCKS = RESIDUAL_DEPTH // 4 + 2
PRE_LN_TRANSFORMER = PRE_LN_TRANSFORMER.replace("BLOCKS", str(TRANSFORMER_BLOCKS))
PRE_LN = (PRE_LN_TRANSFORMER.replace("RESIDUAL1", "x = x + self.attn(self.ln1(x))")
          .replace("RESIDUAL2", "x = x + self.mlp(self.ln2(x))"))
NO_RESIDUAL_TRANSFORMER = (PRE_LN_TRANSFORMER.replace("RESIDUAL1", "x = self.attn(self.ln1(x))")
                           .replace("RESIDUAL2", "x = self.mlp(self.ln2(x))"))


class TestMissingResidual:
    def test_plain_deep_cnn_triggers_at_its_first_layer(self, lint):
        src = PLAIN_CNN.replace("DEPTH", str(RESIDUAL_DEPTH + 4))
        r = lint(src, select=["AL103"])
        assert codes(r) == ["AL103"]
        f = r.findings[0]
        assert (f.module, f.line) == ("stem", line_of(src, "self.stem = nn.Conv2d"))
        assert f.data["depth"] == RESIDUAL_DEPTH + 6  # stem + body + head
        assert f.data["skip_joins"] == 0

    def test_plain_net_at_the_limit_is_clean(self, lint):
        src = PLAIN_CNN.replace("DEPTH", str(RESIDUAL_DEPTH - 2))  # + stem + head
        assert codes(lint(src, select=["AL103"])) == []

    def test_plain_net_one_over_the_limit_triggers(self, lint):
        r = lint(PLAIN_CNN.replace("DEPTH", str(RESIDUAL_DEPTH - 1)), select=["AL103"])
        assert codes(r) == ["AL103"]
        assert r.findings[0].data["depth"] == RESIDUAL_DEPTH + 1

    def test_resnet_is_clean(self, lint):
        r, a = lint(RESNET.replace("ZERO_INIT", "pass"), analysis=True)
        assert r.status == "ok", r.error
        assert r.tracer == "fx"
        assert codes(r) == []
        # the gradient reaches the stem through the skips: only stem + head on the short path
        stem = next(n for n in a.graph.nodes if n.module_path == "stem")
        assert a.facts.structure.layers_to_output[stem] == 1
        assert len(a.facts.structure.skip_joins) == RESNET_BLOCKS

    def test_densenet_concat_skips_are_clean(self, lint):
        r, a = lint(DENSE_CAT, analysis=True)
        assert r.status == "ok", r.error
        assert codes(r) == []
        assert len(a.facts.structure.skip_joins) == DENSE_LAYERS

    def test_same_net_without_the_concat_triggers(self, lint):
        # control for the DenseNet test: the same layers without concatenation
        r = lint(DENSE_PLAIN, select=["AL103"])
        assert codes(r) == ["AL103"]
        assert r.findings[0].module == "stem"

    def test_pre_ln_transformer_has_no_findings(self, lint):
        r, a = lint(PRE_LN, analysis=True)
        assert r.status == "ok", r.error
        assert r.tracer == "fx"
        assert codes(r) == [], [f.message for f in r.findings]
        # 2 residual adds a block are found from the graph
        assert len(a.facts.structure.skip_joins) >= 2 * TRANSFORMER_BLOCKS

    def test_the_same_transformer_without_residuals_triggers(self, lint):
        r = lint(NO_RESIDUAL_TRANSFORMER, select=["AL103"])
        assert codes(r) == ["AL103"]
        assert r.findings[0].module == "embed"

    def test_torch_transformer_encoder_has_no_findings(self, lint):
        src = """
        import torch.nn as nn


        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True)
                self.enc = nn.TransformerEncoder(layer, num_layers=LAYERS,
                                                 enable_nested_tensor=False)
                self.head = nn.Linear(16, 4)

            def forward(self, x):
                return self.head(self.enc(x))

        INPUT = {"shape": [2, 10, 16]}
        """
        layers = RESIDUAL_DEPTH // 4 + 2
        r, a = lint(src.replace("LAYERS", str(layers)), analysis=True)
        assert r.status == "ok", r.error
        assert r.tracer in ("fx", "exec")
        assert codes(r) == [], [f.message for f in r.findings]
        assert len(a.facts.structure.skip_joins) >= 2 * layers

    def test_max_depth_option(self, lint):
        r = lint(RESNET.replace("ZERO_INIT", "pass"), select=["AL103"],
                 options={"AL103": {"max-depth": 1}})
        assert codes(r) == ["AL103"]


# ====================================================================== AL104 poor-initialization

INIT_MLP = """
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 64)
        self.head = nn.Linear(64, 10)
        nn.init.kaiming_normal_(self.fc1.weight, nonlinearity="relu")
        nn.init.kaiming_normal_(self.fc2.weight, nonlinearity="relu")
        INIT

    def forward(self, x):
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.head(x)
"""


class TestPoorInitialization:
    def test_he_initialised_mlp_is_clean(self, lint):
        assert codes(lint(INIT_MLP.replace("INIT", "pass"))) == []

    @pytest.mark.parametrize("init,problem", [
        ("nn.init.zeros_(self.fc2.weight)", "zero"),
        ("nn.init.constant_(self.fc2.weight, 0.05)", "symmetric"),
        ("self.fc2.weight.data[:] = torch.randn(1, 64)", "symmetric"),
        ("nn.init.normal_(self.fc2.weight, std=1e-3)", "scale"),
        ("nn.init.normal_(self.fc2.weight, std=3.0)", "scale"),
    ], ids=["all-zero", "constant", "identical-rows", "tiny-std", "huge-std"])
    def test_bad_hidden_layer_init(self, init, problem, lint):
        src = INIT_MLP.replace("INIT", init)
        r = lint(src)
        assert codes(r) == ["AL104"]
        f = r.findings[0]
        assert (f.module, f.line) == ("fc2", line_of(src, "self.fc2 = nn.Linear"))
        assert f.data["problem"] == problem

    def test_tiny_std_factor_is_reported(self, lint):
        r = lint(INIT_MLP.replace("INIT", "nn.init.normal_(self.fc2.weight, std=1e-3)"))
        f = only(r, "AL104")[0]
        # He std for fan-in 64 is sqrt(2/64) = 0.177: about 177x too small
        assert 150 < 1 / f.data["factor"] < 210

    def test_zero_init_head_is_healthy(self, lint):
        assert codes(lint(INIT_MLP.replace("INIT", "nn.init.zeros_(self.head.weight)"))) == []

    def test_zero_init_head_before_log_softmax_in_a_sequential_is_healthy(self, lint):
        src = """
        import torch.nn as nn
        import torch.nn.functional as F


        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                self.net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Dropout(0.1),
                                         nn.Linear(64, 10))
                nn.init.kaiming_normal_(self.net[0].weight, nonlinearity="relu")
                nn.init.zeros_(self.net[3].weight)

            def forward(self, x):
                return F.log_softmax(self.net(x), dim=-1)
        """
        assert codes(lint(src)) == []

    def test_small_init_head_is_healthy(self, lint):
        src = INIT_MLP.replace("INIT", "nn.init.normal_(self.head.weight, std=1e-4)")
        assert codes(lint(src)) == []

    def test_zero_init_residual_last_bn_gamma_is_healthy(self, lint):
        r = lint(RESNET.replace("ZERO_INIT", "nn.init.zeros_(self.bn2.weight)"))
        assert r.status == "ok", r.error
        assert codes(r) == []

    def test_zero_init_residual_branch_last_linear_is_healthy(self, lint):
        src = """
        import torch
        import torch.nn as nn


        class Block(nn.Module):
            def __init__(self, d):
                super().__init__()
                self.fc1 = nn.Linear(d, d)
                self.fc2 = nn.Linear(d, d)
                nn.init.kaiming_normal_(self.fc1.weight, nonlinearity="relu")
                nn.init.zeros_(self.fc2.weight)

            def forward(self, x):
                return x + self.fc2(torch.relu(self.fc1(x)))


        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                self.blocks = nn.Sequential(*[Block(16) for _ in range(4)])
                self.head = nn.Linear(16, 4)
                nn.init.zeros_(self.head.weight)

            def forward(self, x):
                return self.head(self.blocks(x))
        """
        assert codes(lint(src)) == []

    def test_zero_bn_gamma_outside_a_residual_branch_is_reported(self, lint):
        src = """
        import torch
        import torch.nn as nn


        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc1 = nn.Linear(32, 64)
                self.ln = nn.LayerNorm(64)
                self.fc2 = nn.Linear(64, 10)
                nn.init.zeros_(self.ln.weight)

            def forward(self, x):
                return self.fc2(torch.relu(self.ln(self.fc1(x))))
        """
        r = lint(src)
        assert codes(r) == ["AL104"]
        f = r.findings[0]
        assert (f.module, f.line, f.data["problem"]) == \
            ("ln", line_of(src, "self.ln = nn.LayerNorm"), "zero-norm-scale")

    def test_zero_first_layer_of_residual_branch_is_reported(self, lint):
        # only the *last* layer of a branch may be zero: a zero first layer kills the branch's
        # gradient for good
        src = """
        import torch
        import torch.nn as nn


        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc1 = nn.Linear(16, 16)
                self.fc2 = nn.Linear(16, 16)
                nn.init.zeros_(self.fc1.weight)

            def forward(self, x):
                return x + self.fc2(torch.relu(self.fc1(x)))
        """
        r = lint(src)
        assert [(f.code, f.module) for f in r.findings] == [("AL104", "fc1")]

    def test_scale_cancelled_by_following_norm_is_not_reported(self, lint):
        src = """
        import torch
        import torch.nn as nn


        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc1 = nn.Linear(32, 64)
                self.bn = nn.BatchNorm1d(64)
                self.fc2 = nn.Linear(64, 10)
                nn.init.normal_(self.fc1.weight, std=1e-3)

            def forward(self, x):
                return self.fc2(torch.relu(self.bn(self.fc1(x))))
        """
        assert codes(lint(src)) == []

    def test_tanh_target_is_lecun_not_he(self, lint):
        src = """
        import torch.nn as nn


        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                self.layers = nn.ModuleList([nn.Linear(32, 32) for _ in range(3)])
                for layer in self.layers:
                    nn.init.normal_(layer.weight, std=32 ** -0.5 * FACTOR)

            def forward(self, x):
                for layer in self.layers:
                    x = layer(x).tanh()
                return x
        """
        # 1.2 x max-factor above LeCun, but only 0.85 x max-factor above He: reported only if
        # tanh is judged against LeCun
        r = lint(src.replace("FACTOR", str(MAX_FACTOR * 1.2)), select=["AL104"])
        assert codes(r) == ["AL104"]
        assert r.findings[0].data["target_sigma_w2"] == 1.0
        assert r.findings[0].data["problem"] == "scale"

    def test_max_factor_option(self, lint):
        off = MAX_FACTOR / 2
        src = INIT_MLP.replace("INIT", f"nn.init.normal_(self.fc2.weight, std=(2 / 64) ** 0.5 / "
                                       f"{off})")
        assert codes(lint(src)) == []  # off by max-factor / 2
        r = lint(src, options={"AL104": {"max-factor": off * 0.8}})
        assert codes(r) == ["AL104"]


# ====================================================================== AL107 recurrent-horizon

RNN = """
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = CELL(8, 32, batch_first=True)
        self.head = nn.Linear(32, 2)
        INIT

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])
"""

CELL_LOOP = """
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.cell = nn.RNNCell(8, 32)
        self.head = nn.Linear(32, 2)

    def forward(self, x):
        h = torch.zeros(x.shape[0], 32)
        for t in range(STEPS):
            h = self.cell(x[:, t], h)
        return self.head(h)

INPUT = {"shape": [2, 100, 8]}
"""

GATED_CELL_LOOP = """
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.cell = CELL(8, 32)
        self.head = nn.Linear(32, 2)

    def forward(self, x):
        h = torch.zeros(x.shape[0], 32)
        c = torch.zeros(x.shape[0], 32)
        for t in range(100):
            STEP
        return self.head(h)

INPUT = {"shape": [2, 100, 8]}
"""


class TestRecurrentHorizon:
    def test_vanilla_rnn_over_a_long_sequence_triggers(self, lint):
        src = RNN.replace("CELL", "nn.RNN").replace("INIT", "pass")
        r = lint(src, input={"shape": [2, 100, 8]})
        assert codes(r) == ["AL107"]
        f = r.findings[0]
        assert (f.module, f.line) == ("rnn", line_of(src, "self.rnn = nn.RNN"))
        assert f.data["steps"] == 100
        assert f.data["step_gain"] < 1
        assert f.data["horizon"] < 100

    def test_vanilla_rnn_over_a_short_sequence_is_clean(self, lint):
        src = RNN.replace("CELL", "nn.RNN").replace("INIT", "pass")
        assert codes(lint(src, input={"shape": [2, 5, 8]})) == []

    def test_sequence_length_comes_from_the_example_input(self, lint):
        src = RNN.replace("CELL", "nn.RNN").replace("INIT", "pass")
        r = lint(src, input={"shape": [2, 60, 8]})
        assert only(r, "AL107")[0].data["steps"] == 60

    def test_relu_rnn_with_large_recurrent_weights_explodes(self, lint):
        src = RNN.replace("CELL", "nn.RNN").replace(
            "batch_first=True", "batch_first=True, nonlinearity='relu'").replace(
            "INIT", "nn.init.normal_(self.rnn.weight_hh_l0, std=3 / 32 ** 0.5)")
        r = lint(src, input={"shape": [2, 100, 8]})
        assert codes(r) == ["AL107"]
        assert r.findings[0].data["step_gain"] > 1

    @pytest.mark.parametrize("cell", ["nn.LSTM", "nn.GRU"])
    def test_gated_recurrent_layers_are_clean(self, cell, lint):
        src = RNN.replace("CELL", cell).replace("INIT", "pass")
        r = lint(src, input={"shape": [2, 100, 8]})
        assert r.status == "ok", r.error
        assert codes(r) == []

    def test_rnn_cell_unrolled_in_a_python_loop_triggers(self, lint):
        src = CELL_LOOP.replace("STEPS", "100")
        r = lint(src)
        assert r.status == "ok", r.error
        al107 = only(r, "AL107")
        assert len(al107) == 1
        f = al107[0]
        assert (f.module, f.line) == ("cell", line_of(src, "self.cell = nn.RNNCell"))
        assert f.data["steps"] == 100

    def test_rnn_cell_loop_over_few_steps_is_clean(self, lint):
        r = lint(CELL_LOOP.replace("STEPS", "5"))
        assert r.status == "ok", r.error
        assert codes(r) == []

    @pytest.mark.parametrize("cell,step", [
        ("nn.LSTMCell", "h, c = self.cell(x[:, t], (h, c))"),
        ("nn.GRUCell", "h = self.cell(x[:, t], h)"),
    ])
    def test_gated_cells_unrolled_over_100_steps_have_no_findings(self, cell, step, lint):
        # time steps are AL107's business: a gated cell read over 100 steps is the documented
        # fix, and must not turn into a "stack of 101 layers" for AL102/AL103
        r = lint(GATED_CELL_LOOP.replace("CELL", cell).replace("STEP", step))
        assert r.status == "ok", r.error
        assert codes(r) == [], [f.message for f in r.findings]

    def test_rnn_cell_loop_is_reported_by_al107_only(self, lint):
        r = lint(CELL_LOOP.replace("STEPS", "100"))
        assert codes(r) == ["AL107"], [f.message for f in r.findings]

    def test_stacked_distinct_cells_still_count_as_layers(self, lint):
        # *different* LSTMCells applied once each are a plain stack of layers
        src = """
        import torch
        import torch.nn as nn


        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                self.cells = nn.ModuleList([nn.LSTMCell(8, 8) for _ in range(DEPTH)])
                self.head = nn.Linear(8, 2)

            def forward(self, x):
                for cell in self.cells:
                    x, _ = cell(x)
                return self.head(x)
        """.replace("DEPTH", str(RESIDUAL_DEPTH + 4))
        r = lint(src, select=["AL103"], input={"shape": [2, 8]})
        assert codes(r) == ["AL103"]

    def test_irnn_documented_fix_is_clean(self, lint):
        src = RNN.replace("CELL", "nn.RNN").replace(
            "batch_first=True", "batch_first=True, nonlinearity='relu'").replace(
            "INIT", "nn.init.eye_(self.rnn.weight_hh_l0); nn.init.zeros_(self.rnn.bias_hh_l0);"
                    " nn.init.zeros_(self.rnn.bias_ih_l0)")
        r = lint(src, input={"shape": [2, 100, 8]})
        assert codes(r) == []

    def test_min_gain_option(self, lint):
        src = RNN.replace("CELL", "nn.RNN").replace("INIT", "pass")
        assert codes(lint(src, input={"shape": [2, 20, 8]})) == ["AL107"]  # horizon ~11
        r = lint(src, input={"shape": [2, 20, 8]}, options={"AL107": {"min-gain": 1e-8}})
        assert codes(r) == []  # horizon ~30 steps


# ====================================================================== AL105 / AL106 verdicts

def mlp_with_head(n_layers: int, after: str, init: str = "pass", width: int = 64) -> str:
    """``n_layers`` x (Linear [init'ed by ``init``, which sees it as ``fc``], ``after``...) and a
    Linear head."""
    return f"""
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        layers = []
        for _ in range({n_layers}):
            fc = nn.Linear({width}, {width})
            {init}
            layers += [fc, {after}]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear({width}, 10)

    def forward(self, x):
        return self.head(self.body(x))
"""


SIGMOID_12 = mlp_with_head(12, "nn.Sigmoid()")
TANH_24_CHAOTIC = mlp_with_head(24, "nn.Tanh()", "nn.init.normal_(fc.weight, std=5 / 64 ** 0.5)")
TANH_24_XAVIER = mlp_with_head(24, "nn.Tanh()", "nn.init.xavier_normal_(fc.weight)")

# first op a custom einsum layer: no input can be inferred from it
CUSTOM_FIRST_OP = """
import torch
import torch.nn as nn


class Mix(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.w = nn.Parameter(torch.randn(d, d) / d ** 0.5)

    def forward(self, x):
        return torch.einsum("bi,ij->bj", x, self.w)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.mix1 = Mix(16)
        self.mix2 = Mix(16)

    def forward(self, x):
        return self.mix2(torch.relu(self.mix1(x)))
"""


class TestGradientVerdicts:
    @staticmethod
    def verdicts(lint, src):
        """AL105/AL106 only, after checking the estimate did run (a "no finding" means
        something)."""
        r = lint(src, select=["AL105", "AL106"])
        assert r.status == "ok", r.error
        assert r.gradient_flow, r.notes
        return r

    def test_deep_sigmoid_mlp_vanishes(self, lint):
        r = self.verdicts(lint, SIGMOID_12)
        assert codes(r) == ["AL105"]
        f = r.findings[0]
        assert "decades" in f.message and "Sigmoid" in f.message, f.message
        assert f.data["decades"] < -VanishingGradient.options["max-decades"]
        assert r.gradient_decades == pytest.approx(f.data["decades"], abs=1e-3)
        # at the earliest layer
        assert (f.module, f.line) == ("body.0", line_of(SIGMOID_12, "fc = nn.Linear"))
        assert (f.severity, f.name) == ("warning", "vanishing-gradient")

    def test_normalised_sigmoid_stack_still_vanishes(self, lint):
        # Linear -> LayerNorm -> Sigmoid: the linears are scale-invariant, which excuses a
        # too-large gradient (AL106) but not a vanishing one (measured -3.9..-4.3 decades)
        r = self.verdicts(lint, mlp_with_head(12, "nn.LayerNorm(64), nn.Sigmoid()"))
        assert codes(r) == ["AL105"]
        assert r.gradient_decades < -VanishingGradient.options["max-decades"]

    def test_scale_invariant_layers_are_not_judged_for_explosion(self, lint):
        # a deep Linear -> BatchNorm -> ReLU stack: gradients grow ~pi/(pi-1) per layer going
        # back (Yang et al. 2019), almost 4 decades here, but every linear is followed by BN,
        # so the growth corrects itself in training (as in BN ResNets): no AL106
        r = lint(mlp_with_head(64, "nn.BatchNorm1d(64), nn.ReLU()"), select=["AL105", "AL106"],
                 input={"shape": [32, 64]})
        assert r.status == "ok", r.error
        assert r.gradient_decades > VanishingGradient.options["max-decades"]
        assert codes(r) == []

    @pytest.mark.parametrize("src", [
        mlp_with_head(12, "nn.LayerNorm(64), nn.GELU()"),
        mlp_with_head(12, "nn.ReLU()", 'nn.init.kaiming_normal_(fc.weight, nonlinearity="relu")'),
        RESNET.replace("ZERO_INIT", "pass"),
        RESNET.replace("ZERO_INIT", "nn.init.zeros_(self.bn2.weight)"),
        PRE_LN,
    ], ids=["sigmoid-mlp-fixed-with-layernorm-gelu", "relu-mlp-he-init", "bn-resnet",
            "zero-init-residual-resnet", "pre-ln-transformer"])
    def test_healthy_models_get_no_verdict(self, src, lint):
        r = self.verdicts(lint, src)
        assert codes(r) == [], [f.message for f in r.findings]

    def test_chaotic_tanh_mlp_explodes(self, lint):
        r = self.verdicts(lint, TANH_24_CHAOTIC)
        assert codes(r) == ["AL106"]
        f = r.findings[0]
        assert "decades" in f.message and "above" in f.message, f.message
        assert f.data["decades"] > ExplodingGradient.options["max-decades"]
        assert (f.module, f.severity, f.name) == ("body.0", "warning", "exploding-gradient")

    def test_the_same_tanh_mlp_with_xavier_init_does_not_explode(self, lint):
        r = self.verdicts(lint, TANH_24_XAVIER)
        assert codes(r) == [], [f.message for f in r.findings]

    def test_layers_get_a_predicted_grad_rms(self, lint):
        r = lint(SIGMOID_12.replace("nn.Sigmoid()", "nn.ReLU()"))
        assert r.status == "ok", r.error
        assert r.input is not None
        assert [layer.module for layer in r.layers] == \
            [f"body.{2 * i}" for i in range(12)] + ["head"]
        for layer in r.layers:
            assert isinstance(layer.grad_rms, float) and layer.grad_rms > 0, layer

    def test_no_grad_rms_when_no_input_can_be_inferred(self, lint):
        r = lint(CUSTOM_FIRST_OP)
        assert r.status == "ok", r.error
        assert r.input is None
        assert [layer.module for layer in r.layers] == ["mix1", "mix2"]
        assert all(layer.grad_rms is None for layer in r.layers)
        assert r.gradient_decades is None
        assert any("AL105 skipped" in n for n in r.notes), r.notes
        # control: the same model given an input is estimated
        r = lint(CUSTOM_FIRST_OP, input={"shape": [4, 16]})
        assert all(isinstance(layer.grad_rms, float) and layer.grad_rms > 0
                   for layer in r.layers)
