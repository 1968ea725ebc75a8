"""The hostile-input corpus (issue 8: never crash, never lose a result, never pass silently).

Files under tests/hostile/ (see its README.md); one table row per case: the CLI arguments, the
exact exit code and the message fragments expected, and where (stdout, stderr, a JSON target's
error / notes / finding codes). Every case also requires that no traceback reaches stdout or
stderr and that no exception escapes archlint.

Cases archlint gets wrong today are strict xfails whose reason says what is wrong; they turn
into failures (XPASS) when fixed, and the marker is then removed.

Runs go in-process through the CLI (click's CliRunner, ~0.1-0.5 s) unless process-level
behaviour matters (stdout purity, hangs, os._exit, segfaults, sys.modules pollution, locale),
then ``python -m archlint`` in a subprocess (~2-3 s). Identical runs are made once and shared.
All runs use tests/hostile/ as the working directory, so targets read ``mixed/good.py:GoodNet``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import pytest

HOSTILE = Path(__file__).resolve().parent / "hostile"
ROOT = HOSTILE.parent.parent


# ------------------------------------------------------------------------------------------
# Runs
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    args: tuple[str, ...]
    subprocess: bool = False
    env: tuple[tuple[str, str], ...] = ()
    timeout: float = 120.0


@dataclass
class Result:
    exit_code: Union[int, str]      # "timeout" when the subprocess did not finish in time
    stdout: str
    stderr: str
    seconds: float
    exception: Optional[str] = None  # an exception that escaped archlint (in-process)


_cache: dict[tuple, Result] = {}


def _placeholders(args: tuple[str, ...], generated: dict[str, Path]) -> list[str]:
    out = []
    for a in args:
        for key, path in generated.items():
            a = a.replace("{" + key + "}", str(path))
        out.append(a)
    return out


def execute(run: Run, generated: dict[str, Path], fresh: bool = False) -> Result:
    key = (run, tuple(sorted(generated.items())))
    if key in _cache and not fresh:
        return _cache[key]
    args = _placeholders(run.args, generated)
    if not args or args[0] not in ("rules", "explain"):
        args = [*args, "--no-cache"]  # every case runs the models' code: no cached answers
    t0 = time.perf_counter()
    if run.subprocess:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env.update(dict(run.env))
        try:
            proc = subprocess.run([sys.executable, "-m", "archlint", *args], cwd=HOSTILE,
                                  capture_output=True, timeout=run.timeout, env=env)
            result = Result(proc.returncode, proc.stdout.decode("utf-8", "replace"),
                            proc.stderr.decode("utf-8", "replace"), time.perf_counter() - t0)
        except subprocess.TimeoutExpired as exc:
            result = Result("timeout", (exc.stdout or b"").decode("utf-8", "replace"),
                            (exc.stderr or b"").decode("utf-8", "replace"),
                            time.perf_counter() - t0)
    else:
        from click.testing import CliRunner

        from archlint.cli import main

        try:
            runner = CliRunner(mix_stderr=False)  # click < 8.2
        except TypeError:
            runner = CliRunner()
        old = os.getcwd()
        os.chdir(HOSTILE)
        try:
            r = runner.invoke(main, args, catch_exceptions=True)
        finally:
            os.chdir(old)
        exc = None
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            exc = "".join(traceback.format_exception(*r.exc_info))
        result = Result(r.exit_code, r.stdout, r.stderr, time.perf_counter() - t0, exc)
    _cache[key] = result
    return result


# ------------------------------------------------------------------------------------------
# Expectations
# ------------------------------------------------------------------------------------------

def _json(result: Result) -> tuple[Optional[dict], Optional[str]]:
    try:
        doc = json.loads(result.stdout)
    except ValueError as exc:
        return None, f"stdout is not one JSON document ({exc}): {result.stdout[:300]!r}"
    return doc, None


@dataclass
class Out:
    """stdout matches (``absent``: does not match) the regex."""
    pattern: str
    absent: bool = False
    stream: str = "stdout"

    def check(self, r: Result, rerun) -> list[str]:
        text = getattr(r, self.stream)
        found = re.search(self.pattern, text, re.IGNORECASE | re.MULTILINE) is not None
        if found == self.absent:
            return [f"{self.stream} {'has' if self.absent else 'lacks'} /{self.pattern}/"]
        return []


def Err(pattern: str) -> Out:
    return Out(pattern, stream="stderr")


@dataclass
class Json:
    """stdout is exactly one JSON document (SARIF: also a SARIF log)."""
    sarif: bool = False

    def check(self, r: Result, rerun) -> list[str]:
        doc, err = _json(r)
        if err:
            return [err]
        if self.sarif and "runs" not in doc:
            return ["SARIF log without 'runs'"]
        return []


@dataclass
class Target:
    """The JSON report has a target whose name ends with ``suffix``, with this status; its
    error / notes match; its findings include ``codes``; its tracer is ``tracer``."""
    suffix: str
    status: str = "ok"
    error: Optional[str] = None
    notes: Optional[str] = None
    codes: tuple[str, ...] = ()
    tracer: Optional[str] = None
    grad_rms_for_every_layer: bool = False

    def check(self, r: Result, rerun) -> list[str]:
        doc, err = _json(r)
        if err:
            return [err]
        found = [t for t in doc.get("targets", []) if t["target"].endswith(self.suffix)]
        if not found:
            names = [t["target"] for t in doc.get("targets", [])]
            return [f"no target *{self.suffix} in the report (targets: {names}; notes: "
                    f"{doc.get('notes')})"]
        t = found[0]
        problems = []
        if t["status"] != self.status:
            problems.append(f"{t['target']}: status {t['status']} (error: {t.get('error')}), "
                            f"expected {self.status}")
        if self.error and not re.search(self.error, t.get("error") or "", re.IGNORECASE):
            problems.append(f"{t['target']}: error {t.get('error')!r} lacks /{self.error}/")
        if self.error and "\n" in (t.get("error") or ""):
            problems.append(f"{t['target']}: error is not one line: {t.get('error')!r}")
        if self.notes and not any(re.search(self.notes, n, re.IGNORECASE)
                                  for n in t.get("notes", [])):
            problems.append(f"{t['target']}: no note matches /{self.notes}/: {t.get('notes')}")
        have = {f["code"] for f in t.get("findings", [])}
        missing = [c for c in self.codes if c not in have]
        if missing:
            problems.append(f"{t['target']}: findings {sorted(have)} lack {missing} (tracer "
                            f"{t.get('tracer')}; notes {t.get('notes')})")
        if self.tracer and t.get("tracer") != self.tracer:
            problems.append(f"{t['target']}: traced with {t.get('tracer')}, expected "
                            f"{self.tracer} (notes {t.get('notes')})")
        if self.grad_rms_for_every_layer:
            none = [f"{layer['module']} ({layer['type']})" for layer in t.get("layers", [])
                    if layer.get("grad_rms") is None]
            if none:
                problems.append(f"{t['target']}: layers without grad_rms: {none}")
        return problems


@dataclass
class Faster:
    seconds: float

    def check(self, r: Result, rerun) -> list[str]:
        if r.seconds > self.seconds:
            return [f"took {r.seconds:.1f} s (limit {self.seconds} s)"]
        return []


@dataclass
class SameOnRerun:
    """A second identical run gives byte-identical stdout."""

    def check(self, r: Result, rerun) -> list[str]:
        again = rerun()
        if again.stdout != r.stdout:
            import difflib

            diff = "".join(difflib.unified_diff(r.stdout.splitlines(True),
                                                again.stdout.splitlines(True), n=1))
            return ["two identical runs differ:\n" + diff[:1500]]
        return []


Expect = Union[Out, Json, Target, Faster, SameOnRerun]


@dataclass
class Case:
    name: str
    run: Run
    exit: Union[int, tuple[int, ...]]
    expect: tuple = ()
    xfail: Optional[str] = None


def R(*args: str, sub: bool = False, env: tuple = (), timeout: float = 120.0) -> Run:
    return Run(tuple(args), subprocess=sub, env=env, timeout=timeout)


J = ("--isolated", "--format", "json")
C_LOCALE = (("LC_ALL", "C"), ("LANG", "C"), ("PYTHONCOERCECLOCALE", "0"), ("PYTHONUTF8", "0"))

_MIXED = R("mixed", *J, sub=True)
_ISOLATE = R("--subprocess", "process/sys_exit_forward.py", "process/os_exit_forward.py",
             "process/segfault_forward.py", "process/good.py", *J, sub=True, timeout=60)
_NEEDS_ARGS_HINT = r"ResNet\(cfg\)"

CASES = [
    # ---------------------------------------------------------------- folder: nothing is lost
    Case("folder_every_file_accounted_for", _MIXED, 2,
         (Json(), Target("good.py:GoodNet"), Target("scripted_submodule.py:PlainToo"),
          Target("ctor_raises.py:Fine"), Target("ctor_raises.py:Broken", "error"),
          Target("tanh30_plain.py:TanhPlain", codes=("AL101", "AL105")),
          Target("module_instance.py:model"), Target("circular_a.py:CircularNet"),
          Target("syntax_error.py", "error", r"SyntaxError"),
          Target("import_error.py", "error", r"definitely_not_installed_package_xyz"),
          Target("latin1.py", "error", r"utf-8"), Target("prints.py:Chatty"))),
    Case("two_identical_runs_byte_identical",
         R("mixed/good.py", "mixed/tanh30_plain.py", "mixed/module_instance.py",
           "mixed/ctor_raises.py", *J, sub=True), 2, (Json(), SameOnRerun())),

    # ---------------------------------------------------------------- TorchScript, varargs, compile
    Case("scripted_submodule_analysed_or_own_error", R("mixed/scripted_submodule.py", *J),
         (0, 2), (Target("scripted_submodule.py:PlainToo"),
                  Out(r"ScriptedInside"))),
    Case("scripted_whole_model_without_input", R("mixed/scripted_whole.py", *J), 0,
         (Target("scripted_whole.py:model", notes=r"one opaque layer"),)),
    Case("scripted_whole_model_with_input",
         R("mixed/scripted_whole.py", "--input-shape", "8,16", *J), (0, 2),
         (Out(r"scripted_whole\.py:model"),)),
    Case("varargs_forward_without_input", R("mixed/varargs.py", *J), 2,
         (Target("varargs.py:VarArgs", "error", r"input|argument"),)),
    Case("varargs_forward_with_input", R("mixed/varargs.py", "--input-shape", "8,16", *J), 0,
         (Target("varargs.py:VarArgs"),)),
    Case("tanh30_with_scripted_tail_keeps_findings", R("mixed/tanh30_jit_tail.py", *J), 1,
         (Target("TanhJitTail", codes=("AL101", "AL105")),)),
    Case("tanh30_plain_control", R("mixed/tanh30_plain.py", *J), 1,
         (Target("TanhPlain", codes=("AL101", "AL105")),)),
    Case("torch_compile_module_analysed_quickly", R("mixed/compiled.py", *J, sub=True), 0,
         (Target("compiled.py:model"), Faster(30))),

    # ---------------------------------------------------------------- stdout belongs to the report
    Case("prints_json_stdout_is_one_document", R("mixed/prints.py", *J, sub=True), 0,
         (Json(), Target("prints.py:Chatty"), Err(r"hello from import time"),
          Err(r"building Chatty"), Err(r"forward got"))),
    Case("prints_sarif_stdout_is_one_document",
         R("mixed/prints.py", "--isolated", "--format", "sarif", sub=True), 0, (Json(sarif=True),)),
    Case("prints_text_stdout_has_only_the_report", R("mixed/prints.py", "--isolated", sub=True),
         0, (Out(r"forward got", absent=True), Out(r"hello from import time", absent=True))),

    # ---------------------------------------------------------------- inputs that cannot fit
    Case("image_input_into_linear_first_layer",
         R("shapes/linear_first.py", "--input-shape", "8,3,32,32", *J), 2,
         (Target("linear_first.py:LinearFirst", "error", r"fc1"),
          Target("linear_first.py:LinearFirst", "error", r"64"),
          Target("linear_first.py:LinearFirst", "error", r"32"))),
    Case("7x7_image_into_unet", R("shapes/unet.py", "--input-shape", "2,3,7,7", *J), 2,
         (Target("unet.py:UNet", "error", r"pool|down|mid|up|dec"),)),
    Case("unet_16x16_control", R("shapes/unet.py", "--input-shape", "2,3,16,16", *J), 0,
         (Target("unet.py:UNet"),)),
    Case("int64_input_into_float_model",
         R("shapes/linear_first.py", "--input-shape", "8,64", "--input-dtype", "int64", *J), 2,
         (Target("linear_first.py:LinearFirst", "error", r"int64|long"),)),

    Case("batchnorm_probed_with_a_batch_of_2",
         R("shapes/bn_small_batch.py", "--input-shape", "2,16", *J), 0,
         (Target("bn_small_batch.py:BNSmallBatch"),)),
    Case("batchnorm_batch_of_8_control",
         R("shapes/bn_small_batch.py", "--input-shape", "8,16", *J), 0,
         (Target("bn_small_batch.py:BNSmallBatch"),)),

    # ---------------------------------------------------------------- no silent skip
    Case("models_needing_arguments_are_listed", R("mixed/needs_args.py", "--isolated"), 2,
         (Out(_NEEDS_ARGS_HINT), Out(r"Block\(cin, cout\)"), Out(r"build"))),
    Case("models_needing_arguments_in_json", R("mixed/needs_args.py", *J), 2,
         (Json(), Out(r'"ResNet'), Out(r"cfg"))),
    Case("factory_named_on_the_command_line", R("mixed/needs_args.py:build", *J), 0,
         (Target("needs_args.py:build"),)),
    Case("constructor_that_raises", R("mixed/ctor_raises.py", *J), 2,
         (Target("ctor_raises.py:Broken", "error", r"ValueError: width must be a multiple of 8"),
          Target("ctor_raises.py:Broken", "error", r"ctor_raises\.py:8"),
          Target("ctor_raises.py:Fine"))),
    Case("missing_file_next_to_a_good_one", R("nope.py", "mixed/good.py", *J), 2,
         (Target("nope.py", "error", r"no such file"), Target("good.py:GoodNet"))),

    # ---------------------------------------------------------------- broken files
    Case("syntax_error", R("mixed/syntax_error.py", *J), 2,
         (Target("syntax_error.py", "error", r"SyntaxError: expected ':' \(mixed/syntax_error\.py:5\)"),)),
    Case("import_error", R("mixed/import_error.py", *J), 2,
         (Target("import_error.py", "error",
                 r"ModuleNotFoundError: No module named 'definitely_not_installed_package_xyz'"),)),
    Case("non_module_target", R("mixed/constant.py:WIDTH", *J), 2,
         (Target("constant.py:WIDTH", "error", r"not an nn\.Module"),)),
    Case("empty_file", R("mixed/empty.py", "--isolated"), 0, (Out(r"no models found"),)),
    Case("circular_import_that_works_in_python", R("mixed/circular_a.py", *J), 0,
         (Target("circular_a.py:CircularNet"),)),
    Case("circular_import_that_fails_in_python", R("mixed/circular_broken_a.py", *J), 2,
         (Target("circular_broken_a.py", "error", r"circular import"),)),
    Case("non_utf8_source", R("mixed/latin1.py", *J), 2,
         (Target("latin1.py", "error", r"utf-8"),)),
    Case("non_ascii_path", R("modèles", "--isolated", sub=True), 1,
         (Out(r"modèles/réseau\.py:\d+:\d+: AL101"),)),
    Case("non_ascii_path_ascii_locale_sarif", R("modèles", "--isolated", "--format", "sarif",
                                                sub=True, env=C_LOCALE), 2,
         (Json(sarif=True),)),
    Case("same_named_helper_modules_in_two_folders", R("siblings", *J, sub=True), 0,
         (Target("a/net_a.py:NetA"), Target("b/net_b.py:NetB"))),

    # ---------------------------------------------------------------- outputs without gradient
    Case("forward_returns_argmax_ids", R("mixed/returns_argmax.py", *J), 0,
         (Target("returns_argmax.py:ArgmaxNet", notes=r"gradient"),)),
    Case("forward_returns_none", R("mixed/returns_none.py", *J), 0,
         (Target("returns_none.py:NoneNet", notes=r"gradient|no tensor"),)),

    # ---------------------------------------------------------------- naming, notes, tracers
    Case("module_level_instance_named_by_variable", R("mixed/module_instance.py", *J), 0,
         (Target("module_instance.py:model"),)),
    Case("default_text_has_no_internal_tracer_notes", R("mixed/fx_fallback.py", "--isolated"),
         0, (Out(r"note: fx:", absent=True),)),
    Case("verbose_text_shows_tracer_notes", R("mixed/fx_fallback.py", "--isolated", "-v"), 0,
         (Out(r"note: fx: shape propagation failed"),)),
    Case("prelu_does_not_break_fx", R("mixed/prelu.py", *J), 0,
         (Target("prelu.py:WithPReLU", tracer="fx"),)),
    Case("layernorm_over_chw_gets_a_gradient_estimate", R("mixed/layernorm_chw.py", *J), 0,
         (Target("layernorm_chw.py:ConvLayerNorm", grad_rms_for_every_layer=True),)),

    # ---------------------------------------------------------------- configuration, usage
    Case("malformed_yaml_config", R("mixed/good.py", "--config", "config/bad_yaml.yaml"), 2,
         (Err(r"config/bad_yaml\.yaml:3: YAML syntax error"),)),
    Case("unknown_config_key", R("mixed/good.py", "--config", "config/unknown_key.yaml"), 2,
         (Err(r"unknown_key\.yaml:3: fail_on: unknown key 'fail_on'"),)),
    Case("unknown_rule_in_select", R("mixed/good.py", "--isolated", "--select", "AL999"), 2,
         (Err(r"unknown rule 'AL999'"),)),
    Case("thousands_of_non_model_files_and_one_model", R("{many}", *J, sub=True), 0,
         (Target("zz_model.py:GoodNet"), Faster(30))),
    Case("thousands_of_non_model_files_only", R("{many_plain}", "--isolated", sub=True), 0,
         (Out(r"no models found"), Faster(20))),

    # ---------------------------------------------------------------- process-level failures
    Case("sys_exit_in_forward", R("process/sys_exit_forward.py", "process/good.py", *J), 2,
         (Target("sys_exit_forward.py:Quitter", "error", r"sys\.exit\(3\)"),
          Target("good.py:GoodNet"))),
    Case("per_target_timeout", R("process/hang_ctor.py", "process/good.py", "--config",
                                 "process/timeout.yaml", "--format", "json", sub=True,
                                 timeout=60), 2,
         (Target("hang_ctor.py:Forever", "error", r"time"), Target("good.py:GoodNet"))),
    Case("isolate_sys_exit", _ISOLATE, 2,
         (Target("sys_exit_forward.py:Quitter", "error", r"exit"), Target("good.py:GoodNet"))),
    Case("isolate_os_exit", _ISOLATE, 2,
         (Target("os_exit_forward.py:HardQuitter", "error", r"exit"), Target("good.py:GoodNet"))),
    Case("isolate_segfault", _ISOLATE, 2,
         (Target("segfault_forward.py:Crasher", "error", r"segmentation|sigsegv|signal|crash"),
          Target("good.py:GoodNet"))),
]


@pytest.fixture(scope="session")
def generated(tmp_path_factory) -> dict[str, Path]:
    """Folders too big to commit: 2000 plain scripts and 2000 non-module classes (+ a model)."""
    base = tmp_path_factory.mktemp("hostile-many")
    many, plain = base / "many", base / "many_plain"
    many.mkdir()
    plain.mkdir()
    for i in range(2000):
        (plain / f"util_{i:04d}.py").write_text(
            f"import os\n\nCONST_{i} = {i}\n\n\ndef helper_{i}(x):\n"
            f"    return os.path.join(str(x), '{i}')\n")
        (many / f"util_{i:04d}.py").write_text(
            f"from dataclasses import dataclass\n\n\n@dataclass\nclass Record{i}(object):\n"
            f"    x: int = {i}\n\n\nVALUE = Record{i}()\n")
    (many / "zz_model.py").write_text((HOSTILE / "mixed" / "good.py").read_text())
    return {"many": many, "many_plain": plain}


def _param(case: Case):
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=case.name, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_hostile(case: Case, generated):
    r = execute(case.run, generated)
    problems = []
    allowed = case.exit if isinstance(case.exit, tuple) else (case.exit,)
    if r.exit_code not in allowed:
        problems.append(f"exit code {r.exit_code}, expected {case.exit}")
    if r.exception:
        problems.append("exception escaped archlint: " + r.exception.strip().splitlines()[-1])
    for stream in ("stdout", "stderr"):
        if "Traceback (most recent call last)" in getattr(r, stream):
            problems.append(f"traceback on {stream}: "
                            + getattr(r, stream).strip().splitlines()[-1][:300])
    for e in case.expect:
        problems += e.check(r, lambda: execute(case.run, generated, fresh=True))
    assert not problems, "\n".join(problems) + \
        f"\n--- args: {' '.join(case.run.args)}\n--- stdout:\n{r.stdout[-1500:]}" \
        f"\n--- stderr:\n{r.stderr[-1500:]}"


def test_corpus_files_exist():
    """Every path a case names is in tests/hostile (a renamed file must not silently turn a
    case into a 'no such file' run)."""
    options_with_value = {"--input-shape", "--input-dtype", "--select", "--format"}
    for case in CASES:
        args = list(case.run.args)
        for i, a in enumerate(args):
            if a.startswith("-") or "{" in a or a == "nope.py" or \
                    (i and args[i - 1] in options_with_value):
                continue
            path = a.rsplit(":", 1)[0] if ".py:" in a else a
            assert (HOSTILE / path).exists(), f"{case.name}: {path} missing"
