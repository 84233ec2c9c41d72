"""The original Decision Transformer / LaMo formulations, kept as the baselines our code is measured and
checked against. Written from the behaviour of decision_transformer/gym/experiment.py (`get_batch`,
`discount_cumsum`): per-sample Python loops, reward-to-go recomputed for every sample.
"""

from __future__ import annotations

import numpy as np

from trainers.data.samplers import PAD_ACTION
from trainers.data.trajectories import TrajectoryDataset


def discount_cumsum(x: np.ndarray, gamma: float) -> np.ndarray:
    out = np.zeros_like(x)
    out[-1] = x[-1]
    for t in reversed(range(x.shape[0] - 1)):
        out[t] = x[t] + gamma * out[t + 1]
    return out


class PerSampleWindowSampler:
    """DT's get_batch: trajectories chosen ∝ length, then a Python loop over samples."""

    def __init__(self, dataset: TrajectoryDataset, context_len: int, return_scale: float,
                 state_mean: np.ndarray, state_std: np.ndarray, max_timestep: int):
        self.trajectories = [
            {key: values[start:start + length] for key, values in
             (("observations", dataset.observations), ("actions", dataset.actions), ("rewards", dataset.rewards))}
            for start, length in zip(dataset.episodes.starts, dataset.episodes.lengths)
        ]
        lengths = dataset.episodes.lengths
        self.p_sample = lengths / lengths.sum()
        self.k, self.scale, self.max_timestep = context_len, return_scale, max_timestep
        self.state_mean, self.state_std = state_mean, state_std

    def window(self, trajectory: int, si: int) -> dict[str, np.ndarray]:
        traj, k = self.trajectories[trajectory], self.k
        s = traj["observations"][si:si + k]
        a = traj["actions"][si:si + k]
        r = traj["rewards"][si:si + k]
        tlen = len(s)
        timesteps = np.minimum(np.arange(si, si + tlen), self.max_timestep - 1)
        rtg = discount_cumsum(traj["rewards"][si:].astype(np.float64), 1.0)[:tlen]
        pad = k - tlen
        return {
            "states": np.concatenate([np.zeros((pad, s.shape[1])), (s - self.state_mean) / self.state_std]),
            "actions": np.concatenate([np.full((pad, a.shape[1]), PAD_ACTION), a]),
            "rewards": np.concatenate([np.zeros(pad), r]),
            "returns_to_go": np.concatenate([np.zeros(pad), rtg]) / self.scale,
            "timesteps": np.concatenate([np.zeros(pad, np.int64), timesteps]),
            "mask": np.concatenate([np.zeros(pad, bool), np.ones(tlen, bool)]),
        }

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        chosen = rng.choice(len(self.trajectories), size=batch_size, replace=True, p=self.p_sample)
        windows = [self.window(int(i), int(rng.integers(0, len(self.trajectories[i]["rewards"]))))
                   for i in chosen]
        return {key: np.stack([w[key] for w in windows]) for key in windows[0]}
