"""The evaluation-time Policy of the sequence models: a rolling K-step context per environment.

Per step (Decision Transformer's evaluation, batched): `act` appends the new state with a zero action
placeholder, predicts the action from that state's token and writes it into the placeholder; `observe`
lowers the return-to-go by reward / scale and advances the timestep. Environments whose episode ended are
left out of the model's batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from trainers.trajectory_model import TrajectoryTransformer


class ContextPolicy:
    def __init__(self, model: TrajectoryTransformer, num_envs: int, target_returns: Sequence[float],
                 return_scale: float, state_mean: np.ndarray, state_std: np.ndarray,
                 device: torch.device | str = "cpu", autocast_dtype: torch.dtype | None = None):
        if len(target_returns) != num_envs:
            raise ValueError(f"{len(target_returns)} target returns for {num_envs} environments")
        config = model.config
        k = config.context_len
        self.model, self.device = model, torch.device(device)
        self.autocast_dtype = autocast_dtype  # e.g. bf16: a DT-size forward 2× faster on an AVX512-BF16 CPU
        self.return_scale = return_scale
        self.state_mean, self.state_std = state_mean.astype(np.float32), state_std.astype(np.float32)
        self.max_timestep = config.max_timestep
        self.states = np.zeros((num_envs, k, config.observation_dim), np.float32)
        self.actions = np.zeros((num_envs, k, config.action_dim), np.float32)
        self.returns_to_go = np.zeros((num_envs, k), np.float32)
        self.timesteps = np.zeros((num_envs, k), np.int64)
        self.mask = np.zeros((num_envs, k), bool)
        self.current_return = np.asarray(target_returns, np.float64) / return_scale
        self.t = np.zeros(num_envs, np.int64)
        self.live = np.ones(num_envs, bool)

    def _push(self, rows: np.ndarray, observations: np.ndarray) -> None:
        for buffer in (self.states, self.actions, self.returns_to_go, self.timesteps, self.mask):
            buffer[rows, :-1] = buffer[rows, 1:]
        self.states[rows, -1] = (observations - self.state_mean) / self.state_std
        self.actions[rows, -1] = 0.0
        self.returns_to_go[rows, -1] = self.current_return[rows]
        self.timesteps[rows, -1] = np.minimum(self.t[rows], self.max_timestep - 1)
        self.mask[rows, -1] = True

    @torch.no_grad()
    def act(self, observations: np.ndarray) -> np.ndarray:
        actions = np.zeros((len(observations), self.actions.shape[-1]), np.float32)
        rows = np.flatnonzero(self.live)
        if len(rows) == 0:
            return actions
        self._push(rows, observations[rows])
        as_tensor = lambda a: torch.from_numpy(a[rows]).to(self.device)  # noqa: E731
        # Once every live window is full the mask is all ones: let attention take its unmasked causal path.
        mask = None if self.mask[rows].all() else as_tensor(self.mask)
        was_training = self.model.training
        self.model.eval()
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            predicted = self.model.predict_last_action(as_tensor(self.states), as_tensor(self.actions),
                                                       as_tensor(self.returns_to_go), as_tensor(self.timesteps),
                                                       mask)
        self.model.train(was_training)
        actions[rows] = predicted.float().cpu().numpy()
        self.actions[rows, -1] = actions[rows]
        return actions

    def observe(self, rewards: np.ndarray, dones: np.ndarray) -> None:
        self.current_return[self.live] -= rewards[self.live] / self.return_scale
        self.t[self.live] += 1
        self.live &= ~np.asarray(dones, bool)
