"""The task registry: everything a trial needs to know about one (environment, dataset) pair.

A task name is ``<env>-<dataset flavour>``: ``hopper-medium`` reads D4RL's ``hopper-medium-v2.hdf5`` and is
evaluated on Gymnasium's Hopper-v5; ``hopper-medium-gen`` reads a file this project generated with
``python -m trainers.make_dataset``. Adding a task is one ``_register`` call below.

Reference scores are D4RL's published ones (d4rl/infos.py, REF_MIN_SCORE / REF_MAX_SCORE); target returns,
their scale and the context length K are LaMo's (its experiment.py and the paper's appendix).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import gymnasium as gym

from trainers.atari_data import DQNReplay
from trainers.envs.atari import GAMES, make_atari_env

if TYPE_CHECKING:
    from trainers.datasets import TrajectoryDataset

Domain = Literal["locomotion", "kitchen", "reacher2d", "atari"]


class DatasetReader(Protocol):
    """A dataset layout other than D4RL's hdf5 file (Atari's DQN Replay: trainers/atari_data.py)."""

    name: str  # dataset identity, seeds the data-ratio subsets

    def resolve(self, path: str | os.PathLike | None = None) -> Path:
        """Where the data is; DatasetError listing every place looked at when it is nowhere."""

    def load(self, task: Task, path: str | os.PathLike | None = None) -> TrajectoryDataset:
        """The validated dataset."""


@dataclass(frozen=True)
class Task:
    name: str
    domain: Domain
    make_env: Callable[[], gym.Env] = field(repr=False)
    env_id: str  # what the evaluation environment is, for logs and metadata
    dataset_file: str  # file name looked up in the d4rl cache directory
    ref_min_score: float  # return that normalizes to 0
    ref_max_score: float  # return that normalizes to 100
    target_returns: tuple[float, ...]  # returns-to-go the sequence models are conditioned on at evaluation
    return_scale: float  # returns-to-go are divided by this before entering the model
    horizon: int  # maximum episode length
    context_len: int  # default K for sequence models
    generated_by: str | None = None  # behaviour level of the data this project generates; None: external data
    discrete_actions: bool = False  # a Discrete action space (Atari): the registry picks discrete algorithms
    dataset_reader: DatasetReader | None = field(default=None, repr=False)  # None: D4RL hdf5 at dataset_file

    @property
    def dataset_name(self) -> str:
        """The dataset's identity (seeds data-ratio subsets): the reader's name, else the file's stem."""
        return self.dataset_reader.name if self.dataset_reader is not None else Path(self.dataset_file).stem

    def normalized_score(self, episode_return: float) -> float:
        return normalized_score(episode_return, self.ref_min_score, self.ref_max_score)


def normalized_score(episode_return, ref_min: float, ref_max: float):
    """D4RL normalization: 100 · (R − R_min) / (R_max − R_min). Works on floats and arrays alike."""
    return 100.0 * (episode_return - ref_min) / (ref_max - ref_min)


TASKS: dict[str, Task] = {}


def _register(task: Task) -> None:
    assert task.name not in TASKS, task.name
    TASKS[task.name] = task


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}") from None


# --- locomotion: D4RL v2 datasets, Gymnasium MuJoCo v5 environments -------------------------------------

def _mujoco_factory(env_id: str, **kwargs) -> Callable[[], gym.Env]:
    # No TimeLimit wrapper from gym.make's registry beyond the horizon we set: the evaluator counts steps too.
    return lambda: gym.make(env_id, **kwargs)


_LOCOMOTION = {
    # env: (gymnasium id, make kwargs, D4RL ref min, ref max, LaMo targets)
    "hopper": ("Hopper-v5", {}, -20.272305, 3234.3, (3600, 2600, 2200, 1800)),
    "halfcheetah": ("HalfCheetah-v5", {}, -280.178953, 12135.0, (12000, 8000, 6000, 4500)),
    # Walker2d-v5 gave both feet friction 1.9; D4RL's v2 data was collected with the older model whose right
    # foot has 0.9. Gymnasium still ships that model as walker2d.xml.
    "walker2d": ("Walker2d-v5", {"xml_file": "walker2d.xml"}, 1.629008, 4592.3, (5000, 4000, 3000, 2500)),
}
_D4RL_FLAVOURS = ("random", "medium", "medium-replay", "medium-expert", "expert")
_GENERATED_LOCOMOTION = ("random", "medium")

