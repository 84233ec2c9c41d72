"""Policy evaluation on real simulators.

`BatchedEvaluator` runs every episode of every target return of one evaluation as ONE batch: the policy
is asked for all live environments' actions in a single call, and only environments whose episode is still
running are stepped. Gymnasium's vector environments step every sub-environment on every call (finished
ones are auto-reset or stepped on), which would spend simulator time on episodes whose return is already
fixed; a list of real environments stepped under a mask is the batch that avoids it. With `copies` > 1 it holds
one such block of environments per policy and `run_many` evaluates several policies (the seeds of a stacked trial,
trainers/runtime/stack.py) in the same loop, each on its own block with its own episode seeds: every policy sees
exactly the rows, seeds and batch it would see alone.

`evaluate_sequential` is the original protocol (LaMo / Decision Transformer: one environment, batch size
one, episode after episode) kept as the reference the batched evaluator must agree with, episode by episode.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np

from trainers.runtime.algorithm import Policy
from trainers.runtime.cpu_allocator import keep_freed_memory_for_reuse
from trainers.runtime.tasks import Task

PolicyFactory = Callable[[int, Sequence[float] | None], Policy]  # (num_envs, target_returns) -> Policy


EvaluationSeed = int | Sequence[int]  # entropy for np.random.SeedSequence, e.g. (eval seed, trial seed, step)


def episode_seeds(seed: EvaluationSeed, num_episodes: int) -> np.ndarray:
    """The environment seed of each evaluation episode; the same seeds are used for every target return."""
    return np.random.SeedSequence(seed).generate_state(num_episodes, dtype=np.uint32).astype(np.int64)


@dataclass
class TargetResult:
    target_return: float | None  # None for policies that are not return-conditioned
    returns: np.ndarray  # (episodes,)
    lengths: np.ndarray  # (episodes,)
    seeds: np.ndarray  # (episodes,)
    normalized: np.ndarray  # (episodes,) D4RL-normalized returns

    @property
    def label(self) -> str:
        return "policy" if self.target_return is None else f"target_{self.target_return:g}"

    def summary(self) -> dict[str, float]:
        return {
            f"eval/{self.label}/return_mean": float(self.returns.mean()),
            f"eval/{self.label}/return_std": float(self.returns.std()),
            f"eval/{self.label}/normalized_mean": float(self.normalized.mean()),
            f"eval/{self.label}/normalized_std": float(self.normalized.std()),
            f"eval/{self.label}/length_mean": float(self.lengths.mean()),
        }


@dataclass
class EvaluationResult:
    task: str
    targets: list[TargetResult]

    def summary(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for target in self.targets:
            metrics.update(target.summary())
        metrics["eval/best_normalized_mean"] = float(max(t.normalized.mean() for t in self.targets))
        return metrics

    @property
    def seeds(self) -> list[int]:
        """The environment seed each episode was reset with, in episode order (every target return shares them)."""
        return [int(seed) for seed in self.targets[0].seeds]

    def episode_rows(self) -> list[dict]:
        return [{"task": self.task, "target_return": "" if t.target_return is None else t.target_return,
                 "episode": i, "seed": int(t.seeds[i]), "return": float(t.returns[i]),
                 "normalized": float(t.normalized[i]), "length": int(t.lengths[i])}
                for t in self.targets for i in range(len(t.returns))]

    def write_csv(self, path: str | Path) -> Path:
        path = Path(path)
        rows = self.episode_rows()
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return path


def _clip(actions: np.ndarray, space: gym.Space) -> np.ndarray:
    """Continuous actions clipped to the box; Discrete ids (Atari) are passed on as integers, never clipped."""
    if isinstance(space, gym.spaces.Discrete):
        return np.asarray(actions).astype(np.int64, copy=False)
    return np.clip(actions, space.low, space.high)


def _group_by_target(task: Task, targets: Sequence[float | None], seeds: np.ndarray, returns: np.ndarray,
                     lengths: np.ndarray) -> list[TargetResult]:
    n = len(seeds)
    return [TargetResult(target, returns[i * n:(i + 1) * n], lengths[i * n:(i + 1) * n], seeds,
                         task.normalized_score(returns[i * n:(i + 1) * n]))
            for i, target in enumerate(targets)]


class BatchedEvaluator:
    """Holds `copies` × num_episodes × len(targets) real environments and evaluates up to `copies` policies on them
    at once, each on its own block.

    The environments are created once and reused by every evaluation of a training run.
    """

    def __init__(self, task: Task, num_episodes: int, target_returns: Sequence[float] | None = None,
                 copies: int = 1):
        if num_episodes < 1:
            raise ValueError(f"num_episodes must be ≥ 1, got {num_episodes}")
        if copies < 1:
            raise ValueError(f"copies must be ≥ 1, got {copies}")
        keep_freed_memory_for_reuse()
        self.task = task
        self.num_episodes = num_episodes
        self.targets: list[float | None] = list(target_returns) if target_returns else [None]
        self.block = num_episodes * len(self.targets)  # one policy's environments
        self.envs = [task.make_env() for _ in range(copies * self.block)]
        self.action_space = self.envs[0].action_space

    def close(self) -> None:
        for env in self.envs:
            env.close()

    def __enter__(self) -> BatchedEvaluator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, make_policy: PolicyFactory, seed: EvaluationSeed) -> EvaluationResult:
        return self.run_many([make_policy], [seed])[0]

    def run_many(self, make_policies: Sequence[PolicyFactory], seeds: Sequence[EvaluationSeed]
                 ) -> list[EvaluationResult]:
        """One evaluation of each policy, policy i on block i of the environments with the episode seeds of
        `seeds[i]`; all live environments step in one loop."""
        copies, block = len(make_policies), self.block
        if copies != len(seeds) or copies * block > len(self.envs):
            raise ValueError(f"{copies} policies and {len(seeds)} seeds for {len(self.envs) // block} block(s)")
        n_envs = copies * block
        per_policy = [episode_seeds(seed, self.num_episodes) for seed in seeds]
        env_seeds = np.concatenate([np.tile(s, len(self.targets)) for s in per_policy])
        conditioned = self.targets != [None]
        targets = [t for t in self.targets for _ in range(self.num_episodes)] if conditioned else None
        policies = [make_policy(block, targets) for make_policy in make_policies]
        blocks = [slice(i * block, (i + 1) * block) for i in range(copies)]
        observations = np.stack([env.reset(seed=int(s))[0] for env, s in zip(self.envs, env_seeds)])
        returns = np.zeros(n_envs)
        lengths = np.zeros(n_envs, np.int64)
        live = np.ones(n_envs, bool)
        acting = list(zip(policies, blocks))  # a policy whose episodes all ended is no longer asked, as alone
        actions = None
        for _ in range(self.task.horizon):
            chosen = [_clip(policy.act(observations[rows]), self.action_space) for policy, rows in acting]
            if actions is None:
                actions = np.concatenate(chosen)
            for (_, rows), block_actions in zip(acting, chosen):
                actions[rows] = block_actions
            rewards = np.zeros(n_envs)
            dones = ~live  # finished episodes stay done
            for i in np.flatnonzero(live):
                obs, reward, terminated, truncated, _ = self.envs[i].step(actions[i])
                observations[i] = obs
                rewards[i] = reward
                dones[i] = terminated or truncated
            returns[live] += rewards[live]
            lengths[live] += 1
            live &= ~dones
            for policy, rows in acting:
                policy.observe(rewards[rows], dones[rows])
            acting = [(policy, rows) for policy, rows in acting if live[rows].any()]
            if not acting:
                break
        return [EvaluationResult(self.task.name, _group_by_target(self.task, self.targets, seeds_i, returns[rows],
                                                                  lengths[rows]))
                for seeds_i, rows in zip(per_policy, blocks)]


def evaluate_batched(task: Task, make_policy: PolicyFactory, num_episodes: int, seed: EvaluationSeed,
                     target_returns: Sequence[float] | None = None) -> EvaluationResult:
    with BatchedEvaluator(task, num_episodes, target_returns) as evaluator:
        return evaluator.run(make_policy, seed)


def evaluate_sequential(task: Task, make_policy: PolicyFactory, num_episodes: int, seed: EvaluationSeed,
                        target_returns: Sequence[float] | None = None) -> EvaluationResult:
    """The original protocol: one environment, a fresh batch-1 policy per episode, episodes one after another."""
    targets: list[float | None] = list(target_returns) if target_returns else [None]
    seeds = episode_seeds(seed, num_episodes)
    env = task.make_env()
    returns, lengths = [], []
    try:
        for target in targets:
            for episode_seed in seeds:
                policy = make_policy(1, None if target is None else [target])
                observation, _ = env.reset(seed=int(episode_seed))
                episode_return, length = 0.0, 0
                for _ in range(task.horizon):
                    action = _clip(policy.act(observation[None]), env.action_space)[0]
                    observation, reward, terminated, truncated, _ = env.step(action)
                    episode_return += reward
                    length += 1
                    done = terminated or truncated
                    policy.observe(np.array([reward]), np.array([done]))
                    if done:
                        break
                returns.append(episode_return)
                lengths.append(length)
    finally:
        env.close()
    return EvaluationResult(task.name, _group_by_target(task, targets, seeds, np.array(returns),
                                                       np.array(lengths, np.int64)))
