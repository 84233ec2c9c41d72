"""A task's dataset, found and read: one reader protocol, whatever the format.

Every task names a `DatasetReader` (trainers/data/reader.py; trainers/runtime/tasks.py, `Task.dataset_reader`),
which knows where its data is looked for and how to read it into the one in-memory `TrajectoryDataset`
(trainers/data/trajectories.py):

    D4RLFile     trainers/data/d4rl.py             an hdf5 file in D4RL's layout, in the d4rl cache directory
    MinariData   trainers/data/minari_datasets.py  a Minari dataset, in Minari's storage, through `minari`
    DQNReplay    trainers/data/dqn_replay.py       DQN Replay checkpoints (Atari), in the d4rl cache directory

Adding a format is one reader implementing the protocol and the tasks that name it. A task's data can always be
given as an explicit path instead; what the path is decides how it is read (a Minari dataset directory as
Minari's, a file as D4RL's hdf5, anything else — a DQN Replay run directory — by the task's own reader). Either
way the dataset is named by the task's reader (`name`: D4RL's or Minari's id, a generated file's stem, a DQN
Replay run), which seeds its subsets, and a trial record describes it by its path and the SHA-256 of its bytes
(trainers/data/checksums.py).

A process keeps the datasets it read last (two; one of frames, which are gigabytes) while their files are
unchanged: trials that follow each other in one process (Ray reuses a sweep's trial actors) share them.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

from trainers.data.d4rl import read_d4rl_file
from trainers.data.minari_datasets import is_minari_dataset, read_minari_directory
from trainers.data.reader import ReadingTask as Task
from trainers.data.trajectories import LongEpisodes, TrajectoryDataset


def resolve_dataset_path(task: Task, path: str | os.PathLike | None = None) -> Path:
    return task.dataset_reader.resolve(task, path)


def expected_dataset_path(task: Task, path: str | os.PathLike | None = None) -> Path:
    return task.dataset_reader.first_location(path)


def load_task_dataset(task: Task, path: str | os.PathLike | None = None,
                      long_episodes: LongEpisodes = "split") -> TrajectoryDataset:
    """The dataset of a task (where its reader looks, unless a path is given), validated against the task."""
    resolved = resolve_dataset_path(task, path).resolve()
    key = (str(resolved), _stamp(resolved), task.name, long_episodes)
    if key not in _LOADED:
        _LOADED[key] = _read(resolved, task, long_episodes)
        _keep_recent()
    _LOADED.move_to_end(key)
    return _LOADED[key]


def _read(path: Path, task: Task, long_episodes: LongEpisodes) -> TrajectoryDataset:
    """By what the path is: a Minari dataset directory, a file (D4RL's hdf5 layout), or the task's own layout."""
    if is_minari_dataset(path):
        return read_minari_directory(path, task, long_episodes)
    if path.is_file():
        return read_d4rl_file(path, task, long_episodes)
    return task.dataset_reader.read(path, task, long_episodes)


def _stamp(path: Path) -> tuple[int, int]:
    """(bytes, newest mtime) of a file, or of every file under a directory: changes whenever the data does."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    stats = [p.stat() for p in files]
    return sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)


_LOADED: OrderedDict[tuple, TrajectoryDataset] = OrderedDict()  # least recently used first


def _keep_recent(datasets: int = 2, of_frames: int = 1) -> None:
    while len(_LOADED) > datasets:
        _LOADED.popitem(last=False)
    frames = [key for key, dataset in _LOADED.items() if dataset.frame_stack is not None]
    for key in frames[:-of_frames]:
        del _LOADED[key]


def forget_loaded_datasets() -> None:
    """Drop this process's datasets (a sweep driver, once it has validated them)."""
    _LOADED.clear()
