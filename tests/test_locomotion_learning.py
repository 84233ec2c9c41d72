"""Locomotion learning, short version of docs/locomotion.md: on Hopper-v5 (the real simulator) with a dataset made
in this session by a scripted behaviour policy, BC trained through the real trial core (`run_local`) recovers a
clear share of the behaviour policy's return, and TD3+BC beats the random policy. Both references — the random
policy and the behaviour policy — are measured here, on the very evaluation episodes (seeds) the trial core
evaluates on, so nothing is compared with a constant. About two minutes on 2 CPU cores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trainers.data.d4rl import write_d4rl_dataset
from trainers.runtime.algorithm import StatelessPolicy
from trainers.runtime.core import run_local
from trainers.runtime.evaluation import evaluate_batched
from trainers.runtime.record import make_record
from trainers.runtime.tasks import get_task
from trainers.tools.make_dataset import collect_episodes, episode_returns

TASK = get_task("hopper-medium-gen")  # Hopper-v5, D4RL's hopper reference scores
EVAL_EPISODES = 5
STEPS = {"bc": 1000, "td3_bc": 3000}
# TD3+BC's α weighs the Q term against BC (λ = α / mean|Q|). On this narrow data (one scripted controller plus
# noise) the default 2.5 pushed the actor off the data within 3,000 steps (return ~90, falling after ~50 steps);
# α = 1, within the paper's α ablation (1–4, Fujimoto & Gu 2021, §5.2), keeps it on the data.
OVERRIDES = {"bc": {}, "td3_bc": {"alpha": 1.0}}


def stand_controller(noise: float, seed: int):
    """PD control of Hopper's three joints towards straight (obs[2:5] angles, obs[8:11] velocities) plus Gaussian
    exploration noise: it balances for a long time (Hopper pays 1 per step alive), a random policy falls within
    a few dozen steps."""
    rng = np.random.default_rng(seed)

    def act(observations: np.ndarray) -> np.ndarray:
        torque = -2.0 * observations[:, 2:5] - 0.2 * observations[:, 8:11]
        return np.clip(torque + rng.normal(0.0, noise, torque.shape), -1.0, 1.0).astype(np.float32)
    return act


def mean_return(act, seed) -> float:
    result = evaluate_batched(TASK, lambda n, targets: StatelessPolicy(act), num_episodes=EVAL_EPISODES, seed=seed)
    return float(result.targets[0].returns.mean())


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def behaviour_data(tmp_path_factory) -> Path:
    arrays = collect_episodes(TASK, stand_controller(noise=0.3, seed=0), seed=0, num_steps=20_000)
    assert len(episode_returns(arrays)) >= 20  # falls and timeouts both in the data
    return write_d4rl_dataset(tmp_path_factory.mktemp("data") / "hopper-stand.hdf5", arrays, task=TASK)


def train(algorithm: str, data: Path, run_dir: Path) -> tuple[float, tuple]:
    """Final mean evaluation return of one trial, and the seed its last evaluation used."""
    overrides = {"num_steps": STEPS[algorithm], "eval_every": STEPS[algorithm], "eval_episodes": EVAL_EPISODES}
    record = make_record(algorithm, TASK.name, overrides=overrides | OVERRIDES[algorithm], dataset_path=str(data))
    result = run_local(record, run_dir)
    history = json.loads((run_dir / "evaluations.json").read_text())
    assert history[-1]["step"] == STEPS[algorithm] == result.step
    return float(result.final.targets[0].returns.mean()), (record.eval_seed, record.seed, result.step)


@pytest.mark.parametrize("algorithm, share", [("bc", 0.5), ("td3_bc", 0.2)])
def test_offline_learning_on_hopper_beats_random_against_measured_references(algorithm, share, behaviour_data,
                                                                             tmp_path):
    score, eval_seed = train(algorithm, behaviour_data, tmp_path / algorithm)
    random_rng = np.random.default_rng(1)
    random = mean_return(lambda obs: random_rng.uniform(-1, 1, (len(obs), 3)), eval_seed)
    behaviour = mean_return(stand_controller(noise=0.3, seed=1), eval_seed)
    print(f"{algorithm}: {score:.0f}, random {random:.0f}, behaviour {behaviour:.0f}")  # pytest -s
    assert behaviour > random + 100  # the data's policy is clearly better than random, else the test means nothing
    assert score > random + share * (behaviour - random), (score, random, behaviour)
