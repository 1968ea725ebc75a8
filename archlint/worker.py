"""The subprocess mode (``--subprocess``, ``subprocess: true``): targets linted in a child process.

In-process, archlint survives whatever a model raises -- ``sys.exit`` included -- but not a
model that ends the interpreter (``os._exit``), crashes it (a segfault in C code) or loops in C
code that no signal interrupts. In the subprocess mode a child process (``python -m
archlint.worker``) imports torch once and lints one target after another, the same steps as
in-process (:func:`archlint.pipeline.lint_target`). The parent (:class:`ChildPool`):

- sends each job as one line of JSON on the child's stdin; the child answers with JSON lines on
  a stdout of its own (its file descriptor 1 is stderr for everything else: prints, C code),
  one per step started (import, build, lint: which model and its time limit) and one per result.
  Results are plain data (:func:`archlint.results.result_from_dict`): never pickled;
- kills the child when a step runs past its time limit plus a grace period (the child's own
  in-process limit comes first when the step can be interrupted): that model is a timeout error;
- when the child dies -- ``os._exit``, a signal, killed for running out of memory -- the model
  of the step it was running is an error naming how it died, and a new child carries on with
  the rest of the target (the models already reported, and the one that killed it, are not
  linted again). A death while importing the file is the whole file's error.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, Iterator, Optional

from .engine import Settings
from .loading.inputs import input_from_data, input_to_data
from .loading.targets import Target
from .pipeline import DEFAULT_META_THRESHOLD, Item, Job, Outcome, error
from .results import Unbuilt, result_from_dict
from .rules import ModelFacts

#: Seconds past a step's limit before the parent kills the child (the child's own timer, which
#: interrupts Python code, fires first and reports the timeout itself).
GRACE = 5.0
#: Seconds a new child may take to start (it imports torch).
STARTUP = 180.0


# ------------------------------------------------------------------------------------------
# Plain data for the pipe
# ------------------------------------------------------------------------------------------

def _jsonable(value: Any) -> Any:
    """json.dumps ``default``: numbers of numpy/torch scalars, everything else as text."""
    for cast in (float, str):
        try:
            return cast(value)
        except (TypeError, ValueError):
            continue
    return repr(value)  # pragma: no cover


def _target_data(t: Target) -> dict[str, Any]:
    return {"display": t.display, "path": str(t.path) if t.path is not None else None,
            "name": t.name, "import_path": t.import_path, "kwargs": t.kwargs,
            "input": input_to_data(t.input) if t.input is not None else None,
            "explicit": t.explicit,
            "search_path": str(t.search_path) if t.search_path is not None else None,
            "feeds": t.feeds, "feeds_where": t.feeds_where}


def _target_from(d: dict[str, Any]) -> Target:
    return Target(display=d["display"], path=Path(d["path"]) if d["path"] else None,
                  name=d["name"], import_path=d["import_path"], kwargs=d["kwargs"],
                  input=input_from_data(d["input"]) if d["input"] is not None else None,
                  explicit=d["explicit"],
                  search_path=Path(d["search_path"]) if d["search_path"] else None,
                  feeds=d.get("feeds"), feeds_where=d.get("feeds_where"))


# ------------------------------------------------------------------------------------------
# Parent side
# ------------------------------------------------------------------------------------------

class _Forked:
    """A child forked from this process (``-j N``): it has torch and archlint imported already,
    and answers on pipes with the same protocol as ``python -m archlint.worker``. What
    :class:`_Child` needs of a ``subprocess.Popen``."""

    #: The parent's ends of every forked child's pipes: a child closes its siblings' (else a
    #: child would never see the end of its input while a younger sibling holds it open).
    _parent_ends: set[int] = set()

    def __init__(self) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the parent's code
            code = 0
            try:
                for fd in (to_child_w, from_child_r, *_Forked._parent_ends):
                    try:
                        os.close(fd)
                    except OSError:
                        pass
                os.dup2(to_child_r, 0)
                os.close(to_child_r)
                sys.stdin = os.fdopen(0, "r", encoding="utf-8", closefd=False)
                out = os.fdopen(from_child_w, "w", encoding="utf-8")
                os.dup2(2, 1)
                _in_child(out)
            except BaseException:  # pragma: no cover - the parent sees the child gone
                code = 2
            finally:
                os._exit(code)
        os.close(to_child_r)
        os.close(from_child_w)
        self.pid = pid
        _Forked._parent_ends.update((to_child_w, from_child_r))
        self.stdin = os.fdopen(to_child_w, "wb")
        self.stdout = os.fdopen(from_child_r, "rb")
        self.returncode: Optional[int] = None

    def poll(self) -> Optional[int]:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -9
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        end = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if end is not None and time.monotonic() > end:
                raise subprocess.TimeoutExpired("archlint worker", timeout or 0)
            time.sleep(0.02)
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def forget(self) -> None:
        """The parent is done with this child's pipes."""
        for f in (self.stdin, self.stdout):
            try:
                _Forked._parent_ends.discard(f.fileno())
            except (OSError, ValueError):
                pass


