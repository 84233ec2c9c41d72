"""The sweep file: a pydantic model loaded from YAML, validated whole before anything starts.

`load_spec` checks every field of the file and, through `expand_trials`, every trial it makes: each algorithm's
overrides against that algorithm's own config (types and ranges, for every task's domain), every search-space
bound, duplicate seeds, ratios, algorithms and tasks. Every error names the file, the field path and what was
expected, and all errors are reported together. Numbers are read as YAML 1.2 reads them (`1e-3` is a number,
not YAML 1.1's string). `expand_trials` turns a valid spec into the grid (algorithm × task × ratio × seed) of
trial records (trainers/runtime/record.py), the one place a sweep's trials are resolved.

Resources per algorithm (`SweepSpec.algorithm_resources`), field by field, the first that applies:
1. the algorithm entry's own `resources` (`{name: bc, resources: {gpus_per_worker: 0.5}}`): the user's last word;
2. when the sweep trains on GPUs (sweep-wide `gpus_per_worker` > 0) and the trial has one worker, the algorithm's
   registered share (trainers/runtime/registry.py, `on_gpu`: the MLP baselines 0.25 GPU, 1 CPU), never more than
   the sweep-wide value — the sweep-wide block is the most one trial holds, a preset that needs less takes less;
3. the sweep-wide `resources` (as written, else its defaults).
So a CPU-only sweep stays CPU-only (no share applies to it), a sequence model with GPT-2 takes the sweep-wide whole
GPU, and `trainer` and `seeds_per_trial` are sweep-wide only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from trainers.data.trajectories import LongEpisodes
from trainers.runtime.algorithm import ConfigError
from trainers.runtime.record import TrialRecord, make_record
from trainers.runtime.registry import ALGORITHMS, config_fields, gpu_share, make_config
from trainers.runtime.tasks import TASKS, get_task


class SpecError(ValueError):
    """A sweep file that cannot run; the message lists every problem, one per line."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _unique(values: list, what: str) -> list:
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"{what} must be unique; repeated: {', '.join(repeated)} (each would run the same "
                         f"trials twice into one directory and one MLflow run)")
    return values


class AlgorithmResources(Strict):
    """An algorithm entry's own resources, each field set over what the sweep and the preset give (module doc)."""

    num_workers: int | None = Field(default=None, ge=1)
    gpus_per_worker: float | None = Field(default=None, ge=0.0)
    cpus_per_worker: float | None = Field(default=None, gt=0.0)

    @model_validator(mode="before")
    @classmethod
    def sweep_wide_fields(cls, values: Any) -> Any:
        shared = sorted({"trainer", "seeds_per_trial"} & set(values)) if isinstance(values, dict) else []
        if shared:
            raise ValueError(f"{', '.join(shared)} is sweep-wide: set it in the sweep's resources, not an "
                             f"algorithm's (an algorithm sets num_workers, gpus_per_worker, cpus_per_worker)")
        return values


class AlgorithmSpec(Strict):
    name: str
    overrides: dict[str, Any] = Field(default_factory=dict)  # hyperparameters over the preset
    steps: int | None = Field(default=None, gt=0)  # per-algorithm training steps
    eval_every: int | None = Field(default=None, gt=0)
    resources: AlgorithmResources = Field(default_factory=AlgorithmResources)  # over the sweep-wide resources

    @field_validator("name")
    @classmethod
    def known_algorithm(cls, name: str) -> str:
        if name not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {name!r}; valid algorithms: {', '.join(ALGORITHMS)}")
        return name


def _check_ratios(ratios: list[float] | None) -> list[float] | None:
    bad = [r for r in ratios or [] if not 0.0 < r <= 1.0]
    if bad:
        raise ValueError(f"data ratios must be in (0, 1], got {bad}")
    return _unique(ratios, "ratios") if ratios else ratios


