"""Helpers shared by the tests, in one place.

This is also the only module of the tests that reaches into archlint's internals (the traced graph,
the structural facts, the loader's module cache, model discovery): when those move, this file
changes and the tests do not. Tests that just lint a model go through ``archlint.lint``, the
public API; tests of the command line go through :func:`invoke` (in-process) or :func:`run_cli`
(a subprocess).
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import textwrap
import tokenize
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Optional, Union

ROOT = Path(__file__).resolve().parent.parent
#: One fixture file per rule code (see tests/test_rule_fixtures.py for the convention).
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "rules"


# ------------------------------------------------------------------------------ files and lines

def write(path: Path, text: str) -> Path:
    """Write dedented ``text`` (leading blank lines dropped) to ``path``, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def line_of(source: Union[str, Path], needle: str, nth: int = 0) -> int:
    """1-based line of the ``nth`` line containing ``needle``: in a file, or in a source text as
    :func:`load_source` writes it (dedented)."""
    if isinstance(source, Path):
        text = source.read_text()
    else:
        text = textwrap.dedent(source)
    hits = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(hits) > nth, f"{needle!r} not in the source"
    return hits[nth]


# ------------------------------------------------------------------------------ model sources

def model_source(init: str, forward: str, *, name: str = "Model", args: str = "x",
                 imports: str = "import torch\nimport torch.nn as nn", before: str = "",
                 after: str = "") -> str:
    """The text of a file defining one ``nn.Module`` class, from what is particular to it:
    ``init``, the body of ``__init__`` after ``super().__init__()``; ``forward``, the body of
    ``forward(self, <args>)`` (both dedented); ``before`` / ``after``, module-level text
    around the class. Write it with :func:`write` or :func:`load_source`; :func:`line_of` on the
    returned text gives the lines :func:`load_source` writes."""
    def block(text: str, indent: int) -> list[str]:
        text = textwrap.dedent(text).strip("\n")
        return textwrap.indent(text, " " * indent).splitlines() if text else []

    lines = ["", *imports.splitlines(), "", ""]
    if before.strip():
        lines += [*block(before, 0), "", ""]
    lines += [f"class {name}(nn.Module):", "    def __init__(self):",
              "        super().__init__()", *block(init, 8), "",
              f"    def forward(self, {args}):", *block(forward, 8)]
    if after.strip():
        lines += ["", "", *block(after, 0)]
    return "\n".join(lines) + "\n"


#: Six Linear + Sigmoid (class Deep): AL101 (a chain of 6 > 4) and AL105 (its vanishing
#: gradient).
SIGMOID_CHAIN = model_source(name="Deep", init="""
    layers = []
    for _ in range(6):
        layers += [nn.Linear(8, 8), nn.Sigmoid()]
    self.body = nn.Sequential(*layers)
""", forward="return self.body(x)")


def small_init_net(extra: str = "") -> str:
    """class Net, with fc1 initialised 177x too small: one AL104 finding (module fc1);
    ``extra``: more lines for the end of __init__."""
    init = """
        self.fc1 = nn.Linear(32, 32)
        self.fc2 = nn.Linear(32, 32)
        self.fc3 = nn.Linear(32, 4)
        nn.init.normal_(self.fc1.weight, std=1e-3)
    """
    return model_source(name="Net", init=textwrap.dedent(init) + textwrap.dedent(extra),
                        forward="return self.fc3(self.fc2(self.fc1(x).relu()).relu())")


#: A file of everything ``archlint FILE`` must tell apart: buildable classes (Net), an inner
#: block (Block), classes it skips (Wide needs an argument, Base has no forward), a class built
#: once as a module-level instance (Tagged), module-level instances, an imported class, a
#: function that must not be called and a ``__main__`` part that must not run.
MIXED_MODELS = """
import torch
import torch.nn as nn
from torch.nn import Linear                     # imported classes are not linted

print("hello from import")                      # goes to stderr, never the report


class Block(nn.Module):                         # only used inside Net: not linted alone
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return x + self.fc(torch.relu(x))


class Net(nn.Module):
    def __init__(self, depth=2):
        super().__init__()
        self.blocks = nn.Sequential(*[Block() for _ in range(depth)])
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.blocks(x))


class Wide(nn.Module):                          # needs an argument: skipped
    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x):
        return self.fc(x)


class Base(nn.Module):                          # no forward: not a model
    pass


class Tagged(Net):                              # built once, as the instance below
    pass


tagged = Tagged(depth=3)
instance = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
inner = instance[0]                             # part of another instance: not linted alone


def build():                                    # functions are called only when named
    open("CALLED", "w").write("build")
    return Net(depth=5)


if __name__ == "__main__":
    open("MAIN_RAN", "w").write("main")
"""


