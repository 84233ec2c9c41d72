"""Window sampler vs Decision Transformer's per-sample loop, batch 64, K 20, measured in one run.

    python -m bench.sampler [--dataset PATH] [--seconds 5]

Without --dataset the data has hopper-medium-v2's shape (1,000,000 transitions in 2,186 episodes, 11-d
observations, 3-d actions); what the samplers cost depends on that shape, not on the values. Pass D4RL's
hopper-medium-v2.hdf5 to measure on the real file.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.dt_reference import PerSampleWindowSampler
from trainers.data.d4rl import load_d4rl_dataset
from trainers.data.samplers import TransitionSampler, WindowSampler
from trainers.data.trajectories import TrajectoryDataset, split_episodes


def hopper_medium_shaped(seed: int = 0) -> TrajectoryDataset:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(100, 815, size=2186)  # mean ≈ 457 steps, as hopper-medium-v2
    n = int(lengths.sum())
    terminals = np.zeros(n, bool)
    terminals[np.cumsum(lengths) - 1] = True
    timeouts = np.zeros(n, bool)
    return TrajectoryDataset(
        name="hopper-medium-shaped", observations=rng.normal(size=(n, 11)).astype(np.float32),
        actions=rng.uniform(-1, 1, (n, 3)).astype(np.float32), rewards=rng.uniform(0, 4, n).astype(np.float32),
        terminals=terminals, timeouts=timeouts, episodes=split_episodes(terminals, timeouts))


def batches_per_second(sample, seconds: float) -> float:
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        sample()
        count += 1
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--context", type=int, default=20)
    args = parser.parse_args()
    dataset = load_d4rl_dataset(args.dataset) if args.dataset else hopper_medium_shaped()
    mean, std = dataset.state_statistics()
    rng = np.random.default_rng(0)

    started = time.perf_counter()
    windows = WindowSampler(dataset, args.context, 1000.0, mean, std, max_timestep=1000)
    setup = time.perf_counter() - started
    reference = PerSampleWindowSampler(dataset, args.context, 1000.0, mean, std, 1000)
    transitions = TransitionSampler(dataset)

    ours = batches_per_second(lambda: windows.sample(args.batch, rng), args.seconds)
    theirs = batches_per_second(lambda: reference.sample(args.batch, rng), args.seconds)
    value = batches_per_second(lambda: transitions.sample(256, rng), args.seconds)
    table = Table("sampler", "batches/s", "× per-sample loop",
                  title=f"{dataset.name}: {len(dataset):,} transitions, {dataset.num_episodes:,} episodes; "
                        f"batch {args.batch}, K {args.context}")
    table.add_row("per-sample loop (DT's get_batch)", f"{theirs:,.0f}", "1.0×")
    table.add_row(f"vectorised WindowSampler (setup {setup:.2f} s, once)", f"{ours:,.0f}", f"{ours / theirs:.0f}×")
    table.add_row("TransitionSampler, batch 256 (for reference)", f"{value:,.0f}", "")
    Console(width=130).print(table)


if __name__ == "__main__":
    main()
