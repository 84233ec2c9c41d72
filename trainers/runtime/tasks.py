"""The task registry: everything a trial needs to know about one (environment, dataset) pair.

A task name is ``<env>-<dataset flavour>``: ``hopper-medium`` reads D4RL's hopper-medium-v2 (the file
``hopper_medium-v2.hdf5``, as the d4rl package caches it) and is evaluated on Gymnasium's Hopper-v5;
``hopper-medium-gen`` reads a file this project generated with ``python -m trainers.tools.make_dataset``;
``hopper-medium-minari`` reads the Minari dataset ``mujoco/hopper/medium-v0``. A task's ``dataset_id`` names its
data in the registry it comes from (trainers/data/catalog.py), and `get_task` takes that id too
(``get_task("minari:mujoco/hopper/medium-v0")``). Adding a task is one ``_register`` call below.

Reference scores are D4RL's published ones (d4rl/infos.py, REF_MIN_SCORE / REF_MAX_SCORE), also for the Minari
datasets of the same environments, which carry none; target returns, their scale and the context length K are
LaMo's (its experiment.py and the paper's appendix). A task's `horizon` is how long an evaluation episode runs;
its `data_horizon`, the longest training episode kept whole, is the horizon except for kitchen, whose data
LaMo keeps whole up to 1000 steps while it evaluates 280.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import gymnasium as gym
import numpy as np

from trainers.data.catalog import D4RL_FILES, MINARI_PREFIX
from trainers.data.d4rl import D4RLFile
from trainers.data.dqn_replay import DQNReplay
from trainers.data.minari_datasets import MinariData
from trainers.data.reader import DatasetReader
from trainers.envs.atari import FRAME_SHAPE, FRAME_STACK, GAMES, make_atari_env

Domain = Literal["locomotion", "kitchen", "reacher2d", "atari"]


# What every algorithm trains and evaluates with on a domain, whatever its own defaults: applied before its
# preset and its own domain settings (trainers/runtime/registry.py). Atari: LaMo's experiment-atari/cfgs/config.yaml
# (train_steps 100K, eval_episodes 5); evaluation every 2,500 steps where LaMo evaluates every 200 (each
# evaluation plays every target return's episodes to the horizon: 500 of them would dwarf training).
DOMAIN_TRAINING: dict[Domain, dict[str, int]] = {
    "atari": {"num_steps": 100_000, "eval_every": 2500, "eval_episodes": 5},
}


@dataclass(frozen=True)
class Task:
    name: str
    domain: Domain
    make_env: Callable[[], gym.Env] = field(repr=False)
    # The environment's spaces, declared (tests/test_tasks.py checks them against the environment), so that
    # nothing builds an environment only to learn its spaces.
    observation_space: gym.spaces.Box = field(repr=False)
    action_space: gym.spaces.Box | gym.spaces.Discrete = field(repr=False)
    env_id: str  # what the evaluation environment is, for logs and metadata
    dataset_reader: DatasetReader = field(repr=False)  # where its data is and how it is read (trainers/data/)
    ref_min_score: float  # return that normalizes to 0
    ref_max_score: float  # return that normalizes to 100
    target_returns: tuple[float, ...]  # returns-to-go the sequence models are conditioned on at evaluation
    return_scale: float  # returns-to-go are divided by this before entering the model
    horizon: int  # maximum episode length in evaluation
    context_len: int  # default K for sequence models
    generated_by: str | None = None  # behaviour level of the data this project generates; None: external data
    # The longest episode the training data keeps whole, its *data horizon* (≥ horizon); None at construction
    # means the horizon, and `__post_init__` makes it that (so `dataclasses.replace(task, horizon=...)` keeps the
    # data horizon it had). Longer episodes are split at it when the data is read (trainers/data/trajectories.py,
    # enforce_horizon), and the sequence models' timestep table has this size. Kitchen's is LaMo's 1000 (see its
    # tasks below): its demonstrations are kept whole past the 280 steps evaluated.
    data_horizon: int | None = None

    def __post_init__(self) -> None:
        if self.data_horizon is None:
            object.__setattr__(self, "data_horizon", self.horizon)  # frozen: set once, here

    @property
    def dataset_name(self) -> str:
        """What the data is called in records and logs; it also seeds the data-ratio subsets."""
        return self.dataset_reader.name

    @property
    def dataset_id(self) -> str:
        """The data's id in its registry: D4RL's ("hopper-medium-v2", a key of trainers/data/catalog.py's
        D4RL_FILES) or "minari:" + a Minari id; "" for generated files and DQN Replay runs."""
        return self.dataset_reader.dataset_id

    @property
    def discrete_actions(self) -> bool:
        """A Discrete action space (Atari): the registry picks discrete algorithms."""
        return isinstance(self.action_space, gym.spaces.Discrete)

    @property
    def observation_dim(self) -> int:
        """The flat size of an observation."""
        return int(np.prod(self.observation_space.shape))

    @property
    def action_dim(self) -> int:
        """The flat size of an action (1 for a Discrete action: one id)."""
        return int(np.prod(self.action_space.shape))

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
    """A task by its name, or by the id of the dataset it reads ("hopper-medium-v2", "minari:mujoco/hopper/
    medium-v0"); an unknown name is answered with the close matches."""
    if name in TASKS:
        return TASKS[name]
    by_dataset = [task for task in TASKS.values() if task.dataset_id and task.dataset_id == name]
    if len(by_dataset) == 1:
        return by_dataset[0]
    known = sorted(TASKS) + sorted(task.dataset_id for task in TASKS.values() if task.dataset_id)
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise KeyError(f"unknown task {name!r}; {hint}known tasks: {', '.join(sorted(TASKS))}") from None


# --- locomotion: D4RL v2 datasets, Gymnasium MuJoCo v5 environments -------------------------------------

def _mujoco_factory(env_id: str, **kwargs) -> Callable[[], gym.Env]:
    # No TimeLimit wrapper from gym.make's registry beyond the horizon we set: the evaluator counts steps too.
    return lambda: gym.make(env_id, **kwargs)


def _vectors(observation_dim: int, action_dim: int, bound: float = np.inf, action_dtype=np.float32) -> dict:
    """Box observations in [-bound, bound] (float64, as MuJoCo gives them) and Box actions in [-1, 1]."""
    return dict(observation_space=gym.spaces.Box(-bound, bound, (observation_dim,), np.float64),
                action_space=gym.spaces.Box(-1.0, 1.0, (action_dim,), action_dtype))


_LOCOMOTION = {
    # env: (gymnasium id, make kwargs, D4RL ref min, ref max, LaMo targets, observation and action sizes)
    "hopper": ("Hopper-v5", {}, -20.272305, 3234.3, (3600, 2600, 2200, 1800), (11, 3)),
    "halfcheetah": ("HalfCheetah-v5", {}, -280.178953, 12135.0, (12000, 8000, 6000, 4500), (17, 6)),
    # Walker2d-v5 gave both feet friction 1.9; D4RL's v2 data was collected with the older model whose right
    # foot has 0.9. Gymnasium still ships that model as walker2d.xml.
    "walker2d": ("Walker2d-v5", {"xml_file": "walker2d.xml"}, 1.629008, 4592.3, (5000, 4000, 3000, 2500), (17, 6)),
}
_D4RL_FLAVOURS = ("random", "medium", "medium-replay", "medium-expert", "expert")
_GENERATED_LOCOMOTION = ("random", "medium")

for _env, (_id, _kwargs, _lo, _hi, _targets, _sizes) in _LOCOMOTION.items():
    _common = dict(domain="locomotion", make_env=_mujoco_factory(_id, **_kwargs), env_id=_id, **_vectors(*_sizes),
                   ref_min_score=_lo, ref_max_score=_hi, target_returns=tuple(float(t) for t in _targets),
                   return_scale=1000.0, horizon=1000, context_len=20)
    for _flavour in _D4RL_FLAVOURS:
        _file = D4RL_FILES[f"{_env}-{_flavour}-v2"]
        _register(Task(name=f"{_env}-{_flavour}", dataset_reader=D4RLFile(_file.file_name, _file.dataset_id),
                       **_common))
    for _flavour in _GENERATED_LOCOMOTION:
        _register(Task(name=f"{_env}-{_flavour}-gen", dataset_reader=D4RLFile(f"{_env}-{_flavour}-gen.hdf5"),
                       generated_by=_flavour, **_common))


# --- reacher2d: LaMo's sparse-reward task, always generated ----------------------------------------------

def _make_reacher2d() -> gym.Env:
    from trainers.envs.reacher2d import Reacher2dEnv

    return Reacher2dEnv()


for _flavour in ("expert", "medium", "random"):
    _register(Task(
        name=f"reacher2d-{_flavour}", domain="reacher2d", make_env=_make_reacher2d, env_id="Reacher2d-v0",
        **_vectors(12, 2),
        dataset_reader=D4RLFile(f"reacher2d-{_flavour}.hdf5"),
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
        # D4RL's 60-d layout, clipped to ±8 (trainers/envs/kitchen.py OBS_BOUND); 9 joint velocities in float64
        **_vectors(60, 9, bound=8.0, action_dtype=np.float64),
        env_id="FrankaKitchen-v1",
        dataset_reader=D4RLFile(D4RL_FILES[f"kitchen-{_flavour}-v0"].file_name, f"kitchen-{_flavour}-v0"),
        ref_min_score=0.0, ref_max_score=4.0, target_returns=(5.0, 4.0, 3.0, 2.0, 1.0), return_scale=1.0,
        # Evaluated for 280 steps: D4RL registers kitchen-*-v0 with max_episode_steps=280 (d4rl/kitchen/__init__.py),
        # and LaMo's loop (experiment-d4rl/decision_transformer/evaluation/evaluate_episodes.py:120, 161-162) runs
        # up to max_ep_len but stops when that TimeLimit says done. Trained on demonstrations kept whole up to 1000
        # steps: LaMo sets max_ep_len = 1000 for kitchen (experiment-d4rl/experiment.py:75-79), the size of its
        # timestep table (decision_transformer.py:102, nn.Embedding(max_ep_len, ...); training timesteps past it
        # are clamped, experiment.py:171-173), and data/download_d4rl_datasets.py:31-35, 44 cuts trajectories only
        # at terminals or every 1000 steps (d4rl.qlearning_dataset returns no timeouts key).
        horizon=280, context_len=20, data_horizon=1000,
    ))


# --- Minari datasets: the same environments, data read through the `minari` package -----------------------
# mujoco/<env>/{simple,medium,expert}-v0 were collected on Gymnasium's v5 environments (Walker2d-v5 with its
# own model, so evaluation uses that one too); D4RL's reference scores normalize them. D4RL/kitchen/*-v2 were
# re-recorded in FrankaKitchen-v1 from the original demonstrations; their observations map onto the 60-d
# layout we evaluate on (trainers/data/minari_datasets.py says how, and what differs).

_MINARI_LOCOMOTION = {"hopper": "Hopper-v5", "halfcheetah": "HalfCheetah-v5", "walker2d": "Walker2d-v5"}
for _env, _id in _MINARI_LOCOMOTION.items():
    _, _kwargs, _lo, _hi, _targets, _sizes = _LOCOMOTION[_env]
    for _flavour in ("simple", "medium", "expert"):
        _register(Task(
            name=f"{_env}-{_flavour}-minari", domain="locomotion", make_env=_mujoco_factory(_id), env_id=_id,
            **_vectors(*_sizes),
            dataset_reader=MinariData(f"{MINARI_PREFIX}mujoco/{_env}/{_flavour}-v0"), ref_min_score=_lo,
            ref_max_score=_hi, target_returns=tuple(float(t) for t in _targets), return_scale=1000.0,
            horizon=1000, context_len=20))

for _flavour in ("complete", "partial"):
    _kitchen = TASKS[f"kitchen-{_flavour}"]
    _register(Task(
        name=f"kitchen-{_flavour}-minari", domain="kitchen", make_env=_kitchen.make_env, env_id=_kitchen.env_id,
        observation_space=_kitchen.observation_space, action_space=_kitchen.action_space,
        dataset_reader=MinariData(f"{MINARI_PREFIX}D4RL/kitchen/{_flavour}-v2"),
        ref_min_score=_kitchen.ref_min_score, ref_max_score=_kitchen.ref_max_score,
        target_returns=_kitchen.target_returns, return_scale=_kitchen.return_scale, horizon=_kitchen.horizon,
        # LaMo's kitchen data horizon too: the partial dataset's episodes (recorded up to 450 steps) stay whole.
        context_len=_kitchen.context_len, data_horizon=_kitchen.data_horizon))


# --- atari: the DQN Replay dataset as d4rl-atari reads it, ALE through Gymnasium's Atari wrappers ------------
# Data, layout and the "medium" checkpoint: trainers/data/dqn_replay.py; games, environment, scores and targets:
# trainers/envs/atari.py. Human-normalized score: 100 · (R − random) / (human − random). Returns-to-go are not
# scaled (LaMo experiment-atari/cfgs/config.yaml model.reward_scale 1); K 30 (model.context_len 30).
# `<game>-medium-gen` reads data this project generates with a scripted behaviour policy in the same layout
# (`python -m trainers.tools.atari_replay generate`), kept apart from the real data's name and location.

for _game in GAMES.values():
    _common = dict(domain="atari", make_env=functools.partial(make_atari_env, _game.name),
                   observation_space=gym.spaces.Box(0, 255, (FRAME_STACK, *FRAME_SHAPE), np.uint8),
                   action_space=gym.spaces.Discrete(_game.num_actions),
                   env_id=f"{_game.ale_name}NoFrameskip-v4", ref_min_score=_game.random_score,
                   ref_max_score=_game.human_score, target_returns=_game.target_returns, return_scale=1.0,
                   horizon=_game.horizon, context_len=30)
    _medium = DQNReplay(_game.name, run=1, checkpoints=(10,))  # d4rl-atari's "medium": checkpoint 10 of run 1
    _register(Task(name=f"{_game.name}-medium", dataset_reader=_medium, **_common))
    if _game.name in ("breakout", "pong"):  # the games with a scripted behaviour policy
        _generated = DQNReplay(_game.name, run=1, checkpoints=(10,), generated=True)
        _register(Task(name=f"{_game.name}-medium-gen", dataset_reader=_generated, generated_by="medium",
                       **_common))
