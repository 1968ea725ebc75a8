"""Issue 8 beyond the hostile corpus: one target's failure never costs another its result, time
limits, the subprocess mode, inputs for *args / non-tensor / keyword-only arguments, models that
cannot be built listed, stable output, and what archlint writes and reads safely."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from archlint import guard
from archlint.cli import main

GOOD = '''
import torch.nn as nn


class Good(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(self.fc1(x).relu())
'''


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def cli(*args: str):
    try:
        runner = CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        runner = CliRunner()
    return runner.invoke(main, ["check", *args], catch_exceptions=False)


def invoke(*args: str):
    return cli("--isolated", *args)


def report(result) -> dict:
    return json.loads(result.stdout)


def targets(result) -> dict[str, dict]:
    return {t["target"]: t for t in report(result)["targets"]}


# ------------------------------------------------------------------------------------------
# One target's failure stays its own
# ------------------------------------------------------------------------------------------

def test_keyboard_interrupt_raised_by_a_model_is_that_models_error(project):
    write(project / "m.py", GOOD + '''

class Interrupts(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        raise KeyboardInterrupt
''')
    r = invoke("m.py", "--format", "json")
    assert r.exit_code == 2
    ts = targets(r)
    assert ts["m.py:Good"]["status"] == "ok"
    err = ts["m.py:Interrupts"]["error"]
    assert "KeyboardInterrupt" in err and "m.py:" in err and "\n" not in err


def test_ctrl_c_typed_by_the_user_stops_the_run(monkeypatch):
    monkeypatch.setattr(guard._interrupts, "typed", True)

    def typed():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        guard.guarded(typed, "cannot analyse")


def test_a_forward_that_never_returns_is_a_timeout_error(project):
    write(project / "m.py", GOOD + '''

class Spins(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        while True:
            pass
''')
    r = invoke("m.py", "--format", "json", "--timeout", "1", "--input-shape", "8,16")
    assert r.exit_code == 2
    ts = targets(r)
    assert ts["m.py:Good"]["status"] == "ok"
    assert "did not finish within 1 s" in ts["m.py:Spins"]["error"]


def test_timeout_comes_from_the_config_and_zero_means_none(project):
    from archlint.config import ConfigError, load_config

    write(project / ".archlint.yaml", "timeout: 7.5\nsubprocess: true\n")
    cfg = load_config(project / ".archlint.yaml")
    assert cfg.timeout == 7.5 and cfg.subprocess is True
    write(project / ".archlint.yaml", "timeout: 0\n")
    assert load_config(project / ".archlint.yaml").timeout is None
    for bad in ("timeout: -1\n", "timeout: soon\n", "subprocess: yes please\n"):
        write(project / ".archlint.yaml", bad)
        with pytest.raises(ConfigError, match="timeout|subprocess"):
            load_config(project / ".archlint.yaml")


def test_missing_config_target_is_its_own_error(project):
    write(project / "good.py", GOOD)
    write(project / "archlint.yaml", "targets: [nope.py, good.py]\n")
    r = cli("--format", "json")
    assert r.exit_code == 2
    ts = targets(r)
    assert ts["good.py:Good"]["status"] == "ok"
    assert "no such file" in ts["nope.py"]["error"]


def test_an_internal_error_is_one_line_and_exit_2(project, monkeypatch):
    import archlint.runner

    write(project / "good.py", GOOD)

    def broken(config, opts):
        raise KeyError("an archlint bug")

    monkeypatch.setattr(archlint.runner, "run", broken)
    r = invoke("good.py")
    assert r.exit_code == 2
    assert "internal error: KeyError: 'an archlint bug'" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_api_lint_survives_sys_exit_in_forward():
    import torch.nn as nn

    import archlint

    class Quits(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            raise SystemExit(5)

    rep = archlint.lint(Quits(), example_input=(8, 4))
    [t] = rep.targets
    assert t.status == "error" and "sys.exit(5)" in t.error and rep.exit_code() == 2


# ------------------------------------------------------------------------------------------
# Inputs from the config
# ------------------------------------------------------------------------------------------

INPUTS = '''
import torch
import torch.nn as nn


class Cat(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 4)

    def forward(self, *inputs):
        return self.fc(torch.cat(inputs, dim=-1))


class Steps(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x, steps: int, *, scale: float):
        for _ in range(steps):
            x = torch.tanh(self.fc(x)) * scale
        return x
'''


def test_varargs_non_tensor_and_keyword_only_inputs_from_the_config(project):
    write(project / "m.py", INPUTS)
    write(project / "archlint.yaml", '''
        targets:
          - target: m.py:Cat
            input: [{shape: [8, 10]}, {shape: [8, 6]}]
          - target: m.py:Steps
            input:
              x: {shape: [8, 16]}
              steps: 3
              scale: {value: 0.5}
        ''')
    ts = targets(cli("--format", "json"))
    assert ts["m.py:Cat"]["status"] == "ok", ts["m.py:Cat"]["error"]
    assert ts["m.py:Cat"]["input"].startswith("([8, 10] float32, [8, 6] float32)")
    steps = ts["m.py:Steps"]
    assert steps["status"] == "ok", steps["error"]
    assert "steps=3" in steps["input"] and "scale=0.5" in steps["input"]
    assert all(layer["grad_rms"] for layer in steps["layers"])


def test_a_required_argument_without_input_names_it(project):
    write(project / "m.py", INPUTS)
    write(project / "archlint.yaml", '''
        targets:
          - target: m.py:Steps
            input: {x: {shape: [8, 16]}}
        ''')
    r = cli("--format", "json")
    assert r.exit_code == 2
    [t] = report(r)["targets"]
    assert "'steps' and 'scale'" in t["error"] and "input:" in t["error"]


def test_a_plain_list_is_not_taken_for_inputs(project):
    from archlint.loading.inputs import InputError, parse_input

    with pytest.raises(InputError, match=r"shape: \[8, 16\]"):
        parse_input([8, 16], "input")


# ------------------------------------------------------------------------------------------
# No silent skip
# ------------------------------------------------------------------------------------------

LAYERS = '''
import torch.nn as nn
import torch.nn.functional as F


class WSConv(nn.Conv2d):
    """A layer of this file's models: not a target of its own."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)

    def forward(self, x):
        w = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class Unused(nn.Linear):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)

    def forward(self, x):
        return super().forward(x) * 2


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = WSConv(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.conv(x).mean(dim=(2, 3)))


