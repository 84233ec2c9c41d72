"""The algorithm registry: one line per algorithm name.

Each algorithm lives in one module that defines a `Config` dataclass (subclass of `TrainingConfig`, its
comments are the documentation) and `build(config, setup) -> Algorithm`. A line here maps a name to that
module and, for named presets of one model (LaMo and its ablations, DT, Wiki-RL), to the preset's overrides,
which the module keeps in its `PRESETS` dict. Modules are imported on first use.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import torch

from trainers.algorithm import Algorithm
from trainers.datasets import TrajectoryDataset
from trainers.tasks import Task


@dataclass
class TrainingConfig:
    """Fields every algorithm config has; the worker loop reads them."""

    num_steps: int = 1_000_000  # gradient steps
    eval_every: int = 5000  # gradient steps between evaluations
    eval_episodes: int = 10  # episodes per target return per evaluation
    batch_size: int = 256


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
class AlgorithmEntry:
    module: str
    preset: str | None = None  # key into the module's PRESETS


ALGORITHMS: dict[str, AlgorithmEntry] = {
    # sequence models (trainers/sequence_trainer.py)
    "lamo": AlgorithmEntry("trainers.sequence_trainer", "lamo"),
    "lamo_no_lm": AlgorithmEntry("trainers.sequence_trainer", "lamo_no_lm"),
    "lamo_random_init": AlgorithmEntry("trainers.sequence_trainer", "lamo_random_init"),
    "lamo_full_ft": AlgorithmEntry("trainers.sequence_trainer", "lamo_full_ft"),
    "lamo_linear_emb": AlgorithmEntry("trainers.sequence_trainer", "lamo_linear_emb"),
    "dt": AlgorithmEntry("trainers.sequence_trainer", "dt"),
    "wiki_rl": AlgorithmEntry("trainers.sequence_trainer", "wiki_rl"),
    # baselines
    "cql": AlgorithmEntry("baselines.cql"),
    "iql": AlgorithmEntry("baselines.iql"),
    "td3_bc": AlgorithmEntry("baselines.td3_bc"),
    "bc": AlgorithmEntry("baselines.bc", "bc"),
    "bc_10": AlgorithmEntry("baselines.bc", "bc_10"),
}


class ConfigError(ValueError):
    """An unknown algorithm or hyperparameter, or a value of the wrong kind."""


def _entry(name: str) -> AlgorithmEntry:
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {name!r}; valid algorithms: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]


def _module(name: str):
    return importlib.import_module(_entry(name).module)


def config_fields(name: str) -> list[str]:
    return [f.name for f in dataclasses.fields(_module(name).Config)]


def make_config(name: str, overrides: Mapping[str, Any] | None = None, task: Task | None = None):
    """The algorithm's Config: its preset, then its paper's kitchen settings when the task is a kitchen task
    (the module's KITCHEN_OVERRIDES), then the given overrides (checked by name)."""
    entry, module = _entry(name), _module(name)
    values = dict(module.PRESETS[entry.preset]) if entry.preset else {}
    if task is not None and task.domain == "kitchen":
        values.update(getattr(module, "KITCHEN_OVERRIDES", {}))
    overrides = dict(overrides or {})
    valid = config_fields(name)
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ConfigError(f"{name}: unknown hyperparameter(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    values.update(overrides)
    try:
        return module.Config(**values)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{name}: {error}") from error


def return_conditioned(name: str) -> bool:
    """Whether the algorithm is evaluated once per target return (its module sets RETURN_CONDITIONED)."""
    return getattr(_module(name), "RETURN_CONDITIONED", False)


def build_algorithm(name: str, config, setup: TrainingSetup) -> Algorithm:
    return _module(name).build(config, setup)
