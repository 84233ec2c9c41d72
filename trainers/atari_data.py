"""Atari offline data in the DQN Replay layout (Agarwal, Schuurmans & Norouzi 2020): read, validate, generate.

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
(trainers/samplers.py), zero-padded at an episode's start as LaMo's buffer (experiment-atari/buffer.py) and
d4rl-atari's `_stack` do. Episodes end at terminals; an episode never spans two checkpoint files (a file's last
rows end as a timeout), and the last file's tail is a truncated episode. Data ratios draw whole trajectories
with probability proportional to their length, as LaMo's Atari buffer does (`ratio_dataset`, sample_type
traj_length), seeded per (dataset, ratio, seed) like every other domain.

Generating: `python -m trainers.atari_data generate --game breakout --steps 50000 --out DIR` runs a behaviour
policy in the evaluation's own environment (trainers/envs/atari.py, without the frame stack) and writes the
layout above to DIR/<Game>/1/replay_logs/ — rewards clipped and every episode end marked terminal, as
Dopamine's runner logged them. The scripted policies read the ball and paddle positions from the console's RAM
(addresses from the AtariARI annotations, Anand et al. 2019) and follow the ball, with ε-random actions.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainers.envs.atari import FRAME_SHAPE, FRAME_STACK, get_game, make_atari_env
from trainers.trajectories import DatasetError, TrajectoryDataset, split_episodes

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
    """One dataset in the DQN Replay layout: checkpoints of one run of one game (a task's `dataset_reader`)."""

    game: str  # "breakout"
    run: int = 1
    checkpoints: tuple[int, ...] = (10,)
    generated: bool = False  # this project's generated data, looked for under <root>/dqn-replay-gen/

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

    def resolve(self, path: str | os.PathLike | None = None) -> Path:
        tried = self.candidates(path)
        for run_dir in tried:
            if len(self.files(run_dir)) == len(self.checkpoints):
                return run_dir
        ale = get_game(self.game).ale_name
        wanted = ", ".join(f"{REPLAY_LOGS}/{store_file_name(key, c)}" for c in self.checkpoints for key in STORE_KEYS)
        d4rl_atari = ", ".join(f"{c}/{key}.gz" for c in self.checkpoints for key in STORE_KEYS)
        if self.generated:
            how = (f"generate it with `python -m trainers.atari_data generate --game {self.game} --out "
                   f"{cache_roots()[0] / GENERATED_ROOT}`, or pass the directory it was written to")
        else:
            how = (f"copy DQN Replay's {ale}/{self.run}/{REPLAY_LOGS}/ files there (the public bucket "
                   f"gs://atari-replay-datasets is gone: bring your own copy), or point at a directory that has "
                   f"them; d4rl-atari's cache layout ({d4rl_atari}) is read too")
        raise DatasetError(f"DQN Replay data for {self.game} run {self.run} checkpoint(s) "
                           f"{', '.join(map(str, self.checkpoints))} not found: looked for {wanted} in "
                           f"{', '.join(map(str, tried))}; {how}")

    def load(self, task: object = None, path: str | os.PathLike | None = None) -> TrajectoryDataset:
        """Read and validate the checkpoints (once per process while the files are unchanged). The task is not
        needed: the reader was made for one game."""
        run_dir = self.resolve(path).resolve()
        files = self.files(run_dir)
        stamp = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for c in self.checkpoints
                      for f in files[c].values())
        return _load_cached(self, str(run_dir), stamp)


@functools.lru_cache(maxsize=1)  # one Atari dataset is gigabytes: keep only the latest
def _load_cached(reader: DQNReplay, run_dir: str, stamp: tuple) -> TrajectoryDataset:
    return read_dqn_replay(reader, Path(run_dir))


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


# --- behaviour policies -------------------------------------------------------------------------------------

Behaviour = Callable[[np.ndarray, np.ndarray], int]  # (frame, console RAM) -> action id


