"""Live progress of a sweep, as a Ray Tune callback on the driver: one line per finished or failed trial (a
failure with its exception's own message) and a status line every `interval_s` — trials done / running /
failed / pending, the best score so far per cell (algorithm × task × ratio), elapsed and estimated remaining
time, and, while trials cannot reach the tracking server, for how long and how many reports wait. Plain lines,
so `ray job logs` shows them too.

The remaining time is estimated per trial, not from the mean finished trial (a sweep's first trials to finish
are its fastest algorithms, and a mean says "3 s left" while LaMo trials run for minutes): a running trial from
its own step rate (it reports its step to Tune every few seconds: orchestrator/trial.py), a pending one from the
seconds per step of its algorithm on its task (else on any task) in finished and running trials, and the trials
are then laid out over the sweep's concurrent slots in order. Where a trial has neither — an algorithm none of
whose trials has reported yet — the line says `? left` rather than a number that would be wrong, with the
lower bound the known trials give and the algorithms whose pace is still unknown.

A stack (seeds trained together, `resources.seeds_per_trial`) is one Tune trial and counts as its seeds: the counts
are runs, a stack's step is its seeds' steps together (its pace is seconds per seed-step, so stacks and trials alone
estimate each other's), and a stack that failed some seeds counts its finished ones as done.
"""

from __future__ import annotations

import heapq
import re
import time
from collections import Counter
from pathlib import Path

from ray.tune import Callback
from rich.console import Console

from orchestrator.trial import record_of, records_of, trial_name


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


Work = tuple[str, str, int]  # what a trial's time depends on: algorithm, task, seed-steps (steps × seeds)


def _seeds(trial) -> int:
    return len(records_of(trial.config))


def _outcome_counts(trial, status: str) -> Counter:
    """The trial's runs by outcome: all its seeds have its status, except a stack that failed some of its seeds."""
    result, seeds = trial.last_result or {}, _seeds(trial)
    if status == "ERROR" and "stack/seeds_failed" in result:
        failed = int(result["stack/seeds_failed"])
        return Counter({"ERROR": failed, "TERMINATED": seeds - failed})
    return Counter({status: seeds})


