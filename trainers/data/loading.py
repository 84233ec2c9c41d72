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
unchanged: trials that follow each other in one process (Ray reuses a sweep's trial actors) share them. Trials
(`load_task_dataset(..., shared=True)`, trainers/runtime/core.py) go further: the converted dataset is written once
per node into the node cache and memory-mapped by every process on it (trainers/data/node_cache.py), so the trials
of a node share one copy in the page cache instead of holding one each.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

from trainers.data.d4rl import read_d4rl_file
from trainers.data.minari_datasets import is_minari_dataset, read_minari_directory
from trainers.data.node_cache import default_cache_dir, shared_dataset, source_stamp
from trainers.data.reader import ReadingTask as Task
from trainers.data.trajectories import LongEpisodes, TrajectoryDataset


def resolve_dataset_path(task: Task, path: str | os.PathLike | None = None) -> Path:
    return task.dataset_reader.resolve(task, path)


def expected_dataset_path(task: Task, path: str | os.PathLike | None = None) -> Path:
    return task.dataset_reader.first_location(path)


def load_task_dataset(task: Task, path: str | os.PathLike | None = None, long_episodes: LongEpisodes = "split",
                      shared: bool = False, digest: str = "") -> TrajectoryDataset:
    """The dataset of a task (where its reader looks, unless a path is given), validated against the task.

    `shared`: through this node's cache (trainers/data/node_cache.py), converted once per node and memory-mapped,
    unless $LAMO_DATASET_CACHE is "off"; `digest`, the SHA-256 the data must have (the trial record's)."""
    resolved = resolve_dataset_path(task, path).resolve()
    cache_dir = default_cache_dir() if shared else None
    key = (str(resolved), tuple(source_stamp(resolved)), task.name, long_episodes, cache_dir, digest)
    if key not in _LOADED:
        if cache_dir is None:
            _LOADED[key] = read_dataset(resolved, task, long_episodes)
        else:
            _LOADED[key] = shared_dataset(resolved, conversion(task, long_episodes),
                                          lambda: read_dataset(resolved, task, long_episodes), digest,
                                          cache_dir).dataset
        _keep_recent()
    _LOADED.move_to_end(key)
    return _LOADED[key]


def conversion(task: Task, long_episodes: LongEpisodes) -> dict:
    """Everything besides the data's bytes that decides what `read_dataset` makes of it (the node cache's key)."""
    return {"dataset": task.dataset_name, "task": task.name, "reader": repr(task.dataset_reader),
            "observation_dim": task.observation_dim, "action_dim": task.action_dim, "horizon": task.horizon,
            "data_horizon": task.data_horizon, "long_episodes": long_episodes}


def read_dataset(path: Path, task: Task, long_episodes: LongEpisodes = "split") -> TrajectoryDataset:
    """By what the path is: a Minari dataset directory, a file (D4RL's hdf5 layout), or the task's own layout."""
    if is_minari_dataset(path):
        return read_minari_directory(path, task, long_episodes)
    if path.is_file():
        return read_d4rl_file(path, task, long_episodes)
    return task.dataset_reader.read(path, task, long_episodes)


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
