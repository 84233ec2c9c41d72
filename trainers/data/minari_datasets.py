"""Minari datasets read into D4RL-layout arrays, through the `minari` package.

A task names a Minari dataset by ``minari:<id>`` (``minari:mujoco/hopper/medium-v0``, trainers/runtime/tasks.py). The
dataset lives where Minari keeps it: ``$MINARI_DATASETS_PATH/<id>/`` (default ``~/.minari/datasets/<id>/``), a
directory holding ``data/`` (``metadata.json`` and the episodes, HDF5 or Arrow). ``python -m trainers.tools.fetch
minari:<id>`` downloads it with Minari's own download; `read_minari_dataset` reads it with Minari's own reader
(`minari.MinariDataset`) into the arrays every dataset is built from (trainers/data/trajectories.py), so subsets,
samplers, evaluation, the trial record and the trial core see a Minari dataset exactly like a D4RL file:

- Minari stores one more observation than actions per episode (the last is the state after the last action):
  ``observations[:-1]`` are the observations, ``observations[1:]`` the ``next_observations``;
- ``terminations`` become ``terminals``; ``truncations`` become ``timeouts`` (a step with both is one
  terminal end); an episode whose last step carries neither flag — Minari cuts the episode that was running when
  a dataset was created — gets a timeout there, with a note, so episodes never run into each other.

The trial record names such a dataset by its directory (``DatasetIdentity.source``, the absolute path of
``<root>/<id>``) and its contents (``digest``: SHA-256 over every file's relative path and bytes,
`trainers.data.checksums.sha256_of_tree`).

Observations must fit the task's evaluation environment; otherwise the error names both shapes. Two layouts
are accepted: a Box of the environment's own shape (the mujoco datasets, collected on the same Gymnasium v5
environments), and FrankaKitchen-v1's dict observation for the kitchen tasks, whose flat
``observation`` (robot qpos 9, robot qvel 9, object qpos 21, object qvel 20) maps onto D4RL's 60-d layout that
trainers/envs/kitchen.py evaluates on: ``[robot qpos, object qpos, goal]``, the goal being the constant vector of
the task set, taken from the evaluation environment after checking that the dataset's ``tasks_to_complete`` are
the task's. What this mapping cannot undo, for D4RL/kitchen/*-v2 (re-recorded by Farama from the original
demonstrations in FrankaKitchen-v1; minari-dataset-generation-scripts, scripts/D4RL/kitchen):
1. observation noise: recorded with FrankaKitchen-v1's defaults (robot 0.01, objects 0.0005 × its amplitudes),
   while our kitchen evaluation adds D4RL's (0.1 × D4RL's amplitudes, trainers/envs/kitchen.py);
2. episode length: the partial (and mixed) datasets were recorded with max_episode_steps 450, D4RL's horizon is
   280; the kitchen tasks keep episodes whole up to their data horizon, LaMo's 1000 (trainers/runtime/tasks.py), so
   these stay whole, and the dataset's notes count those longer than 280 (`enforce_horizon`);
3. rewards count the tasks satisfied at each step (remove_task_when_completed=False), as D4RL's relabelled
   dataset rewards do — not the evaluation's "tasks completed", the same mismatch D4RL's own files have.
kitchen-mixed is not registered: its task set (microwave, kettle, bottom burner, light switch) is not one our
kitchen environment is built for, as for D4RL's kitchen-mixed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from trainers.data.catalog import minari_id
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

KITCHEN_OBSERVATION = 59  # FrankaKitchen-v1's flat "observation": robot qpos 9, qvel 9, object qpos 21, qvel 20


def minari_root() -> Path:
    """Minari's local storage: $MINARI_DATASETS_PATH, else ~/.minari/datasets (minari/storage/datasets_root_dir)."""
    configured = os.environ.get("MINARI_DATASETS_PATH")
    return Path(configured).expanduser() if configured else Path.home() / ".minari" / "datasets"


def minari_dataset_dir(dataset_id: str) -> Path:
    """Where Minari keeps the dataset `dataset_id` ("minari:mujoco/hopper/medium-v0" or the bare Minari id)."""
    return minari_root() / minari_id(dataset_id)


