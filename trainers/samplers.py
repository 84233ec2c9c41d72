"""Batch samplers over a TrajectoryDataset: K-step windows for sequence models, transitions for value methods.

Both are vectorised NumPy gathers: everything per-step (normalized states, returns-to-go, timesteps) is
computed once at construction, so a batch costs a few fancy-indexing operations and no Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TypeVar

import numpy as np
import torch

from trainers.datasets import TrajectoryDataset

# Decision Transformer's padding values (decision_transformer/gym/experiment.py, get_batch).
PAD_ACTION = -10.0


@dataclass
class WindowBatch:
    states: np.ndarray  # (B, K, obs_dim) float32, normalized; zeros where padded
    actions: np.ndarray  # (B, K, act_dim) float32; PAD_ACTION where padded
    rewards: np.ndarray  # (B, K) float32
    returns_to_go: np.ndarray  # (B, K) float32, divided by the task's return scale
    timesteps: np.ndarray  # (B, K) int64, absolute step within the episode
    mask: np.ndarray  # (B, K) bool, False on left padding


@dataclass
class TransitionBatch:
    observations: np.ndarray  # (B, obs_dim) float32
    actions: np.ndarray  # (B, act_dim) float32
    rewards: np.ndarray  # (B,) float32
    next_observations: np.ndarray  # (B, obs_dim) float32
    dones: np.ndarray  # (B,) float32: 1 only for true terminals, never for timeouts


BatchT = TypeVar("BatchT", "WindowBatch", "TransitionBatch")


def to_torch(batch: BatchT, device: torch.device | str) -> BatchT:
    """The same batch with every field a torch tensor on `device` (bool masks stay bool)."""
    return replace(batch, **{f.name: torch.from_numpy(getattr(batch, f.name)).to(device, non_blocking=True)
                             for f in fields(batch)})


class WindowSampler:
    """Decision Transformer's window sampling: a trajectory with probability ∝ its length, a uniform start
    inside it, up to K steps from there, left-padded to K with a mask.

    Drawing one uniform step index over the whole dataset gives exactly that joint distribution (the
    episode it falls in is ∝ length and the position is uniform within it), which is what makes the
    sampler a single vectorised draw.
    """

    def __init__(self, dataset: TrajectoryDataset, context_len: int, return_scale: float,
                 state_mean: np.ndarray | None = None, state_std: np.ndarray | None = None,
                 max_timestep: int | None = None):
        if context_len < 1:
            raise ValueError(f"context_len must be ≥ 1, got {context_len}")
        if state_mean is None or state_std is None:
            state_mean, state_std = dataset.state_statistics()
        self.context_len = context_len
        self.state_mean, self.state_std = state_mean, state_std
        self._states = ((dataset.observations - state_mean) / state_std).astype(np.float32)
        self._actions = dataset.actions
        self._rewards = dataset.rewards
        self._returns_to_go = (dataset.returns_to_go() / return_scale).astype(np.float32)
        timesteps = dataset.timesteps()
        self._timesteps = np.minimum(timesteps, max_timestep - 1) if max_timestep else timesteps
        self._episode_end = np.repeat(dataset.episodes.ends, dataset.episodes.lengths)
        self._size = len(dataset)

    def sample(self, batch_size: int, rng: np.random.Generator) -> WindowBatch:
        return self.windows(rng.integers(0, self._size, size=batch_size))

    def windows(self, start: np.ndarray) -> WindowBatch:
        """The windows that begin at the given flat step indices."""
        k = self.context_len
        length = np.minimum(k, self._episode_end[start] - start)  # steps available from the start
        offsets = np.arange(k)[None, :] - (k - length)[:, None]  # negative on the left padding
        mask = offsets >= 0
        index = start[:, None] + np.maximum(offsets, 0)

        def gather(values: np.ndarray, pad: float) -> np.ndarray:
            out = values[index]
            out[~mask] = pad
            return out

        return WindowBatch(
            states=gather(self._states, 0.0), actions=gather(self._actions, PAD_ACTION),
            rewards=gather(self._rewards, 0.0), returns_to_go=gather(self._returns_to_go, 0.0),
            timesteps=gather(self._timesteps, 0), mask=mask,
        )


class TransitionSampler:
    """Uniform (s, a, r, s′, done) tuples. A step whose episode ended by timeout or truncation has no s′ in
    the file (the next row is another episode's start), so it is left out unless the file stores
    next_observations — the same choice as d4rl.qlearning_dataset. Timeouts are never terminal."""

    def __init__(self, dataset: TrajectoryDataset):
        n = len(dataset)
        last_step = np.zeros(n, bool)
        last_step[dataset.episodes.ends - 1] = True
        if dataset.next_observations is not None:
            self._next_observations = dataset.next_observations
            self._valid = np.arange(n)
        else:
            self._next_observations = None
            # The last step of a terminated episode keeps s′ = s: its target never bootstraps (done = 1).
            self._valid = np.flatnonzero(~last_step | dataset.terminals)
            self._next_index = np.where(last_step, np.arange(n), np.arange(n) + 1)
        if len(self._valid) == 0:
            raise ValueError(f"{dataset.name}: no transition has a next observation")
        self._dataset = dataset

    def __len__(self) -> int:
        return len(self._valid)

    def sample(self, batch_size: int, rng: np.random.Generator) -> TransitionBatch:
        index = self._valid[rng.integers(0, len(self._valid), size=batch_size)]
        d = self._dataset
        next_observations = (self._next_observations[index] if self._next_observations is not None
                             else d.observations[self._next_index[index]])
        return TransitionBatch(
            observations=d.observations[index], actions=d.actions[index], rewards=d.rewards[index],
            next_observations=next_observations, dones=d.terminals[index].astype(np.float32),
        )
