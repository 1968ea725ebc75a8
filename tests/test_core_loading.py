"""Targets and loading: what `archlint PATH...` lints in a file, a directory, `file.py:Name` and
`package.module:callable`, and how import/build failures become one-line target errors."""

from __future__ import annotations

import sys
import uuid

import pytest
from torch import nn

from archlint.loading.build import LoadedModel, LoadFailure, load_target
from archlint.loading.targets import TargetError, resolve
from helpers import MIXED_MODELS as MODELS, line_of, model_source, write


def load(spec: str, kwargs=None, excludes=()):
    out = []
    for target in resolve(spec, list(excludes), kwargs=kwargs):
        out.extend(load_target(target))
    return out


def names(loaded) -> list[str]:
    return sorted(x.display for x in loaded)


def ok(loaded) -> dict[str, nn.Module]:
    return {x.display: x.model for x in loaded if isinstance(x, LoadedModel)}


def failures(loaded) -> dict[str, str]:
    return {x.display: x.error for x in loaded if isinstance(x, LoadFailure)}


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_file_lints_buildable_classes_and_module_level_instances(in_tmp, capsys):
    write(in_tmp / "models.py", MODELS)
    loaded = load("models.py")
    assert failures(loaded) == {}
    assert names(loaded) == ["models.py:Net", "models.py:instance", "models.py:tagged"]
    models = ok(loaded)
    assert len(models["models.py:tagged"].blocks) == 3  # the instance itself, not a new build
    assert type(models["models.py:Net"]).__name__ == "Net"
    # nothing but the module body ran: no function call, no __main__ block
    assert not (in_tmp / "CALLED").exists()
    assert not (in_tmp / "MAIN_RAN").exists()
    out = capsys.readouterr()
    assert "hello from import" not in out.out
    assert "hello from import" in out.err


def test_named_class_function_and_instance(in_tmp):
    write(in_tmp / "models.py", MODELS)
    [net] = load("models.py:Net")
    assert net.display == "models.py:Net" and len(net.model.blocks) == 2
    [block] = load("models.py:Block")  # a named inner block is linted when asked for
    assert isinstance(block, LoadedModel) and type(block.model).__name__ == "Block"
    [built] = load("models.py:build")
    assert isinstance(built, LoadedModel) and len(built.model.blocks) == 5
    assert (in_tmp / "CALLED").read_text() == "build"
    [inst] = load("models.py:instance")
    assert isinstance(inst.model, nn.Sequential)
    assert not (in_tmp / "MAIN_RAN").exists()


def test_named_class_with_kwargs(in_tmp):
    write(in_tmp / "models.py", MODELS)
    [wide] = load("models.py:Wide", kwargs={"width": 5})
    assert isinstance(wide, LoadedModel)
    assert wide.model.fc.in_features == 5
    [net] = load("models.py:Net", kwargs={"depth": 4})
    assert len(net.model.blocks) == 4


def test_named_class_needing_arguments_is_a_one_line_error(in_tmp):
    write(in_tmp / "models.py", MODELS)
    [failure] = load("models.py:Wide")
    assert isinstance(failure, LoadFailure)
    assert failure.display == "models.py:Wide"
    assert "width" in failure.error
    assert "\n" not in failure.error and "Traceback" not in failure.error


@pytest.mark.parametrize("name,needle", [
    ("Missing", "Missing"),
    ("torch", "not an nn.Module"),
])
def test_named_object_that_is_not_a_model(in_tmp, name, needle):
    write(in_tmp / "models.py", MODELS)
    [failure] = load(f"models.py:{name}")
    assert isinstance(failure, LoadFailure)
    assert needle in failure.error


def test_factory_returning_something_else(in_tmp):
    write(in_tmp / "f.py", "def build():\n    return 42\n")
    [failure] = load("f.py:build")
    assert isinstance(failure, LoadFailure)
    assert "int" in failure.error and "nn.Module" in failure.error


def test_instance_with_kwargs_is_an_error(in_tmp):
    write(in_tmp / "models.py", MODELS)
    [failure] = load("models.py:instance", kwargs={"depth": 2})
    assert isinstance(failure, LoadFailure)


def test_instance_built_by_a_factory_of_another_file_is_linted(in_tmp):
    # like `model = torchvision.models.resnet18()`: the layers are constructed in another
    # file, but the instance is bound here
    write(in_tmp / "zoo.py", """
        import torch.nn as nn


        def make():
            return nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))


        shared = make()
    """)
    write(in_tmp / "net.py", """
        from zoo import make, shared      # `shared` is zoo.py's, not this file's

        model = make()
        models = {"a": make()}            # not an nn.Module itself: not linted
    """)
    loaded = load("net.py")
    assert names(loaded) == ["net.py:model"]
    assert isinstance(ok(loaded)["net.py:model"], nn.Sequential)
    assert names(load("zoo.py")) == ["zoo.py:shared"]


