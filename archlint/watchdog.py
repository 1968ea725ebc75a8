"""In-process, the last resort against a step that neither returns nor can be interrupted.

The in-process time limit (:func:`archlint.guard.time_limit`) interrupts Python code, but a
signal handler only runs when C code returns to the interpreter: a C loop that never returns
would hang the run. The watchdog is a thread that watches the steps (:mod:`archlint.pipeline`
reports each step's start and end); when one runs ``GRACE`` seconds past its limit, the main
thread is taken to be stuck for good, and the watchdog finishes the run itself -- that model is a
timeout error, the rest of its target and every remaining target are linted in child processes
(:mod:`archlint.worker`) -- and hands the report to the command line, which prints it and ends
the process. Nothing is lost but the stuck model.

It can do so only while the stuck C code lets other threads run (it releases the interpreter
lock, as torch's kernels, sleeps and I/O do); for C code that holds it, use ``--subprocess``.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

#: Seconds past a step's limit before the watchdog takes over.
GRACE = 5.0


class Watchdog:
    """Call :meth:`step` at the start and :meth:`idle` at the end of every step; ``take_over``
    runs in the watchdog's thread with the stuck step's (kind, what, limit)."""

    def __init__(self, take_over: Callable[[str, str, float], None]) -> None:
        self._take_over = take_over
        self._lock = threading.Condition()
        self._step: Optional[tuple[str, str, float]] = None
        self._deadline: Optional[float] = None
        self._stopped = False
        self.taken = False
        self._thread = threading.Thread(target=self._watch, name="archlint-watchdog",
                                        daemon=True)
        self._thread.start()

    def step(self, kind: str, what: str, limit: Optional[float]) -> None:
        with self._lock:
            self._block_if_taken()
            if limit:
                self._step = (kind, what, limit)
                self._deadline = time.monotonic() + limit + GRACE
            else:
                self._step = self._deadline = None
            self._lock.notify()

    def idle(self) -> None:
        with self._lock:
            self._block_if_taken()
            self._step = self._deadline = None

    def stop(self) -> None:
        with self._lock:
            self._block_if_taken()
            self._stopped = True
            self._lock.notify()

    def _block_if_taken(self) -> None:
        """The main thread came back after all: the watchdog's thread owns the run now."""
        while self.taken:
            self._lock.wait()

    def _watch(self) -> None:
        with self._lock:
            while not self._stopped:
                if self._deadline is None:
                    self._lock.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._lock.wait(left)
                    continue
                stuck = self._step
                assert stuck is not None
                self.taken = True
                break
            else:
                return
        self._take_over(*stuck)
