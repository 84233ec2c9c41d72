"""Offline datasets in the D4RL hdf5 layout, read and written with h5py (never through the `d4rl` package).

Layout (N transitions): observations (N, obs_dim), actions (N, act_dim), rewards (N,) or (N, 1),
terminals (N,), timeouts (N,), optional next_observations (N, obs_dim) and infos/* (N, ...).
Episodes end where terminals OR timeouts is set (both at one step is one end); steps after the last end form
a trailing episode that is kept and marked truncated.

Episode flags that cannot be trusted — no `timeouts` key, or an episode longer than the task's horizon (an
environment never runs one) — follow one documented rule, `enforce_horizon`: by default such episodes are
split every `horizon` steps (the split points become timeouts) and the dataset says so in its `notes`, which
the sweep prints before it starts and logs with every trial; `long_episodes="refuse"` refuses the file instead.

Data ratios are trajectory-level samples without replacement whose random generator is seeded from
(dataset identity, ratio, seed), so one cell of a sweep trains on the same trajectories on every machine.
The official LaMo code drew its subsets from the unseeded global RNG and split episodes across file
boundaries; neither is reproduced here.

Sources (`load_task_dataset` dispatches on what the task's data is): a D4RL-layout hdf5 file, found by the d4rl
cache convention ($D4RL_DATASET_DIR, else ~/.d4rl/datasets, under D4RL's own file name; fetched by name with
`python -m trainers.fetch`), or a Minari dataset directory ($MINARI_DATASETS_PATH/<id>, read by
trainers/minari_data.py into the same arrays). A task's data can always be given as an explicit path instead:
an hdf5 file or a Minari dataset directory. Either way the dataset is named by the task's `dataset_name` (D4RL's
or Minari's id, or a generated file's stem), which seeds its subsets, and described in a trial record by its
path and `source_digest` (a file's SHA-256, or for a directory the SHA-256 over its files' paths and bytes).

Atari's DQN Replay layout (gz .npy checkpoints of uint8 frames) is read by trainers/atari_data.py into the same
TrajectoryDataset (with `frame_stack` set); a task names such a reader in its `dataset_reader`.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import h5py
import numpy as np

from trainers.checksums import sha256_of_tree
from trainers.dataset_catalog import D4RL_FILES, minari_id
from trainers.minari_data import (
    MinariDataError,
    is_minari_dataset,
    minari_dataset_dir,
    read_minari_dataset,
)
from trainers.trajectories import (  # noqa: F401 - re-exported: the dataset API's names
    FLAG_KEYS,
    REQUIRED_KEYS,
    DatasetError,
    EpisodeIndex,
    TrajectoryDataset,
    split_episodes,
)

if TYPE_CHECKING:
    from trainers.tasks import Task


# --- locating files ---------------------------------------------------------------------------------------

def candidate_paths(dataset_file: str, path: str | os.PathLike | None = None) -> list[Path]:
    """Where a dataset is looked for, in order: an explicit path, $D4RL_DATASET_DIR, ~/.d4rl/datasets."""
    if path is not None:
        return [Path(path).expanduser()]
    candidates = []
    if os.environ.get("D4RL_DATASET_DIR"):
        candidates.append(Path(os.environ["D4RL_DATASET_DIR"]).expanduser() / dataset_file)
    candidates.append(Path.home() / ".d4rl" / "datasets" / dataset_file)
    return candidates


def expected_dataset_path(task: Task, path: str | os.PathLike | None = None) -> Path:
    """Where a task's data is looked for first: the explicit path, the Minari dataset directory, or the first
    d4rl cache location."""
    if path is None and task.reads_minari:
        return minari_dataset_dir(task.dataset_id)
    return candidate_paths(task.dataset_file, path)[0]


def resolve_dataset_path(task: Task, path: str | os.PathLike | None = None) -> Path:
    """The task's data: an hdf5 file, or a Minari dataset directory (or its reader's layout); a DatasetError
    saying how to get it."""
    if task.dataset_reader is not None:  # another layout (Atari: DQN Replay, trainers/atari_data.py)
        return task.dataset_reader.resolve(path)
    if path is None and task.reads_minari:
        found = minari_dataset_dir(task.dataset_id)
        if is_minari_dataset(found):
            return found
        raise DatasetError(f"Minari dataset {minari_id(task.dataset_id)} for task {task.name!r} not found at {found} "
                           f"($MINARI_DATASETS_PATH, else ~/.minari/datasets); fetch it with `python -m "
                           f"trainers.fetch {task.dataset_id}` (Minari's own download), or copy the dataset directory "
                           f"there, or pass a path explicitly")
    tried = candidate_paths(task.dataset_file, path)
    for candidate in tried:
        if candidate.is_file() or (path is not None and is_minari_dataset(candidate)):
            return candidate
    if task.generated_by is not None:
        how = (f"generate it with `python -m trainers.make_dataset --task {task.name}` "
               f"(writes {tried[0].parent / task.dataset_file} unless --out is given)")
    elif task.dataset_id in D4RL_FILES:
        how = (f"fetch it with `python -m trainers.fetch {task.name}` (downloads {D4RL_FILES[task.dataset_id].url} "
               f"into $D4RL_DATASET_DIR or ~/.d4rl/datasets, the d4rl package's own cache), or put D4RL's "
               f"{task.dataset_file} there by hand, or pass its path explicitly")
    else:
        how = (f"put {task.dataset_file} in $D4RL_DATASET_DIR or ~/.d4rl/datasets (the d4rl package's own cache "
               f"location), or pass its path explicitly")
    raise DatasetError(f"dataset for task {task.name!r} not found; tried: {', '.join(map(str, tried))}; {how}")


# --- validation -------------------------------------------------------------------------------------------

def _flat_length_shape(key: str, shape: tuple[int, ...], n: int, trailing: tuple[int, ...] | None) -> list[str]:
    """Errors for an array that should be (n, *trailing); (n, 1) is accepted where trailing is ()."""
    expected = (n, *trailing) if trailing is not None else (n, "...")
    if len(shape) == 0 or shape[0] != n:
        return [f"{key}: expected shape {expected} (same length as observations), got {shape}"]
    if trailing is None:
        return []
    if trailing == () and shape[1:] in ((), (1,)):
        return []
    if shape[1:] != trailing:
        return [f"{key}: expected shape {expected}, got {shape}"]
    return []


def validate_arrays(arrays: Mapping[str, Any], where: str, observation_dim: int | None = None,
                    action_dim: int | None = None) -> None:
    """Check keys, shapes and finiteness of a D4RL-layout mapping (arrays or h5py datasets).

    Every problem is collected and reported at once, naming the key and the expected shape.
    """
    errors = [f"{key}: missing (required keys: {', '.join(REQUIRED_KEYS)})" for key in REQUIRED_KEYS
              if key not in arrays]
    if errors:
        raise DatasetError(f"{where}: " + "; ".join(errors))
    obs_shape = tuple(arrays["observations"].shape)
    n = obs_shape[0] if obs_shape else 0
    if len(obs_shape) != 2 or n == 0:
        raise DatasetError(f"{where}: observations: expected a non-empty (N, obs_dim) array, got shape {obs_shape}")
    if observation_dim is not None and obs_shape[1] != observation_dim:
        errors.append(f"observations: expected shape (N, {observation_dim}) for this task, got {obs_shape}")
    act_shape = tuple(arrays["actions"].shape)
    if len(act_shape) != 2:
        errors.append(f"actions: expected shape ({n}, act_dim), got {act_shape}")
    else:
        errors += _flat_length_shape("actions", act_shape, n, (action_dim if action_dim is not None else act_shape[1],))
    for key in ("rewards", *FLAG_KEYS):
        if key in arrays:
            errors += _flat_length_shape(key, tuple(arrays[key].shape), n, ())
    if "next_observations" in arrays:
        errors += _flat_length_shape("next_observations", tuple(arrays["next_observations"].shape), n,
                                     (obs_shape[1],))
    infos = arrays.get("infos")
    if infos is not None:
        for key in infos:
            errors += _flat_length_shape(f"infos/{key}", tuple(infos[key].shape), n, None)
    if errors:
        raise DatasetError(f"{where}: " + "; ".join(errors))


def _check_finite(key: str, values: np.ndarray, where: str) -> None:
    finite = np.isfinite(values)
    if not finite.all():
        bad = np.flatnonzero(~finite.reshape(len(values), -1).all(axis=1))
        raise DatasetError(f"{where}: {key}: {len(bad)} rows contain NaN or inf (first at index {bad[0]})")


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
    observation_dim = action_dim = None
    if task is not None:
        observation_dim, action_dim = task_dims(task)
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
            _check_finite(key, values, where)
    return TrajectoryDataset(
        name=name or path.stem, observations=observations, actions=actions, rewards=rewards,
        terminals=terminals, timeouts=timeouts, episodes=split_episodes(terminals, timeouts),
        next_observations=next_observations, metadata=metadata, source=path, notes=notes,
    )


LongEpisodes = Literal["split", "refuse"]


def enforce_horizon(dataset: TrajectoryDataset, horizon: int, long_episodes: LongEpisodes = "split"
                    ) -> TrajectoryDataset:
    """Episodes longer than `horizon` (flags that cannot be trusted) split every `horizon` steps, with a note
    saying how many and why; or a DatasetError when `long_episodes` is "refuse"."""
    lengths = dataset.episodes.lengths
    long = lengths > horizon
    if not long.any():
        return dataset
    where = dataset.source or dataset.name
    found = f"{int(long.sum())} episode(s) longer than the task's horizon {horizon} (the longest has " \
            f"{int(lengths.max()):,} steps)"
    if long_episodes == "refuse":
        raise DatasetError(f"{where}: {found}: its terminals/timeouts flags do not mark every episode end; fix the "
                           f"file, or set long_episodes: split to split such episodes at the horizon")
    within = dataset.timesteps()
    split_after = (within % horizon == horizon - 1) & ~np.isin(np.arange(len(dataset)), dataset.episodes.ends - 1)
    timeouts = dataset.timeouts | split_after
    return replace(dataset, timeouts=timeouts, episodes=split_episodes(dataset.terminals, timeouts),
                   episode_ids=None, notes=(*dataset.notes, f"{found} were split every {horizon} steps"))


def load_minari_dataset(path: str | os.PathLike, task: Task) -> TrajectoryDataset:
    """Read a Minari dataset directory (trainers/minari_data.py) and check it like a D4RL file."""
    path = Path(path)
    try:
        arrays, metadata, notes = read_minari_dataset(path, task)
    except MinariDataError as error:
        raise DatasetError(str(error)) from None
    observation_dim, action_dim = task_dims(task)
    validate_arrays(arrays, str(path), observation_dim, action_dim)
    for key in ("observations", "actions", "rewards", "next_observations"):
        _check_finite(key, arrays[key], str(path))
    return TrajectoryDataset(
        name=task.dataset_name, observations=arrays["observations"], actions=arrays["actions"],
        rewards=arrays["rewards"], terminals=arrays["terminals"], timeouts=arrays["timeouts"],
        episodes=split_episodes(arrays["terminals"], arrays["timeouts"]),
        next_observations=arrays["next_observations"], metadata=metadata, source=path, notes=notes)


def load_task_dataset(task: Task, path: str | os.PathLike | None = None,
                      long_episodes: LongEpisodes = "split") -> TrajectoryDataset:
    """The dataset of a task (the d4rl cache convention, or Minari's storage for a Minari task, unless a path is
    given: an hdf5 file or a Minari dataset directory), validated against the task's spaces and horizon. Read
    once per process while unchanged: trials that follow each other in one process (Ray reuses a sweep's trial
    actors) share it."""
    if task.dataset_reader is not None:  # another layout (Atari: DQN Replay, trainers/atari_data.py)
        return task.dataset_reader.load(task, path)
    resolved = resolve_dataset_path(task, path).resolve()
    return _load_cached(str(resolved), _stamp(resolved), task.name, long_episodes)


def _stamp(path: Path) -> tuple[int, int]:
    """(bytes, newest mtime) of a file, or of every file under a directory: changes whenever the data does."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    stats = [p.stat() for p in files]
    return sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)