def test_inner_blocks_of_several_models_are_not_linted(in_tmp):
    write(in_tmp / "zoo.py", """
        import torch.nn as nn


        class Mlp(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 4)

            def forward(self, x):
                return self.fc(x)


        class Encoder(nn.Module):
            def __init__(self):
                super().__init__()
                self.mlp = Mlp()

            def forward(self, x):
                return self.mlp(x)


        class Classifier(nn.Module):          # contains Encoder, which contains Mlp
            def __init__(self):
                super().__init__()
                self.encoder = Encoder()
                self.head = nn.Linear(4, 2)

            def forward(self, x):
                return self.head(self.encoder(x))


        class Other(nn.Module):               # standalone: linted
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 4)

            def forward(self, x):
                return self.fc(x)
    """)
    assert names(load("zoo.py")) == ["zoo.py:Classifier", "zoo.py:Other"]


def test_class_that_fails_to_build_does_not_hide_the_others(in_tmp):
    path = write(in_tmp / "m.py", model_source(name="Good", init="self.fc = nn.Linear(4, 4)",
                                               forward="return self.fc(x)", after="""
        class Bad(Good):
            def __init__(self):
                super().__init__()
                raise RuntimeError("cannot build this one")
    """))
    loaded = load("m.py")
    assert list(ok(loaded)) == ["m.py:Good"]
    error = failures(loaded)["m.py:Bad"]
    assert "RuntimeError" in error and "cannot build this one" in error
    # the raising line in the user's file
    assert f"m.py:{line_of(path, 'raise RuntimeError')})" in error
    assert "\n" not in error


@pytest.mark.parametrize("body,needle", [
    ("import no_such_module_for_archlint\n", "no_such_module_for_archlint"),
    ("raise RuntimeError('boom at import')\n", "boom at import"),
    ("import sys\nsys.exit(3)\n", "sys.exit(3)"),
    ("def f(:\n    pass\n", "SyntaxError"),
])
def test_file_whose_import_fails_is_one_target_error(in_tmp, body, needle):
    model = "import torch.nn as nn\n\n\nclass M(nn.Module):\n    def forward(self, x):\n" \
            "        return x\n"
    write(in_tmp / "broken.py", body + model)
    [failure] = load("broken.py")
    assert isinstance(failure, LoadFailure)
    assert failure.display == "broken.py"
    assert needle in failure.error
    assert "\n" not in failure.error and "Traceback" not in failure.error


def test_error_names_the_line_of_the_failing_import(in_tmp):
    write(in_tmp / "broken.py", "import torch.nn as nn\n\nx = 1\nraise ValueError('line four')\n")
    [failure] = load("broken.py:x")
    assert "broken.py:4" in failure.error


def test_files_that_define_nothing_are_not_imported(in_tmp):
    # a script with no class and no top-level construction is never executed
    write(in_tmp / "script.py", "open('SCRIPT_RAN', 'w').write('x')\n")
    assert load("script.py") == []
    assert not (in_tmp / "SCRIPT_RAN").exists()


# ------------------------------------------------------------------------------ directories

def test_directory_is_searched_recursively_minus_excludes(in_tmp):
    model = "import torch.nn as nn\n\n\nclass M(nn.Module):\n    def __init__(self):\n" \
            "        super().__init__()\n        self.fc = nn.Linear(2, 2)\n\n" \
            "    def forward(self, x):\n        return self.fc(x)\n"
    for rel in ("proj/a.py", "proj/sub/b.py", "proj/sub/deeper/c.py", "proj/legacy/d.py",
                "proj/.venv/e.py", "proj/__pycache__/f.py", "proj/.hidden/g.py",
                "proj/sub/test_h.py"):
        write(in_tmp / rel, model)
    write(in_tmp / "proj" / "notes.txt", "not python")
    found = sorted(t.display for t in resolve("proj", []))
    assert found == ["proj/a.py", "proj/legacy/d.py", "proj/sub/b.py",
                     "proj/sub/deeper/c.py", "proj/sub/test_h.py"]
    found = sorted(t.display for t in resolve("proj", ["legacy", "test_*.py", "proj/sub/deeper"]))
    assert found == ["proj/a.py", "proj/sub/b.py"]
    assert names(load("proj", excludes=["legacy"])) == [
        "proj/a.py:M", "proj/sub/b.py:M", "proj/sub/deeper/c.py:M", "proj/sub/test_h.py:M"]


@pytest.mark.parametrize("spec,needle", [
    pytest.param("nope.py", "no such file", id="missing-file"),
    pytest.param("nope/", "no such file", id="missing-folder"),
    pytest.param("justaword", "import path", id="neither-path-nor-import-path"),
    pytest.param("not-a-module.x:fn", "dotted", id="bad-module-name"),
])
def test_unresolvable_targets(in_tmp, spec, needle):
    with pytest.raises(TargetError) as info:
        resolve(spec, [])
    assert needle in str(info.value)


def test_directory_cannot_take_a_name(in_tmp):
    (in_tmp / "d").mkdir()
    with pytest.raises(TargetError):
        resolve("d:Net", [])


# ------------------------------------------------------------------------------ packages