def breakout_follower(rng: np.random.Generator, epsilon: float, offset: int = 8, dead_zone: int = 6
                      ) -> Behaviour:
    """Move the paddle when the ball is more than `dead_zone` from its middle (RAM 72 paddle x, 99 ball x,
    101 ball y; offset 8 aims the middle), else FIRE, as also when no ball is in play; a uniform random action
    with probability ε. FIRE only serves in Breakout, a no-op during play: as the "stay" action it is the most
    common one (≈ 50 %), so serving is never a rare action a cloned policy could miss and then wait out the
    horizon. (Measured, 6 episodes at ε 0.1: dead zone 2 scores 35, 6 scores 54.)"""
    def act(frame: np.ndarray, ram: np.ndarray) -> int:
        if rng.random() < epsilon:
            return int(rng.integers(4))
        paddle, ball_x, ball_y = int(ram[72]), int(ram[99]), int(ram[101])
        if ball_y == 0:
            return 1  # FIRE: serve
        gap = ball_x - (paddle + offset)
        return 2 if gap > dead_zone else 3 if gap < -dead_zone else 1  # RIGHT, LEFT, FIRE (stay)

    return act


def pong_follower(rng: np.random.Generator, epsilon: float, offset: int = 4) -> Behaviour:
    """Move the right paddle towards the ball's height (RAM 51 paddle y, 54 ball y); ε-random."""
    def act(frame: np.ndarray, ram: np.ndarray) -> int:
        if rng.random() < epsilon:
            return int(rng.integers(6))
        gap = int(ram[54]) - (int(ram[51]) + offset)
        return 3 if gap > 2 else 2 if gap < -2 else 0  # LEFT moves down, RIGHT up

    return act


def random_behaviour(rng: np.random.Generator, num_actions: int) -> Behaviour:
    return lambda frame, ram: int(rng.integers(num_actions))


SCRIPTED = {"breakout": breakout_follower, "pong": pong_follower}


def make_behaviour(game: str, policy: str, epsilon: float, seed: int) -> tuple[Behaviour, str]:
    rng = np.random.default_rng([seed, 1])
    if policy == "random":
        return random_behaviour(rng, get_game(game).num_actions), "uniform random actions"
    if game not in SCRIPTED:
        raise ValueError(f"no scripted policy for {game}; scripted games: {', '.join(SCRIPTED)} (or --policy random)")
    return SCRIPTED[game](rng, epsilon), f"scripted ball follower (RAM), ε = {epsilon}"


# --- the generator ----------------------------------------------------------------------------------------


@dataclass
class GenerationResult:
    run_dir: Path
    files: list[Path]
    episode_returns: list[float]  # complete episodes, game score (unclipped)
    episode_lengths: list[int]