class SweepProgress(Callback):
    def __init__(self, metric: str, mode: str = "max", slots: int = 1, interval_s: float = 30.0,
                 console: Console | None = None, reused: int = 0):
        self.metric, self.mode, self.slots, self.interval_s = metric, mode, max(1, slots), interval_s
        self.reused = reused  # trials earlier sweeps finished (orchestrator/reuse.py): done, and no time left
        # The current Tuner's trials, created or not (Tune creates them lazily, so `trials` can be shorter).
        self.planned: list[Work] = []
        self.planned_runs = 0
        self.console = console or Console(highlight=False, soft_wrap=True)
        self._reset()

    def expect(self, trials: list[list]) -> None:
        """The trials the next Tuner runs, each as its records (a search: its cell's record once per sample; a stack:
        its seeds)."""
        self.planned = [(records[0].algorithm, records[0].task, records[0].num_steps * len(records))
                        for records in trials]
        self.planned_runs = sum(len(records) for records in trials)

    def _reset(self) -> None:
        self.started = time.time()
        self.last_status = 0.0
        self.finished_rates: list[tuple[Work, float]] = []  # (work, seconds per step) of finished trials
        self.trial_started: dict[str, tuple[float, int]] = {}  # trial id -> (time, step) at its (re)start
        self.works: dict[str, Work] = {}  # trial id -> its work, parsed once
        self.outages: set[str] = set()  # trials whose last report said the tracking server was unreachable

    def __getstate__(self) -> dict:  # Tune pickles callbacks with the experiment; the console does not travel
        return {"metric": self.metric, "mode": self.mode, "slots": self.slots, "interval_s": self.interval_s,
                "reused": self.reused, "planned": self.planned, "planned_runs": self.planned_runs}

    def __setstate__(self, state: dict) -> None:
        planned, planned_runs = state.pop("planned"), state.pop("planned_runs", 0)
        self.__init__(**state)
        self.planned, self.planned_runs = planned, planned_runs or len(planned)

    def _work(self, trial) -> Work:
        if trial.trial_id not in self.works:
            record = record_of(trial.config)
            self.works[trial.trial_id] = record.algorithm, record.task, record.num_steps * _seeds(trial)
        return self.works[trial.trial_id]

    def _step(self, trial) -> int:
        """The seed-steps the trial has done: its reported step × its seeds."""
        return (trial.last_result or {}).get("step", 0) * _seeds(trial)

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
        counts = Counter()
        for trial in trials:
            counts += _outcome_counts(trial, outcome if trial is finishing else trial.status)
        done, running, failed = counts["TERMINATED"], counts["RUNNING"], counts["ERROR"]
        total = max(self.planned_runs, sum(_seeds(trial) for trial in trials))
        pending = total - done - running - failed
        reused = f" ({self.reused} reused)" if self.reused else ""
        line = f"{done + self.reused}/{total + self.reused} done{reused}, {running} running, {failed} failed, " \
               f"{pending} pending; elapsed {_duration(time.time() - self.started)}"
        if running or pending:
            left, unknown = self.remaining_seconds(trials, finishing)
            line += f", ~{_duration(left)} left" if not unknown else \
                f", ? left (≥ {_duration(left)}; no pace yet for {', '.join(unknown)})"
        return line

    def remaining_seconds(self, trials, finishing=None) -> tuple[float, list[str]]:
        """Until the last trial ends: running trials finish at their own rates, pending ones start in the first
        free slot and take their algorithm's seconds per step. Where some trial's time is unknown, the seconds
        are a lower bound (those trials counted as taking none) and their algorithms are listed."""
        now = time.time()
        running, progress = [], []  # (work, seconds so far, steps done, steps left); (work, seconds per step)
        for trial in trials:
            if trial is not finishing and trial.status == "RUNNING":
                step = self._step(trial)
                started, first_step = self.trial_started.get(trial.trial_id, (now, step))  # starting now
                work = self._work(trial)
                running.append((work, now - started, step - first_step, work[2] - step))
                if step > first_step:
                    progress.append((work, (now - started) / (step - first_step)))
        left, unknown = [], []
        for work, seconds, done, steps_left in running:
            rate = _seconds_per_step(work, self.finished_rates, progress)
            if done > 0:
                left.append(seconds * steps_left / done)  # its own rate
            elif rate and rate * steps_left >= seconds:  # nothing reported yet: its algorithm's rate
                left.append(rate * steps_left - seconds)
            else:  # no rate, or it has taken longer than its algorithm's rate says already
                left.append(0.0)
                unknown.append(work[0])
        started = Counter(self._work(t) for t in trials if t is finishing or t.status != "PENDING")
        waiting = (Counter(self.planned) | Counter(self._work(t) for t in trials)) - started
        queued = []
        for work in _in_plan_order(self.planned, list(waiting.elements())):
            rate = _seconds_per_step(work, self.finished_rates, progress)
            queued.append(rate * work[2] if rate else 0.0)
            if not rate:
                unknown.append(work[0])
        return _makespan(left, queued, self.slots), list(dict.fromkeys(unknown))

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.trial_started[trial.trial_id] = time.time(), self._step(trial)  # resumed?

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
            started, first_step = self.trial_started.pop(trial.trial_id)
            work = self._work(trial)
            if outcome == "TERMINATED" and work[2] > first_step and not (trial.last_result or {}).get("skipped"):
                self.finished_rates.append((work, (time.time() - started) / (work[2] - first_step)))
        value = (trial.last_result or {}).get(self.metric)
        score = f"{self.metric} {value:.1f}" if value is not None else "no evaluation"
        if value is not None and _seeds(trial) > 1:
            finished = int((trial.last_result or {}).get("stack/seeds_finished", _seeds(trial)))
            score += f" (mean of {finished} seeds)" if finished == _seeds(trial) else \
                f" (mean of its {finished} finished seeds)"
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


def _seconds_per_step(work: Work, finished: list[tuple[Work, float]], running: list[tuple[Work, float]]
                      ) -> float | None:
    """The mean seconds per step of the same algorithm on the same task, else on any task — finished trials
    first (a running trial's rate still carries its start-up); None if no such trial reported."""
    algorithm, task, _ = work
    for same in (lambda w: w[:2] == (algorithm, task), lambda w: w[0] == algorithm):
        for rates in (finished, running):
            found = [rate for w, rate in rates if same(w)]
            if found:
                return sum(found) / len(found)
    return None


def _in_plan_order(planned: list[Work], waiting: list[Work]) -> list[Work]:
    """The waiting trials in the order the Tuner was given them (Tune starts them in that order)."""
    rank = {work: i for i, work in reversed(list(enumerate(planned)))}
    return sorted(waiting, key=lambda work: rank.get(work, len(planned)))


def _makespan(running_left: list[float], queued: list[float], slots: int) -> float:
    """When the last trial ends if each queued trial starts in the first slot to come free."""
    free_at = sorted(running_left + [0.0] * max(0, slots - len(running_left)))
    heapq.heapify(free_at)
    for seconds in queued:
        heapq.heappush(free_at, heapq.heappop(free_at) + seconds)
    return max(free_at, default=0.0)


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"
