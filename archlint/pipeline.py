"""One target, step by step: import its file, build each of its models, lint each one.

Every step runs user code and runs guarded (:mod:`archlint.guard`): its prints go to stderr, it
has the time limit, and whatever it raises -- an exception, ``sys.exit``, the time limit -- makes
that model (or, for the import, the whole file) an error result with a one-line reason, while the
other models are still built and linted. The random streams are seeded before each build and
each lint, so a target's result does not depend on the targets before it.

The runner drives this in-process; in the subprocess mode each child (:mod:`archlint.worker`)
drives the same steps and reports each one (``on_step``) so that the parent can tell which model
a dying child was running.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

from .engine import Analysis, Settings, lint_and_analyse
from .guard import StepError, guarded
from torch import nn

from .graph.metainit import forget as forget_meta
from .loading.build import (Candidate, LoadedModel, LoadError, LoadFailure, plan_target,
                            seed_everything)
from .loading.meta import MetaBuild, TooLarge, build_counting, build_on_meta
from .loading.inputs import InputSpec, infer_input, uninferable_input
from .loading.targets import Target
from .results import Outcome, TargetResult, Unbuilt, unbuilt_note

#: Seconds each model may take to build and be analysed (and a file to be imported).
DEFAULT_TIMEOUT = 120.0
#: ``--device auto``: models with more parameters than this are analysed on the meta device
#: (a real build of 200M float32 parameters allocates 800 MB and takes seconds).
DEFAULT_META_THRESHOLD = 200_000_000

#: Called when a step starts: (kind "import" | "build" | "lint", what it is about, its limit),
#: and with ("idle", "", None) when it is over.
StepListener = Callable[[str, str, Optional[float]], None]


@dataclass
class Job:
    """Everything one target's lint needs besides the target's own code."""

    target: Target
    settings: Settings
    #: The config's ``input:`` (a target's own input wins; else it is inferred).
    default_input: Optional[InputSpec] = None
    measure: bool = False
    #: Also give the fixes as unified diffs where they are plain source edits (``--diff``).
    diff: bool = False
    #: None or 0: no limit.
    timeout: Optional[float] = DEFAULT_TIMEOUT
    #: Models not to build (a subprocess retry after a child died building them) and models
    #: not to lint again (already reported, or a child died linting them).
    skip: frozenset = frozenset()
    done: frozenset = frozenset()
    #: "cpu" (a real build), "meta" (archlint.loading.meta) or "auto": meta when the model
    #: has more than ``meta_threshold`` parameters.
    device: str = "auto"
    meta_threshold: int = DEFAULT_META_THRESHOLD


Item = Union[Outcome, Unbuilt]


def error(display: str, reason: str) -> Outcome:
    return Outcome(TargetResult(target=display, status="error", error=reason))


def lint_target(job: Job, on_step: Optional[StepListener] = None) -> Iterator[Item]:
    """The results of every model of ``job.target`` (and the classes it could not build)."""
    target = job.target
    step = on_step or (lambda kind, what, limit: None)
    step("import", target.display, job.timeout)
    try:
        plan = guarded(lambda: plan_target(target), f"cannot import {target.display}",
                       job.timeout, user_file=target.path)
    except StepError as exc:
        yield error(target.display, str(exc))
        return
    finally:
        step("idle", "", None)
    built: list = []
    metas: dict[int, MetaBuild] = {}
    spent: dict[str, float] = {}
    for cand in plan.candidates:
        if cand.display in job.skip:
            continue
        step("build", cand.display, job.timeout)
        t0 = time.monotonic()
        try:
            model = guarded(lambda: _build(cand, job, metas), f"cannot build {cand.display}",
                            job.timeout, user_file=cand.user_file)
        except StepError as exc:
            model = LoadFailure(cand.display, str(exc))
        step("idle", "", None)
        spent[cand.display] = time.monotonic() - t0
        built.append((cand, model))
    kept, unbuilt = plan.keep(built)
    for item in kept:
        if isinstance(item, LoadedModel):
            item.meta = metas.get(id(item.model))
    del built, metas
    if not kept and unbuilt and target.display not in job.done:
        yield error(target.display, unbuilt_note(unbuilt, plan.hint()))  # nothing linted
    while kept:
        item = kept.pop(0)
        if item.display in job.done:
            continue
        if isinstance(item, LoadFailure):
            yield error(item.display, item.error)
            continue
        limit = _remaining(job.timeout, spent.get(item.display, 0.0))
        step("lint", item.display, limit)
        outcome = lint_model_guarded(item, job, limit, target.path)
        step("idle", "", None)
        yield outcome
        del item, outcome
    yield from unbuilt


def _build(cand: Candidate, job: Job, metas: dict[int, MetaBuild]) -> nn.Module:
    """Build one model: for real, or on the meta device (``job.device``; "auto": for real,
    unless it asks for more than ``job.meta_threshold`` entries -- then, before allocating
    them, on the meta device)."""
    if cand.built or job.device == "cpu":
        return cand.build()
    if job.device == "auto":
        try:  # for real, stopped before it allocates more than the threshold
            return build_counting(cand.build, job.meta_threshold)
        except TooLarge:
            seed_everything()
    try:
        built = build_on_meta(cand.build)
    except LoadError as exc:
        raise LoadError(f"{exc} (on the meta device: --device cpu builds it for real)"
                        ) from None
    why = (f"{built.parameters:,} parameters, more than the {job.meta_threshold:,} of "
           "--meta-threshold (--device cpu builds it for real)") if job.device == "auto" \
        else "--device meta"
    built.notes.append(f"analysed on the meta device ({why}): weights not allocated; large "
                       "weights read by the distribution their initialisation draws from")
    metas[id(built.model)] = built
    return built.model


def _remaining(timeout: Optional[float], spent: float) -> Optional[float]:
    if not timeout or timeout <= 0:
        return None
    return max(timeout - spent, min(1.0, timeout))


def lint_model_guarded(loaded: LoadedModel, job: Job, limit: Optional[float],
                       user_file: Optional[Path] = None) -> Outcome:
    """Settle the example input, trace, analyse, run the rules (and ``--measure``)."""
    def work() -> Outcome:
        seed_everything()
        spec = loaded.input or job.default_input or infer_input(loaded.model)
        if spec is None:
            problem = uninferable_input(loaded.model)
            if problem is not None:
                return error(loaded.display, problem)
        try:
            result, analysis = lint_and_analyse(loaded.model, loaded.display, spec,
                                                job.settings, meta=loaded.meta)
        finally:
            forget_meta()
        if job.measure and loaded.meta is not None:
            result.notes.append("--measure skipped: the model was analysed on the meta device, "
                                "without weights to run (--device cpu measures it)")
        elif job.measure and analysis is not None:
            seed_everything()
            _measure(loaded, analysis, result)
        if job.diff and analysis is not None and analysis.fixes:
            from .fixes import add_diffs

            result.notes.extend(add_diffs(analysis.fixes))
        files = sorted({n.site.path for n in analysis.graph.nodes if n.site is not None}) \
            if analysis is not None else []
        return Outcome(result, files)

    try:
        return guarded(work, "cannot analyse", limit, user_file=user_file)
    except StepError as exc:
        return error(loaded.display, str(exc))


def _measure(loaded: LoadedModel, analysis: Analysis, result: TargetResult) -> None:
    """``--measure``: the probe's gradients into the layers, the error figure into the result."""
    from .measure_step import measure_target

    spec = analysis.graph.input_spec
    if spec is None:
        result.notes.append("--measure skipped: no example input")
        return
    try:
        measured = measure_target(loaded.model, spec, result.layers)
    except Exception as exc:  # keep the other targets
        result.notes.append(f"measure_target failed: {type(exc).__name__}: {exc}"[:300])
        return
    for layer in result.layers:
        layer.measured_grad_rms = measured.grad_rms.get(layer.module)
    result.measurement = m = measured.measurement
    if m.median_decades is not None:
        result.notes.append(f"estimate vs measured gradients: median error "
                            f"{m.median_decades:.3f} decades over {m.layers} layers")
    if analysis.fixes:
        from .fixes import measure_fixes

        result.notes.extend(measure_fixes(loaded.model, spec, analysis.fixes))
