"""The algorithm registry: one line per algorithm name.

Each algorithm lives in one module that declares `ALGORITHM = AlgorithmDeclaration(...)`
(trainers/runtime/algorithm.py): its `Config` (an `algorithm_config` extending `TrainingConfig`; its comments are
the documentation), its build, its named presets, its paper's settings per domain, the action spaces it acts in,
whether it is return-conditioned, the external inputs a config names and how its runs differ from its sources. The
registry reads nothing else from the module.

A line here maps a name to that declaration and, for a module with presets, to the preset's name. Adding an
algorithm is one new module and one line below (tests/test_registry.py checks that every module declaring an
algorithm is registered). The modules are imported here, at the top: the registry depends on the algorithms,
never the reverse.

Discrete actions (Atari): one declaration can act in both kinds of action space (the sequence models: the task's
spaces pick the model's ends), or a name gets a second declaration for tasks with a Discrete action space,
`AlgorithmEntry(cql.ALGORITHM, discrete=AlgorithmEntry(cql_discrete.ALGORITHM))`, so one sweep file lists `cql`
or `bc` for D4RL and Atari tasks alike. The task decides: `make_config(name, overrides, task)`,
`config_fields(name, task)` and `config_from_dict(name, values, task)` use the discrete declaration for a task
whose `discrete_actions` is set (without a task: the other one), `build_algorithm` for `setup.task`; the sweep's
validation pass asks `supports_discrete_actions(name)` first.

Resources: a line may also say how much of a GPU worker the name needs at most (`on_gpu`, a `WorkerShare`): the MLP
baselines a quarter of a GPU and one CPU. A sweep that trains on GPUs gives such an algorithm's one-worker trials no
more than that (orchestrator/spec.py, `SweepSpec.algorithm_resources`, has the whole precedence); a name without a
share (the sequence models: a pre-trained GPT-2 small, or dt's frames on Atari) takes the sweep's whole shape.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from baselines import bc, bc_discrete, cql, cql_discrete, iql, td3_bc
from trainers.runtime.algorithm import (
    Algorithm,
    AlgorithmDeclaration,
    ConfigError,
    ExternalInput,
    Preset,
    TrainingConfig,
    TrainingSetup,
)
from trainers.runtime.tasks import DOMAIN_TRAINING, Task
from trainers.sequence.algorithm import ALGORITHM as SEQUENCE


@dataclass(frozen=True)
class WorkerShare:
    """The most of a GPU worker an algorithm uses when its sweep trains on GPUs: a share of one GPU and CPUs."""

    gpus: float
    cpus: float


# A 256-wide MLP update at batch 256 is a few small kernels: one CPU thread launching them is the bound, not the
# GPU (README "Performance": bc, td3_bc and iql run 130-740 updates/s on one CPU thread). A quarter of a GPU is an
# assumption, not a measurement: no GPU was lent to this project; an entry's `resources` overrides it.
MLP_ON_GPU = WorkerShare(gpus=0.25, cpus=1)


@dataclass(frozen=True)
class AlgorithmEntry:
    spec: AlgorithmDeclaration
    preset: str | None = None  # a name in the declaration's presets
    discrete: AlgorithmEntry | None = None  # the declaration for tasks with a Discrete action space (Atari)
    on_gpu: WorkerShare | None = None  # the most of a GPU worker it needs (its discrete entry too); None: all

    @property
    def module(self) -> str:
        """Where the algorithm is written (its build)."""
        return self.spec.build.__module__


ALGORITHMS: dict[str, AlgorithmEntry] = {
    # sequence models, vector and frame observations alike (trainers/sequence/)
    "lamo": AlgorithmEntry(SEQUENCE, "lamo"),
    "lamo_no_lm": AlgorithmEntry(SEQUENCE, "lamo_no_lm"),
    "lamo_random_init": AlgorithmEntry(SEQUENCE, "lamo_random_init"),
    "lamo_full_ft": AlgorithmEntry(SEQUENCE, "lamo_full_ft"),
    "lamo_linear_emb": AlgorithmEntry(SEQUENCE, "lamo_linear_emb"),
    "dt": AlgorithmEntry(SEQUENCE, "dt"),
    "dt_128": AlgorithmEntry(SEQUENCE, "dt_128"),  # on Atari the intended 128 wide; elsewhere the same as dt
    "wiki_rl": AlgorithmEntry(SEQUENCE, "wiki_rl"),
    # baselines (on Atari: baselines/cql_discrete.py, baselines/bc_discrete.py)
    "cql": AlgorithmEntry(cql.ALGORITHM, discrete=AlgorithmEntry(cql_discrete.ALGORITHM), on_gpu=MLP_ON_GPU),
    "iql": AlgorithmEntry(iql.ALGORITHM, on_gpu=MLP_ON_GPU),
    "td3_bc": AlgorithmEntry(td3_bc.ALGORITHM, on_gpu=MLP_ON_GPU),
    "bc": AlgorithmEntry(bc.ALGORITHM, "bc", AlgorithmEntry(bc_discrete.ALGORITHM, "bc"), on_gpu=MLP_ON_GPU),
    "bc_10": AlgorithmEntry(bc.ALGORITHM, "bc_10", AlgorithmEntry(bc_discrete.ALGORITHM, "bc_10"), on_gpu=MLP_ON_GPU),
}


def _entry(name: str, task: Task | None = None) -> AlgorithmEntry:
    """The algorithm's entry for the task: its discrete declaration when the task's actions are Discrete."""
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {name!r}; valid algorithms: {', '.join(ALGORITHMS)}")
    entry = ALGORITHMS[name]
    if task is not None and task.discrete_actions and entry.discrete is not None:
        return entry.discrete
    return entry


def _entry_of_config(name: str, config: TrainingConfig) -> AlgorithmEntry:
    """The entry (continuous or discrete) whose declaration made this config."""
    top = _entry(name)
    for entry in (top, top.discrete):
        if entry is not None and isinstance(config, entry.spec.config):
            return entry
    raise ConfigError(f"{name}: a {type(config).__module__}.{type(config).__name__} is not a config of this algorithm")


def declaration(name: str, task: Task | None = None) -> AlgorithmDeclaration:
    """What the name runs on the task: its declaration (the discrete one on a Discrete task)."""
    return _entry(name, task).spec


def gpu_share(name: str) -> WorkerShare | None:
    """The most of a GPU worker the name needs when its sweep trains on GPUs; None: the sweep's whole shape."""
    return _entry(name).on_gpu