@functools.lru_cache(maxsize=2)
def _load_cached(path: str, stamp: tuple[int, int], task_name: str, long_episodes: LongEpisodes
                 ) -> TrajectoryDataset:
    from trainers.tasks import get_task

    task = get_task(task_name)
    if Path(path).is_dir():
        dataset = load_minari_dataset(path, task)
    else:
        dataset = load_d4rl_dataset(path, task=task, name=task.dataset_name)
    return enforce_horizon(dataset, task.horizon, long_episodes)


def forget_loaded_datasets() -> None:
    """Drop this process's cached datasets (a sweep driver, once it has validated them)."""
    _load_cached.cache_clear()


def source_digest(path: str | os.PathLike) -> tuple[str, int]:
    """(SHA-256, size in bytes) of a dataset's source: a file's bytes, or a directory's files (Atari's DQN
    Replay checkpoints, a Minari dataset) with their relative paths, in path order."""
    return sha256_of_tree(path)


def task_dims(task: Task) -> tuple[int, int]:
    """Flat observation and action sizes of a task (its declared spaces)."""
    return task.observation_dim, int(np.prod(task.action_space.shape))


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
    observation_dim = action_dim = None
    if task is not None:
        observation_dim, action_dim = task_dims(task)
    validate_arrays(arrays, str(path), observation_dim, action_dim)
    for key in ("observations", "actions", "rewards", "next_observations"):
        if key in arrays:
            _check_finite(key, np.asarray(arrays[key]), str(path))
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


