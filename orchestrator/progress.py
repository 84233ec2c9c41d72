"""Live progress of a sweep, as a Ray Tune callback on the driver, and the sweep's closing list of failures.
Plain lines, so `ray job logs` shows them too, and bounded however large the grid (a paper-sized sweep is 700
trials over some 230 cells):

- a status line every `interval_s`, always one line: trials done / running / failed / pending, elapsed and
  estimated remaining time, the best score so far per domain (locomotion, kitchen, ...: its best trial, with
  algorithm, task and ratio) and, while trials cannot reach the tracking server, for how long and how many
  reports wait;
- one line per finished or failed trial (a failure with its exception's own message) while trials end a few at
  a time; when more than `burst` end within `window_s` seconds (hundreds of short trials on a cluster), the rest
  are held and summarised at most once per `window_s` (flushed from `on_step_end`, and at the experiment's end so
  no trial goes uncounted): "done 37 more trial(s): bc ×20, dt ×17 (mean <metric> 41.2)" and, for failures, one
  "FAILED" line with its errors grouped;
- `failure_groups`: the failures grouped by error (`error_key`: the message with its numbers masked, a stack's
  message split into its seeds' own errors), one line per distinct error with its count and a few trial names
  (an error only one trial had: that trial and its own message) — the sweep's list at its end
  (orchestrator/sweep.py) and the held failures' summary.

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
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path

from ray.tune import Callback
from rich.console import Console

from orchestrator.trial import record_of, records_of, trial_name

MAX_DOMAINS = 6  # best-so-far entries on a status line (a sweep has a few domains; more are counted, not named)
MAX_LISTED = 5  # algorithms, trial names or error groups a line names before "and N more"
MAX_MESSAGE = 300  # characters of an error message on a grouped line


def _listed(items: list[str], at_most: int = MAX_LISTED, more: str = "more") -> str:
    """"a, b, c" — or "a, b, c and 9 more" past `at_most` items: a line stays short however many there are."""
    shown = ", ".join(items[:at_most])
    return shown + (f" and {len(items) - at_most} {more}" if len(items) > at_most else "")


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


# A stack's error names each failed seed (orchestrator/trial.py): "StackFailed: <trial id>: <error>; <trial id>: ..."
_STACK_SEED = re.compile(r"(?:^|; )(\S+\.s\d+(?:\.h\w+)?): ")
# Numbers that differ between trials failing alike (steps, losses, addresses), not those inside names ("r0.1",
# "float32", "s0"): a number not glued to a word or a dot.
_NUMBER = re.compile(r"0x[0-9a-fA-F]+|(?<![\w.])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _seed_failures(name: str, message: str) -> list[tuple[str, str]]:
    """A failed stack's message as its failed seeds' own (trial id, error); any other failure as it is."""
    if not message.startswith("StackFailed: "):
        return [(name, message)]
    parts = _STACK_SEED.split(message.removeprefix("StackFailed: "))
    if len(parts) < 3 or parts[0]:  # not the stack's own layout: keep the message whole
        return [(name, message)]
    return list(zip(parts[1::2], parts[2::2]))


def error_key(message: str) -> str:
    """What trials failing alike share: the message (exception type and text) with its numbers as "#"."""
    return _NUMBER.sub("#", message.strip())


def failure_groups(failures: list[tuple[str, str]], names: int = 3) -> list[str]:
    """One line per distinct error, most frequent first, for (trial name, error message) pairs — a stack's failure
    counted per failed seed: "12 × NonFiniteLossError: loss is nan at step # (bc.hopper-medium.r0.01.s0, ... and
    9 more)"; an error only one trial had as "<trial name>: <its own message>"."""
    groups: dict[str, tuple[str, list[str]]] = {}  # key -> (its first message, its trials)
    for name, message in failures:
        for seed, error in _seed_failures(name, message):
            groups.setdefault(error_key(error), (error.strip(), []))[1].append(seed)
    ordered = sorted(groups.items(), key=lambda group: -len(group[1][1]))  # ties keep their first failure's order
    return [f"{len(trials)} × {key[:MAX_MESSAGE]} ({_listed(trials, names)})" if len(trials) > 1 else
            f"{trials[0]}: {first[:MAX_MESSAGE]}" for key, (first, trials) in ordered]


