"""Generate a D4RL-format dataset by running a behaviour policy in the task's real simulator.

    python -m trainers.tools.make_dataset --task reacher2d-medium --episodes 1000
    python -m trainers.tools.make_dataset --task hopper-medium-gen --sac-steps 100000 --steps 200000

reacher2d uses the scripted controller at the task's noise level (expert / medium / random); locomotion
"-gen" tasks use a uniform random policy or a "medium" policy trained online with stable-baselines3's SAC
(the `generate` extra). The file gets the D4RL keys plus next_observations, and root attributes recording
the behaviour policy, its mean return, a random policy's mean return, the seed and the versions.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import numpy as np
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from trainers.data.d4rl import write_d4rl_dataset
from trainers.data.trajectories import DatasetError
from trainers.runtime.evaluation import episode_seeds
from trainers.runtime.tasks import Task, get_task

BehaviourFn = Callable[[np.ndarray], np.ndarray]  # (n, obs_dim) -> (n, act_dim)


_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")


def collect_episodes(task: Task, behaviour: BehaviourFn, seed: int, num_episodes: int | None = None,
                     num_steps: int | None = None, num_envs: int = 16, progress: bool = False) -> dict[str, np.ndarray]:
    """Run whole episodes on up to `num_envs` real environments until the episode or step budget is met.

    Episodes are stored in the order they were started, each one contiguous, so the flat arrays split back
    into the same episodes. Episode i is reset with the i-th of `episode_seeds(seed, ·)`. With a step budget
    no episode is started once the steps recorded or under way reach it, so the last ones run to their end.
    """
    if (num_episodes is None) == (num_steps is None):
        raise ValueError("give exactly one of num_episodes or num_steps")
    seeds = episode_seeds(seed, num_episodes if num_episodes is not None else num_steps)
    envs = [task.make_env() for _ in range(min(num_envs, len(seeds)))]
    episodes: list[dict[str, list]] = []  # in start order
    running: dict[int, int] = {}  # env slot -> position in `episodes`
    observations: dict[int, np.ndarray] = {}
    steps_taken = 0

    def start(slot: int) -> None:
        budget_left = (len(episodes) < num_episodes if num_episodes is not None
                       else steps_taken < num_steps)
        if budget_left:
            observations[slot], _ = envs[slot].reset(seed=int(seeds[len(episodes)]))
            running[slot] = len(episodes)
            episodes.append({key: [] for key in _KEYS})

    columns = (TextColumn(f"[bold]{task.name}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress) as bar:
        job = bar.add_task("collect", total=num_episodes or num_steps)
        for slot in range(len(envs)):
            start(slot)
        while running:
            slots = list(running)
            actions = np.clip(behaviour(np.stack([observations[s] for s in slots])),
                              envs[0].action_space.low, envs[0].action_space.high)
            for slot, action in zip(slots, actions):
                record = episodes[running[slot]]
                next_obs, reward, terminated, truncated, _ = envs[slot].step(action)
                # The horizon cap counts as a timeout, as the environments' own TimeLimit does.
                timeout = not terminated and (truncated or len(record["rewards"]) + 1 >= task.horizon)
                for key, value in zip(_KEYS, (observations[slot], action, reward, terminated, timeout, next_obs)):
                    record[key].append(value)
                observations[slot] = next_obs
                steps_taken += 1
                if num_steps is not None:
                    bar.advance(job)
                if terminated or timeout:
                    if num_episodes is not None:
                        bar.advance(job)
                    del running[slot]
                    start(slot)
    for env in envs:
        env.close()
    arrays = {key: np.concatenate([np.asarray(episode[key]) for episode in episodes]) for key in _KEYS}
    for key in ("observations", "actions", "rewards", "next_observations"):
        arrays[key] = arrays[key].astype(np.float32)
    return arrays


def episode_returns(arrays: dict[str, np.ndarray]) -> np.ndarray:
    ends = np.flatnonzero(arrays["terminals"] | arrays["timeouts"]) + 1
    return np.array([r.sum() for r in np.split(arrays["rewards"].astype(np.float64), ends)[:len(ends)]])


def random_behaviour(task: Task, seed: int) -> BehaviourFn:
    env = task.make_env()
    low, high = env.action_space.low, env.action_space.high
    env.close()
    rng = np.random.default_rng(seed)
    return lambda obs: rng.uniform(low, high, size=(len(obs), len(low))).astype(np.float32)


def reacher2d_behaviour(level: str, seed: int) -> BehaviourFn:
    from trainers.envs.reacher2d import reacher2d_behaviour_action

    rng = np.random.default_rng(seed)
    return lambda obs: reacher2d_behaviour_action(obs, level, rng)


def sac_behaviour(task: Task, train_steps: int, seed: int, save_to: Path | None = None) -> tuple[BehaviourFn, str]:
    """Train stable-baselines3 SAC online for `train_steps`, then act with its stochastic policy (as the
    D4RL 'medium' data was collected); with `save_to`, the trained model is saved there (SAC.load reads it)."""
    try:
        from stable_baselines3 import SAC
    except ImportError as error:
        raise SystemExit("locomotion 'medium' data needs stable-baselines3: pip install -e '.[generate]'") from error
    model = SAC("MlpPolicy", task.make_env(), seed=seed, verbose=0, device="cpu")
    model.learn(total_timesteps=train_steps, progress_bar=False)
    if save_to is not None:
        model.save(save_to)
    return (lambda obs: model.predict(obs, deterministic=False)[0],
            f"stable-baselines3 {version('stable-baselines3')} SAC trained online for {train_steps} steps")


def build_behaviour(task: Task, seed: int, sac_steps: int, save_policy: Path | None = None
                    ) -> tuple[BehaviourFn, str]:
    level = task.generated_by
    if level is None:
        raise DatasetError(f"task {task.name!r} reads an external dataset ({task.dataset_name}; fetch it with "
                           f"`python -m trainers.tools.fetch {task.name}`); only generated tasks (reacher2d-*, *-gen) "
                           f"can be made here")
    if task.domain == "reacher2d":
        return reacher2d_behaviour(level, seed), f"scripted reacher2d controller, {level} noise level"
    if level == "random":
        return random_behaviour(task, seed), "uniform random actions"
    return sac_behaviour(task, sac_steps, seed, save_policy)


def make_dataset(task_name: str, out: Path | None = None, seed: int = 0, num_episodes: int | None = None,
                 num_steps: int | None = None, sac_steps: int = 100_000, random_episodes: int = 20,
                 overwrite: bool = False, progress: bool = False, save_policy: Path | None = None) -> Path:
    task = get_task(task_name)
    path = Path(out) if out is not None else task.dataset_reader.first_location()
    if path.exists() and not overwrite:
        raise DatasetError(f"{path} already exists; pass --overwrite to replace it")
    if num_episodes is None and num_steps is None:
        num_episodes = 1000
    behaviour, description = build_behaviour(task, seed, sac_steps, save_policy)
    arrays = collect_episodes(task, behaviour, seed, num_episodes, num_steps, progress=progress)
    random_arrays = collect_episodes(task, random_behaviour(task, seed + 1), seed + 1, num_episodes=random_episodes)
    returns, random_returns = episode_returns(arrays), episode_returns(random_arrays)
    metadata = {
        "task": task.name, "env_id": task.env_id, "behaviour_policy": description, "seed": seed,
        "num_episodes": len(returns), "behaviour_mean_return": float(returns.mean()),
        "behaviour_normalized_score": float(task.normalized_score(returns.mean())),
        "random_mean_return": float(random_returns.mean()), "random_episodes": random_episodes,
        "gymnasium_version": version("gymnasium"), "mujoco_version": version("mujoco"),
    }
    return write_d4rl_dataset(path, arrays, metadata, task=task)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, help="a generated task, e.g. reacher2d-medium or hopper-random-gen")
    parser.add_argument("--out", type=Path, help="output .hdf5 (default: the d4rl cache location)")
    parser.add_argument("--seed", type=int, default=0)
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--episodes", type=int, help="number of episodes (default 1000)")
    budget.add_argument("--steps", type=int, help="number of transitions, whole episodes only")
    parser.add_argument("--sac-steps", type=int, default=100_000, help="online SAC training steps for *-medium-gen")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--save-policy", type=Path, help="*-medium-gen: also save the trained SAC model here (.zip)")
    args = parser.parse_args(argv)
    try:
        path = make_dataset(args.task, args.out, args.seed, args.episodes, args.steps, args.sac_steps,
                            overwrite=args.overwrite, progress=sys.stderr.isatty(), save_policy=args.save_policy)
    except (DatasetError, KeyError) as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
