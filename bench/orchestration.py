"""Orchestration efficiency: N real trials through `python orchestrator/sweep.py` (local Ray, Tune, one Train run
each, MLflow) against the same trials run back to back in this process with no orchestration at all.

    python -m bench.orchestration [--trials 16] [--steps 3000] [--eval-every 1000]

The baseline times each trial's own work — load + subsample the data, build the algorithm, the updates and the
evaluations — with one torch thread, as one Ray CPU slot has. Efficiency = Σ baseline trial time / (sweep wall
time × slots): 1.0 means the sweep adds nothing to the work; per-trial overhead = (wall × slots − Σ) / N.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
TASK = "reacher2d-medium"


def trial_time(dataset: Path, ratio: float, seed: int, hyperparameters: dict) -> float:
    """One trial's work without Ray, Tune or MLflow (the same pieces trainers/loop.py runs)."""
    from trainers.datasets import load_task_dataset, subsample_trajectories
    from trainers.evaluation import BatchedEvaluator
    from trainers.registry import TrainingSetup, build_algorithm, make_config
    from trainers.samplers import to_torch
    from trainers.tasks import get_task

    started = time.perf_counter()
    task = get_task(TASK)
    data = subsample_trajectories(load_task_dataset(task, dataset), ratio, seed)
    config = make_config("bc", hyperparameters, task)
    env = task.make_env()
    setup = TrainingSetup(task=task, dataset=data, observation_space=env.observation_space,
                          action_space=env.action_space, device=torch.device("cpu"), seed=seed)
    env.close()
    algorithm = build_algorithm("bc", config, setup)
    evaluator = BatchedEvaluator(task, config.eval_episodes, None)
    rng = np.random.default_rng(seed)
    for step in range(1, config.num_steps + 1):
        algorithm.update(to_torch(algorithm.sampler.sample(config.batch_size, rng), setup.device))
        if step % config.eval_every == 0 or step == config.num_steps:
            evaluator.run(algorithm.policy, seed=seed)
    evaluator.close()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3000, help="gradient steps per trial")
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--dataset", help="reacher2d-medium hdf5 (default: generate 200 episodes)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-orchestration-"))
    dataset = Path(args.dataset) if args.dataset else work / "reacher2d-medium.hdf5"
    if not dataset.exists():
        from trainers.make_dataset import make_dataset

        make_dataset(TASK, out=dataset, seed=0, num_episodes=200)
    hyperparameters = {"num_steps": args.steps, "eval_every": args.eval_every, "eval_episodes": args.eval_episodes}
    seeds = list(range(args.trials))
    spec = {"name": "bench-orchestration", "algorithms": [{"name": "bc", "overrides": hyperparameters}],
            "tasks": [{"name": TASK, "dataset": str(dataset)}], "ratios": [1.0], "seeds": seeds,
            "tracking": {"uri": f"sqlite:///{work}/mlflow.db"}, "storage": str(work / "ray_results")}
    spec_path = work / "sweep.yaml"
    spec_path.write_text(yaml.safe_dump(spec))

    from trainers.cpu_allocator import keep_freed_memory_for_reuse

    keep_freed_memory_for_reuse()  # as the Train workers do
    torch.set_num_threads(1)  # one Ray CPU slot
    baseline = [trial_time(dataset, 1.0, seed, hyperparameters) for seed in seeds]

    started = time.perf_counter()
    sweep = subprocess.run([sys.executable, str(REPO / "orchestrator" / "sweep.py"), "--spec", str(spec_path)],
                           capture_output=True, text=True, cwd=work)
    wall = time.perf_counter() - started
    if sweep.returncode != 0:
        print(sweep.stdout[-3000:], sweep.stderr[-3000:], file=sys.stderr)
        return 1
    slots = int(next(line for line in sweep.stdout.splitlines() if "trial slots" in line)
                .split("trial slots")[0].split(",")[-1])
    total = sum(baseline)
    print(f"{args.trials} bc trials on {TASK}, {args.steps} steps, evaluation every {args.eval_every} "
          f"({args.eval_episodes} episodes); {slots} slots")
    print(f"{'':<44}{'wall s':>10}{'per trial s':>14}")
    print(f"{'back to back in one process (1 thread)':<44}{total:>10.1f}{total / args.trials:>14.2f}")
    print(f"{'python orchestrator/sweep.py':<44}{wall:>10.1f}{wall * slots / args.trials:>14.2f}")
    print(f"per-trial overhead {(wall * slots - total) / args.trials:.2f} s; "
          f"efficiency Σ trial time / (wall × slots) = {total / (wall * slots):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
