"""Atari offline data in the DQN Replay layout (Agarwal, Schuurmans & Norouzi 2020): found, read and validated.

Layout. The DQN Replay dataset stores, for each game and training run, checkpoints of the DQN agent's replay
buffer; d4rl-atari's "medium" dataset — the one LaMo trains on — is checkpoint 10 of run 1. A checkpoint N is
four gzip streams, each holding one `.npy` array, rows in collection order:

    observation  (R, 84, 84) uint8    the frame seen at the step (single frames, never stacked)
    action       (R,)        int32    the action taken, an id of the game's minimal action set
    reward       (R,)        float32  the reward that followed, clipped to [-1, 1] (Dopamine's runner)
    terminal     (R,)        uint8    1 where the episode ended with this step

with R = 1,000,000 in the published files. A checkpoint starts and ends mid-episode: its first rows finish an
episode begun in the previous checkpoint and its last episode continues in the next one. They are found in a run
directory `<root>/<Game>/<run>/`, under either name scheme:

    <run dir>/replay_logs/$store$_observation_ckpt.10.gz ...   the bucket's own names (gs://atari-replay-datasets/
                                                               dqn/Breakout/1/replay_logs/, since removed)
    <run dir>/10/observation.gz ...                            d4rl-atari's cache (~/.d4rl/datasets/Breakout/1/10/)

where <root> is an explicit directory, $D4RL_DATASET_DIR or ~/.d4rl/datasets (d4rl-atari's own location).

Reading keeps frames as they are: each file is decompressed straight into one preallocated uint8 array (no
second copy, no float32, no frame stacks); the samplers stack 4 frames per state when a batch is drawn
(trainers/data/samplers.py), zero-padded at an episode's start as LaMo's buffer (experiment-atari/buffer.py) and
d4rl-atari's `_stack` do. Episodes end at terminals; an episode never spans two checkpoint files (a file's last
rows end as a timeout), and the last file's tail is a truncated episode. Data ratios draw whole trajectories
with probability proportional to their length, as LaMo's Atari buffer does (`ratio_dataset`, sample_type
traj_length), seeded per (dataset, ratio, seed) like every other domain.

Data in this layout is generated here by `python -m trainers.tools.atari_replay generate` (a scripted behaviour
policy in the evaluation's own environment), under <root>/dqn-replay-gen/ apart from real DQN Replay copies.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainers.data.reader import ReadingTask as Task
from trainers.data.trajectories import (
    DatasetError,
    LongEpisodes,
    TrajectoryDataset,
    split_episodes,
)
from trainers.envs.atari import FRAME_SHAPE, FRAME_STACK, get_game

STORE_KEYS = ("observation", "action", "reward", "terminal")
REPLAY_LOGS = "replay_logs"
GENERATED_ROOT = "dqn-replay-gen"  # generated data lives apart from real DQN Replay copies in the cache


def store_file_name(key: str, checkpoint: int) -> str:
    """The bucket's file name, e.g. `$store$_observation_ckpt.10.gz`."""
    return f"$store$_{key}_ckpt.{checkpoint}.gz"


def cache_roots() -> list[Path]:
    """$D4RL_DATASET_DIR (when set), then ~/.d4rl/datasets: the d4rl cache convention, d4rl-atari's location."""
    roots = [Path(os.environ["D4RL_DATASET_DIR"]).expanduser()] if os.environ.get("D4RL_DATASET_DIR") else []
    return roots + [Path.home() / ".d4rl" / "datasets"]


# --- .npy inside gzip, memory-conscious -------------------------------------------------------------------


