"""Issue 11: GANs and losses.

- the source rules (AL108, AL109) on training scripts with no model, on files whose models do not
  build, with suppression comments, once per file, in the subprocess mode;
- AL110's prediction against the live model (--measure), its option and its fixes;
- the generator/discriminator pair linted as D(G(z)), found by name or by the config's
  ``feeds:``, and the note when the generator's output does not fit the discriminator.

The rules' own cases are in tests/fixtures/rules/AL108.py, AL109.py, AL110.py.
"""

from __future__ import annotations

import pytest

from helpers import ROOT, invoke, line_of, report_of, run_paths, write

GAN = ROOT / "tests" / "fixtures" / "gan"

MODELS = """
import torch.nn as nn


class Generator(nn.Module):
    def __init__(self, nz=16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(nz, 64), nn.ReLU(), nn.Linear(64, 32), nn.Tanh())

    def forward(self, z):
        return self.net(z)


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 64), nn.LeakyReLU(0.2), nn.Linear(64, 1),
                                 nn.Sigmoid())

    def forward(self, x):
        return self.net(x)
"""

TRAIN = """
import argparse

import torch
import torch.nn as nn

from models import Discriminator, Generator


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--nz", type=int, default=16)
    args = parser.parse_args()
    netG, netD = Generator(args.nz), Discriminator()
    criterion = nn.BCELoss()
    optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4)
    for step in range(100):
        noise = torch.randn(64, args.nz)
        fake = netG(noise)
        output = netD(fake).view(-1)
        errG = torch.log(1 - output).mean(){comment}
        optimizerG.zero_grad()
        errG.backward()
        optimizerG.step()


if __name__ == "__main__":
    main()
"""


def _json(*args: str) -> dict:
    result = invoke(*args, "--format", "json")
    assert result.exit_code in (0, 1, 2), result.output  # 2: a model could not be built
    return report_of(result)


def _findings(report: dict, code: str) -> list[dict]:
    return [f for t in report["targets"] for f in t["findings"] if f["code"] == code]


# ------------------------------------------------------------------------------ source rules

def test_training_script_without_a_model_is_read(tmp_path, monkeypatch):
    write(tmp_path / "models.py", MODELS)
    train = write(tmp_path / "train.py", TRAIN.format(comment=""))
    monkeypatch.chdir(tmp_path)
    report = _json("train.py", "--select", "AL108,AL109")
    (f108,) = _findings(report, "AL108")
    assert f108["path"] == "train.py"
    assert f108["line"] == line_of(train, "errG = torch.log")
    assert f108["data"]["discriminator_line"] == line_of(train, "output = netD(fake)")
    assert f"line {f108['line']}" in f108["message"]
    assert f"line {f108['data']['discriminator_line']}" in f108["message"]
    # the Discriminator of models.py ends in nn.Sigmoid: torch.log on its output is AL109 --
    # known from the class's source, the file defining it being neither imported nor linted
    (f109,) = _findings(report, "AL109")
    assert f109["line"] == f108["line"]
    assert "ends in nn.Sigmoid" in f109["message"]
    assert [t["target"] for t in report["targets"]] == ["train.py"]


def test_the_fix_is_silent(tmp_path, monkeypatch):
    write(tmp_path / "models.py", MODELS)
    write(tmp_path / "train.py", TRAIN.format(comment="").replace(
        "errG = torch.log(1 - output).mean()",
        "errG = criterion(output, torch.ones_like(output))"))
    monkeypatch.chdir(tmp_path)
    report = _json("train.py", "--select", "AL108")
    assert _findings(report, "AL108") == []
    assert "no models found" in " ".join(report.get("notes", []))


@pytest.mark.parametrize("comment", ["  # archlint: disable=AL108",
                                     "  # noqa: AL108",
                                     "  # archlint: disable=saturating-gan-loss"])
def test_suppression_comments(tmp_path, monkeypatch, comment):
    write(tmp_path / "models.py", MODELS)
    write(tmp_path / "train.py", TRAIN.format(comment=comment))
    monkeypatch.chdir(tmp_path)
    report = _json("train.py", "--select", "AL108", "--report-unused-suppressions")
    assert _findings(report, "AL108") == []
    assert _findings(report, "AL900") == []  # the comment was used