def is_minari_dataset(path: str | os.PathLike) -> bool:
    return (Path(path) / "data" / "metadata.json").is_file()


@dataclass(frozen=True)
class MinariData:
    """A task's data as a Minari dataset, in Minari's storage. A DatasetReader (trainers/data/loading.py)."""

    dataset_id: str  # "minari:mujoco/hopper/medium-v0"

    @property
    def name(self) -> str:
        return self.dataset_id

    def first_location(self, path: str | os.PathLike | None = None) -> Path:
        return Path(path).expanduser() if path is not None else minari_dataset_dir(self.dataset_id)

    def resolve(self, task: Task, path: str | os.PathLike | None = None) -> Path:
        """The dataset directory (or, given explicitly, a Minari directory or a D4RL-layout file)."""
        if path is not None:
            given = Path(path).expanduser()
            if given.is_file() or is_minari_dataset(given):
                return given
            raise DatasetError(f"dataset for task {task.name!r} not found at {given}: neither a Minari dataset "
                               f"directory nor a file")
        found = minari_dataset_dir(self.dataset_id)
        if is_minari_dataset(found):
            return found
        raise DatasetError(f"Minari dataset {minari_id(self.dataset_id)} for task {task.name!r} not found at {found} "
                           f"($MINARI_DATASETS_PATH, else ~/.minari/datasets); fetch it with `python -m "
                           f"trainers.tools.fetch {self.dataset_id}` (Minari's own download), or copy the dataset "
                           f"directory there, or pass a path explicitly")

    def read(self, path: Path, task: Task, long_episodes: LongEpisodes = "split") -> TrajectoryDataset:
        return read_minari_directory(path, task, long_episodes)


def read_minari_directory(path: str | os.PathLike, task: Task, long_episodes: LongEpisodes = "split"
                          ) -> TrajectoryDataset:
    """A task's data from a Minari dataset directory, checked like a D4RL file and held to its data horizon."""
    path = Path(path)
    arrays, metadata, notes = read_minari_dataset(path, task)
    validate_arrays(arrays, str(path), task.observation_dim, task.action_dim)
    for key in ("observations", "actions", "rewards", "next_observations"):
        check_finite_rows(key, arrays[key], str(path))
    dataset = TrajectoryDataset(
        name=task.dataset_name, observations=arrays["observations"], actions=arrays["actions"],
        rewards=arrays["rewards"], terminals=arrays["terminals"], timeouts=arrays["timeouts"],
        episodes=split_episodes(arrays["terminals"], arrays["timeouts"]),
        next_observations=arrays["next_observations"], metadata=metadata, source=path, notes=notes)
    return enforce_horizon(dataset, task.data_horizon, long_episodes, evaluation_horizon=task.horizon)


