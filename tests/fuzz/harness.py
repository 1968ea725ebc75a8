"""Run archlint on generated model files and check the fuzzer's properties.

Shared by ``tests/test_fuzz.py`` (small, derandomized budget) and ``benchmarks/fuzz.py`` (large
runs that count failures per property and save reproducers).

archlint is run in-process through click's CliRunner (the stable interface: the CLI), or as a
subprocess (``python -m archlint``) where process-level behaviour matters.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import os
import subprocess
import sys
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .model_writer import ModelCase

ROOT = Path(__file__).resolve().parents[2]

#: Property names, in the order they are checked and reported.
PROPERTIES = (
    "no_internal_error",   # (a) exit 0/1, every target "ok", no traceback, no exception
    "one_json_document",   # (b) stdout is exactly one JSON document
    "grad_rms_finite",     # (c) every grad_rms is null or finite and >= 0
    "locations_real",      # (d) findings/layers point at real lines of the generated file
    "layers_complete",     # every weight layer of the model is listed once
    "estimate_covers_trained_layers",  # a layer that really gets gradient has a grad_rms
    "deterministic",       # two runs, byte-identical JSON
    "formats_agree",       # text summary / SARIF / JSON agree; SARIF parses
    "quiet_default_text",  # default text output prints no internal tracer notes
    "al101_metamorphic",   # (e) plain saturating chain: AL101; wrapped in skips/norms: none
)


@dataclass
class Run:
    exit_code: int
    stdout: str
    stderr: str
    #: Formatted traceback of an exception that escaped archlint (not SystemExit).
    exception: Optional[str] = None


@dataclass
class Failure:
    prop: str
    detail: str


@dataclass
class Written:
    folder: Path
    model: Path
    config: Optional[Path]

    def args(self, case: ModelCase) -> list[str]:
        return case.cli_args(str(self.model), str(self.config) if self.config else None)


def write_case(case: ModelCase, folder: Path) -> Written:
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "model.py"
    model.write_text(case.source)
    config = None
    if case.config_text is not None:
        config = folder / "archlint.yaml"
        config.write_text(case.config_text)
    return Written(folder, model, config)


# ------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------

def run_inprocess(args: list[str]) -> Run:
    from click.testing import CliRunner

    from archlint.cli import main

    try:
        runner = CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        runner = CliRunner()  # click >= 8.2: stdout and stderr are separate already
    result = runner.invoke(main, args, catch_exceptions=True)
    exc = None
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        exc = "".join(traceback.format_exception(*result.exc_info))
    return Run(result.exit_code, result.stdout, result.stderr, exc)


def run_subprocess(args: list[str], cwd: Optional[Path] = None, timeout: float = 120) -> Run:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "archlint", *args], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)
    return Run(proc.returncode, proc.stdout, proc.stderr)


# ------------------------------------------------------------------------------------------
# Ground truth: run the generated model with plain torch
# ------------------------------------------------------------------------------------------

@dataclass
class Truth:
    #: named_modules() names of the modules owning a parameter with 2+ dims.
    weight_layers: list[str]
    #: those whose 2+-dim parameters got a non-zero finite gradient from sum(y * r) / sqrt(n),
    #: with its RMS.
    trained: dict[str, float] = field(default_factory=dict)


class GeneratorBug(AssertionError):
    """The generated model does not run: a bug in model_writer, not in archlint."""


def validate_case(case: ModelCase, path: Path) -> Truth:
    """Import the file, build the model, run forward and backward on its input."""
    import torch

    name = f"fuzz_truth_{uuid.uuid4().hex[:10]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink):
            spec.loader.exec_module(module)
            torch.manual_seed(0)
            model = getattr(module, case.model_name)()
            model.train()
            x = torch.randn(case.input_shape)
            out = model(x)
            y = _first_tensor(out)
            r = torch.randn_like(y)
            (y * r).sum().div(math.sqrt(y.numel())).backward()
    except Exception as exc:
        raise GeneratorBug(f"generated model does not run: {type(exc).__name__}: {exc}\n"
                           f"{case.source}") from exc
    finally:
        sys.modules.pop(name, None)
    layers, trained = [], {}
    for mname, mod in model.named_modules():
        params = [p for p in mod.parameters(recurse=False) if p.dim() >= 2]
        if not params:
            continue
        layers.append(mname)
        for p in params:
            # (a real RMS below 1e-10 is rounding noise, not a gradient)
            if p.grad is not None and bool(torch.isfinite(p.grad).all()) and \
                    float(p.grad.pow(2).mean().sqrt()) > 1e-10:
                trained[mname] = float(p.grad.pow(2).mean().sqrt())
    return Truth(layers, trained)


def _first_tensor(out: Any):
    import torch

    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        return _first_tensor(out.get("logits", next(iter(out.values()))))
    return _first_tensor(out[0])


# ------------------------------------------------------------------------------------------
# Properties
# ------------------------------------------------------------------------------------------

def parse_json(run: Run) -> tuple[Optional[dict], Optional[str]]:
    try:
        doc = json.loads(run.stdout)
    except ValueError as exc:
        return None, f"stdout is not one JSON document ({exc}); stdout starts {run.stdout[:300]!r}"
    if not isinstance(doc, dict) or "targets" not in doc:
        return None, f"JSON without 'targets': {run.stdout[:300]!r}"
    return doc, None


def check_basic(case: ModelCase, written: Written, run: Run, truth: Optional[Truth],
                cwd: Optional[Path] = None) -> list[Failure]:
    """Properties (a)-(d) and the layer/estimate checks on one ``--format json`` run."""
    fails: list[Failure] = []
    doc, err = parse_json(run)
    if err:
        fails.append(Failure("one_json_document", err))
        doc = _salvage_json(run.stdout)  # check the rest on the report inside the noise
    problems = []
    if run.exception:
        problems.append(f"exception escaped archlint: {_last_line(run.exception)} "
                        f"(raised at {_raise_site(run.exception)})\n{run.exception}")
    if run.exit_code not in (0, 1):
        problems.append(f"exit code {run.exit_code}")
    if "Traceback" in run.stderr:
        problems.append(f"traceback on stderr: {_last_line(run.stderr)}\n{run.stderr[-3000:]}")
    if doc is not None:
        if not doc["targets"]:
            problems.append(f"no target reported; notes: {doc.get('notes')}")
        for t in doc["targets"]:
            if t.get("status") != "ok":
                problems.append(f"target {t.get('target')} status {t.get('status')}: "
                                f"{t.get('error')}")
    if problems:
        stderr_tail = run.stderr.strip()[-1500:]
        fails.append(Failure("no_internal_error", "; ".join(problems) +
                             (f"\nstderr: {stderr_tail}" if stderr_tail else "")))
    if doc is None:
        return fails
    lines = case.source.splitlines()
    model_file = written.model.resolve()
    base = cwd or Path.cwd()
    bad_grad, bad_loc = [], []
    for t in doc["targets"]:
        for layer in t.get("layers", []):
            g = layer.get("grad_rms")
            if g is not None and (not isinstance(g, (int, float)) or not math.isfinite(g)
                                  or g < 0):
                bad_grad.append(f"{layer['module']}: grad_rms={g!r}")
            bad_loc += _check_location(f"layer {layer['module']} ({layer['type']})",
                                       layer.get("path"), layer.get("line"), None, model_file,
                                       lines, layer["type"], base)
        for f in t.get("findings", []):
            bad_loc += _check_location(f"finding {f['code']} [{f.get('module')}]", f.get("path"),
                                       f.get("line"), f.get("column"), model_file, lines, None,
                                       base)
    if bad_grad:
        fails.append(Failure("grad_rms_finite", "; ".join(bad_grad)))
    if bad_loc:
        fails.append(Failure("locations_real", "; ".join(bad_loc[:8])))
    if truth is not None and doc["targets"] and doc["targets"][0].get("status") == "ok":
        t = doc["targets"][0]
        listed = [layer["module"] for layer in t.get("layers", [])]
        if sorted(listed) != sorted(truth.weight_layers):
            fails.append(Failure("layers_complete",
                                 f"layers listed {sorted(listed)} != modules owning 2+-dim "
                                 f"parameters {sorted(truth.weight_layers)}"))
        missing = [(layer["type"], layer["module"], layer.get("grad_rms"),
                    truth.trained[layer["module"]]) for layer in t.get("layers", [])
                   if layer["module"] in truth.trained and layer.get("grad_rms") in (None, 0.0)]
        if missing:
            notes = "; ".join(t.get("notes", []))[:600]
            types = ", ".join(sorted({f"{ty} grad_rms={g}" for ty, _, g, _ in missing}))
            names = ", ".join(f"{m} (real rms {r:.2g})" for _, m, _, r in missing[:6])
            fails.append(Failure("estimate_covers_trained_layers",
                                 f"layers that really get a gradient have no estimate: {types}"
                                 f"\n{names}\ntracer {t.get('tracer')}; notes: {notes}"))
    return fails


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip()[:300] if lines else ""


def _raise_site(tb: str) -> str:
    """The innermost traceback frame inside archlint (where a fix would go)."""
    import re

    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', tb)
    mine = [f for f in frames if "/archlint/" in f[0]]
    f = (mine or frames or [("?", "?", "?")])[-1]
    return f"{f[0].split('/archlint/')[-1] if '/archlint/' in f[0] else f[0]}:{f[1]} {f[2]}"


def _salvage_json(stdout: str) -> Optional[dict]:
    start = stdout.find("\n{")
    if start < 0:
        return None
    try:
        doc = json.loads(stdout[start:])
    except ValueError:
        return None
    return doc if isinstance(doc, dict) and "targets" in doc else None


def _check_location(what: str, path: Optional[str], line: Optional[int], column: Optional[int],
                    model_file: Path, lines: list[str], type_name: Optional[str],
                    base: Path) -> list[str]:
    if path is None:
        return []
    p = Path(path)
    if not p.is_absolute():
        p = base / p
    if p.resolve() != model_file:
        return [f"{what}: path {path!r} is not the generated file"]
    if not isinstance(line, int) or not 1 <= line <= len(lines):
        return [f"{what}: line {line!r} is not a line of the file ({len(lines)} lines)"]
    text = lines[line - 1]
    if not text.strip():
        return [f"{what}: line {line} is blank"]
    if column is not None and not (0 <= column <= len(text) + 1):
        return [f"{what}: column {column} outside line {line} ({len(text)} chars)"]
    if type_name is not None and _is_torch_layer(type_name) and type_name not in text:
        return [f"{what}: line {line} does not construct a {type_name}: {text.strip()!r}"]
    return []


def _is_torch_layer(type_name: str) -> bool:
    import torch.nn as nn

    return isinstance(getattr(nn, type_name, None), type)


def check_determinism(first: Run, second: Run) -> list[Failure]:
    if first.stdout != second.stdout:
        import difflib

        diff = "".join(difflib.unified_diff(first.stdout.splitlines(True),
                                            second.stdout.splitlines(True), "run1", "run2", n=1))
        return [Failure("deterministic", "two identical runs differ:\n" + diff[:2000])]
    return []


def check_formats(json_run: Run, text_run: Run, sarif_run: Run) -> list[Failure]:
    """The text summary, SARIF results and JSON findings agree; default text has no internal
    tracer notes for targets that analysed fine."""
    fails = []
    doc, err = parse_json(json_run)
    if doc is None:
        return fails
    n_json = sum(len(t["findings"]) for t in doc["targets"])
    last = text_run.stdout.strip().splitlines()[-1] if text_run.stdout.strip() else ""
    import re

    m = re.match(r"Found (\d+) finding", last)
    problems = []
    if not m:
        problems.append(f"text output does not end with the summary: {last!r}")
    elif int(m.group(1)) != n_json:
        problems.append(f"text says {m.group(1)} findings, JSON has {n_json}")
    try:
        sarif = json.loads(sarif_run.stdout)
        n_sarif = sum(len(r.get("results", [])) for r in sarif.get("runs", []))
        if n_sarif != n_json:
            problems.append(f"SARIF has {n_sarif} results, JSON {n_json} findings")
    except ValueError as exc:
        problems.append(f"SARIF is not JSON: {exc}: {sarif_run.stdout[:200]!r}")
    if not (json_run.exit_code == text_run.exit_code == sarif_run.exit_code):
        problems.append(f"exit codes differ: json {json_run.exit_code}, text "
                        f"{text_run.exit_code}, sarif {sarif_run.exit_code}")
    if problems:
        fails.append(Failure("formats_agree", "; ".join(problems)))
    ok_targets = {t["target"] for t in doc["targets"] if t["status"] == "ok"}
    noisy = [ln for ln in text_run.stdout.splitlines()
             if ": note: " in ln and ln.split(": note: ")[0] in ok_targets
             and ln.split(": note: ", 1)[1].startswith(("fx:", "torch.fx"))]
    if noisy:
        fails.append(Failure("quiet_default_text",
                             "default text output prints internal tracer notes: " + noisy[0][:300]))
    return fails


def check_chain(case: ModelCase, doc: Optional[dict]) -> list[Failure]:
    if doc is None or case.expect_al101 is None or not doc["targets"]:
        return []
    t = doc["targets"][0]
    if t["status"] != "ok":
        return [Failure("al101_metamorphic", f"{case.variant}: target not analysed: {t['error']}")]
    al101 = [f for f in t["findings"] if f["code"] == "AL101"]
    if case.expect_al101 and not al101:
        codes = sorted({f["code"] for f in t["findings"]})
        return [Failure("al101_metamorphic",
                        f"plain saturating chain of {len(case.chain_modules)} without AL101 "
                        f"(findings {codes}; tracer {t.get('tracer')}; notes {t.get('notes')})")]
    if not case.expect_al101 and al101:
        return [Failure("al101_metamorphic",
                        f"{case.variant}: chain wrapped in skips/norms still gets AL101: "
                        f"{al101[0]['message'][:300]}")]
    return []


def full_check(case: ModelCase, folder: Path, *, determinism: bool = True,
               formats: bool = True, subprocess_mode: bool = False) -> list[Failure]:
    """Write the case, validate it with torch, lint it, check every property that applies."""
    written = write_case(case, folder)
    truth = validate_case(case, written.model)
    args = written.args(case)
    runner = (lambda a: run_subprocess(a, cwd=folder)) if subprocess_mode else run_inprocess
    first = runner(args + ["--format", "json"])
    fails = check_basic(case, written, first, truth, cwd=folder if subprocess_mode else None)
    doc, _ = parse_json(first)
    fails += check_chain(case, doc)
    if determinism:
        fails += check_determinism(first, runner(args + ["--format", "json"]))
    if formats:
        fails += check_formats(first, runner(args), runner(args + ["--format", "sarif"]))
    return fails