def two_inputs(name: str = "Model", guard: str = "pass") -> str:
    """A model whose forward takes float ``feats`` (through an RNN) and integer ``ids``
    (through an embedding); ``guard``: the first line of forward."""
    return model_source(name=name, args="feats, ids", init="""
        self.embed = nn.Embedding(20, 8)
        self.rnn = nn.RNN(6, 8, batch_first=True)
        self.head = nn.Linear(8, 2)
    """, forward=f"""
        {guard}
        out, _ = self.rnn(feats)
        return self.head(out[:, -1] + self.embed(ids).mean(1))
    """)


def write_model_using_a_block(folder: Path, blocks: str, model: str, comment: str = "") -> Path:
    """Two files in ``folder``: ``<blocks>.py`` defines Block, whose Linear starts at zero (one
    AL104 finding there, with ``comment`` on its line), and ``<model>.py`` defines Net, which
    imports Block and uses it. Returns the path of the model's file."""
    write(folder / f"{blocks}.py", model_source(name="Block", init=f"""
        self.fc = nn.Linear(16, 16){comment}
        nn.init.zeros_(self.fc.weight)
    """, forward="return self.fc(x).relu()"))
    return write(folder / f"{model}.py", model_source(
        name="Net", imports=f"import torch.nn as nn\nfrom {blocks} import Block", init="""
            self.inp = nn.Linear(8, 16)
            self.block = Block()
            self.out = nn.Linear(16, 2)
        """, forward="return self.out(self.block(self.inp(x)))"))


# ------------------------------------------------------------------------------ command line

def invoke(*args: str):
    """The CLI in-process (no torch import per call); returns click's Result."""
    from click.testing import CliRunner

    from archlint.cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def report_of(result) -> dict:
    """The JSON report a ``--format json`` run printed."""
    return json.loads(result.stdout)


def finding_codes(result) -> list[str]:
    """Codes of every finding of a ``--format json`` run, in report order."""
    return [f["code"] for t in report_of(result)["targets"] for f in t["findings"]]


def run_paths(*paths: Union[str, Path], config: Any = None, **options):
    """A whole run over ``paths`` as the CLI makes it, before rendering; returns the Report.
    ``config``: None (no config file), a config file's path, or a dict of Config fields;
    ``options``: the run's options (select, ignore, report_unused_suppressions...)."""
    from archlint.config import Config, load_config
    from archlint.runner import RunOptions, run

    if config is None:
        config = Config()
    elif isinstance(config, dict):
        config = Config(**config)
    elif isinstance(config, (str, Path)):
        config = load_config(Path(config))
    return run(config, RunOptions(paths=[str(p) for p in paths], **options))