class TaskSpec(Strict):
    name: str
    ratios: list[float] | None = Field(default=None, min_length=1)  # this task's ratios instead of the sweep's
    dataset: str | None = None  # explicit file; default: the d4rl cache convention
    # Episodes longer than the task's data horizon (trainers/runtime/tasks.py) mean the file's episode flags cannot
    # be trusted: split them at it (and say so in the trial's dataset notes) or refuse the file.
    long_episodes: LongEpisodes = "split"

    @field_validator("name")
    @classmethod
    def known_task(cls, name: str) -> str:
        if name not in TASKS:
            raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
        return name

    @field_validator("ratios")
    @classmethod
    def ratios_in_range(cls, ratios: list[float] | None) -> list[float] | None:
        return _check_ratios(ratios)


class TrainingSpec(Strict):
    steps: int | None = Field(default=None, gt=0)  # None: each algorithm's default
    eval_every: int | None = Field(default=None, gt=0)
    eval_episodes: int | None = Field(default=None, gt=0)
    log_every: int = Field(default=100, gt=0)  # training metrics every N steps
    eval_seed: int = Field(default=10_000, ge=0)  # evaluation episodes are seeded from (eval_seed, seed, step)


class ResourcesSpec(Strict):
    num_workers: int = Field(default=1, ge=1)  # Ray Train workers per trial (DDP when > 1)
    gpus_per_worker: float = Field(default=0.0, ge=0.0)  # fractional only with one worker
    cpus_per_worker: float = Field(default=1.0, gt=0.0)
    # auto: one worker trains in the Tune trial's own actor, several through a Ray Train TorchTrainer;
    # ray_train: every trial through a TorchTrainer (a controller actor and placement group per trial).
    trainer: Literal["auto", "ray_train"] = "auto"
    # Seeds of one cell trained together in one trial (trainers/runtime/stack.py), each still its own run: an
    # integer ≥ 1 or "all" (every seed of the sweep). 1 (a trial per seed) until the benchmarks say otherwise.
    seeds_per_trial: int | Literal["all"] = 1

    @model_validator(mode="after")
    def fractional_gpus_need_one_worker(self) -> ResourcesSpec:
        if self.num_workers > 1 and not float(self.gpus_per_worker).is_integer():
            raise ValueError(f"gpus_per_worker={self.gpus_per_worker} is fractional, which needs num_workers: 1 "
                             f"(got {self.num_workers}); DDP needs a whole GPU per worker")
        return self

    @field_validator("seeds_per_trial")
    @classmethod
    def at_least_one_seed(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"expected an integer ≥ 1 or 'all', got {value}")
        return value

    @model_validator(mode="after")
    def stacked_seeds_train_in_place(self) -> ResourcesSpec:
        if self.seeds_per_trial != 1 and not self.in_place:
            raise ValueError(f"seeds_per_trial={self.seeds_per_trial} trains a cell's seeds in the trial's own "
                             f"process, which needs num_workers: 1 and trainer: auto (got num_workers "
                             f"{self.num_workers}, trainer {self.trainer})")
        return self

    def stack_size(self, seeds: int) -> int:
        """How many seeds one trial trains, for a sweep of `seeds` seeds."""
        return seeds if self.seeds_per_trial == "all" else min(self.seeds_per_trial, seeds)

    @property
    def in_place(self) -> bool:
        return self.num_workers == 1 and self.trainer == "auto"


