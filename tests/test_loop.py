"""The Ray Train worker loop: real local Ray, real TorchTrainer, real simulators, tiny models."""

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

from trainers.loop import LocalReport, TrialConfig, load_policy
from trainers.make_dataset import make_dataset
from trainers.evaluation import evaluate_batched
from trainers.train import main as train_main
from trainers.train import run_trial

TINY_DT = {"n_layer": 1, "n_embd": 32, "n_head": 2, "warmup_steps": 10, "learning_rate": 1e-3,
           "num_steps": 60, "eval_every": 20, "eval_episodes": 1, "batch_size": 16}


@pytest.fixture(autouse=True)
def hooks_by_value(local_ray):
    # Hooks defined in this test module must reach the workers by value (tests/ is not a package there).
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class KillOnce(LocalReport):
    """Reports like LocalReport, and SIGKILLs its own worker process the first time it sees `kill_at`."""

    def __init__(self, output_dir, kill_at: int, marker: str):
        super().__init__(output_dir, quiet=True)
        self.kill_at, self.marker = kill_at, marker

    def __call__(self, step, metrics, files):
        super().__call__(step, metrics, files)
        if step == self.kill_at and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)


def trial(tmp_path: Path, name: str, dataset: Path, **overrides) -> TrialConfig:
    return TrialConfig(algorithm="dt", task="reacher2d-medium", ratio=0.5, seed=3, dataset_path=str(dataset),
                       hyperparameters=TINY_DT | overrides, output_dir=str(tmp_path / name), log_every=10)


@pytest.fixture(scope="module")
def hopper_random_path(tmp_path_factory) -> Path:
    return make_dataset("hopper-random-gen", out=tmp_path_factory.mktemp("hopper") / "h.hdf5", num_steps=3000,
                        random_episodes=2)


def metrics_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in Path(output, "metrics.jsonl").read_text().splitlines()]


def test_killed_worker_resumes_from_checkpoint_exactly(local_ray, tmp_path, reacher_medium_path):
    clean = trial(tmp_path, "clean", reacher_medium_path)
    assert run_trial(clean, report=LocalReport(clean.output_dir, quiet=True)).error is None

    killed = trial(tmp_path, "killed", reacher_medium_path)
    marker = str(tmp_path / "killed-once")
    result = run_trial(killed, max_failures=1, report=KillOnce(killed.output_dir, kill_at=50, marker=marker))
    assert result.error is None and os.path.exists(marker)

    lines = metrics_lines(killed.output_dir)
    resumed = [m["resumed_from_step"] for m in lines if "resumed_from_step" in m]
    assert len(resumed) == 1 and resumed[0] in (20, 40)  # a checkpoint written before the kill at step 50
    steps = [m["step"] for m in lines if "train/loss" in m]
    assert steps == [10, 20, 30, 40, 50] + list(range(int(resumed[0]) + 10, 70, 10))
    clean_weights = load_file(Path(clean.output_dir, "model", "weights.safetensors"))
    resumed_weights = load_file(Path(killed.output_dir, "model", "weights.safetensors"))
    assert clean_weights.keys() == resumed_weights.keys()
    for key in clean_weights:  # same optimizer, scheduler and RNG states ⇒ the same weights, bit for bit
        assert (clean_weights[key] == resumed_weights[key]).all(), key
    clean_losses = [m["train/loss"] for m in metrics_lines(clean.output_dir) if m.get("step") == 60 and "train/loss" in m]
    resumed_losses = [m["train/loss"] for m in metrics_lines(killed.output_dir) if m.get("step") == 60 and "train/loss" in m]
    assert clean_losses == resumed_losses


def test_two_workers_keep_parameters_identical(local_ray, tmp_path, reacher_medium_path):
    config = trial(tmp_path, "ddp", reacher_medium_path, num_steps=20, eval_every=20)
    assert run_trial(config, num_workers=2, report=LocalReport(config.output_dir, quiet=True)).error is None
    final = [m for m in metrics_lines(config.output_dir) if "distributed/max_parameter_difference" in m]
    assert final and final[-1]["distributed/max_parameter_difference"] == 0.0
    losses = [m["train/loss"] for m in metrics_lines(config.output_dir) if "train/loss" in m]
    assert len(losses) == 2 and all(np.isfinite(losses))


@pytest.mark.parametrize("algorithm, hyperparameters", [
    ("dt", TINY_DT | {"num_steps": 20, "eval_every": 20, "eval_episodes": 2}),
    ("iql", {"hidden_dims": (32, 32), "num_steps": 20, "eval_every": 20, "eval_episodes": 2, "batch_size": 16}),
    ("bc_10", {"hidden_dims": (32, 32), "num_steps": 20, "eval_every": 20, "eval_episodes": 2, "batch_size": 16}),
])
def test_artifacts_rebuild_the_policy(local_ray, tmp_path, hopper_random_path, algorithm, hyperparameters):
    # Hopper's dense rewards make equal returns a real check of equal actions.
    config = TrialConfig(algorithm=algorithm, task="hopper-random-gen", ratio=1.0, seed=3, log_every=10,
                         dataset_path=str(hopper_random_path), hyperparameters=hyperparameters,
                         output_dir=str(tmp_path / algorithm))
    assert run_trial(config, report=LocalReport(config.output_dir, quiet=True)).error is None
    out = Path(config.output_dir)
    resolved = json.loads((out / "config.json").read_text())
    assert resolved["trial"]["algorithm"] == algorithm and resolved["algorithm_config"]["num_steps"] == 20
    make_policy, task = load_policy(out)
    rows = (out / "eval_episodes.csv").read_text().splitlines()
    final_returns = [float(r.split(",")[4]) for r in rows[1:]]
    targets = task.target_returns if algorithm == "dt" else None
    again = evaluate_batched(task, make_policy, num_episodes=2, seed=config.eval_seed + config.seed,
                             target_returns=targets)
    assert [float(x) for t in again.targets for x in t.returns] == final_returns
    assert len(set(final_returns)) > 1


def test_cli_rejects_unknown_names_before_starting_ray(capsys, monkeypatch):
    monkeypatch.setattr("trainers.train.run_trial", lambda *a, **k: pytest.fail("a trial was started"))
    assert train_main(["--algo", "lamoo", "--task", "reacher2d-medium"]) == 2
    assert "unknown algorithm 'lamoo'; valid algorithms: lamo, lamo_no_lm" in capsys.readouterr().err
    assert train_main(["--algo", "dt", "--task", "reacher2d-medium", "--set", "n_layers=2"]) == 2
    assert "unknown hyperparameter(s) n_layers; valid:" in capsys.readouterr().err
    assert train_main(["--algo", "dt", "--task", "reacher2d-mediun"]) == 2
    assert "unknown task 'reacher2d-mediun'" in capsys.readouterr().err
