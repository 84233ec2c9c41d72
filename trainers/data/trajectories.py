"""The in-memory dataset every source is read into: flat transition arrays plus the episode index, the checks
every source's arrays pass before they become one, the one rule for episode flags that cannot be trusted, and the
error every reader raises. The bottom of the data layer: the readers (trainers/data/d4rl.py,
minari_datasets.py, dqn_replay.py) build it, samplers and algorithms read it, and it knows none of them, nor any
task.

Episodes end where terminals OR timeouts is set (both at one step is one end); steps after the last end form a
trailing episode that is kept and marked truncated. Episode flags that cannot be trusted — no `timeouts` key, or
an episode longer than the task's data horizon (the longest episode its data keeps whole: the evaluation's
horizon, except where the reference code keeps longer ones, as LaMo does kitchen's demonstrations) — follow one
documented rule, `enforce_horizon`: by default such episodes are split every data-horizon steps (the split points
become timeouts) and the dataset says so in its `notes`, as it counts the episodes kept whole past the
evaluation's horizon; `long_episodes="refuse"` refuses the file instead. The sweep prints the notes before it
starts, every trial's record carries them, and the report lists them among its fidelity notes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np


class DatasetError(ValueError):
    """A dataset file is missing or does not match the layout or the task."""


REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals")
FLAG_KEYS = ("terminals", "timeouts")


@dataclass(frozen=True)
class EpisodeIndex:
    """Where each episode lies in the flat arrays."""

    starts: np.ndarray  # (E,) int64 index of the first step
    lengths: np.ndarray  # (E,) int64
    terminated: np.ndarray  # (E,) bool: ended by a terminal (no bootstrapping past it)
    truncated: np.ndarray  # (E,) bool: the trailing partial episode with neither flag at its last step

    @property
    def ends(self) -> np.ndarray:
        return self.starts + self.lengths

    def __len__(self) -> int:
        return len(self.starts)


def split_episodes(terminals: np.ndarray, timeouts: np.ndarray) -> EpisodeIndex:
    """Episode boundaries from the per-step flags, vectorised."""
    n = len(terminals)
    done = np.asarray(terminals, bool) | np.asarray(timeouts, bool)
    ends = np.flatnonzero(done) + 1
    truncated_tail = n > 0 and (len(ends) == 0 or ends[-1] != n)
    if truncated_tail:
        ends = np.append(ends, n)
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    ends = ends.astype(np.int64)
    truncated = np.zeros(len(ends), bool)
    if truncated_tail:
        truncated[-1] = True
    return EpisodeIndex(starts=starts, lengths=ends - starts,
                        terminated=np.asarray(terminals, bool)[ends - 1] if n else np.zeros(0, bool),
                        truncated=truncated)


@dataclass
class TrajectoryDataset:
    """Flat transition arrays plus the episode index; the object every sampler and algorithm reads from."""

    name: str  # dataset identity used to seed subsets, e.g. "hopper-medium-v2"
    observations: np.ndarray  # (N, obs_dim) float32
    actions: np.ndarray  # (N, act_dim) float32
    rewards: np.ndarray  # (N,) float32
    terminals: np.ndarray  # (N,) bool
    timeouts: np.ndarray  # (N,) bool
    episodes: EpisodeIndex
    next_observations: np.ndarray | None = None
    episode_ids: np.ndarray | None = None  # ids of the episodes in the source file (set by subsampling)
    metadata: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None
    notes: tuple[str, ...] = ()  # what was done to the file's episode flags, and why
    # --- image datasets (Atari, trainers/data/dqn_replay.py) ---
    # None: `observations` are the states (N, obs_dim) float32. An int: `observations` are single frames
    # (N, H, W) uint8 with (N,) integer actions, and the state at a step is its episode's last `frame_stack`
    # frames, zero-padded before the episode's first frame; the samplers stack them when a batch is drawn.
    frame_stack: int | None = None
    # How a data ratio draws its trajectories: "uniform" (LaMo's D4RL code) or "length", with probability
    # proportional to trajectory length (LaMo's Atari code, experiment-atari/buffer.py ratio_dataset).
    ratio_sampling: Literal["uniform", "length"] = "uniform"

    def __post_init__(self) -> None:
        if self.episode_ids is None:
            self.episode_ids = np.arange(len(self.episodes))

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def observation_dim(self) -> int:
        return self.observations.shape[1]

    @property
    def action_dim(self) -> int:
        return self.actions.shape[1]

    def episode_returns(self) -> np.ndarray:
        return np.add.reduceat(self.rewards.astype(np.float64), self.episodes.starts) if len(self) else np.zeros(0)

    def timesteps(self) -> np.ndarray:
        """(N,) step index within its episode (absolute timestep, as the sequence models embed it)."""
        return np.arange(len(self)) - np.repeat(self.episodes.starts, self.episodes.lengths)

    def returns_to_go(self) -> np.ndarray:
        """(N,) undiscounted sum of rewards from each step to the end of its episode, float64."""
        cumulative = np.cumsum(self.rewards, dtype=np.float64)
        end_totals = cumulative[self.episodes.ends - 1]
        before = np.concatenate([[0.0], cumulative[:-1]])
        return np.repeat(end_totals, self.episodes.lengths) - before

    @property
    def state_shape(self) -> tuple[int, ...]:
        """Shape of one state: (obs_dim,), or (frame_stack, H, W) for an image dataset."""
        if self.frame_stack is None:
            return tuple(self.observations.shape[1:])
        return (self.frame_stack, *self.observations.shape[1:])

    def state_statistics(self, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std of the observations of this (sub)set, LaMo's normalization convention."""
        if self.frame_stack is not None:
            raise ValueError(f"{self.name}: image frames are scaled by 1/255, not standardised")
        obs = self.observations.astype(np.float64)
        return obs.mean(0).astype(np.float32), (obs.std(0) + eps).astype(np.float32)

    def select_episodes(self, episode_positions: np.ndarray) -> TrajectoryDataset:
        """A new dataset made of the given episodes (positions in this dataset), in the given order."""
        positions = np.asarray(episode_positions, np.int64)
        starts, lengths = self.episodes.starts[positions], self.episodes.lengths[positions]
        new_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        steps = np.repeat(starts - new_starts, lengths) + np.arange(lengths.sum())
        pick = (lambda a: None if a is None else a[steps])
        return replace(
            self, observations=self.observations[steps], actions=self.actions[steps], rewards=self.rewards[steps],
            terminals=self.terminals[steps], timeouts=self.timeouts[steps],
            next_observations=pick(self.next_observations),
            episodes=EpisodeIndex(new_starts, lengths.astype(np.int64), self.episodes.terminated[positions],
                                  self.episodes.truncated[positions]),
            episode_ids=self.episode_ids[positions],
        )