class SearchSpec(Strict):
    kind: Literal["grid", "optuna"] = "grid"
    space: dict[str, dict[str, list[float] | list[Any]]] = Field(default_factory=dict)  # optuna only
    samples: int = Field(default=1, ge=1)  # optuna trials per task × ratio cell
    metric: str = "eval/best_normalized_mean"
    mode: Literal["max", "min"] = "max"

    @model_validator(mode="after")
    def optuna_needs_a_space(self) -> SearchSpec:
        if self.kind == "optuna" and not self.space:
            raise ValueError("search.kind optuna needs a non-empty search.space, e.g. "
                             "{learning_rate: {loguniform: [1e-5, 1e-3]}}")
        for name, distribution in self.space.items():
            kinds = set(distribution) - {"uniform", "loguniform", "choice", "int"}
            if len(distribution) != 1 or kinds:
                raise ValueError(f"space.{name}: expected exactly one of uniform, loguniform, int, choice, "
                                 f"got {sorted(distribution)}")
            (kind, values), = distribution.items()
            if kind == "choice":
                if not values:
                    raise ValueError(f"space.{name}.choice: expected a non-empty list of values")
                continue
            if len(values) != 2 or not all(isinstance(v, (int, float)) for v in values) or values[0] >= values[1]:
                raise ValueError(f"space.{name}.{kind}: expected [low, high] numbers with low < high, got {values}")
            if kind == "loguniform" and values[0] <= 0:
                raise ValueError(f"space.{name}.loguniform: expected low > 0, got {values[0]}")
        return self

    def values_to_check(self) -> dict[str, list[Any]]:
        """Per searched hyperparameter, the values that bound what a sample can be (both ends, every choice)."""
        return {name: list(values) for name, d in self.space.items() for values in d.values()}

    def tune_space(self) -> dict[str, Any]:
        """The space as Ray Tune domains (int bounds are inclusive)."""
        from ray import tune

        make = {"uniform": lambda v: tune.uniform(*v), "loguniform": lambda v: tune.loguniform(*v),
                "int": lambda v: tune.randint(int(v[0]), int(v[1]) + 1), "choice": tune.choice}
        return {name: make[kind](values) for name, d in self.space.items() for kind, values in d.items()}