@dataclass(frozen=True)
class _Ended:
    """A finished or failed trial whose line is held for the next summary."""

    name: str
    algorithm: str
    outcome: str  # TERMINATED or ERROR
    value: float | None  # its metric, None without an evaluation
    error: str  # its error message ("" when it finished)


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
                 console: Console | None = None, reused: int = 0, burst: int = 5, window_s: float = 10.0):
        self.metric, self.mode, self.slots, self.interval_s = metric, mode, max(1, slots), interval_s
        self.burst, self.window_s = burst, window_s  # more trials ending than `burst` in `window_s`: summarised
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
        self.ended_at: deque[float] = deque()  # when trials ended, over the last `window_s`
        self.held: list[_Ended] = []  # ended trials whose lines wait for the next summary
        self.held_since = 0.0

    def __getstate__(self) -> dict:  # Tune pickles callbacks with the experiment; the console does not travel
        return {"metric": self.metric, "mode": self.mode, "slots": self.slots, "interval_s": self.interval_s,
                "reused": self.reused, "burst": self.burst, "window_s": self.window_s, "planned": self.planned,
                "planned_runs": self.planned_runs}

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
        # "[sweep]" is text, not rich markup; a line stays one line in the logs at any console width
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def setup(self, **info) -> None:
        self._reset()

    def _better(self, a: float, b: float) -> bool:
        return a > b if self.mode == "max" else a < b

    def best_per_domain(self, trials) -> dict[str, tuple[float, str]]:
        """Domain -> (best score so far, "<algorithm> <score> (<task> r<ratio>)") over the trials that reported it."""
        best: dict[str, tuple[float, str]] = {}
        for trial in trials:
            value = (trial.last_result or {}).get(self.metric)
            if value is None:
                continue
            record = record_of(trial.config)
            if record.domain not in best or self._better(value, best[record.domain][0]):
                best[record.domain] = value, f"{record.algorithm} {value:.1f} ({record.task} r{record.ratio:g})"
        return best

    def best_line(self, trials) -> str:
        """"; best so far: kitchen iql 40.1 (kitchen-partial r1), locomotion lamo 71.2 (hopper-medium r0.1)"."""
        best = self.best_per_domain(trials)
        entries = [f"{domain} {best[domain][1]}" for domain in sorted(best)]
        return f"; best so far: {_listed(entries, MAX_DOMAINS, 'more domains')}" if entries else ""

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
                f", ? left (≥ {_duration(left)}; no pace yet for {_listed(unknown)})"
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
        value, now = (trial.last_result or {}).get(self.metric), time.time()
        if self.held and now - self.held_since >= self.window_s:
            self._flush(trials, trial, outcome)
        self.ended_at.append(now)
        while self.ended_at and now - self.ended_at[0] > self.window_s:
            self.ended_at.popleft()
        if self.held or len(self.ended_at) > self.burst:  # many ending together: held for one summary
            if not self.held:
                self.held_since = now
            error = _trial_error(trial) if outcome == "ERROR" else ""
            self.held.append(_Ended(trial_name(trial), record_of(trial.config).algorithm, outcome, value, error))
            return
        score = f"{self.metric} {value:.1f}" if value is not None else "no evaluation"
        if value is not None and _seeds(trial) > 1:
            finished = int((trial.last_result or {}).get("stack/seeds_finished", _seeds(trial)))
            score += f" (mean of {finished} seeds)" if finished == _seeds(trial) else \
                f" (mean of its {finished} finished seeds)"
        if outcome == "ERROR":
            score = f"{_trial_error(trial)[:400]} ({score})"
        self._say(f"{'done' if outcome == 'TERMINATED' else 'FAILED'} {trial_name(trial)}: {score}  "
                  f"[{self.status_line(trials, trial, outcome)}]")

    def _flush(self, trials, finishing=None, outcome: str = "TERMINATED") -> None:
        """The held trials as (at most) two lines: the finished ones by algorithm with their mean score, the failed
        ones by error."""
        held, self.held = self.held, []
        if not held:
            return
        status = f"  [{self.status_line(trials, finishing, outcome)}]"
        done = [ended for ended in held if ended.outcome == "TERMINATED"]
        failed = [ended for ended in held if ended.outcome != "TERMINATED"]
        if done:
            algorithms = Counter(ended.algorithm for ended in done)
            values = [ended.value for ended in done if ended.value is not None]
            score = f"mean {self.metric} {sum(values) / len(values):.1f}" if values else "no evaluation"
            self._say(f"done {len(done)} more trial(s): "
                      f"{_listed([f'{a} ×{n}' for a, n in algorithms.most_common()], 8)} ({score})"
                      + ("" if failed else status))
        if failed:
            groups = failure_groups([(ended.name, ended.error) for ended in failed])
            self._say(f"FAILED {len(failed)} more trial(s): {_listed(groups, 3, 'more errors')}" + status)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._finished(trials, trial, "TERMINATED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._finished(trials, trial, "ERROR")

    def on_step_end(self, iteration, trials, **info) -> None:
        if self.held and time.time() - self.held_since >= self.window_s:
            self._flush(trials)
        if time.time() - self.last_status < self.interval_s:
            return
        self.last_status = time.time()
        self._say(f"[sweep] {self.status_line(trials)}{self.best_line(trials)}{self.tracking_line(trials)}")

    def on_experiment_end(self, trials, **info) -> None:
        self._flush(trials)  # the held trials' lines, whenever their window would have closed

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
