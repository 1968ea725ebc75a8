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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

from torch import nn

from .engine import Analysis, Settings, lint_and_analyse, lint_source, model_facts
from .guard import StepError, guarded
from .graph.metainit import forget as forget_meta
from .loading.build import (Candidate, LoadedModel, LoadError, LoadFailure, plan_target,
                            seed_everything)
from .loading.inputs import InputSpec, uninferable_input
from .loading.meta import MetaBuild, TooLarge, build_counting, build_on_meta
from .loading.targets import Target, display_path
from .results import Outcome, TargetResult, Unbuilt, unbuilt_note
from .rules import ModelFacts

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
    #: Run the source rules on the target's file after its models (the runner asks it of the
    #: last target of each file), with what the earlier targets' graphs said of their models.
    source: bool = True
    facts: dict[str, ModelFacts] = field(default_factory=dict)


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
        yield from _source(job, {})  # the source rules need no import
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
    del built
    metas.clear()
    if not kept and unbuilt and target.display not in job.done:
        yield error(target.display, unbuilt_note(unbuilt, plan.hint()))  # nothing linted
    facts: dict[str, ModelFacts] = {}
    pairs = _pairs(job, plan, kept, step)
    in_pairs = {m.display for pair in pairs if not isinstance(pair, Outcome) for m in pair}
    alone: dict[str, TargetResult] = {}
    while kept:
        item = kept.pop(0)
        if item.display in job.done:
            continue
        if isinstance(item, LoadFailure):
            yield error(item.display, item.error)
            continue
        limit = _remaining(job.timeout, spent.get(item.display, 0.0))
        step("lint", item.display, limit)
        outcome = lint_model_guarded(item, job, limit, target.path, facts)
        step("idle", "", None)
        if item.display in in_pairs:
            alone[item.display] = outcome.result
        yield outcome
        del item, outcome
    yield from unbuilt
    for pair in pairs:
        if isinstance(pair, Outcome):  # the config's ``feeds:`` could not be followed
            yield pair
            continue
        g, d = pair
        display = pair_display(g.display, d.display)
        if display in job.done:
            continue
        step("lint", display, job.timeout)
        outcome = lint_pair_guarded(g, d, alone.get(g.display), alone.get(d.display), job,
                                    target.path)
        step("idle", "", None)
        yield outcome
    yield from _source(job, facts)


def _inferred(model: nn.Module) -> Optional[InputSpec]:
    """The example input inferred from the model (imported only when none was given)."""
    from .loading.infer import infer_input

    return infer_input(model)


def pair_display(g: str, d: str) -> str:
    """``gan.py:netD(netG)``: how the report names the composition D(G(z))."""
    left, _, gname = g.rpartition(":")
    dname = d.rpartition(":")[2]
    return f"{left}:{dname}({gname})" if left else f"{dname}({gname})"


def _pairs(job: Job, plan: Any, kept: list, step: StepListener) -> list:
    """The generator/discriminator pairs to lint composed: found by name among the file's
    models, or the config's ``feeds:`` (the discriminator of the target's generator, built
    here); an entry that cannot be followed is an error Outcome naming the config key."""
    models = [m for m in kept if isinstance(m, LoadedModel)]
    target = job.target
    feeds = getattr(target, "feeds", None)
    if not any(r.kind == "model" for r in job.settings.rules):
        return []  # only source rules selected: nothing to learn from the composition
    if feeds is None:
        if target.name is not None:
            return []
        from .loading.pairs import find_pairs

        found = find_pairs([(m.display.rsplit(":", 1)[-1], m.model) for m in models])
        return [(models[g], models[d]) for g, d in found]
    where = getattr(target, "feeds_where", None) or "feeds"
    if len(models) != 1:
        return [error(target.display, f"{where}: {target.display} must be one generator to "
                                      f"feed {feeds!r} (it has {len(models)} models)")]
    cand = plan.feeds
    if cand is None:
        return [error(target.display, f"{where}: {plan.feeds_error or feeds!r}")]
    step("build", cand.display, job.timeout)
    try:
        model = guarded(cand.build, f"cannot build {cand.display}", job.timeout,
                        user_file=cand.user_file)
    except StepError as exc:
        return [error(target.display, f"{where}: {exc}")]
    finally:
        step("idle", "", None)
    if not isinstance(model, nn.Module):
        return [error(target.display, f"{where}: {cand.display} is not an nn.Module")]
    return [(models[0], LoadedModel(cand.display, model, None))]


def lint_pair_guarded(g: LoadedModel, d: LoadedModel, g_alone: Optional[TargetResult],
                      d_alone: Optional[TargetResult], job: Job,
                      user_file: Optional[Path] = None) -> Outcome:
    """D(G(z)) linted as one model from the generator's input; its findings on the
    generator's layers (those the generator alone does not have), with the decades the
    discriminator costs the generator."""
    from .loading.pairs import composed, fit_pair

    display = pair_display(g.display, d.display)

    def work() -> Outcome:
        seed_everything()
        spec = g.input or job.default_input or _inferred(g.model)
        if spec is None:
            return Outcome(TargetResult(target=display, notes=[
                f"D(G(z)) not analysed: no example input for {g.display}"]))
        fitted, problem = fit_pair(g.model, d.model, spec)
        if fitted is None:
            return Outcome(TargetResult(target=display, notes=[
                f"D(G(z)) not analysed: {problem}"]))
        seed_everything()
        pair = composed(g.model, d.model)
        assert pair is not None  # fit_pair said it composes
        outcome = _lint_loaded(LoadedModel(display, pair, fitted), fitted, job)
        _as_generator_sees_it(outcome.result, g_alone, d_alone, g.display, d.display)
        return outcome

    try:
        return guarded(work, "cannot analyse", job.timeout, user_file=user_file)
    except StepError as exc:
        return error(display, str(exc))


