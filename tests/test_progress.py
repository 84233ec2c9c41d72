"""The sweep's progress lines: the remaining time follows each trial's own pace, and says `?` where unknown."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
from rich.console import Console

from orchestrator import progress as progress_module
from orchestrator.progress import SweepProgress, failure_groups
from trainers.runtime.record import make_record


def trial(algorithm: str, seed: int, steps: int, task: str = "reacher2d-medium", ratio: float = 1.0):
    record = record_of_trial(algorithm, seed, steps, task, ratio)
    return SimpleNamespace(trial_id=record.trial_id, config={"record": record.to_dict()}, status="PENDING",
                           last_result={}, error_file=None)


def record_of_trial(algorithm: str, seed: int, steps: int, task: str = "reacher2d-medium", ratio: float = 1.0):
    return make_record(algorithm, task, ratio, seed, {"num_steps": steps, "eval_every": steps})


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


# The LaMo paper's grid (sweeps/lamo_paper.yaml), with an Atari task: 12 algorithms × 20 cells × 3 seeds, 4 domains.
PAPER_ALGORITHMS = ("lamo", "lamo_no_lm", "lamo_random_init", "lamo_full_ft", "lamo_linear_emb", "dt", "wiki_rl",
                    "cql", "iql", "td3_bc", "bc", "bc_10")
PAPER_CELLS = [(task, ratio) for task in ("hopper-medium", "halfcheetah-medium", "walker2d-medium")
               for ratio in (0.005, 0.01, 0.1, 1.0)] + [("kitchen-partial", r) for r in (0.01, 0.1, 1.0)] \
    + [("kitchen-complete", r) for r in (0.3, 0.5, 1.0)] + [("reacher2d-medium", 1.0), ("pong-medium", 1.0)]


def test_a_paper_sized_status_line_stays_one_short_line_with_each_domains_best():
    trials = [trial(algorithm, seed, 100, task, ratio) for algorithm in PAPER_ALGORITHMS
              for task, ratio in PAPER_CELLS for seed in (0, 1, 2)]
    assert len(trials) == 720
    for i, t in enumerate(trials):  # a third finished with scores below 10, a third running, a third pending
        t.status = ("TERMINATED", "RUNNING", "PENDING")[i % 3]
        t.last_result = {"step": 50, "eval/best_normalized_mean": float(i % 10)} if i % 3 < 2 else {}
    best = {"lamo.hopper-medium.r0.1.s1": 71.2, "iql.kitchen-partial.r1.s0": 40.1,
            "bc.reacher2d-medium.r1.s2": 33.3, "dt.pong-medium.r1.s0": 12.5}
    for t in trials:
        if t.trial_id in best:
            t.last_result = {"step": 100, "eval/best_normalized_mean": best[t.trial_id]}
    out = io.StringIO()
    progress = SweepProgress("eval/best_normalized_mean", slots=8, console=Console(file=out, width=100))
    progress.on_step_end(0, trials)
    line = out.getvalue()
    assert line.count("\n") == 1 and len(line) < 500, line  # not wrapped at the console's width either
    assert line.startswith("[sweep] 240/720 done, 240 running, 0 failed, 240 pending; ")
    assert "no pace yet for lamo, lamo_no_lm, lamo_random_init, lamo_full_ft, lamo_linear_emb and 7 more)" in line
    assert "; best so far: atari dt 12.5 (pong-medium r1), kitchen iql 40.1 (kitchen-partial r1), locomotion lamo " \
           "71.2 (hopper-medium r0.1), reacher2d bc 33.3 (reacher2d-medium r1)\n" in line


def test_a_smaller_score_is_best_when_the_metric_is_minimised():
    trials = [trial("bc", 0, 100, "hopper-medium", 0.1), trial("dt", 0, 100, "walker2d-medium", 1.0)]
    trials[0].last_result, trials[1].last_result = {"loss": 0.5}, {"loss": 0.2}
    progress = SweepProgress("loss", mode="min")
    assert progress.best_line(trials) == "; best so far: locomotion dt 0.2 (walker2d-medium r1)"


def ended_lines(out: io.StringIO) -> list[str]:
    return [line for line in out.getvalue().splitlines() if not line.startswith("[sweep]")]


def error_file(tmp_path, name: str, message: str) -> str:
    path = tmp_path / f"{name}.txt"
    path.write_text(f"Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n{message}\n")
    return str(path)


def test_a_hundred_trials_ending_together_make_a_few_lines_that_count_every_trial(tmp_path):
    trials = [trial("bc", seed, 100) for seed in range(60)] + [trial("dt", seed, 100) for seed in range(30)] \
        + [trial("iql", seed, 100) for seed in range(10)]
    out = io.StringIO()
    progress = SweepProgress("eval/best_normalized_mean", slots=100, console=Console(file=out, width=300))
    for t in trials:
        started(progress, t, seconds_ago=5)
    for t in trials[:90]:  # all at the same moment: five lines, then held
        t.last_result = {"step": 100, "eval/best_normalized_mean": 40.0 if t.trial_id.startswith("bc") else 20.0}
        finish(progress, trials, t)
    for i, t in enumerate(trials[90:]):
        message = f"trainers.runtime.common.NonFiniteLossError: loss is nan at step {10 * i}" if i < 6 else \
            "ValueError: expected float32, got float64"
        t.error_file = error_file(tmp_path, t.trial_id, message)
        progress.on_trial_error(0, trials, t)
        t.status = "ERROR"
    assert len(ended_lines(out)) == 5
    progress.on_experiment_end(trials)  # the held ones are not lost when the sweep ends before the window closes
    lines = ended_lines(out)
    assert len(lines) == 7, lines
    assert [line.split(":")[0] for line in lines[:5]] == [f"done bc.reacher2d-medium.r1.s{seed}" for seed in range(5)]
    assert lines[5] == "done 85 more trial(s): bc ×55, dt ×30 (mean eval/best_normalized_mean 32.9)"
    assert lines[6] == "FAILED 10 more trial(s): 6 × NonFiniteLossError: loss is nan at step # " \
        "(iql.reacher2d-medium.r1.s0, iql.reacher2d-medium.r1.s1, iql.reacher2d-medium.r1.s2 and 3 more), " \
        "4 × ValueError: expected float32, got float64 (iql.reacher2d-medium.r1.s6, iql.reacher2d-medium.r1.s7, " \
        "iql.reacher2d-medium.r1.s8 and 1 more)  [90/100 done, 0 running, 10 failed, 0 pending; elapsed 0m00s]"


def test_held_lines_are_summarised_once_the_window_closes_and_single_lines_come_back_after(clock):
    trials = [trial("bc", seed, 100) for seed in range(9)]
    out = io.StringIO()
    progress = SweepProgress("eval/best_normalized_mean", slots=9, interval_s=1e9, console=Console(file=out, width=300),
                             burst=5, window_s=10)
    for t in trials:
        started(progress, t, seconds_ago=5)
    for t in trials[:8]:
        finish(progress, trials, t)
    progress.on_step_end(0, trials)
    assert len(ended_lines(out)) == 5  # three held, the window still open
    clock.now += 10
    progress.on_step_end(0, trials)
    assert ended_lines(out)[5:] == ["done 3 more trial(s): bc ×3 (no evaluation)  [8/9 done, 1 running, 0 failed, "
                                    "0 pending; elapsed 0m10s, ? left (≥ 0m00s; no pace yet for bc)]"]
    clock.now += 30  # a quiet while: the next trial has its own line
    finish(progress, trials, trials[8])
    assert ended_lines(out)[6].startswith("done bc.reacher2d-medium.r1.s8: no evaluation  [9/9 done")


def test_failures_are_grouped_by_error_with_their_numbers_masked_and_a_stack_split_into_its_seeds():
    failures = [(f"bc.hopper-medium.r0.01.s{seed}", f"NonFiniteLossError: loss is nan at step {100 * seed + 7}")
                for seed in range(12)]
    failures += [("td3_bc.hopper-medium.r0.1.s0+1+2", "StackFailed: td3_bc.hopper-medium.r0.1.s0: NonFiniteLossError: "
                  "loss is nan at step 3; td3_bc.hopper-medium.r0.1.s2: OSError: [Errno 28] No space left on device"),
                 ("dt.kitchen-partial.r1.s0", "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"),
                 ("dt.kitchen-partial.r1.s1", "RuntimeError: CUDA out of memory. Tried to allocate 1.50 GiB")]
    assert failure_groups(failures) == [
        "13 × NonFiniteLossError: loss is nan at step # (bc.hopper-medium.r0.01.s0, bc.hopper-medium.r0.01.s1, "
        "bc.hopper-medium.r0.01.s2 and 10 more)",
        "2 × RuntimeError: CUDA out of memory. Tried to allocate # GiB (dt.kitchen-partial.r1.s0, "
        "dt.kitchen-partial.r1.s1)",
        "td3_bc.hopper-medium.r0.1.s2: OSError: [Errno 28] No space left on device",  # one alone: its own numbers
    ]
