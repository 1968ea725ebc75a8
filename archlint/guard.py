"""Guards around user code: whatever a model's code does, archlint keeps running.

Linting a model runs its code -- importing its file, its constructor, its forward (tracing,
shape propagation, ``--measure``). Every such step runs under :func:`guarded`:

- its prints go to stderr (stdout belongs to the report);
- it has a time limit (``timeout``): on POSIX an interval timer raises
  :class:`TimeLimitExceeded` in the main thread, which interrupts Python code (a loop that never
  ends, a sleep, a lock) but not a C function that never returns -- that needs the subprocess mode
  (``--subprocess``), whose children are killed at the limit;
- whatever it raises -- an exception, ``SystemExit``, a ``KeyboardInterrupt`` that the user did
  not type, running out of memory, the time limit -- becomes a one-line reason naming the step,
  the exception and the innermost line of the user's code.

A Ctrl-C typed by the user is told apart from a ``KeyboardInterrupt`` raised by user code
(:func:`watch_interrupts`) and still stops the run.

Plain standard library: no torch, no other archlint layer but :mod:`archlint.paths`.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, TypeVar

from .paths import display_path

T = TypeVar("T")

_ARCHLINT_DIR = str(Path(__file__).resolve().parent)


class TimeLimitExceeded(BaseException):
    """A step ran past its time limit. A BaseException, so that user code's ``except
    Exception`` (and archlint's own) cannot swallow it."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"time limit of {seconds:g} s exceeded")
        self.seconds = seconds


class StepError(Exception):
    """A guarded step failed; ``str()`` is the one-line reason."""


def one_line_error(exc: BaseException, user_file: Optional[Path] = None) -> str:
    """``ValueError: bad width (net.py:12)`` -- the innermost frame in the user's file."""
    if isinstance(exc, SyntaxError):
        where = f" ({display_path(Path(exc.filename))}:{exc.lineno})" if exc.filename else ""
        return f"SyntaxError: {exc.msg}{where}"
    msg = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {msg[0] if msg else ''}".rstrip(": ")
    where = user_location(exc, user_file)
    if where:
        text += f" ({where})"
    return text[:400]


def user_location(exc: BaseException, user_file: Optional[Path] = None) -> Optional[str]:
    """``file.py:LINE`` of the innermost frame outside archlint (in ``user_file`` if given and
    on the stack), or None."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith(_ARCHLINT_DIR)]
    if user_file is not None:
        mine = [f for f in frames if Path(f.filename).resolve() == user_file]
        if mine:
            frames = mine
    if not frames:
        return None
    last = frames[-1]
    if "site-packages" in last.filename and user_file is not None:
        return None
    return f"{display_path(Path(last.filename))}:{last.lineno}"


# ------------------------------------------------------------------------------------------
# Time limits
# ------------------------------------------------------------------------------------------

def can_interrupt() -> bool:
    """Whether an in-process time limit works here (POSIX interval timers, main thread)."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def time_limit(seconds: Optional[float]) -> Iterator[None]:
    """Raise :class:`TimeLimitExceeded` in the block after ``seconds`` (None or 0: no limit;
    no limit either where :func:`can_interrupt` is false)."""
    if not seconds or seconds <= 0 or not can_interrupt():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise TimeLimitExceeded(seconds)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------------------------------
# Ctrl-C
# ------------------------------------------------------------------------------------------

class _Interrupts:
    typed = False  # a real SIGINT arrived while watched


_interrupts = _Interrupts()


@contextlib.contextmanager
def watch_interrupts() -> Iterator[None]:
    """Record a real Ctrl-C (SIGINT) while active, so that :func:`guarded` re-raises it instead
    of blaming the target. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def typed(signum: int, frame: Any) -> None:
        _interrupts.typed = True
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGINT, typed)
    except (ValueError, OSError):  # pragma: no cover - no signals here
        yield
        return
    _interrupts.typed = False
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _interrupts.typed = False


def user_typed_ctrl_c() -> bool:
    return _interrupts.typed


# ------------------------------------------------------------------------------------------
# One guarded step
# ------------------------------------------------------------------------------------------

@contextlib.contextmanager
def user_stdout() -> Iterator[None]:
    """User code's prints go to stderr: stdout holds the report and nothing else."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def guarded(step: Callable[[], T], what: str, limit: Optional[float] = None,
            user_file: Optional[Path] = None) -> T:
    """Run ``step`` (which runs user code) with its prints on stderr and a time limit; any
    failure is raised as :class:`StepError` with a one-line reason starting with ``what``
    (``building models/net.py:Net``). A Ctrl-C typed by the user propagates."""
    try:
        with user_stdout(), time_limit(limit):
            return step()
    except StepError:
        raise
    except TimeLimitExceeded as exc:
        raise StepError(f"{what}: did not finish within {exc.seconds:g} s (timeout; raise it "
                        "with --timeout or 'timeout' in the config)") from None
    except SystemExit as exc:
        where = user_location(exc, user_file)
        raise StepError(f"{what}: the model's code called sys.exit({exc.code})"
                        + (f" ({where})" if where else "")) from None
    except KeyboardInterrupt as exc:
        if user_typed_ctrl_c():
            raise
        where = user_location(exc, user_file)
        raise StepError(f"{what}: the model's code raised KeyboardInterrupt"
                        + (f" ({where})" if where else "")) from None
    except MemoryError as exc:
        raise StepError(f"{what}: out of memory ({one_line_error(exc, user_file)})") from None
    except RecursionError as exc:
        raise StepError(f"{what}: {one_line_error(exc, user_file)}") from None
    except BaseException as exc:  # noqa: B902 - nothing a model does may end the run
        raise StepError(f"{what}: {one_line_error(exc, user_file)}") from None
