"""The evaluation-time Policy of the sequence models: a rolling K-step context per environment.

Per step (Decision Transformer's evaluation, batched): `act` encodes the new state once, when it arrives, and
appends its embedding with a placeholder action (the encoder works per state and the model is in eval mode, so
this equals re-encoding the whole window every step, without the K-fold cost of a frame stack's CNN), predicts
the action from that state's token and writes it into the placeholder; `observe` lowers the return-to-go by
reward / scale (LaMo: target − return so far) and advances the timestep. Vector states are normalized with the
training data's statistics first; actions are the head's output (vectors) or its argmax (frames, discrete).
Environments whose episode ended are left out of the model's batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from trainers.sequence.model import TrajectoryTransformer


class ContextPolicy:
    def __init__(self, model: TrajectoryTransformer, num_envs: int, target_returns: Sequence[float],
                 return_scale: float, state_mean: np.ndarray | None = None, state_std: np.ndarray | None = None,
                 device: torch.device | str = "cpu", autocast_dtype: torch.dtype | None = None):
        if len(target_returns) != num_envs:
            raise ValueError(f"{len(target_returns)} target returns for {num_envs} environments")
        config = model.config
        k = config.context_len
        self.model, self.device = model, torch.device(device)
        self.autocast_dtype = autocast_dtype  # e.g. bf16: a DT-size forward 2× faster on an AVX512-BF16 CPU
        self.return_scale, self.max_timestep = return_scale, config.max_timestep
        self.discrete = config.modality == "frames"
        self.normalize = None if self.discrete else (np.asarray(state_mean, np.float32),
                                                     np.asarray(state_std, np.float32))
        self.states = torch.zeros((num_envs, k, config.n_embd), device=self.device)  # state embeddings
        self.actions = np.zeros((num_envs, k), np.int64) if self.discrete else \
            np.zeros((num_envs, k, config.action_dim), np.float32)
        self.returns_to_go = np.zeros((num_envs, k), np.float32)
        self.timesteps = np.zeros((num_envs, k), np.int64)
        self.mask = np.zeros((num_envs, k), bool)
        self.current_return = np.asarray(target_returns, np.float64) / return_scale
        self.t = np.zeros(num_envs, np.int64)
        self.live = np.ones(num_envs, bool)

    @torch.no_grad()
    def act(self, observations: np.ndarray) -> np.ndarray:
        actions = np.zeros((len(observations), *self.actions.shape[2:]), self.actions.dtype)
        rows = np.flatnonzero(self.live)
        if len(rows) == 0:
            return actions
        states = np.asarray(observations)[rows]
        if self.normalize is not None:
            mean, std = self.normalize
            states = ((states - mean) / std).astype(np.float32)  # computed as the observations come
        was_training = self.model.training
        self.model.eval()
        device_rows = torch.from_numpy(rows).to(self.device)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            embedded = self.model.encode_states(torch.from_numpy(states).to(self.device))
            self.states[device_rows] = torch.roll(self.states[device_rows], -1, dims=1)
            self.states[device_rows, -1] = embedded.float()
            for buffer in (self.actions, self.returns_to_go, self.timesteps, self.mask):
                buffer[rows, :-1] = buffer[rows, 1:]
            self.actions[rows, -1] = 0
            self.returns_to_go[rows, -1] = self.current_return[rows]
            self.timesteps[rows, -1] = np.minimum(self.t[rows], self.max_timestep - 1)
            self.mask[rows, -1] = True
            as_tensor = lambda a: torch.from_numpy(a[rows]).to(self.device)  # noqa: E731
            # Once every live window is full the mask is all ones: attention takes its unmasked causal path.
            mask = None if self.mask[rows].all() else as_tensor(self.mask)
            predicted = self.model.predict_last_action(self.states[device_rows], as_tensor(self.actions),
                                                       as_tensor(self.returns_to_go), as_tensor(self.timesteps),
                                                       mask)
        self.model.train(was_training)
        predicted = predicted.float()
        actions[rows] = (predicted.argmax(-1) if self.discrete else predicted).cpu().numpy()
        self.actions[rows, -1] = actions[rows]
        return actions

    def observe(self, rewards: np.ndarray, dones: np.ndarray) -> None:
        self.current_return[self.live] -= rewards[self.live] / self.return_scale
        self.t[self.live] += 1
        self.live &= ~np.asarray(dones, bool)
