"""What a dataset reader is, and what it needs of the task it reads for.

A reader knows where a task's data is looked for and how to read it into the one in-memory `TrajectoryDataset`
(trainers/data/loading.py lists the readers and loads through them). The task is seen through `ReadingTask`, the
few things a reader needs of it — trainers/runtime/tasks.py's Task has them all — so the data layer never imports
the task registry above it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import gymnasium as gym

from trainers.data.trajectories import LongEpisodes, TrajectoryDataset


class DatasetReader(Protocol):
    """Where a task's data is and how it is read."""

    name: str  # the data's identity in records and logs; it seeds the data-ratio subsets
    dataset_id: str  # its id in the registry it is fetched from (trainers/data/catalog.py), "" for none

    def first_location(self, path: str | os.PathLike | None = None) -> Path:
        """Where the data is looked for first (the explicit path when given), found or not."""

    def resolve(self, task: ReadingTask, path: str | os.PathLike | None = None) -> Path:
        """The data (the explicit path when given); a DatasetError listing where it looked and how to get it."""

    def read(self, path: Path, task: ReadingTask, long_episodes: LongEpisodes = "split") -> TrajectoryDataset:
        """The data at `path`, validated against the task's spaces (and, where its flags cannot be trusted,
        held to the task's data horizon)."""


class ReadingTask(Protocol):
    """What a reader needs to know of the task it reads for."""

    name: str
    domain: str
    env_id: str
    horizon: int  # how long the environment runs an evaluation episode
    data_horizon: int  # the longest episode its data keeps whole (≥ horizon); longer ones are split at it
    generated_by: str | None  # data this project generates: how to make it, rather than fetch it
    make_env: Callable[[], gym.Env]  # kitchen's Minari data maps onto the environment's own goal
    dataset_reader: DatasetReader

    @property
    def dataset_name(self) -> str: ...

    @property
    def observation_dim(self) -> int: ...

    @property
    def action_dim(self) -> int: ...