def generate(game: str, steps: int, out: str | os.PathLike, *, policy: str = "scripted", epsilon: float = 0.1,
             seed: int = 0, run: int = 1, first_checkpoint: int = 10, steps_per_checkpoint: int | None = None,
             overwrite: bool = False, progress: bool = False) -> GenerationResult:
    """Run the behaviour policy for `steps` agent steps and write them as DQN Replay checkpoints
    first_checkpoint, first_checkpoint + 1, … of `steps_per_checkpoint` rows (one checkpoint by default) to
    <out>/<Game>/<run>/replay_logs/. Episodes run on across checkpoint files, as in the real data."""
    spec = get_game(game)
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    per_file = steps_per_checkpoint or steps
    logs = Path(out).expanduser() / spec.ale_name / str(run) / REPLAY_LOGS
    checkpoints = list(range(first_checkpoint, first_checkpoint + math.ceil(steps / per_file)))
    targets = [logs / store_file_name(key, c) for c in checkpoints for key in STORE_KEYS]
    if not overwrite and any(t.exists() for t in targets):
        raise DatasetError(f"{logs} already holds checkpoint(s) {checkpoints}; pass --overwrite to replace them")
    behaviour, description = make_behaviour(spec.name, policy, epsilon, seed)

    env = make_atari_env(spec.name, frame_stack=1)
    ale = env.unwrapped.ale
    observations = np.empty((steps, *FRAME_SHAPE), np.uint8)
    actions = np.empty(steps, np.int32)
    rewards = np.empty(steps, np.float32)
    terminals = np.zeros(steps, np.uint8)
    returns, lengths = [], []
    frame, _ = env.reset(seed=seed)
    episode_return, length, started = 0.0, 0, time.perf_counter()
    try:
        for t in range(steps):
            action = behaviour(frame, ale.getRAM())
            observations[t], actions[t] = frame, action
            frame, reward, terminated, truncated, _ = env.step(action)
            rewards[t] = np.clip(reward, -1.0, 1.0)  # Dopamine's runner stores clipped rewards
            episode_return += reward
            length += 1
            if terminated or truncated:  # Dopamine marks every episode end terminal
                terminals[t] = 1
                returns.append(episode_return)
                lengths.append(length)
                episode_return, length = 0.0, 0
                frame, _ = env.reset()
            if progress and (t + 1) % 10_000 == 0:
                print(f"{t + 1:,}/{steps:,} steps, {len(returns)} episodes, "
                      f"{(t + 1) / (time.perf_counter() - started):.0f} steps/s", file=sys.stderr, flush=True)
    finally:
        env.close()

    logs.mkdir(parents=True, exist_ok=True)
    written = []
    for i, checkpoint in enumerate(checkpoints):
        rows = slice(i * per_file, min((i + 1) * per_file, steps))
        for key, values in zip(STORE_KEYS, (observations, actions, rewards, terminals)):
            target = logs / store_file_name(key, checkpoint)
            fd, tmp = tempfile.mkstemp(dir=logs, prefix=f".{target.name}.", suffix=".tmp")
            os.close(fd)
            try:
                write_npy_gz(Path(tmp), values[rows])
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            written.append(target)
    info = {"game": spec.name, "behaviour": description, "seed": seed, "steps": steps, "checkpoints": checkpoints,
            "episodes": len(returns), "episode_returns": returns, "episode_lengths": lengths,
            "environment": f"{spec.ale_name}NoFrameskip-v4 + AtariPreprocessing (trainers/envs/atari.py)"}
    (logs / "generated.json").write_text(json.dumps(info, indent=2))
    return GenerationResult(logs.parent, written, returns, lengths)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trainers.atari_data", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="run a behaviour policy in ALE and write DQN Replay checkpoints")
    gen.add_argument("--game", required=True)
    gen.add_argument("--steps", type=int, required=True, help="agent steps (rows) in all")
    gen.add_argument("--out", default=None, help=f"root directory (default: <d4rl cache>/{GENERATED_ROOT})")
    gen.add_argument("--policy", choices=("scripted", "random"), default="scripted")
    gen.add_argument("--epsilon", type=float, default=0.1, help="probability of a random action (scripted)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--run", type=int, default=1)
    gen.add_argument("--checkpoint", type=int, default=10, help="number of the first checkpoint written")
    gen.add_argument("--steps-per-checkpoint", type=int, default=None, help="rows per file (default: all)")
    gen.add_argument("--overwrite", action="store_true")
    show = commands.add_parser("inspect", help="read a DQN Replay directory and print what it holds")
    show.add_argument("--game", required=True)
    show.add_argument("--path", default=None, help="run directory or a root above <Game>/<run>")
    show.add_argument("--run", type=int, default=1)
    show.add_argument("--checkpoints", type=int, nargs="+", default=[10])
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            result = generate(args.game, args.steps, args.out or cache_roots()[0] / GENERATED_ROOT,
                              policy=args.policy, epsilon=args.epsilon, seed=args.seed, run=args.run,
                              first_checkpoint=args.checkpoint, steps_per_checkpoint=args.steps_per_checkpoint,
                              overwrite=args.overwrite, progress=True)
            mean = np.mean(result.episode_returns) if result.episode_returns else float("nan")
            print(f"wrote {len(result.files)} files to {result.run_dir / REPLAY_LOGS}; "
                  f"{len(result.episode_returns)} complete episodes, return {mean:.1f} ± "
                  f"{np.std(result.episode_returns or [0]):.1f}, length {np.mean(result.episode_lengths or [0]):.0f}")
        else:
            dataset = DQNReplay(args.game, args.run, tuple(args.checkpoints)).load(path=args.path)
            returns = dataset.episode_returns()
            print(f"{dataset.source}: {len(dataset):,} steps, {dataset.num_episodes} episodes, clipped return "
                  f"{returns.mean():.1f} ± {returns.std():.1f}, frames {dataset.observations.nbytes / 2**20:.0f} MiB")
    except (DatasetError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