class Wide(nn.Module):
    def __init__(self, width, depth=2):
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x):
        return self.fc(x)
'''


def test_layer_subclasses_of_a_model_are_not_targets_and_others_are_listed(project):
    write(project / "m.py", LAYERS)
    r = invoke("m.py", "--format", "json")
    doc = report(r)
    assert [t["target"] for t in doc["targets"]] == ["m.py:Net"]
    assert doc["targets"][0]["status"] == "ok"
    listed = {u["name"]: u for u in doc["unbuilt"]}
    assert set(listed) == {"Wide", "Unused"}
    assert listed["Wide"]["call"] == "Wide(width)"
    assert listed["Unused"]["call"] == "Unused(in_features, out_features)"
    assert doc["summary"]["unbuilt"] == 2
    assert r.exit_code == 0  # Net was linted: the others are a note, not an error
    text = invoke("m.py").stdout
    assert "m.py: note: 2 models need arguments: Unused(in_features, out_features), " \
           "Wide(width); name a factory (m.py:build) or give kwargs in the config" in text \
           or "m.py: note: 2 models need arguments: Wide(width), Unused(in_features, " \
              "out_features)" in text


def test_unbuilt_models_in_sarif_and_github(project):
    import jsonschema

    write(project / "m.py", LAYERS)
    write(project / "broken.py", "import torch.nn as nn\nraise ValueError('no')\n\n\n"
          "class M(nn.Module):\n    pass\n")
    sarif = report(invoke("m.py", "broken.py", "--format", "sarif"))
    schema = json.loads((Path(__file__).parent / "data" / "sarif-schema-2.1.0.json").read_text())
    jsonschema.validators.validator_for(schema)(schema).validate(sarif)
    notes = sarif["runs"][0]["invocations"][0]["toolExecutionNotifications"]
    assert any("need arguments" in n["message"]["text"] and n["level"] == "warning"
               for n in notes)
    gh = invoke("m.py", "--format", "github").stdout
    assert "::notice file=m.py,title=archlint::2 models need arguments" in gh


# ------------------------------------------------------------------------------------------
# Stable output
# ------------------------------------------------------------------------------------------

RANDOM = '''
import random
import torch
import torch.nn as nn


