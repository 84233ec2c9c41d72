from __future__ import annotations

import csv
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest
import torch

from trainers.runtime.algorithm import StatelessPolicy
from trainers.runtime.evaluation import (
    BatchedEvaluator,
    episode_seeds,
    evaluate_batched,
    evaluate_sequential,
)
from trainers.runtime.tasks import get_task
from trainers.sequence.model import TrajectoryModelConfig, TrajectoryTransformer
from trainers.sequence.policy import ContextPolicy


class HistoryPolicy:
    """A deterministic policy that depends on the observation, the step count, the rewards so far and the
    target — so a batched evaluator that mixed up environments, steps or histories would show."""

    def __init__(self, num_envs: int, target_returns, obs_dim: int, act_dim: int):
        self.weights = np.random.default_rng(123).normal(size=(obs_dim, act_dim))
        self.targets = np.asarray(target_returns if target_returns is not None else [0.0] * num_envs, float)
        self.steps = np.zeros(num_envs)
        self.collected = np.zeros(num_envs)

    def act(self, observations):
        phase = 0.05 * self.steps[:, None] + 1e-3 * (self.targets - self.collected)[:, None]
        return np.tanh(observations @ self.weights + np.sin(phase))

    def observe(self, rewards, dones):
        self.steps += 1
        self.collected += rewards


def history_factory(task):
    env = task.make_env()
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    env.close()
    return lambda n, targets: HistoryPolicy(n, targets, obs_dim, act_dim)


def assert_same_episodes(batched, sequential):
    assert [t.target_return for t in batched.targets] == [t.target_return for t in sequential.targets]
    for b, s in zip(batched.targets, sequential.targets):
        np.testing.assert_array_equal(b.seeds, s.seeds)
        np.testing.assert_array_equal(b.lengths, s.lengths)
        np.testing.assert_allclose(b.returns, s.returns, rtol=0, atol=1e-9)


@pytest.mark.parametrize("task_name", ["hopper-medium", "walker2d-medium", "kitchen-partial"])
def test_batched_equals_sequential_episode_by_episode(task_name):
    task = get_task(task_name)
    targets = task.target_returns[:2]
    batched = evaluate_batched(task, history_factory(task), num_episodes=3, seed=5, target_returns=targets)
    sequential = evaluate_sequential(task, history_factory(task), num_episodes=3, seed=5, target_returns=targets)
    assert_same_episodes(batched, sequential)
    if task.domain == "locomotion":  # early terminations at different steps: the masking is exercised
        lengths = np.concatenate([t.lengths for t in batched.targets])
        assert len(set(lengths.tolist())) > 1 and lengths.max() < task.horizon


def test_batched_equals_sequential_for_a_decision_transformer_policy():
    task = get_task("reacher2d-medium")
    torch.manual_seed(0)
    model = TrajectoryTransformer(TrajectoryModelConfig(12, 2, context_len=task.context_len, max_timestep=100,
                                                        n_layer=2, n_embd=32))
    mean, std = np.zeros(12, np.float32), np.ones(12, np.float32)
    factory = lambda n, targets: ContextPolicy(model, n, targets, task.return_scale, mean, std)  # noqa: E731
    batched = evaluate_batched(task, factory, num_episodes=3, seed=0, target_returns=task.target_returns)
    sequential = evaluate_sequential(task, factory, num_episodes=3, seed=0, target_returns=task.target_returns)
    assert_same_episodes(batched, sequential)
    assert all((t.lengths == 100).all() for t in batched.targets)


def test_results_per_target_are_summarised_normalized_and_written(tmp_path):
    task = get_task("hopper-medium")
    with BatchedEvaluator(task, num_episodes=4, target_returns=[3600.0, 1800.0]) as evaluator:
        result = evaluator.run(history_factory(task), seed=1)
        again = evaluator.run(history_factory(task), seed=1)  # environments are reused
    assert_same_episodes(result, again)
    first = result.targets[0]
    np.testing.assert_array_equal(first.seeds, episode_seeds(1, 4))
    np.testing.assert_allclose(first.normalized, 100 * (first.returns + 20.272305) / (3234.3 + 20.272305))
    summary = result.summary()
    assert summary["eval/target_3600/return_mean"] == pytest.approx(first.returns.mean())
    assert summary["eval/best_normalized_mean"] == max(t.normalized.mean() for t in result.targets)
    rows = list(csv.DictReader(result.write_csv(tmp_path / "episodes.csv").open()))
    assert len(rows) == 8 and {r["target_return"] for r in rows} == {"3600.0", "1800.0"}
    assert float(rows[0]["return"]) == pytest.approx(first.returns[0])


class ActionRecorder(gym.Wrapper):
    def __init__(self, env, log):
        super().__init__(env)
        self.log = log

    def step(self, action):
        self.log.append(np.array(action))
        return self.env.step(action)


@pytest.mark.parametrize("evaluate", [evaluate_batched, evaluate_sequential])
def test_unconditioned_policy_gets_no_targets_and_actions_are_clipped(evaluate):
    received, targets_seen = [], []
    base = get_task("reacher2d-medium")
    task = replace(base, make_env=lambda: ActionRecorder(base.make_env(), received))

    def factory(n, targets):
        targets_seen.append(targets)
        return StatelessPolicy(lambda obs: np.tile([50.0, -0.5], (len(obs), 1)))

    result = evaluate(task, factory, num_episodes=2, seed=0)
    assert set(map(str, targets_seen)) == {"None"} and [t.label for t in result.targets] == ["policy"]
    assert len(received) == 200 and all((a == [1.0, -0.5]).all() for a in received)


def test_episode_seeds_are_distinct_and_reproducible():
    seeds = episode_seeds(0, 100)
    assert len(set(seeds.tolist())) == 100 and (seeds == episode_seeds(0, 100)).all()
    assert not (seeds[:10] == episode_seeds(1, 10)).all()
