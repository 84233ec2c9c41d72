"""Where a sweep driver's wall time goes, printed as one line when it ends.

A sweep's fixed cost — Python and its imports, the input checks, Ray's start, the tracking store, Tune's start,
then the aggregation and Ray's shutdown — is paid once per sweep and decides how short a trial can be worth
running. `Phases` times each named phase of the driver (some overlap: the store opens in a background thread
while Ray starts) from the interpreter's start, and `line()` gives them in the order they began:

    phases (s from the command): python 0.0–1.9, inputs 1.9–2.6, ray 2.6–8.0, store 2.6–5.1, ...

The interpreter's start is the process's, except where a shell ran other commands first and then exec'd Python
as the last one (`a && b && python orchestrator/sweep.py`: bash replaces itself with the last command of a
chain), so that the process's start is the shell's. The script's first line tells which: the CPU time of the
programs the process ran and waited for (`os.times()`) is zero in a fresh interpreter. Then no clock says when
Python started, and the line counts from the script's first line and says so:

    phases (s from the script's first line; the process ran other commands for 196.8 s before it): python 0.0–1.2, ...

(a chain whose earlier commands used less than a clock tick of CPU, such as `sleep 5 && python …`, is not
seen: its wait counts as Python's.)

`bench/orchestration.py` reads this line back to split a sweep's start-up and end into their parts.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager

import psutil

PREFIX = "phases (s from "


def first_line() -> tuple[float, float]:
    """What a script reads on its first line for `Phases`: the wall clock, and the CPU seconds of the programs
    this process ran and waited for before (none in a fresh interpreter)."""
    times = os.times()
    return time.time(), times.children_user + times.children_system


class Phases:
    def __init__(self, script_start: tuple[float, float] | None = None):
        """From the interpreter's start, given the script's `first_line()` (the first span, "python", is the
        interpreter and its imports until now); from now when None (a sweep run inside a longer process)."""
        now = time.time()
        self.heading, self.origin, self.spans = "s from now", now, []
        if script_start is not None:
            read_at, earlier_cpu = script_start
            self.heading, self.origin = "s from the command", psutil.Process().create_time()
            if earlier_cpu > 0:  # the process was a shell that ran other commands, then exec'd Python
                self.heading = (f"s from the script's first line; the process ran other commands for "
                                f"{read_at - self.origin:.1f} s before it")
                self.origin = read_at
            self.spans.append(("python", self.origin, now))
        self._lock = threading.Lock()

    @contextmanager
    def phase(self, name: str):
        """Times the block as `name` (from any thread); a phase that raises is still recorded."""
        start = time.time()
        try:
            yield
        finally:
            with self._lock:
                self.spans.append((name, start, time.time()))

    def line(self) -> str:
        spans = sorted(self.spans, key=lambda span: span[1])
        return f"phases ({self.heading}): " + ", ".join(f"{name} {start - self.origin:.1f}–{end - self.origin:.1f}"
                                        for name, start, end in spans)


def parse(line: str) -> dict[str, tuple[float, float]]:
    """The spans of a `Phases.line()` (a name that recurs, such as one Tuner per search cell, keeps its first
    start and last end)."""
    spans: dict[str, tuple[float, float]] = {}
    for part in line.split("): ", 1)[1].split(","):
        name, span = part.strip().rsplit(" ", 1)
        start, end = (float(x) for x in span.split("–"))
        first = spans.get(name, (start, end))
        spans[name] = (min(first[0], start), max(first[1], end))
    return spans