def test_unbuildable_model_does_not_cost_the_source_rules(tmp_path, monkeypatch):
    src = write(tmp_path / "gan.py", MODELS.replace(
        "        super().__init__()\n        self.net = nn.Sequential(nn.Linear(nz, 64)",
        "        super().__init__()\n        raise RuntimeError('needs a dataset')\n"
        "        self.net = nn.Sequential(nn.Linear(nz, 64)") + TRAIN.split(
            "from models import Discriminator, Generator")[1].format(comment=""))
    monkeypatch.chdir(tmp_path)
    report = _json("gan.py", "--select", "AL108")
    statuses = {t["target"]: t["status"] for t in report["targets"]}
    assert statuses["gan.py:Generator"] == "error"
    assert statuses["gan.py:Discriminator"] == "ok"
    (f,) = _findings(report, "AL108")
    assert f["line"] == line_of(src, "errG = torch.log")


def test_source_rules_once_per_file_and_in_subprocess_mode(tmp_path, monkeypatch):
    write(tmp_path / "models.py", MODELS)
    write(tmp_path / "gan.py", MODELS + TRAIN.split(
        "from models import Discriminator, Generator")[1].format(comment=""))
    monkeypatch.chdir(tmp_path)
    for extra in ([], ["--subprocess"]):
        report = _json("gan.py:Generator", "gan.py:Discriminator", "--select", "AL108",
                       *extra)
        assert len(_findings(report, "AL108")) == 1, extra
        assert [t["target"] for t in report["targets"]].count("gan.py") == 1


def test_script_without_cues_keeps_the_fast_path(tmp_path, monkeypatch):
    write(tmp_path / "util.py", "import os\n\n\ndef main():\n    print(os.getcwd())\n")
    monkeypatch.chdir(tmp_path)
    result = invoke("util.py")
    assert result.exit_code == 0
    assert "no models found" in result.output


# -------------------------------------------------------------------------------------- AL110

DEAD = """
import torch.nn as nn
import torch.nn.functional as F


class DeadMLP(nn.Module):
    def __init__(self, width=256, depth=4):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(64 if i == 0 else width, width)
                                    for i in range(depth))
        self.head = nn.Linear(width, 10)
        for layer in self.layers:
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.constant_(layer.bias, -2.0)

    def forward(self, x):
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.head(x)
"""


def test_dead_units_predicted_and_measured(tmp_path):
    path = write(tmp_path / "dead.py", DEAD)
    report = run_paths(path, select=["AL110"], measure=True)
    (t,) = report.targets
    (f,) = t.findings
    layers = {d["module"]: d for d in f.data["layers"]}
    assert set(layers) == {"layers.1", "layers.2", "layers.3"}  # the first layer lives
    for d in layers.values():
        assert d["dead_fraction"] >= 0.98
        assert d["measured_dead_fraction"] >= 0.9
    assert "layers.1 100%" in f.message and "measured:" in f.message
    assert any(n.startswith("dead units of layers.2: predicted") for n in t.notes)
    kinds = [fx.edit["kind"] for fx in f.fixes]
    assert "reinitialize" in kinds  # biases at zero
    zero = next(fx for fx in f.fixes if fx.edit["kind"] == "reinitialize")
    assert zero.measured and zero.measured_gradient_decades is not None
    # every weight gradient of the model is exactly zero, as the message says
    assert all(layer.measured_grad_rms == 0.0 for layer in t.layers)


HALF_DEAD = """
import torch
import torch.nn as nn


class HalfDead(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(64, 128)
        self.out = nn.Linear(128, 10)
        nn.init.kaiming_normal_(self.hidden.weight, nonlinearity="relu")
        with torch.no_grad():
            self.hidden.bias.zero_()
            self.hidden.bias[:64] = -10.0

    def forward(self, x):
        return self.out(torch.relu(self.hidden(x)))
"""


def test_dead_fraction_option(tmp_path):
    path = write(tmp_path / "half.py", HALF_DEAD)
    strict = run_paths(path, select=["AL110"], config={"rules": {"AL110": {
        "dead-fraction": 0.4}}}, fixes=False)
    (f,) = strict.targets[0].findings
    assert f.data["dead_fraction"] == pytest.approx(0.5)
    assert "hidden 50%" in f.message and "limit 40%" in f.message
    default = run_paths(path, select=["AL110"], fixes=False)  # 0.7
    assert default.targets[0].findings == []


@pytest.mark.parametrize("value, message", [(1.5, "at most 1"), (0, "above 0"),
                                            ("half", "expected float")])
def test_dead_fraction_option_is_validated(tmp_path, value, message):
    cfg = write(tmp_path / "archlint.yaml", f"rules:\n  AL110:\n    dead-fraction: {value}\n")
    write(tmp_path / "m.py", DEAD)
    result = invoke(str(tmp_path / "m.py"), "--config", str(cfg))
    assert result.exit_code == 2
    assert "rules.AL110.dead-fraction" in result.output and message in result.output
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------------------- the pair

