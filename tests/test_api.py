"""archlint.lint(): lint model objects the way a notebook or a user's own test does, no file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import archlint

THIS_FILE = Path(__file__)


def marker_line(marker: str) -> int:
    """The line of this file that carries ``marker`` (in a comment)."""
    lines = THIS_FILE.read_text().splitlines()
    hits = [i for i, line in enumerate(lines, 1) if line.rstrip().endswith(marker)]
    assert len(hits) == 1, marker
    return hits[0]


def here(path) -> bool:
    return path is not None and Path(path).resolve() == THIS_FILE.resolve()


class Block(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        self.fc = nn.Linear(width, width)  # <- block fc
        self.act = nn.Sigmoid()  # <- block act

    def forward(self, x):
        return self.act(self.fc(x))


class Healthy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 64)
        self.norm = nn.LayerNorm(64)
        self.fc2 = nn.Linear(64, 4)

    def forward(self, x):
        return self.fc2(self.norm(self.fc1(x)).relu())


def test_notebook_style_model_points_at_this_file():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Linear(8, 32)  # <- stem
            self.blocks = nn.Sequential(*[Block() for _ in range(6)])
            self.head = nn.Linear(32, 2)
            nn.init.normal_(self.stem.weight, std=1e-4)

        def forward(self, x):
            return self.head(self.blocks(self.stem(x)))

    report = archlint.lint(Net(), example_input=torch.randn(4, 8))
    assert isinstance(report, archlint.api.Report)
    by_code = {f.code: f for f in report.findings}
    assert {"AL101", "AL104"} <= set(by_code)
    assert here(by_code["AL101"].path) and by_code["AL101"].line == marker_line("# <- block act")
    stem = [f for f in report.findings if f.code == "AL104" and f.module == "stem"]
    assert here(stem[0].path) and stem[0].line == marker_line("# <- stem")
    # the column where nn.Linear( starts, as in the sites the CLI records
    assert stem[0].column == THIS_FILE.read_text().splitlines()[stem[0].line - 1].index("nn.") + 1
    assert report.exit_code() == 1
    assert "AL101" in str(report)


def test_sites_are_only_borrowed():
    model = Healthy()
    archlint.lint(model)
    assert all("_archlint_site" not in m.__dict__ for m in model.modules())


def test_clean_model_asserts_cleanly():
    report = archlint.lint(Healthy(), example_input=torch.randn(2, 16))
    assert not report.findings, report
    assert report.exit_code() == 0
    assert report.targets[0].target == "Healthy"
    assert report.targets[0].tracer


def test_inline_sequential_and_module_list_elements():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.seq = nn.Sequential(
                nn.Linear(8, 8),
                nn.Linear(8, 8),  # <- second in sequential
                nn.ReLU(),
            )
            self.blocks = nn.ModuleList([
                Block(8) for _ in range(6)])
            nn.init.zeros_(self.seq[1].weight)

        def forward(self, x):
            x = self.seq(x)
            for b in self.blocks:
                x = b(x)
            return x

    report = archlint.lint(Net(), example_input=torch.randn(2, 8))
    zero = [f for f in report.findings if f.code == "AL104" and f.module == "seq.1"]
    assert zero and here(zero[0].path) and zero[0].line == marker_line("# <- second in sequential")
    chain = [f for f in report.findings if f.code == "AL101"]
    assert chain and chain[0].line == marker_line("# <- block act")


def test_class_or_factory_is_built_with_recorded_sites():
    def factory():
        return nn.Sequential(*[m for _ in range(6)
                               for m in (nn.Linear(16, 16), nn.Tanh())])  # <- factory

    report = archlint.lint(factory, example_input=(8, 16))
    chain = [f for f in report.findings if f.code == "AL101"]
    assert chain and here(chain[0].path) and chain[0].line == marker_line("# <- factory")
    assert not archlint.lint(Healthy).findings


def test_torch_internal_locations_are_dropped():
    model = nn.Sequential(*[m for _ in range(6) for m in (nn.Linear(16, 16), nn.Sigmoid())])
    report = archlint.lint(model, example_input=torch.randn(2, 16))
    chain = [f for f in report.findings if f.code == "AL101"]
    assert chain and chain[0].path is None and chain[0].module


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 16)
        self.fc = nn.Linear(16, 16)

    def forward(self, ids, feats):
        return self.emb(ids).mean(1) + self.fc(feats)


@pytest.mark.parametrize("example", [
    (torch.randint(0, 100, (4, 7)), torch.randn(4, 16)),
    {"ids": torch.randint(0, 100, (4, 7)), "feats": torch.randn(4, 16)},
    {"ids": {"shape": [4, 7], "dtype": "int64", "high": 100}, "feats": {"shape": [4, 16]}},
], ids=["tuple", "dict-of-tensors", "dict-of-specs"])
def test_example_input_forms_for_two_arguments(example):
    report = archlint.lint(TwoInputs(), example_input=example)
    result = report.targets[0]
    assert result.status == "ok", result.error
    assert "ids=[4, 7] int64" in result.input and "feats=[4, 16]" in result.input


@pytest.mark.parametrize("example", [
    torch.randn(3, 16), {"shape": [3, 16], "dtype": "float32"}, (3, 16), torch.Size([3, 16]),
    [torch.randn(3, 16)], None,
], ids=["tensor", "spec", "shape", "size", "list", "inferred"])
def test_example_input_forms_for_one_argument(example):
    result = archlint.lint(Healthy(), example_input=example).targets[0]
    assert result.status == "ok", result.error
    assert result.input.startswith("[3, 16]" if example is not None else "[8, 16]")


def test_integer_tensor_gives_its_id_range():
    from archlint.api import tensor_spec

    spec = tensor_spec(torch.tensor([[3, 41, 7]]))
    assert (spec.low, spec.high, spec.dtype) == (0, 42, torch.int64)


def test_select_ignore_options_and_name():
    model = nn.Sequential(*[m for _ in range(6) for m in (nn.Linear(16, 16), nn.Sigmoid())])
    assert archlint.lint(model, select="AL101").findings
    assert not archlint.lint(model, ignore=["AL1"]).findings
    relaxed = archlint.lint(model, select=["AL101"], options={"AL101": {"max-chain": 10}})
    assert not relaxed.findings
    strict = archlint.lint(model, select=["saturating-stack"], name="mlp",
                           options={"saturating-stack": {"severity": "error"}})
    assert [f.severity for f in strict.findings] == ["error"]
    assert strict.targets[0].target == "mlp"


@pytest.mark.parametrize("kwargs, message", [
    ({"select": ["AL999"]}, "unknown rule 'AL999'"),
    ({"options": {"AL101": {"max_chains": 3}}}, "unknown option"),
    ({"options": {"AL101": {"max-chain": "long"}}}, "expected int"),
    ({"example_input": "8x16"}, "example_input"),
    ({"example_input": {"x": 3.0}}, "example_input['x']"),
    ({"example_input": (torch.randn(2, 16), torch.randn(2, 16))}, "takes 1"),
])
def test_bad_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=None) as exc:
        archlint.lint(Healthy(), **kwargs)
    assert message in str(exc.value)


def test_untraceable_model_is_an_error_result_not_an_exception():
    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            raise RuntimeError("boom")

    report = archlint.lint(Boom(), example_input={"shape": [2, 4]})
    assert report.targets[0].status == "error" and "boom" in report.targets[0].error
    assert report.exit_code() == 2


def test_suppression_comment_applies(tmp_path):
    class Quiet(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(16, 16)  # archlint: disable=AL104
            self.fc2 = nn.Linear(16, 4)
            nn.init.zeros_(self.fc1.weight)

        def forward(self, x):
            return self.fc2(self.fc1(x).relu())

    report = archlint.lint(Quiet())
    assert not [f for f in report.findings if f.module == "fc1"]
    assert report.suppressed == 1
    assert archlint.lint(Quiet(), suppressions=False).findings


def test_renders_like_the_cli():
    model = nn.Sequential(*[m for _ in range(6) for m in (nn.Linear(16, 16), nn.Sigmoid())])
    report = archlint.lint(model, example_input=torch.randn(2, 16))
    data = json.loads(report.render("json"))
    assert data["summary"]["findings"]["warning"] == len(report.findings)
    assert json.loads(report.render("sarif"))["version"] == "2.1.0"
    assert report.render("github").startswith("::warning")


def test_import_archlint_does_not_import_torch():
    code = "import sys, archlint; assert callable(archlint.lint); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_fixes_and_timeout_pass_through_the_package_function():
    """``archlint.lint`` takes every argument ``archlint.api.lint`` does."""
    import inspect

    from archlint import api

    assert set(inspect.signature(archlint.lint).parameters) == \
        set(inspect.signature(api.lint).parameters)

    class Deep(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(*[nn.Sequential(nn.Linear(16, 16), nn.Sigmoid())
                                        for _ in range(12)])

        def forward(self, x):
            return self.body(x)

    torch.manual_seed(0)
    model = Deep()
    with_fixes = archlint.lint(model, example_input=torch.randn(4, 16))
    without = archlint.lint(model, example_input=torch.randn(4, 16), fixes=False)
    assert with_fixes.findings and any(f.fixes for f in with_fixes.findings)
    assert [f.code for f in without.findings] == [f.code for f in with_fixes.findings]
    assert not any(f.fixes for f in without.findings)
