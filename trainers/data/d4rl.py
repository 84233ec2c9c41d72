"""D4RL's hdf5 layout, read and written with h5py (never through the `d4rl` package), and the reader of a task
whose data is such a file.

Layout (N transitions): observations (N, obs_dim), actions (N, act_dim), rewards (N,) or (N, 1),
terminals (N,), timeouts (N,), optional next_observations (N, obs_dim) and infos/* (N, ...) — checked by
trainers/data/trajectories.py (`validate_arrays`) before the arrays become a dataset.

Where a file is looked for: the d4rl cache convention — $D4RL_DATASET_DIR, else ~/.d4rl/datasets — under D4RL's
own file name (D4RL's files, fetched by name with `python -m trainers.tools.fetch`, or files generated here with
`python -m trainers.tools.make_dataset`), unless a path is given.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from trainers.data.catalog import D4RL_FILES
from trainers.data.minari_datasets import is_minari_dataset
from trainers.data.reader import ReadingTask as Task
from trainers.data.trajectories import (
    DatasetError,
    LongEpisodes,
    TrajectoryDataset,
    check_finite_rows,
    enforce_horizon,
    split_episodes,
    validate_arrays,
)

# --- where a file is --------------------------------------------------------------------------------------

def candidate_paths(dataset_file: str, path: str | os.PathLike | None = None) -> list[Path]:
    """Where a dataset is looked for, in order: an explicit path, $D4RL_DATASET_DIR, ~/.d4rl/datasets."""
    if path is not None:
        return [Path(path).expanduser()]
    candidates = []
    if os.environ.get("D4RL_DATASET_DIR"):
        candidates.append(Path(os.environ["D4RL_DATASET_DIR"]).expanduser() / dataset_file)
    candidates.append(Path.home() / ".d4rl" / "datasets" / dataset_file)
    return candidates


@dataclass(frozen=True)
class D4RLFile:
    """A task's data as one D4RL-layout file: D4RL's own (`dataset_id` a key of trainers/data/catalog.py) or one
    generated here (the task's `generated_by` says so). A DatasetReader (trainers/data/loading.py)."""

    file_name: str  # D4RL's file name, e.g. "hopper_medium-v2.hdf5", looked for in the d4rl cache directory
    dataset_id: str = ""  # D4RL's id, e.g. "hopper-medium-v2"; "" for a generated file

    @property
    def name(self) -> str:
        return self.dataset_id or Path(self.file_name).stem

    def first_location(self, path: str | os.PathLike | None = None) -> Path:
        return candidate_paths(self.file_name, path)[0]

    def resolve(self, task: Task, path: str | os.PathLike | None = None) -> Path:
        """The file (or, given explicitly, a Minari dataset directory); a DatasetError saying how to get it."""
        tried = candidate_paths(self.file_name, path)
        for candidate in tried:
            if candidate.is_file() or (path is not None and is_minari_dataset(candidate)):
                return candidate
        if task.generated_by is not None:
            how = (f"generate it with `python -m trainers.tools.make_dataset --task {task.name}` "
                   f"(writes {tried[0].parent / self.file_name} unless --out is given)")
        elif self.dataset_id in D4RL_FILES:
            how = (f"fetch it with `python -m trainers.tools.fetch {task.name}` (downloads "
                   f"{D4RL_FILES[self.dataset_id].url} into $D4RL_DATASET_DIR or ~/.d4rl/datasets, the d4rl "
                   f"package's own cache), or put D4RL's {self.file_name} there by hand, or pass its path explicitly")
        else:
            how = (f"put {self.file_name} in $D4RL_DATASET_DIR or ~/.d4rl/datasets (the d4rl package's own cache "
                   f"location), or pass its path explicitly")
        raise DatasetError(f"dataset for task {task.name!r} not found; tried: {', '.join(map(str, tried))}; {how}")

    def read(self, path: Path, task: Task, long_episodes: LongEpisodes = "split") -> TrajectoryDataset:
        return read_d4rl_file(path, task, long_episodes)


# --- reading ----------------------------------------------------------------------------------------------

def _read(group: h5py.Group, key: str, dtype: type) -> np.ndarray:
    dataset = group[key]
    # Conversion happens inside HDF5 while reading, so float64 files never exist twice in memory.
    return dataset.astype(dtype)[()] if dataset.dtype != dtype else dataset[()]


def _open_hdf5(path: Path) -> h5py.File:
    """The file opened for reading, or a DatasetError naming it and saying what it is instead (empty, truncated,
    not HDF5) — h5py's own OSError names neither."""
    try:
        return h5py.File(path, "r")
    except OSError as error:
        size = path.stat().st_size
        what = "an empty file" if size == 0 else \
            f"not a readable HDF5 file ({size:,} bytes; truncated or another format: {error})"
        raise DatasetError(f"{path}: {what}; expected D4RL's hdf5 layout") from None


def load_d4rl_dataset(path: str | os.PathLike, task: Task | None = None, name: str | None = None) -> TrajectoryDataset:
    """Read, validate and index a D4RL-layout hdf5 file; with a task, also check its spaces."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise DatasetError(f"{where}: no such file")
    observation_dim, action_dim = (task.observation_dim, task.action_dim) if task is not None else (None, None)
    with _open_hdf5(path) as f:
        validate_arrays(f, where, observation_dim, action_dim)
        n = f["observations"].shape[0]
        observations = _read(f, "observations", np.float32)
        actions = _read(f, "actions", np.float32)
        rewards = _read(f, "rewards", np.float32).reshape(n)
        terminals = f["terminals"][()].reshape(n).astype(bool)
        timeouts = f["timeouts"][()].reshape(n).astype(bool) if "timeouts" in f else np.zeros(n, bool)
        next_observations = _read(f, "next_observations", np.float32) if "next_observations" in f else None
        metadata = {key: _attr_value(value) for key, value in f.attrs.items()}
        notes = () if "timeouts" in f else ("the file has no `timeouts` key: episodes end only at terminals",)
    for key, values in (("observations", observations), ("actions", actions), ("rewards", rewards),
                        ("next_observations", next_observations)):
        if values is not None:
            check_finite_rows(key, values, where)
    return TrajectoryDataset(
        name=name or path.stem, observations=observations, actions=actions, rewards=rewards,
        terminals=terminals, timeouts=timeouts, episodes=split_episodes(terminals, timeouts),
        next_observations=next_observations, metadata=metadata, source=path, notes=notes,
    )


def read_d4rl_file(path: Path, task: Task, long_episodes: LongEpisodes = "split") -> TrajectoryDataset:
    """A task's data from a D4RL-layout file: checked against its spaces, named by its dataset, its episodes held
    to its data horizon."""
    return enforce_horizon(load_d4rl_dataset(path, task, name=task.dataset_name), task.data_horizon, long_episodes,
                           evaluation_horizon=task.horizon)


def _attr_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


# --- writing ----------------------------------------------------------------------------------------------

def write_d4rl_dataset(path: str | os.PathLike, arrays: Mapping[str, Any], metadata: Mapping[str, Any] | None = None,
                       task: Task | None = None) -> Path:
    """Validate, then write the D4RL layout atomically: a failed validation or write leaves no file behind."""
    path = Path(path)
    observation_dim, action_dim = (task.observation_dim, task.action_dim) if task is not None else (None, None)
    validate_arrays(arrays, str(path), observation_dim, action_dim)
    for key in ("observations", "actions", "rewards", "next_observations"):
        if key in arrays:
            check_finite_rows(key, np.asarray(arrays[key]), str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            for key, values in arrays.items():
                if key == "infos":
                    for info_key, info_values in values.items():
                        f.create_dataset(f"infos/{info_key}", data=np.asarray(info_values))
                else:
                    f.create_dataset(key, data=np.asarray(values))
            for key, value in (metadata or {}).items():
                f.attrs[key] = value
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
