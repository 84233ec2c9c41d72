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

Discrete actions (Atari): a name may have a second module for tasks with a Discrete action space,
`AlgorithmEntry(cql, discrete=AlgorithmEntry(cql_discrete))`, so one sweep file lists `cql` or `bc` for
D4RL and Atari tasks alike. The task decides: `make_config(name, overrides, task)`, `config_fields(name, task)`
and `config_from_dict(name, values, task)` use the discrete module for a task whose `discrete_actions` is set
(without a task: the continuous one), `build_algorithm` for `setup.task`. A name without a discrete module
keeps its continuous one, whose build() refuses a Discrete task naming it and its action space; the sweep's
validation pass asks `supports_discrete_actions(name)` first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from pydantic import ValidationError

from baselines import bc, bc_discrete, cql, cql_discrete, iql, td3_bc
from trainers import atari_sequence_trainer, sequence_trainer
from trainers.algorithm import Algorithm, ConfigError, ExternalInput, TrainingConfig, TrainingSetup
from trainers.tasks import Task


@dataclass(frozen=True)
class AlgorithmEntry:
    module: ModuleType
    preset: str | None = None  # key into the module's PRESETS
    discrete: AlgorithmEntry | None = None  # the module for tasks with a Discrete action space (Atari)


def _atari_sequence(preset: str) -> AlgorithmEntry:
    return AlgorithmEntry(atari_sequence_trainer, preset)


ALGORITHMS: dict[str, AlgorithmEntry] = {
    # sequence models (trainers/sequence_trainer.py; on Atari trainers/atari_sequence_trainer.py)
    "lamo": AlgorithmEntry(sequence_trainer, "lamo", _atari_sequence("lamo")),
    "lamo_no_lm": AlgorithmEntry(sequence_trainer, "lamo_no_lm", _atari_sequence("lamo_no_lm")),
    "lamo_random_init": AlgorithmEntry(sequence_trainer, "lamo_random_init", _atari_sequence("lamo_random_init")),
    "lamo_full_ft": AlgorithmEntry(sequence_trainer, "lamo_full_ft", _atari_sequence("lamo_full_ft")),
    "lamo_linear_emb": AlgorithmEntry(sequence_trainer, "lamo_linear_emb", _atari_sequence("lamo_linear_emb")),
    "dt": AlgorithmEntry(sequence_trainer, "dt", _atari_sequence("dt")),
    "wiki_rl": AlgorithmEntry(sequence_trainer, "wiki_rl", _atari_sequence("wiki_rl")),
    # baselines (on Atari: baselines/cql_discrete.py, baselines/bc_discrete.py)
    "cql": AlgorithmEntry(cql, discrete=AlgorithmEntry(cql_discrete)),
    "iql": AlgorithmEntry(iql),
    "td3_bc": AlgorithmEntry(td3_bc),
    "bc": AlgorithmEntry(bc, "bc", AlgorithmEntry(bc_discrete, "bc")),
    "bc_10": AlgorithmEntry(bc, "bc_10", AlgorithmEntry(bc_discrete, "bc_10")),
}


def _entry(name: str, task: Task | None = None) -> AlgorithmEntry:
    """The algorithm's entry for the task: its discrete module when the task's actions are Discrete."""
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {name!r}; valid algorithms: {', '.join(ALGORITHMS)}")
    entry = ALGORITHMS[name]
    if task is not None and task.discrete_actions and entry.discrete is not None:
        return entry.discrete
    return entry


def _entry_of_config(name: str, config: TrainingConfig) -> AlgorithmEntry:
    """The entry (continuous or discrete) whose module made this config."""
    top = _entry(name)
    for entry in (top, top.discrete):
        if entry is not None and isinstance(config, entry.module.Config):
            return entry
    raise ConfigError(f"{name}: a {type(config).__module__}.{type(config).__name__} is not a config of this algorithm")


def config_fields(name: str, task: Task | None = None) -> list[str]:
    return [f.name for f in dataclasses.fields(_entry(name, task).module.Config)]


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
    field. The task also picks the module: the discrete one for a Discrete task (see the module doc)."""
    entry = _entry(name, task)
    module = entry.module
    values = dict(module.PRESETS[entry.preset]) if entry.preset else {}
    if task is not None:
        values.update(getattr(module, "DOMAIN_OVERRIDES", {}).get(task.domain, {}))
    overrides = dict(overrides or {})
    valid = config_fields(name, task)
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ConfigError(f"{name}: unknown hyperparameter(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    values.update(overrides)
    try:
        return module.Config(**values)
    except ValidationError as error:
        raise ConfigError("; ".join(f"{name}: {line}" for line in validation_messages(error))) from None


def config_from_dict(name: str, values: Mapping[str, Any], task: Task | None = None) -> TrainingConfig:
    """A config resolved earlier (a trial record's), rebuilt as it was: no preset or domain settings applied.
    Pass the trial's task, which picks the module as `make_config` did."""
    try:
        return _entry(name, task).module.Config(**values)
    except ValidationError as error:
        raise ConfigError("; ".join(f"{name}: {line}" for line in validation_messages(error))) from None


def return_conditioned(name: str, task: Task | None = None) -> bool:
    """Whether the algorithm is evaluated once per target return (its module sets RETURN_CONDITIONED)."""
    return getattr(_entry(name, task).module, "RETURN_CONDITIONED", False)


def supports_discrete_actions(name: str) -> bool:
    """Whether the name can run on a Discrete task: its module, or its discrete module, sets DISCRETE_ACTIONS."""
    entry = _entry(name)
    return any(getattr(e.module, "DISCRETE_ACTIONS", False) for e in (entry, entry.discrete) if e is not None)


def external_inputs(name: str, config: TrainingConfig) -> list[ExternalInput]:
    """The models, corpora or other outside inputs this configuration of the algorithm needs."""
    declare = getattr(_entry_of_config(name, config).module, "external_inputs", None)
    return list(declare(config)) if declare is not None else []


def build_algorithm(name: str, config: TrainingConfig, setup: TrainingSetup) -> Algorithm:
    """The algorithm for `setup.task` (its discrete module on a Discrete task), from a config made for it."""
    entry = _entry(name, setup.task)
    if not isinstance(config, entry.module.Config):
        raise ConfigError(f"{name} on task {setup.task.name!r} runs {entry.module.__name__}, but was given a "
                          f"{type(config).__module__} config; make the config with make_config(name, overrides, task)")
    return entry.module.build(config, setup)
