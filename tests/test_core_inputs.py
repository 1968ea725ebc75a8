"""Example inputs: from the config (one tensor or a mapping by argument name), from
--input-shape/--input-dtype, inferred from the first layer, and a clear word when none is found."""

from __future__ import annotations

import pytest
import torch

from archlint.loading.inputs import InputError, parse_input, parse_shape
from helpers import codes, graph_of, invoke, model_source, report_of, two_inputs, write


def spec_of(result):
    return graph_of(result).input_spec


def input_nodes(result):
    return {n.target: (n.shape, n.dtype) for n in graph_of(result).input_nodes}


# ------------------------------------------------------------------------------ inference

@pytest.mark.parametrize("first,shape", [
    ("nn.Linear(12, 4)", (8, 12)),
    ("nn.Conv2d(3, 4, 3, padding=1)", (8, 3, 32, 32)),
    ("nn.Conv1d(5, 4, 3, padding=1)", (8, 5, 128)),
    ("nn.Conv3d(2, 4, 3, padding=1)", (8, 2, 16, 16, 16)),
    ("nn.LayerNorm(10)", (8, 32, 10)),
    ("nn.BatchNorm2d(3)", (8, 3, 32, 32)),
    ("nn.RNN(6, 4, batch_first=True)", (8, 32, 6)),
    ("nn.LSTM(6, 4)", (32, 8, 6)),
])
def test_input_inferred_from_the_first_layer(first, shape, lint):
    r = lint(model_source(f"self.first = {first}", "return self.first(x)"))
    assert r.status == "ok", r.error
    spec = spec_of(r).tensors[None]
    assert spec.shape == shape
    assert spec.dtype == torch.float32
    assert "inferred from first" in r.input
    assert input_nodes(r)["x"][0] == shape


def test_first_layer_is_the_one_reading_the_input_not_the_first_defined(lint):
    r = lint(model_source("""
        self.head = nn.Linear(16, 2)
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
    """, "return self.head(self.pool(self.stem(x)).flatten(1))"))
    assert spec_of(r).tensors[None].shape == (8, 3, 32, 32)
    assert "stem" in r.input


def test_embedding_first_model_gets_integer_ids(lint):
    r = lint(model_source("""
        self.embed = nn.Embedding(37, 16)
        self.head = nn.Linear(16, 37)
    """, "return self.head(self.embed(ids))", args="ids"))
    assert r.status == "ok", r.error
    spec = spec_of(r).tensors[None]
    assert spec.dtype == torch.int64
    assert (spec.low, spec.high) == (0, 37)
    assert len(spec.shape) == 2
    assert input_nodes(r)["ids"][1] == torch.int64
    ids = spec.make()
    assert ids.dtype == torch.int64 and 0 <= int(ids.min()) and int(ids.max()) < 37
    # ids carry no gradient: the embedding is where the gradient paths end
    assert graph_of(r).input_nodes[0].users[0].grad_parents() == []


def test_embedding_first_model_through_the_exec_tracer(lint):
    # the forward really runs here: float or out-of-range ids would make it fail
    r = lint(model_source("""
        self.embed = nn.Embedding(1000, 8)
        self.head = nn.Linear(8, 2)
    """, """
        if ids.max() >= 1000 or ids.dtype != torch.long:
            raise ValueError("bad ids")
        return self.head(self.embed(ids).mean(1))
    """, args="ids"))
    assert r.status == "ok", r.error
    assert r.tracer == "exec"
    assert spec_of(r).tensors[None].high == 1000


def test_functional_first_layer_on_a_parameter(lint):
    linear = model_source("self.w = nn.Parameter(torch.randn(12, 5) / 5 ** 0.5)",
                          "return torch.nn.functional.linear(x, self.w)")
    assert spec_of(lint(linear)).tensors[None].shape == (8, 5)
    matmul = model_source("self.w = nn.Parameter(torch.randn(5, 12) / 5 ** 0.5)",
                          "return x @ self.w")
    assert spec_of(lint(matmul)).tensors[None].shape == (8, 5)


# ------------------------------------------------------------------------------ given inputs

@pytest.mark.parametrize("tracer", ["fx", "exec"])
def test_several_inputs_from_a_mapping_are_passed_by_name(tracer, lint):
    guard = "pass" if tracer == "fx" else "assert ids.dtype == torch.long and ids.max() < 20"
    src = two_inputs(guard=guard)
    # given in the other order than forward's arguments: bound by name
    r = lint(src, input={"ids": {"shape": [3, 7], "dtype": "int64", "high": 20},
                         "feats": {"shape": [3, 90, 6]}})
    assert r.status == "ok", r.error
    assert r.tracer == tracer
    assert input_nodes(r) == {"feats": ((3, 90, 6), torch.float32),
                              "ids": ((3, 7), torch.int64)}
    # the sequence length of the argument that feeds the RNN is the one used
    assert codes(r) == ["AL107"]
    assert r.findings[0].data["steps"] == 90
    assert "(example_input)" in r.input