def test_mlp_gan_passes_alone_and_fails_composed():
    report = run_paths(GAN / "mlp_gan.py", fixes=False)
    by = {t.target: t for t in report.targets}
    g = next(t for name, t in by.items() if name.endswith(":Generator"))
    d = next(t for name, t in by.items() if name.endswith(":Discriminator"))
    pair = next(t for name, t in by.items() if name.endswith(":Discriminator(Generator)"))
    assert g.findings == [] and d.findings == []
    assert g.status == d.status == pair.status == "ok"
    assert -g.gradient_flow["vanishing"].decades < 3
    assert -d.gradient_flow["vanishing"].decades < 3
    composed = -pair.gradient_flow["vanishing"].decades
    assert composed > 7, composed
    (al105,) = [f for f in pair.findings if f.code == "AL105"]
    src = GAN / "mlp_gan.py"
    assert al105.line == line_of(src, "nn.Linear(nz, hidden)")  # the generator's first layer
    assert "costs the generator" in al105.message
    cost = al105.data["discriminator_decades"]
    assert cost == pytest.approx(composed + g.gradient_flow["vanishing"].decades, abs=1e-3)
    assert cost > 4
    # every finding of the composition is on the generator's lines
    gen_lines = range(line_of(src, "class Generator"), line_of(src, "class Discriminator"))
    assert pair.findings and all(f.line in gen_lines for f in pair.findings)


def test_dcgan_pair_gets_no_finding():
    report = run_paths(GAN / "dcgan.py", fixes=False)
    for t in report.targets:
        assert t.status == "ok", (t.target, t.error)
        assert [f.code for f in t.findings if f.severity != "info"] == [], t.target
    pair = next(t for t in report.targets if t.target.endswith(":netD(netG)"))
    assert pair.input.startswith("[8, 32, 1, 1]")  # the DCGAN latent, not a 32x32 map
    assert any("costs the generator" in n for n in pair.notes)
    # the reference loop trains: no AL108; its BCELoss on the Sigmoid is AL109, as info
    assert [f.code for t in report.targets for f in t.findings] == ["AL109"]


CONDITIONAL = """
import torch
import torch.nn as nn


class Generator(nn.Module):
    def __init__(self, latent_dim=32, n_classes=10):
        super().__init__()
        self.label_emb = nn.Embedding(n_classes, n_classes)
        layers = [nn.Linear(latent_dim + n_classes, 64)]
        for _ in range(SIGMOIDS):
            layers += [nn.Sigmoid(), nn.Linear(64, 64)]
        self.model = nn.Sequential(*layers, nn.Linear(64, 784), nn.Tanh())

    def forward(self, noise, labels):
        return self.model(torch.cat((self.label_emb(labels), noise), -1))


class Discriminator(nn.Module):
    def __init__(self, n_classes=10):
        super().__init__()
        self.label_embedding = nn.Embedding(n_classes, n_classes)
        layers = [nn.Linear(784 + n_classes, 64)]
        for _ in range(SIGMOIDS):
            layers += [nn.Sigmoid(), nn.Linear(64, 64)]
        self.model = nn.Sequential(*layers, nn.Linear(64, 1))

    def forward(self, img, labels):
        return self.model(torch.cat((img.view(img.size(0), -1), self.label_embedding(labels)), -1))
"""


def test_a_conditional_pair_is_composed_with_its_labels(tmp_path):
    # cGAN: G(noise, labels) and D(img, labels); the composition passes D the same labels
    path = write(tmp_path / "cgan.py", CONDITIONAL.replace("SIGMOIDS", "4"))
    report = run_paths(path, fixes=False)
    (pair,) = [t for t in report.targets if t.target.endswith(":Discriminator(Generator)")]
    assert pair.status == "ok" and pair.tracer, pair.notes
    assert "noise=[8, 32]" in pair.input and "labels=[8]" in pair.input
    assert any("costs the generator" in n for n in pair.notes), pair.notes
    g = next(t for t in report.targets if t.target.endswith(":Generator"))
    assert -pair.gradient_flow["vanishing"].decades > -g.gradient_flow["vanishing"].decades + 1


