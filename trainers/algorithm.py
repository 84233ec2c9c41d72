"""The two small protocols every algorithm — sequence model or baseline — implements (see DESIGN.md).

An algorithm never imports Ray or MLflow: the worker loop drives it through these methods only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from trainers.samplers import TransitionBatch, WindowBatch

Batch = WindowBatch | TransitionBatch


@runtime_checkable
class Policy(Protocol):
    """Acts on a batch of environments at once and keeps whatever history it needs.

    The evaluator calls act → (environment step) → observe, once per step, with arrays of length num_envs.
    Episodes finish at different times: after `observe` reported done for an environment, the rows for it in
    later calls are placeholders and may be ignored (and need no computation).
    """

    def act(self, observations: np.ndarray) -> np.ndarray:  # (num_envs, obs_dim) -> (num_envs, act_dim)
        ...

    def observe(self, rewards: np.ndarray, dones: np.ndarray) -> None:
        ...


@runtime_checkable
class Algorithm(Protocol):
    batch_kind: Literal["windows", "transitions"]

    def update(self, batch: Batch) -> dict[str, float]:
        ...

    def policy(self, num_envs: int, target_returns: Sequence[float] | None) -> Policy:
        ...

    def state_dict(self) -> dict:
        ...

    def load_state_dict(self, state: dict) -> None:
        ...


class StatelessPolicy:
    """A Policy around a function of the current observations alone (baselines, behaviour policies)."""

    def __init__(self, act_fn):
        self._act_fn = act_fn

    def act(self, observations: np.ndarray) -> np.ndarray:
        return self._act_fn(observations)

    def observe(self, rewards: np.ndarray, dones: np.ndarray) -> None:
        pass