# --- data ratios ------------------------------------------------------------------------------------------

def subset_seed(dataset_name: str, num_episodes: int, ratio: float, seed: int) -> int:
    """A platform-independent seed for one (dataset, ratio, seed) cell (Python's hash() is salted per process)."""
    key = f"{dataset_name}|{num_episodes}|{ratio!r}|{seed}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little")


def subsample_trajectories(dataset: TrajectoryDataset, ratio: float, seed: int) -> TrajectoryDataset:
    """Keep floor(ratio · E) whole trajectories drawn without replacement (uniformly, or in proportion to their
    length when the dataset's `ratio_sampling` says so); the kept ids are `episode_ids`."""
    if not 0.0 < ratio <= 1.0:
        raise DatasetError(f"data ratio must be in (0, 1], got {ratio}")
    total = dataset.num_episodes
    if ratio == 1.0:
        return dataset
    count = math.floor(ratio * total + 1e-9)
    if count == 0:
        raise DatasetError(f"data ratio {ratio} of {dataset.name} selects no trajectory: the dataset has {total} "
                           f"trajectories, so the smallest usable ratio is {1 / total:.6g}")
    rng = np.random.default_rng(subset_seed(dataset.name, total, ratio, seed))
    # Sorted so the subset keeps the file's order; which ids are chosen depends only on the seed.
    if dataset.ratio_sampling == "length":
        lengths = dataset.episodes.lengths
        positions = np.sort(rng.choice(total, size=count, replace=False, p=lengths / lengths.sum()))
    else:
        positions = np.sort(rng.choice(total, size=count, replace=False))
    return dataset.select_episodes(positions)


def top_fraction_by_return(dataset: TrajectoryDataset, fraction: float) -> TrajectoryDataset:
    """The highest-return trajectories (at least one), e.g. BC-10 %'s training set."""
    count = max(1, math.floor(fraction * dataset.num_episodes + 1e-9))
    order = np.argsort(-dataset.episode_returns(), kind="stable")[:count]
    return dataset.select_episodes(np.sort(order))
