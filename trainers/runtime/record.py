"""The trial record: one trial, resolved once, carried unchanged from the sweep file to the worker, to MLflow and
back to the aggregator.

A record holds the trial's identity (`trial_id`, the algorithm × task × ratio × seed cell), the algorithm's
configuration resolved once (preset, the domain's settings, the sweep's settings and overrides, local paths
made absolute) and the identity of its dataset (file, digest, episode counts, filled in by the sweep's
validation pass). `make_record` is the one place a record is made: the sweep spec calls it for every grid
point and `python -m trainers.runtime.train` for its one trial. Nothing downstream re-derives a trial's identity from
folder names or tags: it reads the record.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainers.data.loading import expected_dataset_path, resolve_dataset_path
from trainers.data.trajectories import DatasetError
from trainers.runtime.algorithm import TrainingConfig
from trainers.runtime.registry import config_from_dict, external_inputs, make_config
from trainers.runtime.tasks import Task, get_task

RECORD_FILE = "trial_record.json"  # the record beside a trial's other files


@dataclass(frozen=True)
class DatasetIdentity:
    """Which data a trial trains on. `name` seeds the data-ratio subsets, so the same cell gets the same
    trajectories on every machine; the counts and digest come from the sweep's validation pass (0 and "" when
    the record was made without it, e.g. by `python -m trainers.runtime.train`)."""

    name: str  # the task's dataset_name: "hopper-medium-v2", "minari:mujoco/hopper/medium-v0", a file's stem
    source: str  # absolute path of the file, or of the Minari dataset directory
    digest: str = ""  # trainers.data.checksums.sha256_of_tree: the file's SHA-256 (a directory: over its files)
    size_bytes: int = 0
    episodes: int = 0  # in the whole file
    transitions: int = 0
    subset_episodes: int = 0  # what the trial's data ratio keeps
    notes: tuple[str, ...] = ()  # what was done to the file's episodes and why (e.g. split at the horizon)


@dataclass(frozen=True)
class TrialRecord:
    trial_id: str  # "<algorithm>.<task>.r<ratio>.s<seed>", plus ".h<hash>" for a search sample
    algorithm: str
    task: str
    domain: str
    ratio: float
    seed: int
    config: dict[str, Any]  # the algorithm's Config, resolved, as JSON values
    dataset: DatasetIdentity
    sweep_id: str = ""  # empty outside a sweep
    sampled: dict[str, Any] = field(default_factory=dict)  # hyperparameters a search sampled (also in config)
    eval_seed: int = 10_000  # evaluation episodes are seeded from (eval_seed, seed, step)
    log_every: int = 100  # training metrics are reported every this many steps
    # What the trial computes, code aside (orchestrator/fingerprint.py), set by the sweep after its validation
    # pass; a finished run with the same fingerprint and code stands for the trial (orchestrator/reuse.py).
    fingerprint: str = ""

    @property
    def cell(self) -> tuple[str, str, float]:
        return self.algorithm, self.task, self.ratio

    @property
    def cell_id(self) -> str:
        """"<algorithm>.<task>.r<ratio>": the cell's name (a search's Tuner, its best values on the parent run)."""
        return cell_id_of(*self.cell)

    @property
    def num_steps(self) -> int:
        return int(self.config["num_steps"])

    def algorithm_config(self, task: Task | None = None) -> TrainingConfig:
        """The algorithm's Config object, exactly as resolved when the record was made (the record's task, looked
        up unless given, picks the declaration)."""
        return config_from_dict(self.algorithm, self.config, task or get_task(self.task))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrialRecord:
        dataset = dict(values["dataset"])
        dataset["notes"] = tuple(dataset.get("notes", ()))
        return cls(**{**values, "dataset": DatasetIdentity(**dataset)})

    @classmethod
    def from_json(cls, text: str) -> TrialRecord:
        return cls.from_dict(json.loads(text))

    def with_sample(self, sampled: dict[str, Any]) -> TrialRecord:
        """A search sample of this trial: the sampled hyperparameters over its config, named by their hash."""
        config = config_from_dict(self.algorithm, self.config | sampled, get_task(self.task))  # checks the values
        digest = hashlib.sha256(json.dumps(sampled, sort_keys=True, default=str).encode()).hexdigest()[:8]
        # A sample computes something else than the base trial: its fingerprint is not the base's (and search
        # samples are never reused).
        return dataclasses.replace(self, trial_id=f"{self.trial_id}.h{digest}", config=_json_values(config),
                                   sampled=dict(sampled), fingerprint="")


def cell_id_of(algorithm: str, task: str, ratio: float) -> str:
    return f"{algorithm}.{task}.r{ratio:g}"


def trial_id_of(algorithm: str, task: str, ratio: float, seed: int) -> str:
    return f"{cell_id_of(algorithm, task, ratio)}.s{seed}"


def _json_values(config: TrainingConfig) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def localize_inputs(algorithm: str, config: TrainingConfig) -> TrainingConfig:
    """The config with every declared external input that names an existing local path made absolute."""
    changes = {}
    for declared in external_inputs(algorithm, config):
        path = Path(declared.value).expanduser()
        if path.exists():
            changes[declared.field] = str(path.resolve())
    return dataclasses.replace(config, **changes) if changes else config


def make_record(algorithm: str, task: str, ratio: float = 1.0, seed: int = 0,
                overrides: dict[str, Any] | None = None, dataset_path: str | None = None, *,
                sweep_id: str = "", eval_seed: int = 10_000, log_every: int = 100) -> TrialRecord:
    """Resolve one trial: its task, its algorithm config (ConfigError naming each bad field) and its dataset
    file (the d4rl cache convention unless a path is given; a missing file is reported by the validation pass,
    which needs every trial's record first)."""
    found = get_task(task)
    config = localize_inputs(algorithm, make_config(algorithm, overrides, found))
    try:
        source = resolve_dataset_path(found, dataset_path)
    except DatasetError:
        source = expected_dataset_path(found, dataset_path)
    name, task = found.dataset_name, found.name  # a task given by its dataset id is recorded by its name
    return TrialRecord(trial_id=trial_id_of(algorithm, task, ratio, seed), algorithm=algorithm, task=task,
                       domain=found.domain, ratio=float(ratio), seed=int(seed), config=_json_values(config),
                       dataset=DatasetIdentity(name=name, source=str(Path(source).resolve())), sweep_id=sweep_id,
                       eval_seed=eval_seed, log_every=log_every)


