"""Batch samplers over a TrajectoryDataset: K-step windows for sequence models, transitions for value methods.

Both are vectorised NumPy gathers: everything per-step (normalized states, returns-to-go, timesteps) is
computed once at construction, so a batch costs a few fancy-indexing operations and no Python loop.

Image datasets (Atari: `dataset.frame_stack` set) keep their single uint8 frames; `FrameStacks` builds each
state from the last `frame_stack` frames of its episode when a batch is drawn, and a window's K states are a
strided view over K + frame_stack − 1 gathered frames, so no frame is copied twice. Their actions are integer
ids, padded with 0 (masked like every padded position).

Returns-to-go include the step's own reward, R̂_t = Σ_{k≥t} r_k (Decision Transformer's convention, D4RL and Atari
alike, and what every evaluation conditions on). LaMo's Atari buffer trains on Σ_{k>t} r_k while its evaluation
uses Σ_{k≥t}; that mismatch is not reproduced (trainers/sequence/config.py; the report says so for Atari runs).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TypeVar

import numpy as np
import torch

from trainers.data.trajectories import TrajectoryDataset

# Decision Transformer's padding values (decision_transformer/gym/experiment.py, get_batch).
PAD_ACTION = -10.0


@dataclass
class WindowBatch:
    # (B, K, obs_dim) float32, normalized, zeros where padded; image datasets: (B, K, frame_stack, H, W) uint8,
    # a strided view (padded positions hold the frames before the window: masked, never used)
    states: np.ndarray
    actions: np.ndarray  # (B, K, act_dim) float32, PAD_ACTION where padded; discrete: (B, K) int64, 0 where padded
    rewards: np.ndarray  # (B, K) float32
    returns_to_go: np.ndarray  # (B, K) float32, divided by the task's return scale
    timesteps: np.ndarray  # (B, K) int64, absolute step within the episode
    mask: np.ndarray  # (B, K) bool, False on left padding


@dataclass
class TransitionBatch:
    observations: np.ndarray  # (B, obs_dim) float32; image datasets: (B, frame_stack, H, W) uint8
    actions: np.ndarray  # (B, act_dim) float32; discrete: (B,) int64
    rewards: np.ndarray  # (B,) float32
    next_observations: np.ndarray  # like observations
    dones: np.ndarray  # (B,) float32: 1 only for true terminals, never for timeouts


BatchT = TypeVar("BatchT", "WindowBatch", "TransitionBatch")


def to_torch(batch: BatchT, device: torch.device | str) -> BatchT:
    """The same batch with every field a torch tensor on `device` (bool masks stay bool)."""
    return replace(batch, **{f.name: torch.from_numpy(getattr(batch, f.name)).to(device, non_blocking=True)
                             for f in fields(batch)})


class FrameStacks:
    """The states of an image dataset, stacked on demand: the state at step t is frames t − S + 1 … t of its
    episode (S = frame_stack), with zero frames before the episode's first (LaMo's buffer, d4rl-atari `_stack`)."""

    def __init__(self, dataset: TrajectoryDataset):
        self.frames = dataset.observations  # (N, H, W) uint8, shared, never copied whole
        self.stack = int(dataset.frame_stack)
        self.episode_start = np.repeat(dataset.episodes.starts, dataset.episodes.lengths)

    def _gather(self, steps: np.ndarray, episode_start: np.ndarray) -> np.ndarray:
        """Frames at `steps` (any shape), zero where a step lies before its episode's start."""
        out = self.frames[np.maximum(steps, 0)]
        out[steps < episode_start] = 0
        return out

    def at(self, index: np.ndarray) -> np.ndarray:
        """(B,) step indices → (B, S, H, W) uint8 states."""
        steps = index[:, None] + np.arange(1 - self.stack, 1)
        return self._gather(steps, self.episode_start[index][:, None])

    def windows(self, first: np.ndarray, last: np.ndarray, context_len: int) -> np.ndarray:
        """(B, K, S, H, W) uint8 states of K consecutive positions ending at step `last` (inclusive) of each
        window; positions before the window's `first` step are padding (whatever frames precede it). One gather
        of K + S − 1 frames per window, then a strided view that stacks them without copying."""
        k, s = context_len, self.stack
        steps = (last - (k + s - 2))[:, None] + np.arange(k + s - 1)
        buffer = self._gather(steps, self.episode_start[first][:, None])  # (B, K + S − 1, H, W)
        b, t, h, w = buffer.strides
        return np.lib.stride_tricks.as_strided(buffer, shape=(len(first), k, s, *buffer.shape[2:]),
                                               strides=(b, t, t, h, w))


def _action_pad(actions: np.ndarray) -> float | int:
    return PAD_ACTION if np.issubdtype(actions.dtype, np.floating) else 0


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
        self.context_len = context_len
        self._frames = FrameStacks(dataset) if dataset.frame_stack is not None else None
        if self._frames is None:
            if state_mean is None or state_std is None:
                state_mean, state_std = dataset.state_statistics()
            self._states = ((dataset.observations - state_mean) / state_std).astype(np.float32)
        self.state_mean, self.state_std = state_mean, state_std
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

        if self._frames is not None:
            states = self._frames.windows(start, start + length - 1, k)
        else:
            states = gather(self._states, 0.0)
        return WindowBatch(
            states=states, actions=gather(self._actions, _action_pad(self._actions)),
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
        self._frames = FrameStacks(dataset) if dataset.frame_stack is not None else None

    def __len__(self) -> int:
        return len(self._valid)

    def sample(self, batch_size: int, rng: np.random.Generator) -> TransitionBatch:
        index = self._valid[rng.integers(0, len(self._valid), size=batch_size)]
        d = self._dataset
        if self._frames is not None:  # image states, stacked now (an image dataset has no next_observations)
            observations, next_observations = self._frames.at(index), self._frames.at(self._next_index[index])
        else:
            observations = d.observations[index]
            next_observations = (self._next_observations[index] if self._next_observations is not None
                                 else d.observations[self._next_index[index]])
        return TransitionBatch(
            observations=observations, actions=d.actions[index], rewards=d.rewards[index],
            next_observations=next_observations, dones=d.terminals[index].astype(np.float32),
        )