def test_several_inputs_are_inferred_per_argument(lint):
    r = lint(two_inputs())
    assert r.status == "ok", r.error
    spec = spec_of(r)
    assert set(spec.tensors) == {"feats", "ids"}
    assert spec.tensors["feats"].shape == (8, 32, 6)
    assert spec.tensors["ids"].dtype == torch.int64 and spec.tensors["ids"].high == 20


def test_mapping_naming_an_unknown_argument_is_an_error(lint):
    r = lint(two_inputs(),
             input={"feats": {"shape": [3, 9, 6]}, "idx": {"shape": [3, 7], "dtype": "int64"}})
    assert r.status == "error"
    assert "ids" in r.error or "idx" in r.error
    assert "\n" not in r.error


def rnn_with_a_second_argument(name: str, rnn_input: str = "x", scale: str = "") -> str:
    """An RNN classifier whose forward takes ``name`` besides ``x``."""
    return model_source("""
        self.rnn = nn.RNN(8, 32, batch_first=True)
        self.head = nn.Linear(32, 2)
    """, f"""
        out, _ = self.rnn({rnn_input})
        return self.head(out[:, -1]){scale}
    """, args=f"x, {name}")


def test_no_input_found_and_a_rule_needs_one_says_so(lint):
    # `temperature` reaches no layer and is a one-element tensor (none of the per-sample
    # shapes tried runs), so no input can be inferred for it
    src = rnn_with_a_second_argument("temperature", scale=" / temperature.view(1)")
    r = lint(src)
    assert r.status == "ok", r.error
    assert r.input is None
    notes = [n for n in r.notes if "AL107" in n]
    assert len(notes) == 1
    assert "no example input" in notes[0] and "--input-shape" in notes[0]
    assert "AL107" not in codes(r)
    # structural rules still run without shapes
    ok = lint(src, input={"x": {"shape": [2, 100, 8]}, "temperature": {"shape": [1]}})
    assert codes(ok) == ["AL107"]


def test_mask_argument_does_not_borrow_another_inputs_spec(lint):
    # the mask reaches the RNN only through x.masked_fill: it must not take the RNN's float
    # spec; it is guessed as a boolean mask over x
    r = lint(rnn_with_a_second_argument("mask", rnn_input="x.masked_fill(mask, 0.0)"))
    assert r.status == "ok", r.error
    spec = spec_of(r).tensors
    assert spec["mask"].dtype == torch.bool and spec["mask"].shape == spec["x"].shape


# ------------------------------------------------------------------------------ parsing

def test_parse_shapes():
    assert parse_shape("8,3,32,32", "x") == (8, 3, 32, 32)
    assert parse_shape("8x3x32x32", "x") == (8, 3, 32, 32)
    assert parse_shape([2, 5], "x") == (2, 5)
    assert parse_shape("8, 3, 32,", "x") == (8, 3, 32)
    # an empty field is an error, never a silently dropped dimension
    for bad in ("8,a", "", "8,,32", "2,x,4", [2, -1], [2, 0], "2,0", [2.5], [True, 2]):
        with pytest.raises(InputError):
            parse_shape(bad, "where")


def test_parse_input_forms():
    one = parse_input({"shape": [2, 3]}, "input")
    assert list(one.tensors) == [None] and one.tensors[None].dtype == torch.float32
    many = parse_input({"a": {"shape": [2, 3]}, "b": {"shape": [2], "dtype": "long"}}, "input")
    assert many.tensors["b"].dtype == torch.int64 and many.tensors["b"].high == 2
    for bad in ({}, [2, 3], {"shape": [2], "colour": 1}, {"shape": [2], "high": 0},
                {"a": {"dtype": "float32"}}, {"shape": [2], "dtype": "float99"}):
        with pytest.raises(InputError):
            parse_input(bad, "input")


# ------------------------------------------------------------------------------ command line

RNN_FILE = model_source(name="Seq", init="""
    self.rnn = nn.RNN(4, 16, batch_first=True)
    self.head = nn.Linear(16, 2)
""", forward="""
    out, _ = self.rnn(x)
    return self.head(out[:, -1])
""")


