"""The contracts every algorithm — sequence model or baseline — and the trial runtime share (see DESIGN.md).

This module sits at the bottom: algorithms import it, the registry imports the algorithms, the trial core
imports the registry. Nothing here imports an algorithm, Ray or MLflow.

- `TrainingConfig`: the fields the trial core reads; every algorithm's `Config` extends it. Configs are
  pydantic dataclasses (`algorithm_config`), so every field is checked for type and range when a config is
  made — in the sweep's validation pass, long before a trial starts.
- `TrainingSetup`: what an algorithm is built from besides its hyperparameters.
- `Algorithm` and `Policy`: what the trial core and the evaluator call.
- `Distributable`: the optional capability the Ray Train adapter needs for DDP; `FusedSeeds`: the optional one that
  trains a stack's seeds as batched kernels.
- `ExternalInput`: a file, directory or hub id an algorithm's config names (a backbone, a corpus); the
  orchestrator checks and localizes what an algorithm declares without knowing its field names.
- `AlgorithmDeclaration` and `Preset`: what an algorithm module declares as its `ALGORITHM` — config class, build,
  named presets, its paper's settings per domain, the action spaces it acts in, whether it is return-conditioned,
  its external inputs and the known differences of its runs from its sources (`KnownDifference`, over runs seen
  as `RanTrial`s). The registry (trainers/runtime/registry.py) reads nothing else from the module; the report's fidelity
  notes (orchestrator/fidelity.py) collect the differences without knowing any algorithm's fields.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np
import torch
from pydantic import ConfigDict, Field, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

if TYPE_CHECKING:
    from trainers.data.samplers import TransitionBatch, WindowBatch
    from trainers.data.trajectories import TrajectoryDataset
    from trainers.runtime.tasks import Task

# Field types with their ranges, for the configs' annotations.
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(gt=0, le=1)]  # (0, 1]: shares, ratios
Rate = Annotated[float, Field(ge=0, lt=1)]  # [0, 1): dropout probabilities
OpenUnit = Annotated[float, Field(gt=0, lt=1)]  # (0, 1): expectiles, discounts below one


def algorithm_config(cls):
    """Make `cls` an algorithm config: a dataclass validated by pydantic on construction (types, ranges,
    unknown names refused). Numbers written as strings (YAML 1.1 reads `1e-3` as one) are taken as numbers."""
    return pydantic_dataclass(cls, config=ConfigDict(extra="forbid"))


@algorithm_config
class TrainingConfig:
    """Fields every algorithm config has; the trial core reads them."""

    num_steps: PositiveInt = 1_000_000  # gradient steps
    eval_every: PositiveInt = 5000  # gradient steps between evaluations (the last step is always evaluated)
    eval_episodes: PositiveInt = 10  # episodes per target return per evaluation
    batch_size: PositiveInt = 256

    @model_validator(mode="after")
    def evaluation_fits_the_budget(self):
        if self.eval_every > self.num_steps:
            raise ValueError(f"eval_every={self.eval_every} is larger than num_steps={self.num_steps}: the cadence "
                             f"would evaluate only at the last step; lower eval_every or raise num_steps")
        return self


class ConfigError(ValueError):
    """An unknown algorithm or hyperparameter, or a value of the wrong kind or out of range."""


@dataclass(frozen=True)
class TrainingSetup:
    """What an algorithm is built from besides its hyperparameters."""

    task: Task
    # The (sub)set of trajectories this trial trains on; None when a policy is rebuilt from exported files for
    # evaluation — then everything derived from data (normalization statistics) comes from those files.
    dataset: TrajectoryDataset | None
    observation_space: gym.spaces.Box
    action_space: gym.Space
    device: torch.device
    seed: int


@dataclass(frozen=True)
class ExternalInput:
    """Something outside the project an algorithm's config names: a pre-trained model, a text corpus.

    The orchestrator calls `check` for every declared input before anything starts (all problems reported
    together) and replaces a value that names an existing local path with its absolute path, because trials
    run in other working directories and on other nodes."""

    field: str  # the config field that names it
    what: str  # for messages: "pre-trained GPT-2", "language corpus"
    value: str
    check: Callable[[str], None]  # raises OSError or ValueError saying why the value cannot be used


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


class Sampler(Protocol):
    def sample(self, batch_size: int, rng: np.random.Generator) -> WindowBatch | TransitionBatch: ...


@runtime_checkable
class Algorithm(Protocol):
    """Built by its module's `build(config, setup)`; registered by name in trainers/runtime/registry.py.

    The trial core draws `sampler.sample(config.batch_size, rng)` (NumPy), moves the batch to the algorithm's
    device as torch tensors (`samplers.to_torch`) and calls `update`. Evaluation asks `policy(n, targets)`
    with the task's target returns when `return_conditioned`, else with None.
    """

    return_conditioned: bool
    sampler: Sampler | None  # None when built without data (a policy rebuilt from exported files)

    def update(self, batch: WindowBatch | TransitionBatch) -> dict[str, float]:  # torch tensors on the device
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


class FusedSeeds(Protocol):
    """Several seeds of one algorithm updated as one: each network's seeds as one batched tensor, so one kernel serves
    every seed (trainers/runtime/stack.py uses it when the algorithm declares `fused_seeds`). Built from the seeds'
    algorithms at equal steps; seed k must compute what its algorithm alone computes (up to float rounding), drawing
    any noise from that seed's own generator, never from torch's global stream."""

    def update(self, batches: list) -> list[dict[str, float] | NonFiniteLossError]:
        """One update of every seed, seed k on batches[k] (torch tensors); its metrics or its non-finite loss."""
        ...

    def sync(self) -> None:
        """Write the batched state (weights, optimiser moments, step) back into each seed's algorithm, so that its
        policy, state_dict and export are what its own updates would have made."""
        ...


@runtime_checkable
class Distributable(Protocol):
    """An algorithm that can train with more than one worker (DDP). The Ray Train adapter wraps the training
    objective's modules with `distribute(wrap)` and compares `trainable_state()` across ranks at the end."""

    def distribute(self, wrap: Callable[[torch.nn.Module], torch.nn.Module]) -> None:
        ...

    def trainable_state(self) -> dict[str, torch.Tensor]:
        ...