def read_minari_dataset(path: str | os.PathLike, task: Task) -> tuple[dict[str, np.ndarray], dict[str, Any],
                                                                         tuple[str, ...]]:
    """The dataset in `path` (a Minari dataset directory) as D4RL-layout arrays, its metadata and notes on what
    was done to its episode flags; DatasetError when it cannot be read or does not fit `task`."""
    from minari import MinariDataset

    path = Path(path)
    if not is_minari_dataset(path):
        raise DatasetError(f"{path}: not a Minari dataset directory (no data/metadata.json)")
    try:
        dataset = MinariDataset(path / "data")
    except Exception as error:  # Minari raises ValueError, KeyError, OSError for broken storage
        raise DatasetError(f"{path}: Minari cannot read it: {error}") from None
    name = dataset.spec.dataset_id
    env = task.make_env()
    try:
        flatten = _observation_mapping(dataset, env, task, f"Minari dataset {name} ({path})")
        _check_actions(dataset.action_space, env.action_space, task, f"Minari dataset {name} ({path})")
    finally:
        env.close()

    parts: dict[str, list[np.ndarray]] = {key: [] for key in ("observations", "next_observations", "actions",
                                                              "rewards", "terminals", "timeouts")}
    unflagged = 0
    for episode in dataset.iterate_episodes():
        observations = flatten(episode.observations)
        steps = len(episode.rewards)
        if len(observations) != steps + 1:
            raise DatasetError(f"{path}: episode {episode.id} has {len(observations)} observations for {steps} "
                                  f"actions; Minari stores one more observation than actions")
        terminals = np.asarray(episode.terminations, bool)
        timeouts = np.asarray(episode.truncations, bool) & ~terminals
        if steps and not (terminals[-1] or timeouts[-1]):
            timeouts[-1] = True
            unflagged += 1
        parts["observations"].append(observations[:-1])
        parts["next_observations"].append(observations[1:])
        parts["actions"].append(np.asarray(episode.actions, np.float32).reshape(steps, -1))
        parts["rewards"].append(np.asarray(episode.rewards, np.float32))
        parts["terminals"].append(terminals)
        parts["timeouts"].append(timeouts)
    if not parts["rewards"]:
        raise DatasetError(f"{path}: the Minari dataset {name} holds no episodes")
    arrays = {key: np.concatenate(values) for key, values in parts.items()}
    notes = () if not unflagged else (
        f"{unflagged} episode(s) ended with neither a termination nor a truncation flag (Minari cuts the episode "
        f"running when a dataset is created); their last step is marked as a timeout",)
    metadata = {"minari_id": name, "minari_version": dataset.storage.metadata.get("minari_version", ""),
                "data_format": dataset.storage.metadata.get("data_format", ""),
                "env_id": dataset.env_spec.id if dataset.env_spec is not None else "",
                "algorithm_name": dataset.storage.metadata.get("algorithm_name") or "",
                "total_episodes": int(dataset.total_episodes), "total_steps": int(dataset.total_steps)}
    return arrays, metadata, notes


# ------------------------------------------------------------------------------------------------ spaces

def _shape(space: gym.Space) -> str:
    if isinstance(space, gym.spaces.Dict):
        return "{" + ", ".join(f"{key}: {_shape(sub)}" for key, sub in space.spaces.items()) + "}"
    return str(tuple(space.shape)) if space.shape is not None else type(space).__name__


def _observation_mapping(dataset: Any, env: gym.Env, task: Task, where: str):
    """The function that turns one episode's stored observations into (T + 1, obs_dim) float32."""
    stored, wanted = dataset.observation_space, env.observation_space
    if isinstance(stored, gym.spaces.Box) and stored.shape == wanted.shape:
        return lambda observations: np.asarray(observations, np.float32).reshape(len(observations), -1)
    kitchen_like = (isinstance(stored, gym.spaces.Dict) and "observation" in stored.spaces
                    and stored.spaces["observation"].shape == (KITCHEN_OBSERVATION,))
    if task.domain == "kitchen" and kitchen_like and wanted.shape == (60,):
        dataset_tasks = (dataset.env_spec.kwargs.get("tasks_to_complete") if dataset.env_spec is not None else None)
        env_tasks = list(env.get_wrapper_attr("tasks"))
        if dataset_tasks is not None and sorted(dataset_tasks) != sorted(env_tasks):
            raise DatasetError(f"{where}: its tasks_to_complete {dataset_tasks} differ from task {task.name!r}'s "
                                  f"{env_tasks}, so its goal part of the observation would be wrong")
        goal = np.asarray(env.get_wrapper_attr("goal"), np.float32)

        def kitchen(observations: dict) -> np.ndarray:
            inner = np.asarray(observations["observation"], np.float32)
            return np.concatenate([inner[:, :9], inner[:, 18:39], np.broadcast_to(goal, (len(inner), goal.size))],
                                  axis=1)
        return kitchen
    raise DatasetError(f"{where}: its observations have shape {_shape(stored)}, but task {task.name!r} is "
                          f"evaluated on {task.env_id}, which observes shape {_shape(wanted)}")


def _check_actions(stored: gym.Space, wanted: gym.Space, task: Task, where: str) -> None:
    if not isinstance(stored, gym.spaces.Box) or stored.shape != wanted.shape:
        raise DatasetError(f"{where}: its actions have shape {_shape(stored)}, but task {task.name!r}'s "
                              f"environment {task.env_id} takes actions of shape {_shape(wanted)}")
