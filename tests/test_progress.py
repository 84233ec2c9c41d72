"""The sweep's progress lines: the remaining time follows each trial's own pace, and says `?` where unknown."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
from rich.console import Console

from orchestrator import progress as progress_module
from orchestrator.progress import SweepProgress
from trainers.runtime.record import make_record


def trial(algorithm: str, seed: int, steps: int):
    record = record_of_trial(algorithm, seed, steps)
    return SimpleNamespace(trial_id=record.trial_id, config={"record": record.to_dict()}, status="PENDING",
                           last_result={}, error_file=None)


def record_of_trial(algorithm: str, seed: int, steps: int):
    return make_record(algorithm, "reacher2d-medium", 1.0, seed, {"num_steps": steps, "eval_every": steps})


class Clock:
    """The progress module's clock, moved by hand."""

    def __init__(self):
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(progress_module, "time", fake)
    return fake


def started(progress: SweepProgress, t, seconds_ago: float) -> None:
    """Tune starts the trial `seconds_ago` (its last result, if any, is where a restored trial resumes)."""
    clock = progress_module.time
    clock.now -= seconds_ago
    progress.on_trial_start(0, [], t)
    t.status = "RUNNING"
    clock.now += seconds_ago


def sweep(slots: int = 2):
    """Two fast BC trials first, then two LaMo trials eight times longer, as the quickstart's grid orders them."""
    trials = [trial("bc", 0, 100), trial("bc", 1, 100), trial("lamo", 0, 800), trial("lamo", 1, 800)]
    out = io.StringIO()
    progress = SweepProgress("eval/best_normalized_mean", slots=slots, console=Console(file=out, width=300))
    progress.expect([[record_of_trial("bc", s, 100)] for s in (0, 1)] + [[record_of_trial("lamo", s, 800)]
                                                                         for s in (0, 1)])
    return progress, trials, out


def finish(progress: SweepProgress, trials, t) -> str:
    progress.on_trial_complete(0, trials, t)
    t.status = "TERMINATED"
    return progress.status_line(trials)


def test_slow_trials_still_running_are_not_estimated_from_the_fast_ones_that_finished():
    progress, trials, _ = sweep()
    bc0, bc1, lamo0, lamo1 = trials
    for t in (bc0, bc1):
        started(progress, t, seconds_ago=3)
        finish(progress, trials, t)
    for t in (lamo0, lamo1):
        started(progress, t, seconds_ago=20)
    # LaMo has reported nothing and no LaMo trial finished: no honest number (the mean finished trial said 0m01s).
    assert progress.status_line(trials).endswith(", ? left (≥ 0m00s; no pace yet for lamo)")
    # Each has reported step 200 of 800 after 20 s: 600 steps at its own 0.1 s per step.
    for t in (lamo0, lamo1):
        t.last_result = {"step": 200}
    assert progress.status_line(trials).endswith(", ~1m00s left")


def test_pending_trials_take_their_algorithms_pace_in_the_first_free_slot():
    progress, trials, _ = sweep(slots=1)
    bc0, bc1, lamo0, lamo1 = trials
    started(progress, bc0, seconds_ago=3)
    # Neither algorithm has reported a step yet.
    assert progress.status_line(trials).endswith(", ? left (≥ 0m00s; no pace yet for bc, lamo)")
    line = finish(progress, trials, bc0)
    assert line.endswith(", ? left (≥ 0m03s; no pace yet for lamo)")  # bc's pace: 0.03 s per step
    started(progress, bc1, seconds_ago=1)
    started(progress, lamo0, seconds_ago=40)  # a second slot opened (a resource freed elsewhere)
    lamo0.last_result = {"step": 400}  # 0.1 s per step: 40 s left for it, 80 s for the pending lamo.s1
    # In one slot after bc.s1's 2 s left: lamo.s1 follows the first trial to end (bc.s1 at 2 s): 2 + 80 s.
    assert progress.status_line(trials).endswith(", ~1m22s left")


def test_a_trial_resumed_from_a_checkpoint_is_paced_by_the_steps_it_trained_since():
    progress, trials, _ = sweep(slots=2)
    lamo0 = trials[2]
    lamo0.last_result = {"step": 400}  # restored at step 400
    started(progress, lamo0, seconds_ago=10)
    lamo0.last_result = {"step": 500}  # 100 steps in 10 s since: 300 left at 0.1 s
    progress.planned = progress.planned[2:3]
    assert progress.status_line(trials[2:3]).endswith(", ~0m30s left")


def test_a_running_trial_whose_start_was_not_seen_yet_counts_as_starting_now():
    """Tune marks a trial RUNNING before it calls on_trial_start: a status line in between must not break."""
    progress, trials, _ = sweep(slots=2)
    bc0, bc1 = trials[:2]
    started(progress, bc0, seconds_ago=3)
    finish(progress, trials, bc0)
    bc1.status = "RUNNING"  # not started through the callback yet
    progress.planned = progress.planned[:2]
    assert progress.status_line(trials[:2]).endswith(", ~0m03s left")  # a whole bc trial at bc's pace


def stack(algorithm: str, seeds, steps: int):
    records = [record_of_trial(algorithm, seed, steps) for seed in seeds]
    return SimpleNamespace(trial_id=f"{algorithm}-stack", config={"stack": [r.to_dict() for r in records]},
                           status="PENDING", last_result={}, error_file=None), records


def test_a_stack_counts_as_its_seeds_and_paces_trials_alone(clock):
    """Seeds trained together: three bc seeds in one trial count three runs, a seed that failed in it counts failed
    and the others done, and the stack's pace (seconds per seed-step) estimates a lamo trial of the same kind."""
    bc, bc_records = stack("bc", (0, 1, 2), 100)
    lamo, lamo_records = stack("lamo", (0, 1, 2), 100)
    out = io.StringIO()
    progress = SweepProgress("eval/best_normalized_mean", slots=1, console=Console(file=out, width=300))
    progress.expect([bc_records, lamo_records])
    trials = [bc, lamo]
    assert progress.status_line(trials).startswith("0/6 done, 0 running, 0 failed, 6 pending")
    started(progress, bc, seconds_ago=30)
    bc.last_result = {"step": 50}  # 150 seed-steps in 30 s: 0.2 s per seed-step
    line = progress.status_line(trials)
    assert line.startswith("0/6 done, 3 running, 0 failed, 3 pending"), line
    assert "? left" in line and "lamo" in line  # lamo has no pace yet
    bc.last_result = {"step": 100, "eval/best_normalized_mean": 40.0, "stack/seeds_failed": 1.0,
                      "stack/seeds_finished": 2.0}
    progress.on_trial_error(0, trials, bc)
    bc.status = "ERROR"
    assert "FAILED bc.reacher2d-medium.r1.s0+1+2: no error recorded (eval/best_normalized_mean 40.0 (mean of its 2 " \
           "finished seeds))" in out.getvalue()
    assert progress.status_line(trials).startswith("2/6 done, 0 running, 1 failed, 3 pending")
    started(progress, lamo, seconds_ago=10)
    lamo.last_result = {"step": 10}  # 30 seed-steps in 10 s: 270 seed-steps left at its own pace
    assert ", ~1m30s left" in progress.status_line(trials)