ActionSpace = Literal["box", "discrete"]  # continuous vectors (gymnasium Box) or action ids (Discrete)


@dataclass(frozen=True)
class Preset:
    """Named settings of an algorithm: `values` on every domain, then, after the algorithm's own settings for
    the task's domain, `domains[domain]` (where the preset's source sets a value for that domain alone)."""

    values: Mapping[str, Any] = field(default_factory=dict)
    domains: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def _declares_none(config: Any) -> list[ExternalInput]:
    return []


class RanTrial(Protocol):
    """What a fidelity note knows of one scored run (the aggregator's TrialRun has these)."""
    algorithm: str
    task: str
    domain: str
    ratio: float
    gpu_hours: float
    config: Mapping[str, Any]  # the trial record's resolved config (JSON values)
    # What was done to its dataset's episodes as they were read (the record's dataset.notes: split at the data
    # horizon, kept whole past the evaluation's); a reader without it counts as having none.
    dataset_notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class KnownDifference:
    """One deliberate difference from the official setup, with where that setup is documented, and how the given
    runs are affected (None when they are not)."""

    topic: str
    source: str
    describe: Callable[[list[RanTrial]], str | None]


def listed(values) -> str:
    """The distinct values, in the order given, for a note's text."""
    return ", ".join(dict.fromkeys(str(v) for v in values))


@dataclass(frozen=True)
class AlgorithmDeclaration:
    """Everything an algorithm module declares, as its module-level `ALGORITHM`.

    A config resolves as: the Config's defaults, the task's domain training settings (trainers/runtime/tasks.py,
    `DOMAIN_TRAINING`), the preset's values, `domain_settings[domain]`, the preset's values for the domain, then
    the sweep's overrides (trainers/runtime/registry.py, `make_config`)."""

    config: type  # its Config, an `algorithm_config` extending TrainingConfig; the comments document each field
    build: Callable[[Any, TrainingSetup], Algorithm]  # (config, setup) -> the algorithm
    action_spaces: frozenset[ActionSpace] = frozenset({"box"})  # the action spaces it can act in
    return_conditioned: bool = False  # evaluated once per target return of the task
    presets: Mapping[str, Preset] = field(default_factory=dict)  # names the registry maps algorithm names to
    domain_settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # its paper's, per domain
    external_inputs: Callable[[Any], list[ExternalInput]] = _declares_none  # models or corpora a config names
    # How its runs differ from its sources; each `describe` is given only this declaration's runs.
    differences: Sequence[KnownDifference] = ()
    # Seeds trained together as batched kernels: (the seeds' algorithms) -> FusedSeeds, or None where their config
    # has no fused form; None here: always one after another.
    fused_seeds: Callable[[list[Any]], FusedSeeds | None] | None = None


def discrete_frame_spaces(algorithm: str, setup: TrainingSetup) -> tuple[int, int]:
    """(frame_stack, num_actions) of a task whose observations are uint8 frame stacks and whose actions are
    Discrete (Atari); ValueError naming the algorithm and the task otherwise."""
    observation, action = setup.observation_space, setup.action_space
    if not isinstance(action, gym.spaces.Discrete):
        raise ValueError(f"{algorithm} needs a Discrete action space; task {setup.task.name!r} has {action!r}")
    if not isinstance(observation, gym.spaces.Box) or len(observation.shape) != 3 or observation.dtype != np.uint8:
        raise ValueError(f"{algorithm} needs (frame_stack, H, W) uint8 frame stacks; task {setup.task.name!r} has "
                         f"{observation!r}")
    dataset = setup.dataset
    if dataset is not None and dataset.state_shape != tuple(observation.shape):
        raise ValueError(f"{algorithm}: dataset {dataset.name} has states of shape {dataset.state_shape}, the task's "
                         f"observations {observation.shape}")
    return int(observation.shape[0]), int(action.n)


class StatelessPolicy:
    """A Policy around a function of the current observations alone (baselines, behaviour policies)."""

    def __init__(self, act_fn: Callable[[np.ndarray], np.ndarray]):
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

    def __reduce__(self):  # travels between Ray processes with its fields
        return type(self), (self.step, self.quantities)


def check_finite(step: int | None, **quantities) -> None:
    """Raise NonFiniteLossError if any given scalar (float or 0-d tensor) is NaN or inf.

    Pass the losses and the statistics that explain them (e.g. Q-value mean/max, log-prob min).
    """
    values = {name: float(value) for name, value in quantities.items()}
    if not all(np.isfinite(v) for v in values.values()):
        raise NonFiniteLossError(step, values)
