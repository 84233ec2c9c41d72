"""The sweep file: a pydantic model loaded from YAML, validated whole before anything starts.

Every error names the file, the field path and what was expected, and all errors are reported together.
`expand_trials` turns a valid spec into the trial grid (algorithm × task × ratio × seed) as TrialConfigs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainers.loop import TrialConfig
from trainers.registry import ALGORITHMS, ConfigError, config_fields, make_config
from trainers.tasks import TASKS, get_task


class SpecError(ValueError):
    """A sweep file that cannot run; the message lists every problem, one per line."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AlgorithmSpec(Strict):
    name: str
    overrides: dict[str, Any] = Field(default_factory=dict)  # hyperparameters over the preset
    steps: int | None = Field(default=None, gt=0)  # per-algorithm training steps
    eval_every: int | None = Field(default=None, gt=0)

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
    return ratios


class TaskSpec(Strict):
    name: str
    ratios: list[float] | None = Field(default=None, min_length=1)  # this task's ratios instead of the sweep's
    dataset: str | None = None  # explicit file; default: the d4rl cache convention

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


class ResourcesSpec(Strict):
    num_workers: int = Field(default=1, ge=1)  # Ray Train workers per trial (DDP when > 1)
    gpus_per_worker: float = Field(default=0.0, ge=0.0)  # fractional only with one worker
    cpus_per_worker: float = Field(default=1.0, gt=0.0)

    @model_validator(mode="after")
    def fractional_gpus_need_one_worker(self) -> ResourcesSpec:
        if self.num_workers > 1 and not float(self.gpus_per_worker).is_integer():
            raise ValueError(f"gpus_per_worker={self.gpus_per_worker} is fractional, which needs num_workers: 1 "
                             f"(got {self.num_workers}); DDP needs a whole GPU per worker")
        return self


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


class ConcurrencySpec(Strict):
    max_concurrent_trials: int | None = Field(default=None, ge=1)  # None: as many as the cluster fits
    trial_retries: int = Field(default=2, ge=0)  # Tune FailureConfig.max_failures
    worker_retries: int = Field(default=1, ge=0)  # Train FailureConfig.max_failures


class SweepSpec(Strict):
    name: str
    algorithms: list[AlgorithmSpec] = Field(min_length=1)
    tasks: list[TaskSpec] = Field(min_length=1)  # names, or {name, ratios, dataset}
    ratios: list[float] = Field(default_factory=lambda: [1.0], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    # Ray results: a directory (made absolute) or a URI such as s3://bucket/path (query options kept, e.g.
    # ?endpoint_override=minio:9000&scheme=http). Unset: $LAMO_SWEEPS_STORAGE, else ray_results.
    storage: str = Field(default_factory=lambda: os.environ.get("LAMO_SWEEPS_STORAGE") or "ray_results")
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

    @property
    def fingerprint(self) -> str:
        """Stable across machines: the same spec always names the same sweep (and resumes it). Where results go
        and how fast they come (tracking, storage, concurrency) are not part of what the sweep computes."""
        canonical = json.dumps(self.model_dump(mode="json", exclude={"tracking", "storage", "concurrency"}),
                               sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:10]

    @property
    def sweep_id(self) -> str:
        return f"{self.name}-{self.fingerprint}"


def _location(loc: tuple) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".") or "(root)"


def _hyperparameter_errors(spec: SweepSpec) -> list[str]:
    """Overrides and search-space names checked against each algorithm's config now, not when a trial starts."""
    errors = []
    for i, algorithm in enumerate(spec.algorithms):
        try:
            make_config(algorithm.name, algorithm.overrides)
        except ConfigError as error:
            errors.append(f"algorithms[{i}].overrides: {error}")
        unknown = sorted(set(spec.search.space) - set(config_fields(algorithm.name)))
        if spec.search.kind == "optuna" and unknown:
            errors.append(f"search.space: {', '.join(unknown)} is not a hyperparameter of {algorithm.name} "
                          f"(algorithms[{i}])")
    return errors


def load_spec(path: str | Path) -> SweepSpec:
    """Parse and validate a sweep file; raise SpecError listing every problem as `file: field: expected`."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such sweep file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SpecError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping of sweep fields at the top level, got {type(raw).__name__}")
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as error:
        lines = [f"{path}: {_location(e['loc'])}: {e['msg'].removeprefix('Value error, ')}" for e in error.errors()]
        raise SpecError("\n".join(lines)) from None
    problems = _hyperparameter_errors(spec)
    if problems:
        raise SpecError("\n".join(f"{path}: {p}" for p in problems))
    return spec


def trial_hyperparameters(spec: SweepSpec, algorithm: AlgorithmSpec) -> dict[str, Any]:
    """Global training settings, then the algorithm's own, then its overrides."""
    values: dict[str, Any] = {}
    for key, value in (("num_steps", spec.training.steps), ("eval_every", spec.training.eval_every),
                       ("eval_episodes", spec.training.eval_episodes), ("num_steps", algorithm.steps),
                       ("eval_every", algorithm.eval_every)):
        if value is not None:
            values[key] = value
    return values | algorithm.overrides


def expand_trials(spec: SweepSpec, output_root: str | Path) -> list[TrialConfig]:
    """The grid, in a fixed order: algorithm, task, ratio, seed. Each trial's output directory is named by it."""
    trials = []
    for algorithm in spec.algorithms:
        for task in spec.tasks:
            for ratio in task.ratios or spec.ratios:
                for seed in spec.seeds:
                    trial_id = f"{algorithm.name}.{task.name}.r{ratio:g}.s{seed}"
                    trials.append(TrialConfig(
                        algorithm=algorithm.name, task=task.name, ratio=ratio, seed=seed,
                        hyperparameters=trial_hyperparameters(spec, algorithm),
                        dataset_path=task.dataset, output_dir=str(Path(output_root) / trial_id)))
    return trials


def total_gradient_steps(spec: SweepSpec, trials: list[TrialConfig]) -> int:
    return sum(make_config(t.algorithm, t.hyperparameters, get_task(t.task)).num_steps for t in trials)
