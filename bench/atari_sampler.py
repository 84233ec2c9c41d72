"""Atari window batches (batch 128, K 30, 4-frame states): frames stacked when a batch is drawn vs a naive
loader that stores every stacked state, measured in one run; memory per million frames for both.

    python -m bench.atari_sampler [--frames 100000] [--seconds 5] [--dataset DIR --game breakout]

Without --dataset the data has the DQN Replay layout's shape (84×84 uint8 frames, Breakout-medium-like
episodes of 200–2,000 steps) filled with random pixels; what a sampler costs depends on the shape, not on the
values. --dataset reads real (or generated) DQN Replay checkpoint 10 from a run directory or a root above it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from trainers.data.dqn_replay import DQNReplay
from trainers.data.samplers import TransitionSampler, WindowSampler
from trainers.data.trajectories import TrajectoryDataset, split_episodes

FRAME_BYTES = 84 * 84


def dqn_replay_shaped(frames: int, seed: int = 0) -> TrajectoryDataset:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(200, 2000, size=frames // 200 + 1)
    ends = np.cumsum(lengths)
    ends = ends[ends < frames]
    terminals = np.zeros(frames, bool)
    terminals[ends - 1] = True
    timeouts = np.zeros(frames, bool)
    return TrajectoryDataset(
        name="dqn-replay-shaped", observations=rng.integers(0, 256, (frames, 84, 84), dtype=np.uint8),
        actions=rng.integers(0, 4, frames), rewards=rng.integers(0, 2, frames).astype(np.float32),
        terminals=terminals, timeouts=timeouts, episodes=split_episodes(terminals, timeouts), frame_stack=4,
        ratio_sampling="length")


class NaiveStackedWindows:
    """Every state stacked once, up front ((N, 4, 84, 84) uint8, zero frames before an episode's start, as
    d4rl-atari's stack=True gives them); a batch gathers (B, K) states, actions, returns-to-go and timesteps
    with the same window rule as WindowSampler (a uniform start, left padding at an episode's end)."""

    def __init__(self, dataset: TrajectoryDataset, context_len: int):
        n, stack = len(dataset), dataset.frame_stack
        starts = np.repeat(dataset.episodes.starts, dataset.episodes.lengths)
        self.states = np.zeros((n, stack, 84, 84), np.uint8)
        for j in range(stack):  # slot j holds frame t − (stack − 1 − j)
            source = np.arange(n) - (stack - 1 - j)
            valid = source >= starts
            self.states[valid, j] = dataset.observations[source[valid]]
        self.actions, self.returns_to_go = dataset.actions, dataset.returns_to_go().astype(np.float32)
        self.timesteps = dataset.timesteps()
        self.episode_end = np.repeat(dataset.episodes.ends, dataset.episodes.lengths)
        self.context_len = context_len

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        k = self.context_len
        start = rng.integers(0, len(self.states), size=batch_size)
        length = np.minimum(k, self.episode_end[start] - start)
        offsets = np.arange(k) - (k - length)[:, None]
        index = start[:, None] + np.maximum(offsets, 0)
        return {"states": self.states[index], "actions": self.actions[index], "mask": offsets >= 0,
                "returns_to_go": self.returns_to_go[index], "timesteps": self.timesteps[index]}


def batches_per_second(sample, seconds: float) -> float:
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        sample()
        count += 1
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=100_000, help="synthetic data size (ignored with --dataset)")
    parser.add_argument("--dataset", default=None, help="DQN Replay run directory, or a root above <Game>/1")
    parser.add_argument("--game", default="breakout")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--context", type=int, default=30)
    args = parser.parse_args()
    dataset = (DQNReplay(args.game).load(path=args.dataset) if args.dataset else dqn_replay_shaped(args.frames))
    rng = np.random.default_rng(0)

    started = time.perf_counter()
    lazy = WindowSampler(dataset, args.context, 1.0, max_timestep=4096)
    lazy_setup = time.perf_counter() - started
    started = time.perf_counter()
    naive = NaiveStackedWindows(dataset, args.context)
    naive_setup = time.perf_counter() - started
    transitions = TransitionSampler(dataset)

    naive_rate = batches_per_second(lambda: naive.sample(args.batch, rng), args.seconds)
    lazy_rate = batches_per_second(lambda: lazy.sample(args.batch, rng), args.seconds)
    dense_rate = batches_per_second(lambda: np.ascontiguousarray(lazy.sample(args.batch, rng).states), args.seconds)
    transition_rate = batches_per_second(lambda: transitions.sample(32, rng), args.seconds)

    n = len(dataset)
    per_million = lambda nbytes: f"{nbytes / n * 1e6 / 2**30:.1f} GiB"  # noqa: E731
    batch_bytes = args.batch * args.context * dataset.frame_stack * FRAME_BYTES
    table = Table("loader", "batches/s", "× naive", "states in memory per 1M frames", "setup",
                  title=f"{dataset.name}: {n:,} frames, {dataset.num_episodes:,} episodes; batch {args.batch}, "
                        f"K {args.context}, 4-frame states ({batch_bytes / 2**20:.0f} MiB of uint8 per batch)")
    table.add_row("naive: every state stacked up front", f"{naive_rate:,.1f}", "1.0×",
                  per_million(naive.states.nbytes), f"{naive_setup:.1f} s")
    table.add_row("lazy: WindowSampler, strided view", f"{lazy_rate:,.1f}", f"{lazy_rate / naive_rate:.1f}×",
                  per_million(dataset.observations.nbytes), f"{lazy_setup:.1f} s")
    table.add_row("lazy, batch made contiguous (as a device copy)", f"{dense_rate:,.1f}",
                  f"{dense_rate / naive_rate:.1f}×", "", "")
    table.add_row("LaMo's buffer: float32 single frames (not run)", "", "",
                  per_million(4 * dataset.observations.nbytes), "")
    table.add_row("TransitionSampler, batch 32 (CQL), for reference", f"{transition_rate:,.1f}", "", "", "")
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
