"""The two small protocols every algorithm — sequence model or baseline — implements (see DESIGN.md).

An algorithm never imports Ray or MLflow: the worker loop drives it through these methods only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from trainers.samplers import TransitionBatch, TransitionSampler, WindowBatch, WindowSampler

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
    """Built by its module's `build(config, setup)` (see trainers/registry.py).

    The worker loop draws `sampler.sample(config.batch_size, rng)` (NumPy), moves the batch to the algorithm's
    device as torch tensors (`samplers.to_torch`) and calls `update`. Evaluation asks `policy(n, targets)`
    with the task's target returns when `return_conditioned`, else with None.
    """

    batch_kind: Literal["windows", "transitions"]
    return_conditioned: bool
    sampler: WindowSampler | TransitionSampler

    def update(self, batch: Batch) -> dict[str, float]:  # batch fields are torch tensors on the device
        ...

    def policy(self, num_envs: int, target_returns: Sequence[float] | None) -> Policy:
        ...

    def state_dict(self) -> dict:
        ...

    def load_state_dict(self, state: dict) -> None:
        ...

    def export(self, directory: Path) -> list[Path]:  # final weights as safetensors (+ adapters), for artifacts
        ...

    def load_exported(self, directory: Path) -> None:  # the inverse, on an algorithm built with dataset=None
        ...

    # Optional: `distribute(wrap)` — replace the training objective's modules with wrap(module) (DDP). The loop
    # runs an algorithm with more than one worker only if it has this method.


class StatelessPolicy:
    """A Policy around a function of the current observations alone (baselines, behaviour policies)."""

    def __init__(self, act_fn):
        self._act_fn = act_fn

    def act(self, observations: np.ndarray) -> np.ndarray:
        return self._act_fn(observations)

    def observe(self, rewards: np.ndarray, dones: np.ndarray) -> None:
        pass


class NonFiniteLossError(FloatingPointError):
    """A loss or a quantity it depends on became NaN or inf; the trial must stop and say where."""

    def __init__(self, step: int | None, quantities: dict[str, float]):
        self.step, self.quantities = step, quantities
        where = f"at step {step}" if step is not None else "during an update"
        details = ", ".join(f"{name}={value:.6g}" for name, value in quantities.items())
        super().__init__(f"non-finite loss {where}: {details}")


def check_finite(step: int | None, **quantities) -> None:
    """Raise NonFiniteLossError if any given scalar (float or 0-d tensor) is NaN or inf.

    Pass the losses and the statistics that explain them (e.g. Q-value mean/max, log-prob min).
    """
    values = {name: float(value) for name, value in quantities.items()}
    if not all(np.isfinite(v) for v in values.values()):
        raise NonFiniteLossError(step, values)