@pytest.fixture
def rnn_project(tmp_path, monkeypatch):
    write(tmp_path / "seq.py", RNN_FILE)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_json(*args):
    result = invoke(*args, "--format", "json")
    return result, report_of(result) if result.stdout.strip() else None


def test_input_shape_flag_is_used(rnn_project):
    result, report = run_json("seq.py", "--input-shape", "2,5,4", "--input-dtype", "float32")
    assert result.exit_code == 0, result.stderr
    [t] = report["targets"]
    assert t["input"].startswith("[2, 5, 4] float32") and "command line" in t["input"]
    result, report = run_json("seq.py", "--input-shape", "2x300x4")
    assert result.exit_code == 1
    [f] = report["targets"][0]["findings"]
    assert (f["code"], f["data"]["steps"]) == ("AL107", 300)


def test_input_shape_flag_wins_over_the_config(rnn_project):
    write(rnn_project / ".archlint.yaml", "input: {shape: [2, 300, 4]}\n")
    result, report = run_json("seq.py")
    assert report["targets"][0]["findings"][0]["data"]["steps"] == 300
    result, report = run_json("seq.py", "--input-shape", "2,5,4")
    assert report["targets"][0]["findings"] == []
    assert "command line" in report["targets"][0]["input"]


def test_per_target_input_in_the_config(rnn_project):
    write(rnn_project / ".archlint.yaml", """
        input: {shape: [2, 5, 4]}
        targets:
          - target: seq.py:Seq
            input: {shape: [2, 200, 4]}
    """)
    result, report = run_json()
    [t] = report["targets"]
    assert t["target"] == "seq.py:Seq"
    assert t["findings"][0]["data"]["steps"] == 200
    assert t["input"].endswith("(config)")


@pytest.mark.parametrize("args,needle", [
    (["--input-shape", "2,x,4"], "--input-shape"),
    (["--input-shape", "2,5,4", "--input-dtype", "float99"], "float99"),
    (["--input-dtype", "int64"], "--input-shape"),
])
def test_bad_input_flags_exit_2(rnn_project, args, needle):
    result = invoke("seq.py", *args)
    assert result.exit_code == 2
    assert needle in result.stderr
    assert "Traceback" not in result.stderr


# A diffusion U-Net's forward(x, t): `t` reaches its first layer only through a sinusoidal
# embedding (torch.arange of a constant size meets the traced tensors), so its shape cannot be
# read off that layer; the per-sample timestep [B] is found by running forward.
DIFFUSION = '''
import math
from dataclasses import dataclass
import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Config:
    channels: int = 3
    width: int = 16
    time_dim: int = 32


def timestep_embedding(t, dim):
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Block(nn.Module):
    def __init__(self, c, tdim):
        super().__init__()
        self.norm = nn.GroupNorm(4, c)
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.temb = nn.Linear(tdim, c)

    def forward(self, x, temb):
        h = self.conv(F.silu(self.norm(x)))
        return x + h + self.temb(temb)[:, :, None, None]


class UNet(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.time_mlp = nn.Sequential(nn.Linear(cfg.time_dim, 64), nn.SiLU(),
                                      nn.Linear(64, cfg.time_dim))
        self.stem = nn.Conv2d(cfg.channels, cfg.width, 3, padding=1)
        self.blocks = nn.ModuleList([Block(cfg.width, cfg.time_dim) for _ in range(3)])
        self.out = nn.Conv2d(cfg.width, cfg.channels, 3, padding=1)

    def forward(self, x, t):
        temb = self.time_mlp(timestep_embedding(t, self.cfg.time_dim))
        h = self.stem(x)
        for blk in self.blocks:
            h = blk(h, temb)
        SHAPE_CHECK
        return self.out(h)


def build():
    return UNet(Config())
'''


@pytest.mark.parametrize("check", [
    "",  # fx traces it
    "if h.shape[-1] != x.shape[-1]:\n            h = F.interpolate(h, size=x.shape[-2:])",
])
def test_a_timestep_argument_is_found_by_running_forward(check, lint):
    r = lint(DIFFUSION.replace("SHAPE_CHECK", check), cls="build")
    assert r.status == "ok", r.error
    spec = spec_of(r).tensors
    assert spec["x"].shape == (8, 3, 32, 32)
    assert spec["t"].shape == (8,) and spec["t"].dtype == torch.float32
    assert "t=[8] float32 (guessed" in r.input
    assert r.layers and all(layer.grad_rms is not None for layer in r.layers)


