"""Learning checks: real training through the Ray Train loop on generated reacher2d-medium data, compared
with the random policy evaluated on the same episode seeds. A few minutes of CPU in total."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trainers.algorithm import StatelessPolicy
from trainers.evaluation import evaluate_batched
from trainers.loop import LocalReport, TrialConfig
from trainers.make_dataset import make_dataset
from trainers.tasks import get_task
from trainers.train import run_trial

TASK = get_task("reacher2d-medium")
EVAL = {"eval_episodes": 10}


@pytest.fixture(scope="module")
def medium_data(tmp_path_factory) -> Path:
    return make_dataset("reacher2d-medium", out=tmp_path_factory.mktemp("data") / "medium.hdf5", seed=1,
                        num_episodes=500, random_episodes=10)


@pytest.fixture(scope="module")
def random_policy_score() -> float:
    """The random policy on the evaluation's own episode seeds (the loop evaluates with eval_seed + seed)."""
    rng = np.random.default_rng(0)
    result = evaluate_batched(TASK, lambda n, t: StatelessPolicy(lambda obs: rng.uniform(-1, 1, (len(obs), 2))),
                              num_episodes=10, seed=TrialConfig.eval_seed)
    return float(result.targets[0].normalized.mean())


@pytest.fixture(scope="module")
def tiny_pretrained_lm(tmp_path_factory) -> Path:
    from trainers.language import pretrain_tiny_gpt2

    return pretrain_tiny_gpt2(tmp_path_factory.mktemp("lm"), steps=200, n_layer=2, n_embd=64, n_head=2,
                              seq_len=128, batch=8)


def final_score(output_dir: str) -> float:
    history = json.loads(Path(output_dir, "evaluations.json").read_text())
    return history[-1]["eval/best_normalized_mean"]


def train(tmp_path, algorithm, data, hyperparameters) -> float:
    trial = TrialConfig(algorithm=algorithm, task=TASK.name, ratio=1.0, seed=0, dataset_path=str(data),
                        hyperparameters=hyperparameters | EVAL, output_dir=str(tmp_path / algorithm))
    assert run_trial(trial, report=LocalReport(trial.output_dir, quiet=True)).error is None
    score = final_score(trial.output_dir)
    print(f"{algorithm}: normalized score {score:.1f} after {hyperparameters['num_steps']} steps")  # pytest -s
    return score


def test_decision_transformer_learns_reacher(local_ray, tmp_path, medium_data, random_policy_score):
    score = train(tmp_path, "dt", medium_data, {"n_embd": 64, "n_head": 2, "learning_rate": 1e-3,
                                                "warmup_steps": 100, "num_steps": 1500, "eval_every": 1500})
    print(f"random policy: {random_policy_score:.1f}")
    assert score > random_policy_score + 10, (score, random_policy_score)


def test_lamo_with_a_pretrained_tiny_lm_learns_reacher(local_ray, tmp_path, medium_data, random_policy_score,
                                                       tiny_pretrained_lm):
    score = train(tmp_path, "lamo", medium_data, {"backbone": str(tiny_pretrained_lm), "lm_corpus": "builtin",
                                                  "lm_seq_len": 256, "learning_rate": 1e-3, "warmup_steps": 100,
                                                  "num_steps": 800, "eval_every": 800})
    print(f"random policy: {random_policy_score:.1f}")
    assert score > random_policy_score + 10, (score, random_policy_score)