class Drawn(nn.Module):
    def __init__(self):
        super().__init__()
        width = random.choice([16, 24, 32])
        self.fc1 = nn.Linear(16, width)
        self.fc2 = nn.Linear(width, 4)
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        return self.fc2(self.drop(torch.tanh(self.fc1(x))))
'''


def test_a_targets_result_does_not_depend_on_the_targets_before_it(project):
    write(project / "a.py", RANDOM)
    write(project / "b.py", GOOD)
    alone = targets(invoke("a.py", "--format", "json"))["a.py:Drawn"]
    after = targets(invoke("b.py", "a.py", "--format", "json"))["a.py:Drawn"]
    assert alone == after


# ------------------------------------------------------------------------------------------
# Safety
# ------------------------------------------------------------------------------------------

def test_yaml_config_is_read_with_a_safe_loader(project):
    from archlint.config import ConfigError, load_config

    marker = project / "PWNED"
    write(project / ".archlint.yaml",
          f'select: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ConfigError):
        load_config(project / ".archlint.yaml")
    assert not marker.exists()


def test_linting_writes_nothing_next_to_the_models(project):
    write(project / "models" / "net.py", GOOD)
    write(project / "models" / "helpers.py", "import torch.nn as nn\n\n\n"
          "def head():\n    return nn.Linear(4, 2)\n")
    write(project / "models" / "uses.py", "import torch.nn as nn\nfrom helpers import head\n\n\n"
          "class Uses(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
          "        self.fc = nn.Linear(8, 4)\n        self.head = head()\n\n"
          "    def forward(self, x):\n        return self.head(self.fc(x))\n")
    before = sorted(p.relative_to(project) for p in project.rglob("*"))
    r = invoke("models", "--no-cache")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert sorted(p.relative_to(project) for p in project.rglob("*")) == before
    # with the result cache (on by default): its one folder in the working directory, with a
    # .gitignore of its own, and nothing next to the models
    r = invoke("models")
    assert r.exit_code == 0, r.stdout + r.stderr
    after = sorted(p.relative_to(project) for p in project.rglob("*"))
    assert [p for p in after if p.parts[0] != ".archlint_cache"] == before
    assert (project / ".archlint_cache" / ".gitignore").is_file()


# ------------------------------------------------------------------------------------------
# The subprocess mode
# ------------------------------------------------------------------------------------------

DIES = '''
import os
import torch.nn as nn


class First(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(x)


class DiesBuilding(nn.Module):
    def __init__(self):
        super().__init__()
        os._exit(7)

    def forward(self, x):
        return x


class Last(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(x)
'''


def test_subprocess_mode_carries_on_after_a_child_dies(project):
    write(project / "m.py", DIES)
    write(project / "dies_importing.py", "import os\nimport torch.nn as nn\nos._exit(9)\n\n\n"
          "class Never(nn.Module):\n    pass\n")
    write(project / "good.py", GOOD)
    r = invoke("--subprocess", "m.py", "dies_importing.py", "good.py", "--format", "json")
    assert r.exit_code == 2
    ts = targets(r)
    assert ts["m.py:First"]["status"] == "ok" and ts["m.py:Last"]["status"] == "ok"
    assert "exited with status 7" in ts["m.py:DiesBuilding"]["error"]
    assert "cannot build m.py:DiesBuilding" in ts["m.py:DiesBuilding"]["error"]
    assert "exited with status 9" in ts["dies_importing.py"]["error"]
    assert ts["good.py:Good"]["status"] == "ok"


def test_subprocess_mode_stops_c_code_that_never_returns(project, monkeypatch):
    import archlint.worker

    monkeypatch.setattr(archlint.worker, "GRACE", 0.5)
    write(project / "m.py", GOOD + '''

import signal
import time


class Stuck(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 4)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})  # no Python code runs
        time.sleep(600)

    def forward(self, x):
        return self.fc(x)
