"""Minari datasets as tasks, on datasets made here with Minari's own DataCollector in the real simulators: the
same episodes recorded independently in D4RL's layout give identical arrays, subsets and batches; the trial record
and the trial core run on them unchanged; kitchen observations map onto the 60-d layout we evaluate on; data that
does not fit the task is refused naming both shapes."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from trainers.data.checksums import sha256_of_tree
from trainers.data.d4rl import write_d4rl_dataset
from trainers.data.loading import load_task_dataset
from trainers.data.samplers import TransitionSampler, WindowSampler
from trainers.data.subsets import subsample_trajectories
from trainers.data.trajectories import DatasetError
from trainers.runtime.core import run_local
from trainers.runtime.record import make_record
from trainers.runtime.tasks import get_task

pytest.importorskip("jax", reason="Minari's DataCollector needs minari[create]")
from minari import DataCollector  # noqa: E402

HOPPER = get_task("hopper-medium-minari")  # reads minari:mujoco/hopper/medium-v0


def noisy_stand_policy(rng: np.random.Generator):
    """A PD controller holding Hopper's joints straight, with exploration noise: long, varied episodes."""
    def act(obs: np.ndarray) -> np.ndarray:
        joints, velocities = obs[2:5], obs[8:11]
        return np.clip(-2.0 * joints - 0.2 * velocities + rng.normal(0, 0.4, 3), -1, 1).astype(np.float32)
    return act


