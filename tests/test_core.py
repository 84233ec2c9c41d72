"""The trial core (trainers/runtime/core.py) and its Ray Train adapter (trainers/runtime/distributed.py): real
simulators, tiny models; exact resume from a checkpoint, DDP, the exported files, `python -m trainers.runtime.train`."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
from safetensors.torch import load_file

from trainers.runtime.core import LocalReport, load_policy, run_local
from trainers.runtime.distributed import fit_distributed
from trainers.runtime.evaluation import evaluate_batched
from trainers.runtime.record import make_record
from trainers.runtime.train import main as train_main
from trainers.tools.make_dataset import make_dataset

TINY_DT = {"n_layer": 1, "n_embd": 32, "n_head": 2, "warmup_steps": 10, "learning_rate": 1e-3,
           "num_steps": 60, "eval_every": 20, "eval_episodes": 1, "batch_size": 16}


class Crash(RuntimeError):
    pass


class CrashOnce(LocalReport):
    """Reports like LocalReport and fails the trial the first time it sees `at` (SIGKILLs its process when
    `kill` is set, as a lost node would)."""

    def __init__(self, run_dir, at: int, marker: str, kill: bool = False):
        super().__init__(run_dir, quiet=True)
        self.at, self.marker, self.kill = at, marker, kill

    def __call__(self, step, metrics, files):
        super().__call__(step, metrics, files)
        if step == self.at and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            if self.kill:
                os.kill(os.getpid(), signal.SIGKILL)
            raise Crash(f"crashed at step {step}")


def dt_record(dataset: Path, **overrides):
    return make_record("dt", "reacher2d-medium", 0.5, 3, TINY_DT | overrides, str(dataset), log_every=10)


@pytest.fixture(scope="module")
def hopper_random_path(tmp_path_factory) -> Path:
    return make_dataset("hopper-random-gen", out=tmp_path_factory.mktemp("hopper") / "h.hdf5", num_steps=3000,
                        random_episodes=2)


def metrics_lines(run_dir) -> list[dict]:
    return [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()]


def assert_same_final_weights(a: Path, b: Path) -> None:
    first, second = load_file(a / "model" / "weights.safetensors"), load_file(b / "model" / "weights.safetensors")
    assert first.keys() == second.keys()
    for key in first:  # same optimizer, scheduler and RNG states ⇒ the same weights, bit for bit
        assert (first[key] == second[key]).all(), key


def test_a_crashed_trial_resumes_from_its_checkpoint_exactly(tmp_path, reacher_medium_path):
    record = dt_record(reacher_medium_path)
    run_local(record, tmp_path / "clean", LocalReport(tmp_path / "clean", quiet=True))
    crashing = CrashOnce(tmp_path / "crashed", at=50, marker=str(tmp_path / "marker"))
    with pytest.raises(Crash):
        run_local(record, tmp_path / "crashed", crashing)
    run_local(record, tmp_path / "crashed", crashing)  # the same call again: resumes from step 40

    lines = metrics_lines(tmp_path / "crashed")
    assert [m["resumed_from_step"] for m in lines if "resumed_from_step" in m] == [40]
    assert [m["step"] for m in lines if "train/loss" in m] == [10, 20, 30, 40, 50, 50, 60]
    assert_same_final_weights(tmp_path / "clean", tmp_path / "crashed")
    losses = [[m["train/loss"] for m in metrics_lines(tmp_path / run) if m["step"] == 60 and "train/loss" in m]
              for run in ("clean", "crashed")]
    assert losses[0] == losses[1]


def test_every_evaluation_starts_from_its_own_initial_states(tmp_path, reacher_medium_path):
    """Seeds come from (evaluation seed, trial seed, step): distinct per evaluation, so the paper's average over
    the last evaluations averages distinct samples of initial states. Each evaluation's seeds are the ones its
    environments were reset with, recorded in evaluations.json; seeding every evaluation from the final step
    would record the last seeds twice."""
    from trainers.runtime.evaluation import episode_seeds

    record = make_record("bc", "reacher2d-medium", 1.0, 3, {"num_steps": 20, "eval_every": 10, "eval_episodes": 3,
                                                            "batch_size": 16, "hidden_dims": [16]},
                         str(reacher_medium_path), log_every=10)
    run_local(record, tmp_path / "run", LocalReport(tmp_path / "run", quiet=True))
    history = json.loads((tmp_path / "run" / "evaluations.json").read_text())
    assert [evaluation["step"] for evaluation in history] == [10, 20]
    for evaluation in history:
        assert evaluation["seeds"] == episode_seeds((record.eval_seed, 3, evaluation["step"]), 3).tolist()
    first, last = history[0]["seeds"], history[1]["seeds"]
    assert not set(first) & set(last)
    rows = (tmp_path / "run" / "eval_episodes.csv").read_text().splitlines()[1:]  # the final evaluation's episodes
    assert [int(row.split(",")[3]) for row in rows] == last


def test_killed_ray_train_worker_resumes_from_its_checkpoint_exactly(local_ray, tmp_path, reacher_medium_path):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the hook reaches the worker by value
    record = dt_record(reacher_medium_path)
    # The uninterrupted run on a Ray Train worker too: one torch thread there, as in the killed run.
    clean = fit_distributed(record, str(tmp_path / "clean"), num_workers=1, storage=str(tmp_path / "ray"),
                            run_name="clean", report=LocalReport(tmp_path / "clean", quiet=True))
    assert clean.error is None
    marker = str(tmp_path / "killed-once")
    result = fit_distributed(record, str(tmp_path / "killed"), num_workers=1, storage=str(tmp_path / "ray"),
                             run_name="killed", max_failures=1,
                             report=CrashOnce(tmp_path / "killed", at=50, marker=marker, kill=True))
    assert result.error is None and os.path.exists(marker)
    resumed = [m["resumed_from_step"] for m in metrics_lines(tmp_path / "killed") if "resumed_from_step" in m]
    assert len(resumed) == 1 and resumed[0] in (20, 40)  # a checkpoint Ray Train registered before the kill
    assert_same_final_weights(tmp_path / "clean", tmp_path / "killed")


def test_two_workers_keep_parameters_identical(local_ray, tmp_path, reacher_medium_path):
    record = dt_record(reacher_medium_path, num_steps=20, eval_every=20)
    result = fit_distributed(record, str(tmp_path / "ddp"), num_workers=2, storage=str(tmp_path / "ray"),
                             run_name="ddp", report=LocalReport(tmp_path / "ddp", quiet=True))
    assert result.error is None
    final = [m for m in metrics_lines(tmp_path / "ddp") if "distributed/max_parameter_difference" in m]
    assert final and final[-1]["distributed/max_parameter_difference"] == 0.0
    losses = [m["train/loss"] for m in metrics_lines(tmp_path / "ddp") if "train/loss" in m]
    assert len(losses) == 2 and all(np.isfinite(losses))


@pytest.mark.parametrize("algorithm, hyperparameters", [
    ("dt", TINY_DT | {"num_steps": 20, "eval_every": 20, "eval_episodes": 2}),
    ("iql", {"hidden_dims": (32, 32), "num_steps": 20, "eval_every": 20, "eval_episodes": 2, "batch_size": 16}),
    ("bc_10", {"hidden_dims": (32, 32), "num_steps": 20, "eval_every": 20, "eval_episodes": 2, "batch_size": 16}),
])
def test_artifacts_rebuild_the_policy(tmp_path, hopper_random_path, algorithm, hyperparameters):
    # Hopper's dense rewards make equal returns a real check of equal actions.
    record = make_record(algorithm, "hopper-random-gen", 1.0, 3, hyperparameters, str(hopper_random_path))
    run_local(record, tmp_path, LocalReport(tmp_path, quiet=True))
    saved = json.loads((tmp_path / "trial_record.json").read_text())
    assert saved["algorithm"] == algorithm and saved["config"]["num_steps"] == 20
    make_policy, task = load_policy(tmp_path)
    rows = (tmp_path / "eval_episodes.csv").read_text().splitlines()
    final_returns = [float(r.split(",")[4]) for r in rows[1:]]
    targets = task.target_returns if algorithm == "dt" else None
    again = evaluate_batched(task, make_policy, num_episodes=2, seed=(record.eval_seed, record.seed, 20),
                             target_returns=targets)
    assert [float(x) for t in again.targets for x in t.returns] == final_returns
    assert len(set(final_returns)) > 1


def test_cli_runs_one_trial_in_place_and_resumes(tmp_path, reacher_medium_path, capsys):
    args = ["--algo", "bc", "--task", "reacher2d-medium", "--dataset", str(reacher_medium_path), "--steps", "40",
            "--eval-every", "20", "--eval-episodes", "2", "--set", "hidden_dims=(16,16)", "--output", str(tmp_path)]
    assert train_main(args) == 0
    assert (tmp_path / "model" / "policy.safetensors").is_file() and (tmp_path / "checkpoint" / "state.pt").is_file()
    assert train_main(args) == 0  # finished: resumes at step 40, only re-evaluates and re-exports
    assert [m["resumed_from_step"] for m in metrics_lines(tmp_path) if "resumed_from_step" in m] == [40]


def test_cli_rejects_bad_names_and_values_before_any_work(capsys, tmp_path):
    assert train_main(["--algo", "lamoo", "--task", "reacher2d-medium"]) == 2
    assert "unknown algorithm 'lamoo'; valid algorithms: lamo, lamo_no_lm" in capsys.readouterr().err
    assert train_main(["--algo", "dt", "--task", "reacher2d-medium", "--set", "n_layers=2"]) == 2
    assert "unknown hyperparameter(s) n_layers; valid:" in capsys.readouterr().err
    assert train_main(["--algo", "dt", "--task", "reacher2d-mediun"]) == 2
    assert "unknown task 'reacher2d-mediun'" in capsys.readouterr().err
    assert train_main(["--algo", "dt", "--task", "reacher2d-medium", "--dataset", str(tmp_path / "x.hdf5")]) == 2
    assert "x.hdf5" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
