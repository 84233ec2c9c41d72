"""Batched vs sequential evaluation, with the bare simulator as the floor — all measured in one run.

    python -m bench.evaluation [--episodes 20] [--horizon 200] [--threads 2]

Hopper-v5, 20 episodes × LaMo's 4 hopper targets, a Decision-Transformer-size policy (3 layers, width 128,
K 20, random weights). A random-weight policy makes the hopper fall within a few dozen steps, so the
healthy-termination check is switched off: every episode runs the full horizon, as a trained policy's
would, and all three rows do the same number of environment steps of real physics.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import gymnasium as gym
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from trainers.runtime.evaluation import evaluate_batched, evaluate_sequential
from trainers.runtime.tasks import get_task
from trainers.sequence.model import TrajectoryModelConfig, TrajectoryTransformer
from trainers.sequence.policy import ContextPolicy


def bare_simulator(task, steps: int, horizon: int, seed: int = 0) -> float:
    env = task.make_env()
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    low, high = env.action_space.low, env.action_space.high
    started = time.perf_counter()
    for step in range(steps):
        env.step(rng.uniform(low, high))
        if (step + 1) % horizon == 0:
            env.reset()
    elapsed = time.perf_counter() - started
    env.close()
    return steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--horizon", type=int, default=200, help="steps per episode (Hopper's own limit: 1000)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--sequential-episodes", type=int, default=2,
                        help="episodes per target for the slow sequential row (its steps/s does not depend on it)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    base = get_task("hopper-medium")
    task = replace(base, horizon=args.horizon,
                   make_env=lambda: gym.make("Hopper-v5", terminate_when_unhealthy=False))
    model = TrajectoryTransformer(TrajectoryModelConfig(11, 3, context_len=20, max_timestep=1000)).eval()
    mean, std = np.zeros(11, np.float32), np.ones(11, np.float32)

    def policy_factory(autocast_dtype: torch.dtype | None):
        return lambda n, targets: ContextPolicy(model, n, targets, task.return_scale, mean, std,
                                                autocast_dtype=autocast_dtype)

    def steps_per_second(evaluate, episodes: int, autocast_dtype: torch.dtype | None = None) -> float:
        started = time.perf_counter()
        result = evaluate(task, policy_factory(autocast_dtype), episodes, seed=0, target_returns=task.target_returns)
        return sum(t.lengths.sum() for t in result.targets) / (time.perf_counter() - started)

    batch = f"{args.episodes}×{len(task.target_returns)} episodes in one batch"
    total_steps = args.episodes * len(task.target_returns) * args.horizon
    rows = [
        ("bare simulator, random actions", bare_simulator(task, total_steps, args.horizon)),
        (f"batched evaluator, fp32 ({batch})", steps_per_second(evaluate_batched, args.episodes)),
        (f"batched evaluator, bf16 autocast ({batch})",
         steps_per_second(evaluate_batched, args.episodes, torch.bfloat16)),
        ("sequential batch-1 protocol (original), fp32",
         steps_per_second(evaluate_sequential, args.sequential_episodes)),
    ]
    bare, sequential = rows[0][1], rows[-1][1]
    table = Table("evaluation", "env steps/s", "% of bare simulator", "× sequential",
                  title=f"Hopper-v5, horizon {args.horizon}, DT-size policy, {args.threads} torch threads")
    for label, speed in rows:
        table.add_row(label, f"{speed:,.0f}", f"{100 * speed / bare:.0f} %", f"{speed / sequential:.1f}×")
    Console(width=130).print(table)


if __name__ == "__main__":
    main()