def collect(env_id: str, dataset_id: str, min_steps: int, seed: int, policy=None, **make_kwargs) -> dict:
    """Whole episodes through Minari's DataCollector until `min_steps`, recording the same steps in D4RL's layout
    on the side (our own loop, not the reader under test)."""
    env = DataCollector(gym.make(env_id, **make_kwargs))
    rng = np.random.default_rng(seed)
    policy = policy or (lambda obs: env.action_space.sample())
    env.action_space.seed(seed)
    rows = {key: [] for key in ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")}
    obs, _ = env.reset(seed=seed)
    while True:
        action = policy(obs)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        for key, value in zip(rows, (obs, action, reward, terminated, truncated and not terminated, next_obs)):
            rows[key].append(value)
        obs = next_obs
        if terminated or truncated:
            if len(rows["rewards"]) >= min_steps:
                break
            obs, _ = env.reset(seed=int(rng.integers(1 << 31)))
    with warnings.catch_warnings():  # Minari warns that no reference scores or eval env were given
        warnings.simplefilter("ignore")
        env.create_dataset(dataset_id=dataset_id, algorithm_name="noisy PD stand controller")
    env.close()
    return {key: np.asarray(values) for key, values in rows.items()}


@pytest.fixture(scope="module")
def minari_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINARI_DATASETS_PATH", str(root))
        yield root


@pytest.fixture(scope="module")
def hopper_episodes(minari_root, tmp_path_factory) -> Path:
    """A Minari hopper dataset (~3,000 steps) at the id the task reads, and the same steps as a D4RL file."""
    rows = collect("Hopper-v5", "mujoco/hopper/medium-v0", 3000, seed=0,
                   policy=noisy_stand_policy(np.random.default_rng(0)))
    path = tmp_path_factory.mktemp("d4rl") / "hopper-same-episodes.hdf5"
    return write_d4rl_dataset(path, rows)


def test_minari_and_d4rl_layouts_give_the_same_dataset(hopper_episodes, minari_root):
    from_minari = load_task_dataset(HOPPER)
    from_d4rl = load_task_dataset(HOPPER, hopper_episodes)
    assert from_minari.source == minari_root / "mujoco" / "hopper" / "medium-v0"
    assert from_minari.name == from_d4rl.name == "minari:mujoco/hopper/medium-v0"
    assert len(from_minari) >= 3000 and from_minari.num_episodes > 5
    for key in ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations"):
        np.testing.assert_array_equal(getattr(from_minari, key), getattr(from_d4rl, key), err_msg=key)
    np.testing.assert_array_equal(from_minari.episodes.lengths, from_d4rl.episodes.lengths)
    # Minari's extra observation per episode became next_observations: each episode's steps chain up.
    inner = np.ones(len(from_minari), bool)
    inner[from_minari.episodes.ends - 1] = False
    np.testing.assert_array_equal(from_minari.next_observations[inner], from_minari.observations[1:][inner[:-1]])
    assert from_minari.metadata["env_id"] == "Hopper-v5" and from_minari.notes == ()


def test_subsets_and_batches_are_identical(hopper_episodes):
    datasets = [subsample_trajectories(load_task_dataset(HOPPER, path), 0.5, seed=3)
                for path in (None, hopper_episodes)]
    np.testing.assert_array_equal(datasets[0].episode_ids, datasets[1].episode_ids)
    for make in (lambda d: WindowSampler(d, context_len=20, return_scale=1000.0, max_timestep=1000),
                 TransitionSampler):
        batches = [make(d).sample(256, np.random.default_rng(7)) for d in datasets]
        for field in vars(batches[0]):
            np.testing.assert_array_equal(getattr(batches[0], field), getattr(batches[1], field), err_msg=field)


def test_record_and_trial_core_run_on_a_minari_task_unchanged(hopper_episodes, minari_root, tmp_path):
    record = make_record("bc", "minari:mujoco/hopper/medium-v0", ratio=0.5, seed=1,
                         overrides={"num_steps": 30, "eval_every": 30, "eval_episodes": 2, "batch_size": 64})
    assert record.task == "hopper-medium-minari" and record.trial_id == "bc.hopper-medium-minari.r0.5.s1"
    assert record.dataset.name == "minari:mujoco/hopper/medium-v0"
    assert record.dataset.source == str(minari_root / "mujoco" / "hopper" / "medium-v0")
    result = run_local(record, tmp_path / "run")
    assert result.step == 30 and result.final is not None
    kept = json.loads((tmp_path / "run" / "trajectory_ids.json").read_text())
    assert kept == subsample_trajectories(load_task_dataset(HOPPER), 0.5, seed=1).episode_ids.tolist()


def test_a_minari_dataset_is_described_by_a_digest_of_its_files(hopper_episodes, minari_root):
    directory = minari_root / "mujoco" / "hopper" / "medium-v0"
    digest, size = sha256_of_tree(directory)
    assert len(digest) == 64 and sha256_of_tree(directory) == (digest, size)
    assert size == sum(p.stat().st_size for p in (directory / "data").iterdir())
    metadata = directory / "data" / "metadata.json"
    original = metadata.read_bytes()
    try:
        metadata.write_bytes(original.replace(b"noisy PD stand controller", b"another controller"))
        assert sha256_of_tree(directory)[0] != digest
    finally:
        metadata.write_bytes(original)


def test_a_dataset_that_does_not_fit_the_task_names_both_shapes(minari_root):
    collect("InvertedPendulum-v5", "mujoco/hopper/expert-v0", 50, seed=1)  # the wrong robot under hopper's id
    with pytest.raises(DatasetError) as error:
        load_task_dataset(get_task("hopper-expert-minari"))
    message = str(error.value)
    assert "observations have shape (4,)" in message and "Hopper-v5, which observes shape (11,)" in message
    assert "mujoco/hopper/expert-v0" in message


def test_a_missing_minari_dataset_says_where_and_how_to_fetch_it(minari_root):
    with pytest.raises(DatasetError) as error:
        load_task_dataset(get_task("walker2d-simple-minari"))
    message = str(error.value)
    assert str(minari_root / "mujoco" / "walker2d" / "simple-v0") in message
    assert "python -m trainers.tools.fetch minari:mujoco/walker2d/simple-v0" in message


def test_kitchen_observations_map_onto_the_evaluated_layout(minari_root):
    from trainers.envs import kitchen

    kitchen.patch_joint_getters()
    gym.register_envs(kitchen._import_gymnasium_robotics())
    noise_free = dict(robot_noise_ratio=0.0, object_noise_ratio=0.0)
    rows = collect("FrankaKitchen-v1", "D4RL/kitchen/complete-v2", 40, seed=2, max_episode_steps=40,
                   tasks_to_complete=list(kitchen.KITCHEN_COMPLETE_TASKS), remove_task_when_completed=False,
                   terminate_on_tasks_completed=False, disable_env_checker=True, **noise_free)
    dataset = load_task_dataset(get_task("kitchen-complete-minari"))
    assert dataset.observations.shape == (40, 60)
    # The evaluation environment, noise off too, driven by the same actions from the same seed.
    env = kitchen.make_kitchen_env(kitchen.KITCHEN_COMPLETE_TASKS, max_episode_steps=40, **noise_free)
    observations = [env.reset(seed=2)[0]]
    for action in rows["actions"][:-1]:
        observations.append(env.step(action)[0])
    env.close()
    np.testing.assert_allclose(dataset.observations, np.asarray(observations, np.float32), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(dataset.rewards, rows["rewards"].astype(np.float32))


def test_kitchen_data_for_other_tasks_is_refused(minari_root):
    from trainers.envs import kitchen

    kitchen.patch_joint_getters()
    gym.register_envs(kitchen._import_gymnasium_robotics())
    collect("FrankaKitchen-v1", "D4RL/kitchen/partial-v2", 5, seed=0, max_episode_steps=5,
            tasks_to_complete=["microwave", "kettle"], disable_env_checker=True)
    with pytest.raises(DatasetError, match=r"tasks_to_complete \['microwave', 'kettle'\] differ"):
        load_task_dataset(get_task("kitchen-partial-minari"))
