"""Live progress of a sweep, as a Ray Tune callback on the driver: one line per finished or failed trial (a
failure with its exception's own message) and a status line every `interval_s` — trials done / running /
failed / pending, the best score so far per cell (algorithm × task × ratio), elapsed and estimated remaining
time, and, while trials cannot reach the tracking server, for how long and how many reports wait. Plain lines,
so `ray job logs` shows them too.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path

from ray.tune import Callback
from rich.console import Console

from orchestrator.trial import record_of, trial_name


def _cell(trial) -> str:
    algorithm, task, ratio = record_of(trial.config).cell
    return f"{algorithm}/{task}/r{ratio:g}"


def _trial_error(trial) -> str:
    """The trial's exception as its traceback's last line (the original error below Ray's wrappers), from the
    error file Tune has just written on this node."""
    try:
        trace = Path(trial.error_file).read_text() if trial.error_file else ""
    except OSError:  # an unreadable error file must not stop the progress
        trace = ""
    lines = [line.strip() for line in trace.splitlines() if line.strip()]
    if not lines:
        return "no error recorded"
    return re.sub(r"^(?:[A-Za-z_]\w*\.)+(?=\w+:)", "", lines[-1])  # "pkg.module.Error: x" -> "Error: x"


class SweepProgress(Callback):
    def __init__(self, metric: str, mode: str = "max", slots: int = 1, interval_s: float = 30.0,
                 console: Console | None = None):
        self.metric, self.mode, self.slots, self.interval_s = metric, mode, max(1, slots), interval_s
        self.total = 0  # trials in the current Tuner (Tune creates them lazily, so `trials` can be shorter)
        self.console = console or Console(highlight=False, soft_wrap=True)
        self._reset()

    def _reset(self) -> None:
        self.started = time.time()
        self.last_status = 0.0
        self.trial_seconds: list[float] = []
        self.trial_started: dict[str, float] = {}
        self.outages: set[str] = set()  # trials whose last report said the tracking server was unreachable

    def __getstate__(self) -> dict:  # Tune pickles callbacks with the experiment; the console does not travel
        return {"metric": self.metric, "mode": self.mode, "slots": self.slots, "interval_s": self.interval_s,
                "total": self.total}

    def __setstate__(self, state: dict) -> None:
        total = state.pop("total")
        self.__init__(**state)
        self.total = total

    def _say(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)  # "[sweep]" is text, not rich markup

    def setup(self, **info) -> None:
        self._reset()

    def _better(self, a: float, b: float) -> bool:
        return a > b if self.mode == "max" else a < b

    def best_per_cell(self, trials) -> dict[str, float]:
        best: dict[str, float] = {}
        for trial in trials:
            value = (trial.last_result or {}).get(self.metric)
            if value is not None and (_cell(trial) not in best or self._better(value, best[_cell(trial)])):
                best[_cell(trial)] = value
        return best

    def status_line(self, trials, finishing=None, outcome: str = "TERMINATED") -> str:
        """Counts over all trials; `finishing` is the trial whose completion is being reported (Tune updates its
        status after the callback)."""
        counts = Counter(outcome if trial is finishing else trial.status for trial in trials)
        done, running, failed = counts["TERMINATED"], counts["RUNNING"], counts["ERROR"]
        total = max(self.total, len(trials))
        pending = total - done - running - failed
        elapsed = time.time() - self.started
        line = f"{done}/{total} done, {running} running, {failed} failed, {pending} pending; " \
               f"elapsed {_duration(elapsed)}"
        if self.trial_seconds and (running or pending):
            mean = sum(self.trial_seconds) / len(self.trial_seconds)
            line += f", ~{_duration(mean * (pending + running / 2) / self.slots)} left"
        return line

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.trial_started[trial.trial_id] = time.time()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        """A line when a trial first reports that the tracking server is unreachable, and when it is back."""
        unreachable = result.get("tracking/unreachable_s", 0) > 0
        if unreachable and trial.trial_id not in self.outages:
            self.outages.add(trial.trial_id)
            self._say(f"[tracking] {trial_name(trial)} cannot reach the tracking server "
                               f"(for {result['tracking/unreachable_s']:.0f} s, {result.get('tracking/pending', 0):.0f} "
                               f"reports waiting); it keeps training and delivers them when the server is back")
        elif not unreachable and trial.trial_id in self.outages:
            self.outages.discard(trial.trial_id)
            self._say(f"[tracking] {trial_name(trial)} reaches the tracking server again")

    def _finished(self, trials, trial, outcome: str) -> None:
        if trial.trial_id in self.trial_started:
            self.trial_seconds.append(time.time() - self.trial_started.pop(trial.trial_id))
        value = (trial.last_result or {}).get(self.metric)
        score = f"{self.metric} {value:.1f}" if value is not None else "no evaluation"
        if outcome == "ERROR":
            score = f"{_trial_error(trial)[:400]} ({score})"
        self._say(f"{'done' if outcome == 'TERMINATED' else 'FAILED'} {trial_name(trial)}: {score}  "
                           f"[{self.status_line(trials, trial, outcome)}]")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._finished(trials, trial, "TERMINATED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._finished(trials, trial, "ERROR")

    def on_step_end(self, iteration, trials, **info) -> None:
        if time.time() - self.last_status < self.interval_s:
            return
        self.last_status = time.time()
        best = self.best_per_cell(trials)
        cells = ", ".join(f"{cell} {value:.1f}" for cell, value in sorted(best.items()))
        self._say(f"[sweep] {self.status_line(trials)}" + (f"; best so far: {cells}" if cells else "")
                           + self.tracking_line(trials))

    @staticmethod
    def tracking_line(trials) -> str:
        """'; tracking unreachable for 42 s in 2 trials, 17 reports waiting' while any running trial says so."""
        outages = [(trial.last_result or {}) for trial in trials if trial.status == "RUNNING"]
        outages = [r for r in outages if r.get("tracking/unreachable_s", 0) > 0]
        if not outages:
            return ""
        longest = max(r["tracking/unreachable_s"] for r in outages)
        waiting = sum(r.get("tracking/pending", 0) for r in outages)
        return f"; tracking unreachable for {longest:.0f} s in {len(outages)} trial(s), {waiting:.0f} reports waiting"


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"