for _env, (_id, _kwargs, _lo, _hi, _targets) in _LOCOMOTION.items():
    _common = dict(domain="locomotion", make_env=_mujoco_factory(_id, **_kwargs), env_id=_id,
                   ref_min_score=_lo, ref_max_score=_hi, target_returns=tuple(float(t) for t in _targets),
                   return_scale=1000.0, horizon=1000, context_len=20)
    for _flavour in _D4RL_FLAVOURS:
        _register(Task(name=f"{_env}-{_flavour}", dataset_file=f"{_env}-{_flavour}-v2.hdf5", **_common))
    for _flavour in _GENERATED_LOCOMOTION:
        _register(Task(name=f"{_env}-{_flavour}-gen", dataset_file=f"{_env}-{_flavour}-gen.hdf5",
                       generated_by=_flavour, **_common))


# --- reacher2d: LaMo's sparse-reward task, always generated ----------------------------------------------

def _make_reacher2d() -> gym.Env:
    from trainers.envs.reacher2d import Reacher2dEnv

    return Reacher2dEnv()


for _flavour in ("expert", "medium", "random"):
    _register(Task(
        name=f"reacher2d-{_flavour}", domain="reacher2d", make_env=_make_reacher2d, env_id="Reacher2d-v0",
        dataset_file=f"reacher2d-{_flavour}.hdf5",
        # Normalized score = return / 100: one point per step spent within reach of the target.
        ref_min_score=0.0, ref_max_score=100.0, target_returns=(76.0, 40.0), return_scale=10.0,
        horizon=100, context_len=5, generated_by=_flavour,
    ))


# --- kitchen: D4RL kitchen files, Gymnasium-Robotics FrankaKitchen-v1 -------------------------------------

def _kitchen_factory(which: str) -> Callable[[], gym.Env]:
    def make() -> gym.Env:
        from trainers.envs import kitchen

        tasks = {"complete": kitchen.KITCHEN_COMPLETE_TASKS, "partial": kitchen.KITCHEN_PARTIAL_TASKS}[which]
        return kitchen.make_kitchen_env(tasks, max_episode_steps=280)

    return make


for _flavour in ("complete", "partial"):
    _register(Task(
        name=f"kitchen-{_flavour}", domain="kitchen", make_env=_kitchen_factory(_flavour),
        env_id="FrankaKitchen-v1", dataset_file=f"kitchen-{_flavour}-v0.hdf5",
        ref_min_score=0.0, ref_max_score=4.0, target_returns=(5.0, 4.0, 3.0, 2.0, 1.0), return_scale=1.0,
        horizon=280, context_len=20,
    ))


# --- atari: the DQN Replay dataset as d4rl-atari reads it, ALE through Gymnasium's Atari wrappers ------------
# Data, layout and the "medium" checkpoint: trainers/atari_data.py; games, environment, scores and targets:
# trainers/envs/atari.py. Human-normalized score: 100 · (R − random) / (human − random). Returns-to-go are not
# scaled (LaMo experiment-atari/cfgs/config.yaml model.reward_scale 1); K 30 (model.context_len 30).
# `<game>-medium-gen` reads data this project generates with a scripted behaviour policy in the same layout
# (`python -m trainers.atari_data generate`), kept apart from the real data's name and location.

for _game in GAMES.values():
    _common = dict(domain="atari", make_env=functools.partial(make_atari_env, _game.name),
                   env_id=f"{_game.ale_name}NoFrameskip-v4", ref_min_score=_game.random_score,
                   ref_max_score=_game.human_score, target_returns=_game.target_returns, return_scale=1.0,
                   horizon=_game.horizon, context_len=30, discrete_actions=True)
    _medium = DQNReplay(_game.name, run=1, checkpoints=(10,))  # d4rl-atari's "medium": checkpoint 10 of run 1
    _register(Task(name=f"{_game.name}-medium", dataset_file=_medium.relative_dir, dataset_reader=_medium,
                   **_common))
    if _game.name in ("breakout", "pong"):  # the games with a scripted behaviour policy
        _generated = DQNReplay(_game.name, run=1, checkpoints=(10,), generated=True)
        _register(Task(name=f"{_game.name}-medium-gen", dataset_file=_generated.relative_dir,
                       dataset_reader=_generated, generated_by="medium", **_common))