def test_an_argument_no_shape_fits_is_not_guessed(lint):
    # the candidates for `t` all fail (it must be a [B, 5] tensor), so no input is inferred
    src = DIFFUSION.replace("SHAPE_CHECK", "").replace(
        "temb = self.time_mlp(timestep_embedding(t, self.cfg.time_dim))",
        "temb = self.time_mlp(timestep_embedding(t.view(-1, 5).sum(1), self.cfg.time_dim))")
    r = lint(src, cls="build")
    assert r.input is None or "t=" not in r.input


RECOMMENDER = '''
import torch
import torch.nn as nn


class TwoTower(nn.Module):
    def __init__(self):
        super().__init__()
        self.user = nn.Embedding(1000, 32)
        self.item = nn.Embedding(500, 32)
        self.mlp = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, batch):
        u = self.user(batch["user_id"])
        i = self.item(batch["item_id"])
        return {"score": self.mlp(torch.cat([u, i], -1)).squeeze(-1)}
'''


def test_a_mapping_argument_gets_a_spec_per_key(lint):
    r = lint(RECOMMENDER, cls="TwoTower")
    assert r.status == "ok", r.error
    arg = spec_of(r).tensors[None]
    assert set(arg.items) == {"user_id", "item_id"}
    assert arg.items["user_id"].dtype == torch.int64 and arg.items["user_id"].high == 1000
    assert arg.items["item_id"].high == 500
    assert all(layer.grad_rms for layer in r.layers)


def test_a_mapping_argument_from_the_config_and_back_through_json(lint):
    from archlint.loading.inputs import DictArg, input_from_data, input_to_data

    spec = parse_input({"batch": {"user_id": {"shape": [4], "dtype": "int64", "high": 10},
                                  "item_id": {"shape": [4], "dtype": "int64", "high": 5}}},
                       "input")
    arg = spec.tensors["batch"]
    assert isinstance(arg, DictArg) and arg.items["user_id"].shape == (4,)
    back = input_from_data(input_to_data(spec))
    assert back.describe() == spec.describe()
    r = lint(RECOMMENDER, cls="TwoTower", input={"batch": {
        "user_id": {"shape": [4], "dtype": "int64", "high": 10},
        "item_id": {"shape": [4], "dtype": "int64", "high": 5}}})
    assert r.status == "ok", r.error
    with pytest.raises(InputError, match=r"input\.batch.*unknown key 'shap'"):
        parse_input({"batch": {"shap": [4]}}, "input")


GNN = '''
import torch
import torch.nn as nn


class GCNLayer(nn.Module):
    def __init__(self, din, dout):
        super().__init__()
        self.lin = nn.Linear(din, dout)

    def forward(self, x, edge_index):
        src, dst = edge_index
        h = self.lin(x)
        out = torch.zeros_like(h).index_add_(0, dst, h[src])
        deg = torch.zeros(x.size(0)).index_add_(0, dst, torch.ones_like(dst, dtype=torch.float))
        return out / deg.clamp(min=1).unsqueeze(-1)


class GCN(nn.Module):
    def __init__(self, din=16, hidden=32, layers=3):
        super().__init__()
        dims = [din] + [hidden] * layers
        self.layers = nn.ModuleList([GCNLayer(a, b) for a, b in zip(dims, dims[1:])])

    def forward(self, x, edge_index):
        for layer in self.layers:
            x = torch.relu(layer(x, edge_index))
        return x
'''


def test_a_graph_edge_list_is_found_by_running_forward(lint):
    r = lint(GNN, cls="GCN")
    assert r.status == "ok", r.error
    edges = spec_of(r).tensors["edge_index"]
    assert edges.shape[0] == 2 and edges.dtype == torch.int64
    assert edges.high == spec_of(r).tensors["x"].shape[0]  # node ids index x's rows


CONDITIONAL_GENERATOR = '''
import torch
import torch.nn as nn


class Generator(nn.Module):
    def __init__(self, latent_dim=100, n_classes=10):
        super().__init__()
        self.label_emb = nn.Embedding(n_classes, n_classes)
        self.model = nn.Sequential(nn.Linear(latent_dim + n_classes, 128),
                                   nn.LeakyReLU(0.2), nn.Linear(128, 784), nn.Tanh())

    def forward(self, noise, labels):
        gen_input = torch.cat((self.label_emb(labels), noise), -1)
        return self.model(gen_input).view(-1, 1, 28, 28)
'''


def test_a_conditional_generators_noise_and_labels_are_found(lint):
    # noise reaches the first Linear through a cat with the label embedding: its width is the
    # Linear's less the embedding's, and the labels are one id per sample
    r = lint(CONDITIONAL_GENERATOR, cls="Generator")
    assert r.status == "ok", r.error
    spec = spec_of(r).tensors
    assert spec["noise"].shape == (8, 100)
    assert spec["labels"].shape == (8,) and spec["labels"].high == 10