def config_fields(name: str, task: Task | None = None) -> list[str]:
    return [f.name for f in dataclasses.fields(_entry(name, task).spec.config)]


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


def preset_values(name: str, task: Task | None = None) -> dict[str, Any]:
    """What the name sets before a sweep's overrides: the task's domain training settings (trainers/runtime/tasks.py),
    the preset's values, the declaration's settings for the domain, then the preset's for the domain."""
    entry = _entry(name, task)
    preset = entry.spec.presets[entry.preset] if entry.preset else Preset()
    domain = task.domain if task is not None else None
    return {**DOMAIN_TRAINING.get(domain, {}), **preset.values, **entry.spec.domain_settings.get(domain, {}),
            **preset.domains.get(domain, {})}


def make_config(name: str, overrides: Mapping[str, Any] | None = None, task: Task | None = None) -> TrainingConfig:
    """The algorithm's Config: `preset_values`, then the given overrides. Unknown names, wrong types and
    out-of-range values raise ConfigError naming each field. The task also picks the declaration: the discrete one
    for a Discrete task (see the module doc)."""
    overrides = dict(overrides or {})
    valid = config_fields(name, task)
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ConfigError(f"{name}: unknown hyperparameter(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    return _validated(name, preset_values(name, task) | overrides, task)


def config_from_dict(name: str, values: Mapping[str, Any], task: Task | None = None) -> TrainingConfig:
    """A config resolved earlier (a trial record's), rebuilt as it was: no preset or domain settings applied.
    Pass the trial's task, which picks the declaration as `make_config` did."""
    return _validated(name, values, task)


def _validated(name: str, values: Mapping[str, Any], task: Task | None) -> TrainingConfig:
    try:
        return _entry(name, task).spec.config(**values)
    except ValidationError as error:
        raise ConfigError("; ".join(f"{name}: {line}" for line in validation_messages(error))) from None


def return_conditioned(name: str, task: Task | None = None) -> bool:
    """Whether the algorithm is evaluated once per target return."""
    return _entry(name, task).spec.return_conditioned


def supports_discrete_actions(name: str) -> bool:
    """Whether the name can run on a Discrete task: its declaration, or its discrete one, acts in one."""
    entry = _entry(name)
    return any("discrete" in e.spec.action_spaces for e in (entry, entry.discrete) if e is not None)


def external_inputs(name: str, config: TrainingConfig) -> list[ExternalInput]:
    """The models, corpora or other outside inputs this configuration of the algorithm needs."""
    return list(_entry_of_config(name, config).spec.external_inputs(config))


def build_algorithm(name: str, config: TrainingConfig, setup: TrainingSetup) -> Algorithm:
    """The algorithm for `setup.task` (its discrete declaration on a Discrete task), from a config made for it."""
    entry = _entry(name, setup.task)
    if not isinstance(config, entry.spec.config):
        raise ConfigError(f"{name} on task {setup.task.name!r} runs {entry.module}, but was given a "
                          f"{type(config).__module__} config; make the config with make_config(name, overrides, task)")
    return entry.spec.build(config, setup)