# --- checks before arrays become a dataset ---------------------------------------------------------------

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


def check_finite_rows(key: str, values: np.ndarray, where: str) -> None:
    finite = np.isfinite(values)
    if not finite.all():
        bad = np.flatnonzero(~finite.reshape(len(values), -1).all(axis=1))
        raise DatasetError(f"{where}: {key}: {len(bad)} rows contain NaN or inf (first at index {bad[0]})")


# --- episode flags that cannot be trusted --------------------------------------------------------------------

LongEpisodes = Literal["split", "refuse"]


def enforce_horizon(dataset: TrajectoryDataset, horizon: int, long_episodes: LongEpisodes = "split",
                    evaluation_horizon: int | None = None) -> TrajectoryDataset:
    """Episodes longer than `horizon`, the task's data horizon (flags that cannot be trusted), split every
    `horizon` steps, with a note saying how many and why; or a DatasetError when `long_episodes` is "refuse".
    With an `evaluation_horizon` below it, the episodes longer than that but within `horizon` are kept whole and
    counted in a note of their own."""
    lengths = dataset.episodes.lengths
    notes = []
    what = "horizon"
    if evaluation_horizon is not None and evaluation_horizon < horizon:
        what = "data horizon"
        kept = (lengths > evaluation_horizon) & (lengths <= horizon)
        if kept.any():
            notes.append(f"{int(kept.sum())} episode(s) longer than the task's evaluation horizon "
                         f"{evaluation_horizon} (the longest has {int(lengths[kept].max()):,} steps) were kept whole, "
                         f"within its data horizon {horizon}")
    long = lengths > horizon
    if not long.any():
        return replace(dataset, notes=(*dataset.notes, *notes)) if notes else dataset
    where = dataset.source or dataset.name
    found = f"{int(long.sum())} episode(s) longer than the task's {what} {horizon} (the longest has " \
            f"{int(lengths.max()):,} steps)"
    if long_episodes == "refuse":
        raise DatasetError(f"{where}: {found}: its terminals/timeouts flags do not mark every episode end; fix the "
                           f"file, or set long_episodes: split to split such episodes at the {what}")
    within = dataset.timesteps()
    split_after = (within % horizon == horizon - 1) & ~np.isin(np.arange(len(dataset)), dataset.episodes.ends - 1)
    timeouts = dataset.timeouts | split_after
    return replace(dataset, timeouts=timeouts, episodes=split_episodes(dataset.terminals, timeouts),
                   episode_ids=None, notes=(*dataset.notes, *notes, f"{found} were split every {horizon} steps"))
