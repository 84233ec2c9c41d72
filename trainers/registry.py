"""The algorithm registry: one line per algorithm name.

Each algorithm lives in one module that defines a `Config` (an `algorithm_config` extending `TrainingConfig`,
its comments are the documentation) and `build(config, setup) -> Algorithm`, and may define:
- `PRESETS`: named overrides of its Config (LaMo and its ablations, DT and Wiki-RL share one module);
- `DOMAIN_OVERRIDES`: the settings its paper uses on a domain, e.g. {"kitchen": {...}};
- `RETURN_CONDITIONED = True`: evaluated once per target return of the task;
- `DISCRETE_ACTIONS = True`: it can act in a Discrete action space (default: continuous Box only);
- `external_inputs(config) -> list[ExternalInput]`: models or corpora its config names.

A line here maps a name to that module and, for presets, to the preset's key. Adding an algorithm is one new
module and one line below. The modules are imported here, at the top: the registry depends on the
algorithms, never the reverse.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from pydantic import ValidationError

from baselines import bc, cql, iql, td3_bc
from trainers import sequence_trainer
from trainers.algorithm import Algorithm, ConfigError, ExternalInput, TrainingConfig, TrainingSetup
from trainers.tasks import Task


@dataclass(frozen=True)
class AlgorithmEntry:
    module: ModuleType
    preset: str | None = None  # key into the module's PRESETS


ALGORITHMS: dict[str, AlgorithmEntry] = {
    # sequence models (trainers/sequence_trainer.py)
    "lamo": AlgorithmEntry(sequence_trainer, "lamo"),
    "lamo_no_lm": AlgorithmEntry(sequence_trainer, "lamo_no_lm"),
    "lamo_random_init": AlgorithmEntry(sequence_trainer, "lamo_random_init"),
    "lamo_full_ft": AlgorithmEntry(sequence_trainer, "lamo_full_ft"),
    "lamo_linear_emb": AlgorithmEntry(sequence_trainer, "lamo_linear_emb"),
    "dt": AlgorithmEntry(sequence_trainer, "dt"),
    "wiki_rl": AlgorithmEntry(sequence_trainer, "wiki_rl"),
    # baselines
    "cql": AlgorithmEntry(cql),
    "iql": AlgorithmEntry(iql),
    "td3_bc": AlgorithmEntry(td3_bc),
    "bc": AlgorithmEntry(bc, "bc"),
    "bc_10": AlgorithmEntry(bc, "bc_10"),
}


def _entry(name: str) -> AlgorithmEntry:
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {name!r}; valid algorithms: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]


def config_fields(name: str) -> list[str]:
    return [f.name for f in dataclasses.fields(_entry(name).module.Config)]


def validation_messages(error: ValidationError) -> list[str]:
    """One line per problem: `field: what was expected, got value`."""
    lines = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "config"
        message = problem["msg"].removeprefix("Value error, ")
        got = problem.get("input")
        shown = "" if problem["type"] in ("value_error", "missing") or isinstance(got, dict) else f", got {got!r}"
        lines.append(f"{where}: {message}{shown}")
    return lines


def make_config(name: str, overrides: Mapping[str, Any] | None = None, task: Task | None = None) -> TrainingConfig:
    """The algorithm's Config: its preset, then its paper's settings for the task's domain (DOMAIN_OVERRIDES),
    then the given overrides. Unknown names, wrong types and out-of-range values raise ConfigError naming each
    field."""
    entry = _entry(name)
    module = entry.module
    values = dict(module.PRESETS[entry.preset]) if entry.preset else {}
    if task is not None:
        values.update(getattr(module, "DOMAIN_OVERRIDES", {}).get(task.domain, {}))
    overrides = dict(overrides or {})
    valid = config_fields(name)
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ConfigError(f"{name}: unknown hyperparameter(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    values.update(overrides)
    try:
        return module.Config(**values)
    except ValidationError as error:
        raise ConfigError("; ".join(f"{name}: {line}" for line in validation_messages(error))) from None


def config_from_dict(name: str, values: Mapping[str, Any]) -> TrainingConfig:
    """A config resolved earlier (a trial record's), rebuilt as it was: no preset or domain settings applied."""
    try:
        return _entry(name).module.Config(**values)
    except ValidationError as error:
        raise ConfigError("; ".join(f"{name}: {line}" for line in validation_messages(error))) from None


def return_conditioned(name: str) -> bool:
    """Whether the algorithm is evaluated once per target return (its module sets RETURN_CONDITIONED)."""
    return getattr(_entry(name).module, "RETURN_CONDITIONED", False)


def supports_discrete_actions(name: str) -> bool:
    return getattr(_entry(name).module, "DISCRETE_ACTIONS", False)


def external_inputs(name: str, config: TrainingConfig) -> list[ExternalInput]:
    """The models, corpora or other outside inputs this configuration of the algorithm needs."""
    declare = getattr(_entry(name).module, "external_inputs", None)
    return list(declare(config)) if declare is not None else []


def build_algorithm(name: str, config: TrainingConfig, setup: TrainingSetup) -> Algorithm:
    return _entry(name).module.build(config, setup)
