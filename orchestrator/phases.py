"""Where a sweep driver's wall time goes, printed as one line when it ends.

A sweep's fixed cost — Python and its imports, the input checks, Ray's start, the tracking store, Tune's start,
then the aggregation and Ray's shutdown — is paid once per sweep and decides how short a trial can be worth
running. `Phases` times each named phase of the driver (some overlap: the store opens in a background thread
while Ray starts) from the moment the process started, and `line()` gives them in the order they began:

    phases (s from the command): python 0.0–1.9, inputs 1.9–2.6, ray 2.6–8.0, store 2.6–5.1, ...

`bench/orchestration.py` reads this line back to split a sweep's start-up and end into their parts.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import psutil

PREFIX = "phases (s from the command):"


class Phases:
    def __init__(self, from_process_start: bool = True):
        """From the process's start (the first span, "python", is the interpreter and its imports until now), or
        from now when the sweep runs inside a longer process."""
        now = time.time()
        self.origin = psutil.Process().create_time() if from_process_start else now
        self.spans: list[tuple[str, float, float]] = [("python", self.origin, now)] if from_process_start else []
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
        return f"{PREFIX} " + ", ".join(f"{name} {start - self.origin:.1f}–{end - self.origin:.1f}"
                                        for name, start, end in spans)


def parse(line: str) -> dict[str, tuple[float, float]]:
    """The spans of a `Phases.line()` (a name that recurs, such as one Tuner per search cell, keeps its first
    start and last end)."""
    spans: dict[str, tuple[float, float]] = {}
    for part in line.removeprefix(PREFIX).split(","):
        name, span = part.strip().rsplit(" ", 1)
        start, end = (float(x) for x in span.split("–"))
        first = spans.get(name, (start, end))
        spans[name] = (min(first[0], start), max(first[1], end))
    return spans