def read_npy_header(stream, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(stream)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return read(stream)
    except (OSError, EOFError, ValueError) as error:  # gzip.BadGzipFile is an OSError
        raise DatasetError(f"{where}: not a gzip stream holding one .npy array ({error})") from None


def npy_gz_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of the array in a gz .npy file, reading only its first bytes."""
    with gzip.open(path, "rb") as stream:
        shape, _, dtype = read_npy_header(stream, str(path))
    return shape, dtype


def read_npy_gz(path: Path, out: np.ndarray | None = None) -> np.ndarray:
    """The array, decompressed straight into `out` (or a new array): one copy in memory, never two."""
    with gzip.open(path, "rb") as stream:
        shape, fortran_order, dtype = read_npy_header(stream, str(path))
        if dtype.hasobject:
            raise DatasetError(f"{path}: holds Python objects; expected a numeric array")
        if out is not None and (out.shape != shape or out.dtype != dtype):
            raise DatasetError(f"{path}: expected {out.shape} {out.dtype}, found {shape} {dtype}")
        target = np.empty(shape[::-1], dtype) if fortran_order else out if out is not None else np.empty(shape, dtype)
        buffer = memoryview(target.reshape(-1).view(np.uint8))  # a view: `target` itself is filled
        filled = 0
        try:
            while filled < len(buffer):
                count = stream.readinto(buffer[filled:])
                if not count:
                    break
                filled += count
        except (OSError, EOFError) as error:
            raise DatasetError(f"{path}: damaged gzip stream ({error})") from None
        if filled < len(buffer):
            raise DatasetError(f"{path}: truncated: {filled:,} of {len(buffer):,} bytes of the array")
    if not fortran_order:
        return target
    if out is None:
        return target.T
    out[...] = target.T
    return out


def write_npy_gz(path: Path, array: np.ndarray, compresslevel: int = 1) -> None:
    """One .npy array in a gzip stream, as the DQN Replay files hold them."""
    with gzip.open(path, "wb", compresslevel=compresslevel) as stream:
        np.save(stream, array, allow_pickle=False)


# --- the reader -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DQNReplay:
    """A task's data as checkpoints of one run of one game in the DQN Replay layout. A DatasetReader
    (trainers/data/loading.py)."""

    game: str  # "breakout"
    run: int = 1
    checkpoints: tuple[int, ...] = (10,)
    generated: bool = False  # this project's generated data, looked for under <root>/dqn-replay-gen/
    dataset_id = ""  # no registry fetches it: bring your own copy of the (removed) public bucket

    @property
    def name(self) -> str:
        checkpoints = "+".join(map(str, self.checkpoints))
        return f"dqn-replay{'-gen' if self.generated else ''}-{self.game}-run{self.run}-ckpt{checkpoints}"

    @property
    def run_dir(self) -> str:
        """The run directory under a root, e.g. `Breakout/1`."""
        return f"{get_game(self.game).ale_name}/{self.run}"

    @property
    def relative_dir(self) -> str:
        """The run directory under a cache root: `Breakout/1`, generated data `dqn-replay-gen/Breakout/1`."""
        return f"{GENERATED_ROOT}/{self.run_dir}" if self.generated else self.run_dir

    def candidates(self, path: str | os.PathLike | None = None) -> list[Path]:
        """Run directories to look in: for an explicit path, the path itself (a run directory or its
        replay_logs) or <path>/<Game>/<run> (a root, e.g. the generator's --out); else under each cache root."""
        if path is None:
            return [root / self.relative_dir for root in cache_roots()]
        given = Path(path).expanduser()
        return [given.parent] if given.name == REPLAY_LOGS else [given, given / self.run_dir]

    def files(self, run_dir: Path) -> dict[int, dict[str, Path]]:
        """{checkpoint: {key: file}} for the checkpoints complete in `run_dir`, in either name scheme."""
        found = {}
        for checkpoint in self.checkpoints:
            for scheme in ({key: run_dir / REPLAY_LOGS / store_file_name(key, checkpoint) for key in STORE_KEYS},
                           {key: run_dir / str(checkpoint) / f"{key}.gz" for key in STORE_KEYS}):
                if all(file.is_file() for file in scheme.values()):
                    found[checkpoint] = scheme
                    break
        return found

    def first_location(self, path: str | os.PathLike | None = None) -> Path:
        return self.candidates(path)[0]

    def resolve(self, task: Task | None = None, path: str | os.PathLike | None = None) -> Path:
        """The run directory holding every checkpoint; a DatasetError saying where it looked and how to get it."""
        tried = self.candidates(path)
        for run_dir in tried:
            if len(self.files(run_dir)) == len(self.checkpoints):
                return run_dir
        ale = get_game(self.game).ale_name
        wanted = ", ".join(f"{REPLAY_LOGS}/{store_file_name(key, c)}" for c in self.checkpoints for key in STORE_KEYS)
        d4rl_atari = ", ".join(f"{c}/{key}.gz" for c in self.checkpoints for key in STORE_KEYS)
        if self.generated:
            how = (f"generate it with `python -m trainers.tools.atari_replay generate --game {self.game} --out "
                   f"{cache_roots()[0] / GENERATED_ROOT}`, or pass the directory it was written to")
        else:
            how = (f"copy DQN Replay's {ale}/{self.run}/{REPLAY_LOGS}/ files there (the public bucket "
                   f"gs://atari-replay-datasets is gone: bring your own copy), or point at a directory that has "
                   f"them; d4rl-atari's cache layout ({d4rl_atari}) is read too")
        raise DatasetError(f"DQN Replay data for {self.game} run {self.run} checkpoint(s) "
                           f"{', '.join(map(str, self.checkpoints))} not found: looked for {wanted} in "
                           f"{', '.join(map(str, tried))}; {how}")

    def load(self, path: str | os.PathLike | None = None) -> TrajectoryDataset:
        """Found and read, without a task: the reader was made for one game (`python -m trainers.tools.atari_replay
        inspect`; a task's data goes through trainers/data/loading.py)."""
        return self.read(self.resolve(path=path))

    def read(self, path: Path, task: Task | None = None, long_episodes: LongEpisodes = "split") -> TrajectoryDataset:
        """The checkpoints found in the run directory `path`, concatenated in order. Episodes are not held to the
        task's horizon: their flags come from the DQN agent's own runs."""
        return read_dqn_replay(self, path)


def _check_headers(files: dict[str, Path], num_actions: int) -> int:
    """Row count of one checkpoint after checking every file's shape and dtype (headers only)."""
    headers = {key: npy_gz_header(file) for key, file in files.items()}
    shape, dtype = headers["observation"]
    if len(shape) != 3 or tuple(shape[1:]) != FRAME_SHAPE or dtype != np.uint8:
        raise DatasetError(f"{files['observation']}: observation: expected (N, {FRAME_SHAPE[0]}, {FRAME_SHAPE[1]}) "
                           f"uint8 frames (grayscale 84×84, not stacked), got {tuple(shape)} {dtype}")
    rows = shape[0]
    kinds = {"action": "iu", "reward": "f", "terminal": "iub"}
    for key in ("action", "reward", "terminal"):
        shape, dtype = headers[key]
        if tuple(shape) != (rows,) or dtype.kind not in kinds[key]:
            expected = {"action": f"integer action ids in [0, {num_actions})", "reward": "float rewards",
                        "terminal": "0/1 flags"}[key]
            raise DatasetError(f"{files[key]}: {key}: expected shape ({rows},) of {expected} (as many rows as "
                               f"{files['observation'].name}), got {tuple(shape)} {dtype}")
    return rows


def read_dqn_replay(reader: DQNReplay, run_dir: Path) -> TrajectoryDataset:
    """The checkpoints of `reader` found in `run_dir`, concatenated in order, as one TrajectoryDataset."""
    game = get_game(reader.game)
    files = reader.files(run_dir)
    rows = [_check_headers(files[c], game.num_actions) for c in reader.checkpoints]
    total = sum(rows)
    observations = np.empty((total, *FRAME_SHAPE), np.uint8)
    actions = np.empty(total, np.int64)
    rewards = np.empty(total, np.float32)
    terminals = np.empty(total, bool)
    timeouts = np.zeros(total, bool)
    start = 0
    for checkpoint, count in zip(reader.checkpoints, rows):
        part = files[checkpoint]
        end = start + count
        read_npy_gz(part["observation"], observations[start:end])
        actions[start:end] = read_npy_gz(part["action"])
        rewards[start:end] = read_npy_gz(part["reward"])
        flags = read_npy_gz(part["terminal"])
        bad = np.flatnonzero((actions[start:end] < 0) | (actions[start:end] >= game.num_actions))
        if len(bad):
            raise DatasetError(f"{part['action']}: action: {len(bad)} ids outside {game.ale_name}'s action set "
                               f"0..{game.num_actions - 1} (first: {int(actions[start + bad[0]])} at row {bad[0]})")
        if not np.isin(flags, (0, 1)).all():
            raise DatasetError(f"{part['terminal']}: terminal: expected 0/1 flags, found {np.unique(flags)[:5]}")
        if not np.isfinite(rewards[start:end]).all():
            row = int(np.flatnonzero(~np.isfinite(rewards[start:end]))[0])
            raise DatasetError(f"{part['reward']}: reward: NaN or inf at row {row}")
        terminals[start:end] = flags.astype(bool)
        if end < total and not terminals[end - 1]:
            timeouts[end - 1] = True  # the episode goes on in the next file: it is not joined across files
        start = end
    layout = "dqn_replay" if files[reader.checkpoints[0]]["observation"].parent.name == REPLAY_LOGS else "d4rl_atari"
    return TrajectoryDataset(
        name=reader.name, observations=observations, actions=actions, rewards=rewards, terminals=terminals,
        timeouts=timeouts, episodes=split_episodes(terminals, timeouts), source=run_dir,
        metadata={"game": game.name, "run": reader.run, "checkpoints": list(reader.checkpoints), "layout": layout},
        notes=(("DQN Replay checkpoints start and end mid-episode: the first episode of each file counts its "
                "timesteps from the file's first row, and an episode is never joined across files"),),
        frame_stack=FRAME_STACK, ratio_sampling="length")