def run_cli(*args: str, cwd: Optional[Path] = None, timeout: int = 300):
    """The CLI in a subprocess (``python -m archlint``): for what only a fresh process shows."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "archlint", *args], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)


# ------------------------------------------------------------------------------ linting models

def codes(result) -> list[str]:
    """Codes of a TargetResult's (or Report's) findings, in report order."""
    return [f.code for f in result.findings]


def only(result, code: str) -> list:
    return [f for f in result.findings if f.code == code]


def _import(path: Path, name: str):
    """Import a file under ``name``, recording where its module-level layers are built."""
    from archlint.loading.sites import recording_module_sites

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    with recording_module_sites():
        spec.loader.exec_module(module)
    return module


def load_source(tmp_path: Path, source: str, name: Optional[str] = None):
    """Write ``source`` to a file under tmp_path and import it; returns (module, path)."""
    name = name or f"m_{uuid.uuid4().hex[:8]}"
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))  # lines as line_of(source, ...) counts them
    return _import(path, name), path


class Linted:
    """A linted model's TargetResult (attributes pass through) and, read lazily, the live
    analysis of the same model object (graph and facts) for the internals below."""

    def __init__(self, result, model, example_input):
        self._result, self._model, self._input = result, model, example_input
        self._analysis = None

    def __getattr__(self, name):
        return getattr(self._result, name)

    @property
    def analysis(self):
        if self._analysis is None:
            from archlint.api import to_input_spec
            from archlint.engine import analyse_model
            from archlint.loading.infer import infer_input

            spec = to_input_spec(self._input, self._model) or infer_input(self._model)
            self._analysis = analyse_model(self._model, spec)
        return self._analysis


def lint_model(model: Any, example_input: Any = None, **kwargs):
    """``archlint.lint`` on one model (object, class or factory); returns its TargetResult,
    with the analysis of the same model object available as ``.analysis``."""
    from torch import nn

    import archlint
    from archlint.api import _build

    if not isinstance(model, nn.Module):
        model = _build(model)
    (target,) = archlint.lint(model, example_input, **kwargs).targets
    return Linted(target, model, example_input)


def lint_source(tmp_path: Path, source: str, cls: str = "Model", select=None, options=None,
                input=None):
    """Lint class ``cls`` of ``source`` through the public API; its example input is ``input``,
    else the module's ``INPUT`` (as in the rules' documented examples), else inferred."""
    module, _ = load_source(tmp_path, source)
    raw = input if input is not None else getattr(module, "INPUT", None)
    return lint_model(getattr(module, cls), raw, select=select, options=options)


# ------------------------------------------------------------------------------ internals
# Everything below reads archlint's internal objects: keep such reads here.

def graph_of(result):
    """The traced graph of a result linted by :func:`lint_model` / :func:`lint_source`."""
    return result.analysis.graph


def structure_of(result):
    """The structural facts (gradient paths, skip joins...) of such a result."""
    return result.analysis.facts.structure


def weight_nodes(result) -> list:
    return [n for n in graph_of(result).nodes if n.is_weight_layer]


def node_of(result, module_path: str):
    return next(n for n in graph_of(result).nodes if n.module_path == module_path)


@contextlib.contextmanager
def fresh_imports() -> Iterator[None]:
    """archlint imports each file once per process; inside this block, files written again are
    imported again (and the cache is as it was afterwards)."""
    from archlint.loading import build

    saved = dict(build._modules)
    build._modules.clear()
    try:
        yield
    finally:
        build._modules.clear()
        build._modules.update(saved)


def forget_imported_files() -> None:
    """Inside :func:`fresh_imports`: the next run imports every file again."""
    from archlint.loading import build

    build._modules.clear()


def models_in(path: Path) -> list[str]:
    """What ``archlint PATH`` lints in a file, as ``file.py:Name`` targets (relative to the
    working directory); a file or class that fails to load is returned as its target too."""
    from archlint.loading.build import load_target
    from archlint.loading.targets import resolve

    (target,) = resolve(str(path), [])
    return [loaded.display for loaded in load_target(target)]


# ------------------------------------------------------------------------------ rule fixtures

def fixture_file(name: str) -> Path:
    """``tests/fixtures/rules/<name>.py``."""
    return FIXTURES / f"{name}.py"


def _module_constant(tree: ast.Module, name: str, default: Any) -> Any:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name
                                                for t in node.targets):
            return ast.literal_eval(node.value)
    return default


def fixture_inputs(path: Path) -> dict[str, Any]:
    """The fixture's ``INPUTS``: model name -> input spec (read, never executed)."""
    return _module_constant(ast.parse(path.read_text()), "INPUTS", {})


def fixture_select(path: Path) -> list[str]:
    """The fixture's ``SELECT`` (rule codes or prefixes); default: the file's own code."""
    return list(_module_constant(ast.parse(path.read_text()), "SELECT", [path.stem]))


EXPECT = "expect:"


