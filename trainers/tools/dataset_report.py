"""Summarise a task's dataset and evaluate reference policies on the real simulator.

    python -m trainers.tools.dataset_report --task reacher2d-medium [--dataset PATH] [--episodes 50]

Prints the dataset's size, return statistics and what each data ratio keeps, then evaluates the random
policy (and, for generated data, the behaviour policy that made it) with the batched evaluator — the
reference points every learning curve is read against.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from trainers.data.loading import load_task_dataset
from trainers.data.subsets import subsample_trajectories
from trainers.data.trajectories import DatasetError
from trainers.runtime.algorithm import StatelessPolicy
from trainers.runtime.evaluation import BatchedEvaluator
from trainers.runtime.tasks import get_task
from trainers.tools.make_dataset import build_behaviour, random_behaviour

RATIOS = (0.005, 0.01, 0.1, 0.5, 1.0)


def report(task_name: str, dataset_path: Path | None, episodes: int, seed: int, console: Console) -> None:
    task = get_task(task_name)
    dataset = load_task_dataset(task, dataset_path)
    returns = dataset.episode_returns()
    console.print(f"[bold]{dataset.source}[/]: {len(dataset):,} transitions, {dataset.num_episodes:,} episodes, "
                  f"return {returns.mean():.2f} ± {returns.std():.2f} "
                  f"(normalized {task.normalized_score(returns.mean()):.1f})")
    ratios = Table("data ratio", "trajectories", "transitions", "mean return", title="Data ratios (seed 0)")
    for ratio in RATIOS:
        try:
            subset = subsample_trajectories(dataset, ratio, seed=0)
        except DatasetError:
            ratios.add_row(f"{ratio:g}", "0 (too few trajectories)", "", "")
            continue
        ratios.add_row(f"{ratio:g}", f"{subset.num_episodes:,}", f"{len(subset):,}",
                       f"{subset.episode_returns().mean():.2f}")
    console.print(ratios)

    policies = {"random": random_behaviour(task, seed)}
    if task.generated_by is not None and task.generated_by != "random":
        policies[f"behaviour ({task.generated_by})"] = build_behaviour(task, seed, sac_steps=10_000)[0]
    scores = Table("policy", "return", "normalized", "env steps/s",
                   title=f"{task.name}: {episodes} episodes on {task.env_id}, batched evaluation")
    with BatchedEvaluator(task, episodes) as evaluator:
        for name, act in policies.items():
            started = time.perf_counter()
            result = evaluator.run(lambda n, targets, act=act: StatelessPolicy(act), seed=seed).targets[0]
            speed = result.lengths.sum() / (time.perf_counter() - started)
            scores.add_row(name, f"{result.returns.mean():.2f} ± {result.returns.std():.2f}",
                           f"{result.normalized.mean():.1f}", f"{speed:,.0f}")
    console.print(scores)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--dataset", type=Path, help="explicit file (default: the d4rl cache location)")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        report(args.task, args.dataset, args.episodes, args.seed, Console())
    except (DatasetError, KeyError) as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