@pytest.fixture
def package(in_tmp):
    """A tiny package with a relative import, under a name unique to this test."""
    name = f"pkg_{uuid.uuid4().hex[:8]}"
    write(in_tmp / name / "__init__.py", "")
    write(in_tmp / name / "blocks.py", """
        import torch.nn as nn


        class Block(nn.Module):
            def __init__(self, width=8):
                super().__init__()
                self.fc = nn.Linear(width, width)

            def forward(self, x):
                return self.fc(x).tanh()
    """)
    write(in_tmp / name / "models" / "__init__.py", "")
    write(in_tmp / name / "models" / "zoo.py", """
        import torch.nn as nn

        from ..blocks import Block


        class Deep(nn.Module):
            def __init__(self, depth=6):
                super().__init__()
                self.body = nn.Sequential(*[Block() for _ in range(depth)])

            def forward(self, x):
                return self.body(x)


        def make(depth=6):
            return Deep(depth)
    """)
    yield name
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[mod]


def test_package_module_callable(package):
    [target] = resolve(f"{package}.models.zoo:make", [], kwargs={"depth": 3})
    assert target.import_path == f"{package}.models.zoo" and target.name == "make"
    [loaded] = load_target(target)
    assert isinstance(loaded, LoadedModel), getattr(loaded, "error", None)
    assert loaded.display == f"{package}.models.zoo:make"
    assert len(loaded.model.body) == 3


def test_file_inside_a_package_with_relative_imports(package, in_tmp):
    loaded = load(f"{package}/models/zoo.py")
    assert names(loaded) == [f"{package}/models/zoo.py:Deep"]
    # Block comes from another module of the package: not linted with this file
    assert not failures(loaded)


def test_unknown_package_is_a_target_error(in_tmp):
    [failure] = load("no_such_pkg_for_archlint.models:make")
    assert isinstance(failure, LoadFailure)
    assert "no_such_pkg_for_archlint" in failure.error


CONFIGURED = '''
from dataclasses import dataclass, field
import torch.nn as nn


@dataclass
class {config}:
    width: int = 24
    depth: int = 3
    sizes: list = field(default_factory=lambda: [1, 2])


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.fc = nn.Linear(config.width, config.width)

    def forward(self, x):
        return self.fc(x).relu()


class Net(nn.Module):
    def __init__(self, {argument}):
        super().__init__()
        self.blocks = nn.Sequential(*[Block({name}) for _ in range({name}.depth)])

    def forward(self, x):
        return self.blocks(x)
{extra}
'''


@pytest.mark.parametrize("config,argument,extra", [
    ("NetConfig", "cfg: NetConfig", ""),          # annotated with the config class
    ("GPTConfig", "config", ""),                  # nanoGPT style: the file's one *Config
    ("ModelArgs", "args", ""),                    # LLaMA reference style
])
def test_a_model_whose_config_has_defaults_is_built_with_them(tmp_path, config, argument, extra):
    name = argument.split(":")[0]
    path = write(tmp_path / f"cfg_{uuid.uuid4().hex[:8]}.py",
                 CONFIGURED.format(config=config, argument=argument, name=name, extra=extra))
    loaded = load(str(path))
    models = ok(loaded)
    assert list(models) == [f"{path.name}:Net"], loaded  # Block is a block of Net: not its own
    net = models[f"{path.name}:Net"]
    assert len(net.blocks) == 3 and net.blocks[0].fc.in_features == 24
    note = next(x.note for x in loaded if isinstance(x, LoadedModel))
    assert f"built as Net({name}={config}())" in note


@pytest.mark.parametrize("argument,extra", [
    ("config", "\n@dataclass\nclass OtherConfig:\n    width: int = 8\n"),  # which of two?
    ("width", ""),                                # not a config argument
    ("cfg: int", ""),                             # annotated with a plain type
])
def test_a_config_archlint_cannot_choose_is_listed_not_guessed(tmp_path, argument, extra):
    name = argument.split(":")[0]
    path = write(tmp_path / f"cfg_{uuid.uuid4().hex[:8]}.py",
                 CONFIGURED.format(config="NetConfig", argument=argument, name=name,
                                   extra=extra))
    assert f"{path.name}:Net" not in ok(load(str(path)))


def test_a_training_script_that_parses_its_options_at_import_gets_its_defaults(tmp_path):
    # PyTorch-GAN style: `opt = parser.parse_args()` at module level, read by the models
    path = write(tmp_path / f"gan_{uuid.uuid4().hex[:8]}.py", '''
import argparse
import sys
import torch.nn as nn

parser = argparse.ArgumentParser()
parser.add_argument("--latent_dim", type=int, default=100)
opt = parser.parse_args()
ARGV = list(sys.argv)


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(opt.latent_dim, 784)
        self.argv = list(sys.argv)

    def forward(self, z):
        return self.fc(z).tanh()
''')
    argv = list(sys.argv)
    sys.argv = ["archlint", str(path), "--select", "AL105", "-v"]
    try:
        loaded = load(str(path))
    finally:
        sys.argv = argv
    model = ok(loaded)[f"{path.name}:Generator"]
    assert model.fc.in_features == 100
    assert model.argv == [str(path.resolve())]  # as `python gan.py` would see it