def expected_findings(path: Path) -> dict[int, set[str]]:
    """``# expect: AL101, AL105`` comments: line -> codes that must be reported there."""
    out: dict[int, set[str]] = {}
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    for tok in tokens:
        if tok.type != tokenize.COMMENT:
            continue
        text = tok.string.lstrip("#").strip()
        if EXPECT not in text:
            continue
        spec = text[text.index(EXPECT) + len(EXPECT):]
        found = {c.strip() for c in spec.split(",") if c.strip()}
        assert found, f"{path.name}:{tok.start[0]}: '# expect:' names no code"
        out.setdefault(tok.start[0], set()).update(found)
    return out


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def model_name(target: str) -> str:
    """``AL101.py:SigmoidMLP`` -> ``SigmoidMLP``."""
    return target.rpartition(":")[2]


@lru_cache(maxsize=None)
def fixture_report(name: str) -> dict:
    """The JSON report of ``archlint`` over fixture ``name``'s models (run once per session):
    the CLI in-process from the fixtures' folder, ``--select`` the file's SELECT, each model with
    its INPUTS entry (given in a config file's ``targets:``). Do not modify it."""
    import tempfile

    path = fixture_file(name)
    inputs, select = fixture_inputs(path), fixture_select(path)
    with _working_directory(FIXTURES), tempfile.TemporaryDirectory() as tmp:
        targets = models_in(path)
        unknown = set(inputs) - {model_name(t) for t in targets}
        assert not unknown, f"{path.name}: INPUTS names models archlint does not lint: {unknown}"
        config = Path(tmp) / "archlint.yaml"  # JSON is YAML
        config.write_text(json.dumps({"targets": [
            {"target": str(FIXTURES / t), "input": inputs[model_name(t)]}
            for t in targets if model_name(t) in inputs]}))
        args = [*targets, "--format", "json", "--select", ",".join(select),
                "--config", str(config)]
        if any("AL900".startswith(s) or s.startswith("AL900") for s in select):
            args.append("--report-unused-suppressions")
        result = invoke(*args)
    assert result.exit_code in (0, 1), f"{path.name}: exit {result.exit_code}\n{result.output}"
    report = report_of(result)
    # the file's source rules (AL108, AL109) report under the file's own name, after its models
    assert [t["target"] for t in report["targets"] if t["tracer"] != "source"] == targets
    return report


def fixture_target(name: str, model: str) -> dict:
    """One model's target in :func:`fixture_report` (status, findings, layers...)."""
    (target,) = [t for t in fixture_report(name)["targets"] if model_name(t["target"]) == model]
    return target


def fixture_finding(name: str, model: str, code: str) -> dict:
    """The one finding of ``code`` for ``model`` in :func:`fixture_report`."""
    found = [f for f in fixture_target(name, model)["findings"] if f["code"] == code]
    assert len(found) == 1, found
    return found[0]


@lru_cache(maxsize=None)
def fixture_module(name: str):
    """The fixture file imported once (for tests that lint one of its models themselves)."""
    return _import(fixture_file(name), f"archlint_fixture_{name}")


def lint_fixture(name: str, model: str, **kwargs):
    """Lint one model of a fixture file through the public API, with the fixture's input for
    it; returns the TargetResult."""
    inputs = fixture_inputs(fixture_file(name))
    return lint_model(getattr(fixture_module(name), model), inputs.get(model), **kwargs)


def lint_both_ways(build, example_input: Any = None, small: Optional[int] = None):
    """Lint the model ``build()`` makes twice: built for real, and built on the meta device
    (archlint.loading.meta; ``small``: its threshold of matrices made real, default as shipped).
    Returns the two TargetResults (real, meta)."""
    from archlint.api import to_input_spec
    from archlint.engine import Settings, lint_and_analyse
    from archlint.graph.metainit import forget
    from archlint.loading import meta as meta_mod
    from archlint.loading.build import seed_everything
    from archlint.rules import ALL_RULES

    settings = Settings(rules=list(ALL_RULES))
    seed_everything()
    model = build()
    spec = to_input_spec(example_input, model) if example_input is not None else None
    real, _ = lint_and_analyse(model, "model", spec, settings)
    del model
    saved = meta_mod.SMALL
    if small is not None:
        meta_mod.SMALL = small
    try:
        seed_everything()
        built = meta_mod.build_on_meta(build)
        spec = to_input_spec(example_input, built.model) if example_input is not None else None
        seed_everything()
        on_meta, _ = lint_and_analyse(built.model, "model", spec, settings, meta=built)
    finally:
        meta_mod.SMALL = saved
        forget()
    return real, on_meta
