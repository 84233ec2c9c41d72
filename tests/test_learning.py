"""Learning checks: real training through the trial core on generated reacher2d-medium data, compared with the
random policy evaluated on the same episode seeds. A few minutes of CPU in total."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trainers.runtime.algorithm import StatelessPolicy
from trainers.runtime.core import LocalReport, run_local
from trainers.runtime.evaluation import evaluate_batched
from trainers.runtime.record import TrialRecord, make_record
from trainers.runtime.tasks import get_task
from trainers.tools.make_dataset import make_dataset

TASK = get_task("reacher2d-medium")
EVAL = {"eval_episodes": 10}


@pytest.fixture(scope="module")
def medium_data(tmp_path_factory) -> Path:
    return make_dataset("reacher2d-medium", out=tmp_path_factory.mktemp("data") / "medium.hdf5", seed=1,
                        num_episodes=500, random_episodes=10)


def random_policy_score(step: int) -> float:
    """The random policy on the episode seeds of the evaluation at `step` (eval seed, trial seed 0, step)."""
    rng = np.random.default_rng(0)
    result = evaluate_batched(TASK, lambda n, t: StatelessPolicy(lambda obs: rng.uniform(-1, 1, (len(obs), 2))),
                              num_episodes=10, seed=(TrialRecord.eval_seed, 0, step))
    return float(result.targets[0].normalized.mean())


@pytest.fixture(scope="module")
def tiny_pretrained_lm(tmp_path_factory) -> Path:
    from trainers.sequence.language.pretrain import pretrain_tiny_gpt2

    return pretrain_tiny_gpt2(tmp_path_factory.mktemp("lm"), steps=200, n_layer=2, n_embd=64, n_head=2,
                              seq_len=128, batch=8)


def final_score(output_dir: str) -> float:
    history = json.loads(Path(output_dir, "evaluations.json").read_text())
    return history[-1]["eval/best_normalized_mean"]


def train_and_compare(tmp_path, algorithm, data, hyperparameters) -> tuple[float, float]:
    """(the trained policy's final score, the random policy's on the same episodes)."""
    record = make_record(algorithm, TASK.name, 1.0, 0, hyperparameters | EVAL, str(data))
    run_local(record, tmp_path / algorithm, LocalReport(tmp_path / algorithm, quiet=True))
    score, random = final_score(tmp_path / algorithm), random_policy_score(record.num_steps)
    print(f"{algorithm}: normalized score {score:.1f} after {record.num_steps} steps; random policy {random:.1f}")
    return score, random


def test_decision_transformer_learns_reacher(tmp_path, medium_data):
    score, random = train_and_compare(tmp_path, "dt", medium_data, {
        "n_embd": 64, "n_head": 2, "learning_rate": 1e-3, "warmup_steps": 100, "num_steps": 1500,
        "eval_every": 1500})
    assert score > random + 10, (score, random)


def test_lamo_with_a_pretrained_tiny_lm_learns_reacher(tmp_path, medium_data, tiny_pretrained_lm):
    score, random = train_and_compare(tmp_path, "lamo", medium_data, {
        "backbone": str(tiny_pretrained_lm), "lm_corpus": "builtin", "lm_seq_len": 256, "learning_rate": 1e-3,
        "warmup_steps": 100, "num_steps": 800, "eval_every": 800})
    assert score > random + 10, (score, random)