def _as_generator_sees_it(result: TargetResult, g_alone: Optional[TargetResult],
                          d_alone: Optional[TargetResult], g_name: str, d_name: str) -> None:
    """Keep the composition's findings on the generator's layers that the generator alone
    does not have; say how many decades the discriminator costs the generator."""
    if result.status != "ok":
        return
    seen = {(f.code, f.path, f.line) for f in (g_alone.findings if g_alone else [])}
    kept = [f for f in result.findings
            if (f.module or "").startswith("generator") and (f.code, f.path, f.line) not in seen]
    result.findings = kept
    flow = result.gradient_flow.get("vanishing")
    alone = g_alone.gradient_flow.get("vanishing") if g_alone is not None else None
    if flow is None:
        return
    total = -flow.decades
    own = -alone.decades if alone is not None else 0.0
    cost = total - own
    text = (f"D(G(z)): the generator's gradient loses {total:.1f} decades from its first "
            f"layer to the discriminator's output; the discriminator ({d_name.rpartition(':')[2]}"
            f") costs the generator {cost:.1f} decades ({g_name.rpartition(':')[2]} alone: "
            f"{own:.1f})")
    result.notes.append(text)
    for f in kept:
        f.data["discriminator_decades"] = round(cost, 3)
        f.data["composed_decades"] = round(total, 3)
        if f.code == "AL105":
            f.message += (f"; composed with the discriminator, as the generator's gradient "
                          f"sees it: the discriminator ({d_name.rpartition(':')[2]}) costs the "
                          f"generator {cost:.1f} decades ({g_name.rpartition(':')[2]} alone "
                          f"loses {own:.1f})")


def _source(job: Job, facts: dict[str, ModelFacts]) -> Iterator[Item]:
    """The source rules on the target's file (never imported for them), once its models are
    linted: their graphs tell which ones end in a sigmoid."""
    path = job.target.path
    if not job.source or path is None or not path.is_file():
        return
    result = lint_source(path, display_path(path), job.settings, {**job.facts, **facts})
    if result is not None:
        yield Outcome(result, [str(path)])


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
                       user_file: Optional[Path] = None,
                       facts: Optional[dict[str, ModelFacts]] = None) -> Outcome:
    """Settle the example input, trace, analyse, run the rules (and ``--measure``).
    ``facts``: filled with what the source rules may read of the analysed model."""
    def work() -> Outcome:
        seed_everything()
        spec = loaded.input or job.default_input or _inferred(loaded.model)
        if spec is None:
            problem = uninferable_input(loaded.model)
            if problem is not None:
                return error(loaded.display, problem)
        return _lint_loaded(loaded, spec, job, facts)

    try:
        return guarded(work, "cannot analyse", limit, user_file=user_file)
    except StepError as exc:
        return error(loaded.display, str(exc))


def _lint_loaded(loaded: LoadedModel, spec: Optional[InputSpec], job: Job,
                 facts: Optional[dict[str, ModelFacts]] = None) -> Outcome:
    """Trace, analyse, run the rules (and ``--measure``, ``--diff``): inside a guarded step."""
    try:
        result, analysis = lint_and_analyse(loaded.model, loaded.display, spec, job.settings,
                                            meta=loaded.meta)
    finally:
        forget_meta()
    if loaded.note:
        result.notes.insert(0, loaded.note)
    found = [model_facts(name, analysis) for name in
             sorted({type(loaded.model).__name__, loaded.display.rsplit(":", 1)[-1]})]
    if facts is not None:
        facts.update({f.name: f for f in found})
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
    return Outcome(result, files, found)


def _measure(loaded: LoadedModel, analysis: Analysis, result: TargetResult) -> None:
    """``--measure``: the probe's gradients into the layers, the error figure into the result."""
    from .measure_step import measure_target

    spec = analysis.graph.input_spec
    if spec is None:
        result.notes.append("--measure skipped: no example input")
        return
    if any(f.code == "AL110" for f in result.findings):
        from .measure_step import measure_dead_units

        try:
            result.notes.extend(measure_dead_units(loaded.model, spec, result.findings))
        except Exception as exc:  # the findings stand unmeasured
            result.notes.append(f"measuring dead units failed: {type(exc).__name__}: "
                                f"{exc}"[:300])
    try:
        flow = result.gradient_flow.get("vanishing")
        measured = measure_target(loaded.model, spec, result.layers,
                                  flow.earliest if flow else (), flow.last if flow else ())
    except Exception as exc:  # keep the other targets
        result.notes.append(f"measure_target failed: {type(exc).__name__}: {exc}"[:300])
        return
    for layer in result.layers:
        layer.measured_grad_rms = measured.grad_rms.get(layer.module)
    result.measurement = m = measured.measurement
    result.notes.append(m.describe())
    if analysis.fixes:
        from .fixes import measure_fixes

        result.notes.extend(measure_fixes(loaded.model, spec, analysis.fixes))