def test_two_images_concatenated_along_channels_are_found(lint):
    # pix2pix's PatchGAN discriminator reads cat([img_A, img_B], 1)
    r = lint('''
import torch
import torch.nn as nn


class PatchD(nn.Module):
    def __init__(self, in_channels=3):
        super().__init__()
        self.model = nn.Sequential(nn.Conv2d(in_channels * 2, 64, 4, stride=2, padding=1),
                                   nn.LeakyReLU(0.2), nn.Conv2d(64, 1, 4, padding=1))

    def forward(self, img_A, img_B):
        return self.model(torch.cat((img_A, img_B), 1))
''', cls="PatchD")
    assert r.status == "ok", r.error
    spec = spec_of(r).tensors
    assert spec["img_A"].shape == spec["img_B"].shape == (8, 3, 32, 32)


def test_an_attention_mask_argument_is_guessed_as_a_mask_over_the_sequence(lint):
    # The Annotated Transformer's forward(src, src_mask): src_mask is [B, 1, T]; a per-sample
    # guess ([B] ids, [B] floats) also runs, through broadcasting, and must not be chosen
    r = lint('''
import math
import torch
import torch.nn as nn


class Encoder(nn.Module):
    def __init__(self, vocab=1000, d=64, h=4):
        super().__init__()
        self.h, self.d = h, d
        self.emb = nn.Embedding(vocab, d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, vocab)

    def forward(self, src, src_mask):
        x = self.emb(src) * math.sqrt(self.d)
        b = x.size(0)
        q, k, v = [t.view(b, -1, self.h, self.d // self.h).transpose(1, 2)
                   for t in self.qkv(x).chunk(3, -1)]
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.d // self.h)
        scores = scores.masked_fill(src_mask.unsqueeze(1) == 0, -1e9)
        x = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, -1, self.d)
        return self.out(x)
''', cls="Encoder")
    assert r.status == "ok", r.error
    spec = spec_of(r).tensors
    assert spec["src"].shape == (8, 32)
    assert spec["src_mask"].shape == (8, 1, 32) and spec["src_mask"].dtype == torch.bool
    assert not [f for f in r.findings if f.code in ("AL105", "AL106")]


def test_a_recurrent_state_argument_starts_at_none(lint):
    # PyTorch's word_language_model: forward(input, hidden) with hidden from init_hidden(bsz);
    # the LSTM's input spec must not be taken for its state (that gave a 298-decade AL105)
    r = lint('''
import torch.nn as nn


class RNNModel(nn.Module):
    def __init__(self, ntoken=1000, ninp=64, nhid=64, nlayers=2):
        super().__init__()
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=0.2)
        self.decoder = nn.Linear(nhid, ntoken)

    def forward(self, input, hidden):
        output, hidden = self.rnn(self.encoder(input), hidden)
        return self.decoder(output), hidden
''', cls="RNNModel")
    assert r.status == "ok", r.error
    assert spec_of(r).tensors["hidden"].value is None
    assert "hidden=None" in r.input
    assert not [f for f in r.findings if f.code in ("AL105", "AL106")]
    assert all(layer.grad_rms for layer in r.layers)


def test_sequence_lengths_for_a_packed_rnn_are_guessed_full(lint):
    # forward(text, text_lengths) with pack_padded_sequence (the classic sentiment tutorial):
    # one full length per sequence, in the layout the LSTM reads ([T, B] here)
    r = lint('''
import torch
import torch.nn as nn


class RNN(nn.Module):
    def __init__(self, vocab_size=500, embedding_dim=16, hidden_dim=32):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=1)
        self.rnn = nn.LSTM(embedding_dim, hidden_dim, bidirectional=True)
        self.fc = nn.Linear(hidden_dim * 2, 1)

    def forward(self, text, text_lengths):
        embedded = self.embedding(text)
        packed = nn.utils.rnn.pack_padded_sequence(embedded, text_lengths.to("cpu"))
        packed_output, (hidden, cell) = self.rnn(packed)
        output, output_lengths = nn.utils.rnn.pad_packed_sequence(packed_output)
        return self.fc(torch.cat((hidden[-2, :, :], hidden[-1, :, :]), dim=1))
''', cls="RNN")
    assert r.status == "ok", r.error
    spec = spec_of(r).tensors
    steps, batch = spec["text"].shape
    lengths = spec["text_lengths"]
    assert lengths.shape == (batch,) and (lengths.low, lengths.high) == (steps, steps + 1)
    assert not [f for f in r.findings if f.code in ("AL105", "AL106")]