''')
    if not hasattr(guard.signal, "pthread_sigmask"):
        pytest.skip("needs POSIX signals")
    r = invoke("--subprocess", "--timeout", "1", "m.py", "--format", "json")
    ts = targets(r)
    assert ts["m.py:Good"]["status"] == "ok"
    assert "could not be interrupted" in ts["m.py:Stuck"]["error"]


def test_subprocess_mode_gives_the_same_report(project):
    examples = Path(__file__).resolve().parent.parent / "examples"
    here = targets(invoke(str(examples), "--format", "json", "--measure"))
    there = targets(invoke(str(examples), "--format", "json", "--measure", "--subprocess"))
    assert here == there


def test_in_process_a_model_stuck_in_c_code_does_not_hang_the_run(project):
    """The in-process time limit cannot interrupt C code; the watchdog finishes the run in
    child processes and prints the report (nothing lost but the stuck model)."""
    import subprocess
    import sys

    if not hasattr(guard.signal, "pthread_sigmask"):
        pytest.skip("needs POSIX signals")
    write(project / "a.py", '''
        import signal
        import time
        import torch.nn as nn


        class Stuck(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(16, 4)

            def forward(self, x):
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})  # as C code would
                time.sleep(600)


        class After(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(16, 4)

            def forward(self, x):
                return self.fc(x)
        ''')
    write(project / "b.py", GOOD)
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "archlint", "a.py", "b.py", "--isolated",
                           "--timeout", "1", "--format", "json"], cwd=project,
                          capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 2, proc.stderr
    ts = {t["target"]: t for t in json.loads(proc.stdout)["targets"]}
    assert "could not be interrupted" in ts["a.py:Stuck"]["error"]
    assert ts["a.py:After"]["status"] == "ok" and ts["b.py:Good"]["status"] == "ok"
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("mode", [[], ["--subprocess"]])
def test_ctrl_c_ends_the_run_with_130_and_no_child_left(project, mode):
    import os
    import signal
    import subprocess
    import sys

    write(project / "slow.py", '''
        import sys
        import time
        import torch.nn as nn


        class Slow(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(8, 2)
                print("building", file=sys.stderr, flush=True)
                time.sleep(120)

            def forward(self, x):
                return self.fc(x)
        ''')
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-m", "archlint", "slow.py", "--isolated", *mode],
                            cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.stderr is not None
    for line in proc.stderr:
        if "building" in line:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "archlint: interrupted" in err and "Traceback" not in err
    if Path("/proc").is_dir():  # Linux: no archlint process is left working in the project
        import time

        time.sleep(0.5)
        left = []
        for pid in Path("/proc").iterdir():
            try:
                if pid.name.isdigit() and int(pid.name) != os.getpid() and \
                        (pid / "cwd").resolve() == project.resolve():
                    left.append((pid / "cmdline").read_bytes().replace(b"\0", b" "))
            except OSError:
                continue
        assert not left, left


def test_a_rule_that_crashes_makes_the_target_an_error_and_keeps_the_rest(project, monkeypatch):
    from archlint.rules.vanishing_gradient import VanishingGradient

    def broken(self, ctx):
        raise ZeroDivisionError("a bug in a rule")

    monkeypatch.setattr(VanishingGradient, "check", broken)
    examples = Path(__file__).resolve().parent.parent / "examples"
    r = invoke(str(examples / "deep_sigmoid_mlp.py"), "--format", "json")
    assert r.exit_code == 2  # not 1: part of the analysis is missing
    [t] = report(r)["targets"]
    assert t["status"] == "error"
    assert t["error"].startswith("AL105 (vanishing-gradient) failed: ZeroDivisionError")
    assert "AL101" in {f["code"] for f in t["findings"]}  # the other rules' findings are kept
    text = invoke(str(examples / "deep_sigmoid_mlp.py")).stdout
    assert "AL101 warning" in text and "error: AL105 (vanishing-gradient) failed" in text