class TrackingSpec(Strict):
    # Any MLflow tracking URI; a relative sqlite path is the working directory's. Unset: $MLFLOW_TRACKING_URI (set
    # on every node of the cluster configs), else sqlite:///mlflow.db.
    uri: str = Field(default_factory=lambda: os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db")
    experiment: str = "lamo-sweeps"
    # A trial keeps training while the tracking server is unreachable and delivers everything once it is back;
    # an outage longer than this fails the trial (its checkpoint intact) instead of holding results in memory.
    max_outage_s: float = Field(default=900.0, gt=0)


class ConcurrencySpec(Strict):
    max_concurrent_trials: int | None = Field(default=None, ge=1)  # None: as many as the cluster fits
    trial_retries: int = Field(default=2, ge=0)  # Tune FailureConfig.max_failures
    worker_retries: int = Field(default=1, ge=0)  # Train FailureConfig.max_failures


class SweepSpec(Strict):
    name: str
    algorithms: list[AlgorithmSpec] = Field(min_length=1)
    tasks: list[TaskSpec] = Field(min_length=1)  # names, or {name, ratios, dataset, long_episodes}
    ratios: list[float] = Field(default_factory=lambda: [1.0], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    # Ray results: a directory (made absolute) or a URI such as s3://bucket/path (query options kept, e.g.
    # ?endpoint_override=minio:9000&scheme=http). Unset: $LAMO_SWEEPS_STORAGE, else ray_results.
    storage: str = Field(default_factory=lambda: os.environ.get("LAMO_SWEEPS_STORAGE") or "ray_results")
    # The grid, once `expand_trials` resolved it, with the fields it was resolved from (a copy with other fields,
    # from model_copy, resolves its own).
    _trials: tuple[str, list[TrialRecord]] | None = PrivateAttr(default=None)
    concurrency: ConcurrencySpec = Field(default_factory=ConcurrencySpec)

    @field_validator("algorithms", "tasks", mode="before")
    @classmethod
    def names_are_shorthand(cls, entries: Any) -> Any:
        return [{"name": e} if isinstance(e, str) else e for e in entries] if isinstance(entries, list) else entries

    @field_validator("name")
    @classmethod
    def usable_as_a_directory_name(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise ValueError("expected letters, digits, '_', '.', '-' (it names the Ray run and MLflow runs)")
        return name

    @field_validator("ratios")
    @classmethod
    def ratios_in_range(cls, ratios: list[float]) -> list[float]:
        return _check_ratios(ratios)

    @field_validator("seeds")
    @classmethod
    def seeds_are_distinct_and_non_negative(cls, seeds: list[int]) -> list[int]:
        negative = [s for s in seeds if s < 0]
        if negative:
            raise ValueError(f"seeds must be ≥ 0 (they seed NumPy and torch), got {negative}")
        return _unique(seeds, "seeds")

    @field_validator("algorithms")
    @classmethod
    def algorithms_are_distinct(cls, algorithms: list[AlgorithmSpec]) -> list[AlgorithmSpec]:
        _unique([a.name for a in algorithms], "algorithm names")
        return algorithms

    @field_validator("tasks")
    @classmethod
    def tasks_are_distinct(cls, tasks: list[TaskSpec]) -> list[TaskSpec]:
        _unique([t.name for t in tasks], "task names")
        return tasks

    @model_validator(mode="after")
    def stacks_are_grid_trials(self) -> SweepSpec:
        if self.resources.seeds_per_trial != 1 and self.search.kind == "optuna":
            raise ValueError(f"resources.seeds_per_trial={self.resources.seeds_per_trial}: a search samples one "
                             f"configuration per trial (its first seed only); use seeds_per_trial: 1 with "
                             f"search.kind optuna")
        return self

    def algorithm_resources(self, name: str) -> ResourcesSpec:
        """What one trial of the algorithm holds: its entry's resources, its registered share on a GPU sweep, the
        sweep-wide resources (the module doc has the precedence). ValueError naming the field when the result is
        not a valid shape (load_spec reports it naming the entry)."""
        sweep = self.resources
        entry = next((a for a in self.algorithms if a.name == name), None)
        own = entry.resources.model_dump(exclude_none=True) if entry else {}
        values = sweep.model_dump()
        share = gpu_share(name)
        # A share is a fraction of a GPU, which only a one-worker trial can hold.
        if share is not None and sweep.gpus_per_worker > 0 and own.get("num_workers", sweep.num_workers) == 1:
            values |= {"gpus_per_worker": min(sweep.gpus_per_worker, share.gpus),
                       "cpus_per_worker": min(sweep.cpus_per_worker, share.cpus)}
        return ResourcesSpec.model_validate(values | own)

    @property
    def stack_size(self) -> int:
        """Seeds per trial (resources.seeds_per_trial resolved against the sweep's seeds)."""
        return self.resources.stack_size(len(self.seeds))

    @property
    def fingerprint(self) -> str:
        """Stable across machines: the same spec always names the same sweep (and resumes it). Where results go
        and how fast they come (tracking, storage, concurrency, whether a trial trains in place, how many seeds
        one trial trains) are not part of what the sweep computes."""
        dump = self.model_dump(mode="json", exclude={"tracking", "storage", "concurrency"})
        dump["resources"].pop("trainer")
        dump["resources"].pop("seeds_per_trial")
        for algorithm in dump["algorithms"]:  # unset, an entry's resources leave the sweep's name as it was
            if not any(v is not None for v in algorithm["resources"].values()):
                del algorithm["resources"]
        canonical = json.dumps(dump, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:10]

    @property
    def sweep_id(self) -> str:
        return f"{self.name}-{self.fingerprint}"


# --- YAML as the user meant it ---------------------------------------------------------------------------------

class _Yaml12Numbers(yaml.SafeLoader):
    """PyYAML implements YAML 1.1, where `1e-3` and `1e5` (no dot) are strings; YAML 1.2 and every user read
    them as numbers."""


_Yaml12Numbers.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def _location(loc: tuple, raw: dict | None = None) -> str:
    """`algorithms[3].resources.gpus_per_worker`; inside an algorithm entry (not its name) with the entry's name,
    `algorithms[3] (bc).resources.gpus_per_worker`, which the user finds in the file."""
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".") or "(root)"
    if raw and len(loc) > 2 and loc[0] == "algorithms" and isinstance(loc[1], int) and loc[2] != "name":
        entries = raw.get("algorithms")
        entry = entries[loc[1]] if isinstance(entries, list) and loc[1] < len(entries) else None
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            where = where.replace(f"algorithms[{loc[1]}]", f"algorithms[{loc[1]}] ({entry['name']})", 1)
    return where


# --- whole-sweep checks ----------------------------------------------------------------------------------------

def trial_hyperparameters(spec: SweepSpec, algorithm: AlgorithmSpec) -> dict[str, Any]:
    """Global training settings, then the algorithm's own, then its overrides."""
    values: dict[str, Any] = {}
    for key, value in (("num_steps", spec.training.steps), ("eval_every", spec.training.eval_every),
                       ("eval_episodes", spec.training.eval_episodes), ("num_steps", algorithm.steps),
                       ("eval_every", algorithm.eval_every)):
        if value is not None:
            values[key] = value
    return values | algorithm.overrides


def expand_trials(spec: SweepSpec) -> list[TrialRecord]:
    """The grid as trial records, in a fixed order: algorithm, task, ratio, seed. Raises SpecError listing every
    algorithm × task whose configuration is invalid. Resolved once per spec (`load_spec` already did)."""
    fields = spec.model_dump_json()
    if spec._trials is not None and spec._trials[0] == fields:
        return list(spec._trials[1])
    records, problems = [], {}
    for i, algorithm in enumerate(spec.algorithms):
        hyperparameters = trial_hyperparameters(spec, algorithm)
        for task in spec.tasks:
            for ratio in task.ratios or spec.ratios:
                for seed in spec.seeds:
                    try:
                        records.append(make_record(
                            algorithm.name, task.name, ratio, seed, hyperparameters, task.dataset,
                            sweep_id=spec.sweep_id, eval_seed=spec.training.eval_seed,
                            log_every=spec.training.log_every))
                    except ConfigError as error:
                        where = f"algorithms[{i}] ({algorithm.name}, with the sweep's training settings)"
                        problems.setdefault(str(error), f"{where}: {error} (task {task.name})")
    if problems:
        raise SpecError("\n".join(problems.values()))
    spec._trials = fields, records
    return list(records)


def _resources_errors(spec: SweepSpec) -> list[str]:
    """Each algorithm's resolved resources checked as a whole (a fractional GPU with several workers, stacked seeds
    out of place), naming the entry."""
    errors = []
    for i, algorithm in enumerate(spec.algorithms):
        try:
            spec.algorithm_resources(algorithm.name)
        except ValidationError as error:
            for e in error.errors():
                message = e["msg"].removeprefix("Value error, ")
                errors.append(f"algorithms[{i}] ({algorithm.name}).resources: {message} (its entry's resources over "
                              f"the sweep-wide ones)")
    return errors


def _search_errors(spec: SweepSpec) -> list[str]:
    """Search-space names and bounds checked against each algorithm's config, for every task's domain."""
    errors = []
    if spec.search.kind != "optuna":
        return errors
    for i, algorithm in enumerate(spec.algorithms):
        unknown = sorted(set(spec.search.space) - set(config_fields(algorithm.name)))
        if unknown:
            errors.append(f"search.space: {', '.join(unknown)} is not a hyperparameter of {algorithm.name} "
                          f"(algorithms[{i}])")
            continue
        base = trial_hyperparameters(spec, algorithm)
        for name, values in spec.search.values_to_check().items():
            for value in values:
                for task in spec.tasks:
                    try:
                        make_config(algorithm.name, base | {name: value}, get_task(task.name))
                    except ConfigError as error:
                        errors.append(f"search.space.{name}: the value {value!r} is invalid for {algorithm.name}: "
                                      f"{error}")
                        break
    return list(dict.fromkeys(errors))


def read_spec_file(path: Path) -> dict:
    if not path.is_file():
        raise SpecError(f"{path}: no such sweep file")
    try:
        raw = yaml.load(path.read_text(), Loader=_Yaml12Numbers)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        raise SpecError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping of sweep fields at the top level, got {type(raw).__name__}")
    return raw


def load_spec(path: str | Path) -> SweepSpec:
    """Parse and validate a sweep file; raise SpecError listing every problem as `file: field: expected`."""
    path = Path(path)
    raw = read_spec_file(path)
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as error:
        lines = []
        for e in error.errors():
            got = "" if e["type"] in ("value_error", "missing") or isinstance(e.get("input"), dict) \
                else f", got {e.get('input')!r}"
            lines.append(f"{path}: {_location(e['loc'], raw)}: {e['msg'].removeprefix('Value error, ')}{got}")
        raise SpecError("\n".join(lines)) from None
    problems = _resources_errors(spec) + _search_errors(spec)
    try:
        expand_trials(spec)
    except SpecError as error:
        problems += str(error).splitlines()
    if problems:
        raise SpecError("\n".join(f"{path}: {p}" for p in problems))
    return spec