class _Child:
    def __init__(self, setup: dict[str, Any], fork: bool = False) -> None:
        if fork:
            self.proc: Any = _Forked()
            self._start(setup)
            return
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        if "site-packages" not in root and "dist-packages" not in root:  # a source checkout
            env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"]
                                        if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen([sys.executable, "-m", "archlint.worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self._start(setup)

    def _start(self, setup: dict[str, Any]) -> None:
        self.events: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()
        self.send({"setup": setup})

    def _read(self, stream: IO[bytes]) -> None:
        try:
            for line in stream:
                try:
                    self.events.put(json.loads(line))
                except ValueError:
                    continue  # not ours
        except (OSError, ValueError):  # the pipe broke: the same as the child ending
            pass
        self.events.put(None)  # end of stream: the child is gone

    def send(self, message: dict[str, Any]) -> bool:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write((json.dumps(message, default=_jsonable) + "\n").encode())
            self.proc.stdin.flush()
            return True
        except (OSError, ValueError):
            return False

    def next_event(self, deadline: Optional[float]) -> Optional[dict[str, Any]]:
        """The next event; None when the child is gone; raises queue.Empty past the
        deadline."""
        timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        return self.events.get(timeout=timeout)

    def death(self) -> str:
        """How the child ended, for the reason of the model it was running."""
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            self.kill()
            return "the process running it stopped answering"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            what = {"SIGSEGV": "a crash (segmentation fault)", "SIGKILL": "killed (out of "
                    "memory?)", "SIGABRT": "aborted", "SIGBUS": "a crash (bus error)",
                    "SIGFPE": "a crash (floating-point exception)"}.get(name, "killed")
            return f"the process running it died: {what}, {name}"
        return f"the process running it exited with status {code} (os._exit or a fatal error " \
               "in C code)"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass

    def close(self) -> None:
        if isinstance(self.proc, _Forked):
            self.proc.forget()
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.kill()


class ChildPool:
    """Lints jobs in a child process, starting a new one whenever the last one died."""

    def __init__(self, config_path: Optional[Path], settings: Settings, measure: bool,
                 timeout: Optional[float], diff: bool = False, device: str = "auto",
                 meta_threshold: int = DEFAULT_META_THRESHOLD, fork: bool = False) -> None:
        #: Children forked from this process (torch already imported) rather than started.
        self.fork = fork and hasattr(os, "fork")
        self.setup = {"config": str(config_path) if config_path is not None else None,
                      "rules": [r.code for r in settings.rules],
                      "rule_options": settings.rule_options, "measure": measure,
                      "timeout": timeout, "fixes": settings.fixes, "diff": diff,
                      "device": device, "meta_threshold": meta_threshold}
        self.child: Optional[_Child] = None

    def start(self) -> None:
        """Start the child now (forked children: before the parent starts threads)."""
        self._live_child()

    def _live_child(self) -> Optional[_Child]:
        if self.child is not None and self.child.proc.poll() is None:
            return self.child
        fork, self.fork = self.fork, False  # only the first child is forked (before the run
        # starts threads); one that replaces a dead child is started as a new process
        try:
            self.child = _Child(self.setup, fork=fork)
        except OSError as exc:
            print(f"archlint: cannot start a child process: {exc}", file=sys.stderr)
            return None
        try:
            event = self.child.next_event(time.monotonic() + STARTUP)
        except queue.Empty:
            event = None
        if event is None or event.get("event") != "ready":
            self.child.kill()
            self.child = None
        return self.child

    def lint(self, job: Job) -> Iterator[Item]:
        done: set[str] = set(job.done)
        skip: set[str] = set(job.skip)
        while True:
            child = self._live_child()
            if child is None:
                yield error(job.target.display, "cannot start a child process for the "
                            "subprocess mode (see the messages above)")
                return
            data = {"target": _target_data(job.target), "default_input":
                    input_to_data(job.default_input) if job.default_input is not None else None,
                    "skip": sorted(skip), "done": sorted(done), "source": job.source,
                    "facts": [dataclasses.asdict(f) for f in job.facts.values()]}
            if not child.send({"job": data}):
                child.kill()
                self.child = None
                continue
            step: Optional[dict[str, Any]] = None
            deadline: Optional[float] = None
            failure: Optional[str] = None
            while True:
                try:
                    event = child.next_event(deadline)
                except queue.Empty:
                    child.kill()
                    self.child = None
                    failure = (f"did not finish within {step['limit']:g} s and could not be "
                               "interrupted (C code?); the process running it was stopped"
                               if step and step.get("limit") else "stopped answering")
                    break
                if event is None:
                    failure = child.death()
                    child.kill()
                    self.child = None
                    break
                kind = event.get("event")
                if kind == "step" and event["kind"] == "idle":
                    step = deadline = None  # between steps: archlint's own code
                elif kind == "step":
                    step = event
                    limit = event.get("limit")
                    deadline = time.monotonic() + limit + GRACE if limit else None
                elif kind == "outcome":
                    result = result_from_dict(event["result"])
                    done.add(result.target)
                    yield Outcome(result, event.get("files", []),
                                  [ModelFacts(**f) for f in event.get("facts", [])])
                elif kind == "unbuilt":
                    yield Unbuilt(**event["unbuilt"])
                elif kind == "done":
                    return
            # the child is gone: blame the step it was running, carry on with the rest
            if step is None:
                yield error(job.target.display, f"stopped between steps: {failure}")
                return
            if step["kind"] == "import":
                yield error(job.target.display, f"cannot import {job.target.display}: {failure}")
                return
            display = step["what"]
            verb = "build " + display if step["kind"] == "build" else "analyse"
            yield error(display, f"cannot {verb}: {failure}")
            if step["kind"] == "build":
                if display in skip:
                    return
                skip.add(display)
            else:
                if display in done:
                    return
            done.add(display)

    def close(self) -> None:
        if self.child is not None:
            self.child.close()
            self.child = None

    def abort(self) -> None:
        if self.child is not None:
            self.child.kill()
            self.child = None


# ------------------------------------------------------------------------------------------
# Child side
# ------------------------------------------------------------------------------------------

def main() -> None:
    """``python -m archlint.worker``: read jobs from stdin, answer on the original stdout."""
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # whatever else writes to fd 1 (prints, C code) lands on stderr

    def emit(message: dict[str, Any]) -> None:
        out.write(json.dumps(message, default=_jsonable) + "\n")
        out.flush()

    try:
        _serve(emit)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        pass
    except Exception as exc:  # a one-line reason, never a traceback
        print(f"archlint: subprocess: {type(exc).__name__}: {exc}"[:300], file=sys.stderr)
        sys.exit(2)


def _in_child(out: IO[str]) -> None:
    """A forked child's life: the worker's loop, one torch thread (the children share the
    cores), the parent's signal handlers and interval timer dropped."""
    import torch

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.setitimer(signal.ITIMER_REAL, 0)
    torch.set_num_threads(1)

    def emit(message: dict[str, Any]) -> None:
        out.write(json.dumps(message, default=_jsonable) + "\n")
        out.flush()

    try:
        _serve(emit)
    except (KeyboardInterrupt, BrokenPipeError):
        pass


def _serve(emit: Any) -> None:
    from .config import Config, load_config
    from .guard import watch_interrupts
    from .pipeline import lint_target

    setup = json.loads(sys.stdin.readline() or "{}").get("setup")
    if setup is None:
        return
    config = load_config(Path(setup["config"])) if setup["config"] else Config()
    by_code = {r.code: r for r in config.available_rules}
    rules = [by_code[c] for c in setup["rules"] if c in by_code]
    settings = Settings(rules=rules, rule_options=setup["rule_options"],
                        fixes=setup.get("fixes", True))
    emit({"event": "ready"})
    with watch_interrupts():
        for line in sys.stdin:
            data = json.loads(line).get("job")
            if data is None:
                continue
            job = Job(_target_from(data["target"]), settings,
                      default_input=input_from_data(data["default_input"])
                      if data["default_input"] is not None else None,
                      measure=setup["measure"], diff=setup.get("diff", False),
                      timeout=setup["timeout"],
                      skip=frozenset(data["skip"]), done=frozenset(data["done"]),
                      device=setup.get("device", "auto"),
                      meta_threshold=setup.get("meta_threshold", DEFAULT_META_THRESHOLD),
                      source=data.get("source", True),
                      facts={f["name"]: ModelFacts(**f) for f in data.get("facts", [])})

            def step(kind: str, what: str, limit: Optional[float]) -> None:
                emit({"event": "step", "kind": kind, "what": what, "limit": limit})

            for item in lint_target(job, on_step=step):
                if isinstance(item, Unbuilt):
                    emit({"event": "unbuilt", "unbuilt": dataclasses.asdict(item)})
                else:
                    emit({"event": "outcome", "result": dataclasses.asdict(item.result),
                          "files": item.files,
                          "facts": [dataclasses.asdict(f) for f in item.facts]})
            emit({"event": "done"})


if __name__ == "__main__":
    main()