def test_a_discriminator_needing_an_input_the_generator_lacks_is_a_note(tmp_path):
    # pix2pix-like: D(img, cond) where G takes only noise
    path = write(tmp_path / "p2p.py", CONDITIONAL.replace("SIGMOIDS", "1").replace(
        "def forward(self, noise, labels):\n        return self.model(torch.cat((self.label_emb("
        "labels), noise), -1))",
        "def forward(self, noise):\n        return self.model(torch.cat((noise, noise[:, :10]), "
        "-1))"))
    report = run_paths(path, fixes=False)
    (pair,) = [t for t in report.targets if t.target.endswith(":Discriminator(Generator)")]
    assert pair.status == "ok"
    assert any("cannot be composed" in n for n in pair.notes), pair.notes


def test_shape_mismatch_is_a_note(tmp_path):
    path = write(tmp_path / "gan.py", MODELS.replace("nn.Linear(32, 64)", "nn.Linear(784, 64)"))
    report = run_paths(path, fixes=False)
    (pair,) = [t for t in report.targets if t.target.endswith(":Discriminator(Generator)")]
    assert pair.status == "ok"
    assert any("does not fit the discriminator's input" in n and "[8, 32]" in n
               for n in pair.notes), pair.notes
    assert all(t.status == "ok" for t in report.targets)


def test_feeds_in_the_config(tmp_path, monkeypatch):
    write(tmp_path / "nets.py", MODELS.replace("class Generator", "class Decoder")
          .replace("class Discriminator", "class Judge"))
    cfg = write(tmp_path / "archlint.yaml", """
        targets:
          - target: nets.py:Decoder
            feeds: Judge
    """)
    monkeypatch.chdir(tmp_path)
    report = run_paths(config=cfg, fixes=False)
    names = [t.target for t in report.targets]
    assert "nets.py:Judge(Decoder)" in names, names
    pair = report.targets[names.index("nets.py:Judge(Decoder)")]
    assert pair.status == "ok" and any("costs the generator" in n for n in pair.notes)


def test_feeds_naming_nothing_is_an_error_naming_the_key(tmp_path, monkeypatch):
    write(tmp_path / "nets.py", MODELS)
    cfg = write(tmp_path / "archlint.yaml", """
        targets:
          - target: nets.py:Generator
            feeds: Critic
    """)
    monkeypatch.chdir(tmp_path)
    result = invoke("--config", str(cfg), "--format", "json")
    report = report_of(result)
    errors = [t for t in report["targets"] if t["status"] == "error"]
    assert len(errors) == 1
    assert "targets.0.feeds" in errors[0]["error"] and "'Critic'" in errors[0]["error"]
    ok = [t["target"] for t in report["targets"] if t["status"] == "ok"]
    assert ok == ["nets.py:Generator"]  # the generator is still linted


@pytest.mark.parametrize("feeds, message", [("12", "expected the discriminator's name"),
                                            ("[D]", "expected the discriminator's name")])
def test_feeds_is_validated(tmp_path, feeds, message):
    write(tmp_path / "nets.py", MODELS)
    cfg = write(tmp_path / "archlint.yaml", f"""
        targets:
          - target: nets.py:Generator
            feeds: {feeds}
    """)
    result = invoke("--config", str(cfg))
    assert result.exit_code == 2
    assert "targets.0.feeds" in result.output and message in result.output
    assert "Traceback" not in result.output


def test_explain_the_new_rules():
    for code in ("AL108", "AL109", "AL110"):
        result = invoke("explain", code)
        assert result.exit_code == 0
        assert "## Why is this bad?" in result.output or "Why is this bad" in result.output
    assert "non-saturating" in invoke("explain", "AL108").output


def test_a_teams_source_rule():
    """The public API: a local rule of kind "source", its examples checked like the built-in
    ones, suppression comments and all."""
    import ast

    from archlint.rules import Rule
    from archlint.testing import assert_examples

    class NoBCELoss(Rule):
        """
        ## What it does
        Reports `nn.BCELoss()`.

        ## Why is this bad?
        It reads probabilities.

        ## Example
        `nn.BCELoss()`

        ## Use instead
        `nn.BCEWithLogitsLoss()`

        ## References
        - The team's guide.
        """

        code = "TEAM002"
        name = "no-bce-loss"
        kind = "source"
        bad_example = "import torch.nn as nn\ncriterion = nn.BCELoss()\n"
        good_example = "import torch.nn as nn\ncriterion = nn.BCEWithLogitsLoss()\n"

        def check(self, ctx):
            assert ctx.display.endswith(".py") and isinstance(ctx.tree, ast.Module)
            for node in ast.walk(ctx.tree):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "BCELoss":
                    yield self.source_finding(ctx, node, "BCELoss on probabilities")

    assert_examples(NoBCELoss)
