from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import synthetic_arrays

from trainers.data.d4rl import D4RLFile, load_d4rl_dataset, write_d4rl_dataset
from trainers.data.dqn_replay import DQNReplay
from trainers.data.loading import load_task_dataset
from trainers.data.minari_datasets import MinariData
from trainers.data.subsets import subsample_trajectories, top_fraction_by_return
from trainers.data.trajectories import DatasetError, split_episodes
from trainers.runtime.tasks import TASKS, get_task, normalized_score


def write_raw(path, arrays: dict) -> None:
    """Write without validation, the way a foreign or broken file would look."""
    with h5py.File(path, "w") as f:
        for key, values in arrays.items():
            f.create_dataset(key, data=values)


# --- episode split ----------------------------------------------------------------------------------------

def test_split_on_terminals_or_timeouts_with_trailing_partial_episode():
    terminals = np.array([0, 0, 1, 0, 0, 0, 0, 1, 0, 0], bool)
    timeouts = np.array([0, 0, 0, 0, 1, 0, 0, 1, 0, 0], bool)  # step 7 has both flags: one end
    episodes = split_episodes(terminals, timeouts)
    assert episodes.starts.tolist() == [0, 3, 5, 8]
    assert episodes.lengths.tolist() == [3, 2, 3, 2]
    assert episodes.terminated.tolist() == [True, False, True, False]
    assert episodes.truncated.tolist() == [False, False, False, True]


def test_split_without_any_flag_is_one_truncated_episode():
    episodes = split_episodes(np.zeros(5, bool), np.zeros(5, bool))
    assert episodes.lengths.tolist() == [5] and episodes.truncated.tolist() == [True]


# --- round trip -------------------------------------------------------------------------------------------

def test_round_trip_preserves_arrays_metadata_and_episodes(tmp_path):
    arrays = synthetic_arrays([4, 7, 3])
    arrays["observations"] = arrays["observations"].astype(np.float64)  # read back as float32
    arrays["rewards"] = arrays["rewards"].reshape(-1, 1)  # (N, 1) is accepted
    arrays["infos"] = {"qpos": np.arange(14 * 2, dtype=np.float32).reshape(14, 2)}
    path = write_d4rl_dataset(tmp_path / "x.hdf5", arrays, {"behaviour_policy": "scripted", "seed": 3})
    dataset = load_d4rl_dataset(path)
    assert dataset.observations.dtype == np.float32
    np.testing.assert_allclose(dataset.observations, arrays["observations"], rtol=1e-6)
    np.testing.assert_array_equal(dataset.actions, arrays["actions"])
    np.testing.assert_array_equal(dataset.rewards, arrays["rewards"][:, 0])
    assert dataset.episodes.lengths.tolist() == [4, 7, 3]
    assert dataset.metadata == {"behaviour_policy": "scripted", "seed": 3}
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["infos/qpos"][()], arrays["infos"]["qpos"])


def test_returns_to_go_and_timesteps_match_a_per_episode_loop(tmp_path):
    arrays = synthetic_arrays([5, 1, 9, 4], end="terminal")
    dataset = load_d4rl_dataset(write_d4rl_dataset(tmp_path / "x.hdf5", arrays))
    expected_rtg, expected_t = [], []
    for start, length in zip(dataset.episodes.starts, dataset.episodes.lengths):
        rewards = arrays["rewards"][start:start + length].astype(np.float64)
        expected_rtg += [rewards[i:].sum() for i in range(length)]
        expected_t += list(range(length))
    np.testing.assert_allclose(dataset.returns_to_go(), expected_rtg, rtol=1e-9, atol=1e-9)
    assert dataset.timesteps().tolist() == expected_t
    np.testing.assert_allclose(dataset.episode_returns(), [expected_rtg[s] for s in dataset.episodes.starts])


def kitchen_file(tmp_path):
    """A kitchen-layout file with a 500-step demonstration (longer than the 280 evaluated, within LaMo's 1000),
    a 1,200-step one (longer than both) and a short one."""
    return write_d4rl_dataset(tmp_path / "kitchen.hdf5", synthetic_arrays([500, 1200, 100], obs_dim=60, act_dim=9))


def test_kitchen_keeps_demonstrations_whole_up_to_its_data_horizon(tmp_path):
    """LaMo evaluates kitchen for 280 steps but keeps its data's trajectories whole up to max_ep_len 1000
    (experiment-d4rl/experiment.py; data/download_d4rl_datasets.py): a 500-step demonstration keeps its
    returns-to-go and timesteps, a 1,200-step one is split at 1,000, and the notes count both."""
    path, task = kitchen_file(tmp_path), get_task("kitchen-partial")
    assert (task.horizon, task.data_horizon) == (280, 1000)
    dataset = D4RLFile("kitchen.hdf5").read(path, task)
    assert dataset.episodes.lengths.tolist() == [500, 1000, 200, 100]
    whole = slice(0, 500)
    rewards = synthetic_arrays([500, 1200, 100], obs_dim=60, act_dim=9)["rewards"][whole].astype(np.float64)
    np.testing.assert_allclose(dataset.returns_to_go()[whole], rewards[::-1].cumsum()[::-1], rtol=1e-9)
    assert dataset.timesteps()[whole].tolist() == list(range(500))
    kept = ("1 episode(s) longer than the task's evaluation horizon 280 (the longest has 500 steps) were kept whole, "
            "within its data horizon 1000")
    split = "1 episode(s) longer than the task's data horizon 1000 (the longest has 1,200 steps) were split every 1000"
    assert dataset.notes == (kept, f"{split} steps")
    with pytest.raises(DatasetError, match="1 episode.s. longer than the task's data horizon 1000"):
        D4RLFile("kitchen.hdf5").read(path, task, long_episodes="refuse")

    # The same data for a task whose data horizon is its horizon (every other task): split at 280, as before.
    at_horizon = dataclasses.replace(task, data_horizon=None)
    assert at_horizon.data_horizon == 280
    as_before = D4RLFile("kitchen.hdf5").read(path, at_horizon)
    assert as_before.episodes.lengths.tolist() == [280, 220, 280, 280, 280, 280, 80, 100]
    assert as_before.notes == (
        "2 episode(s) longer than the task's horizon 280 (the longest has 1,200 steps) were split every 280 steps",)


def test_kitchen_minari_tasks_share_the_data_horizon():
    assert {name: TASKS[name].data_horizon for name in TASKS if TASKS[name].domain == "kitchen"} == {
        "kitchen-complete": 1000, "kitchen-partial": 1000, "kitchen-complete-minari": 1000,
        "kitchen-partial-minari": 1000}
    assert all(task.data_horizon == task.horizon for task in TASKS.values() if task.domain != "kitchen")


def test_sequence_models_embed_every_timestep_of_the_data_horizon(tmp_path):
    """The timestep table has the data horizon's 1000 rows (LaMo's nn.Embedding(max_ep_len)), so the kept 500-step
    demonstration's late steps are embedded as themselves, not clamped to 279."""
    import torch

    from trainers.runtime.algorithm import TrainingSetup
    from trainers.runtime.registry import build_algorithm, make_config

    task = get_task("kitchen-partial")
    dataset = D4RLFile("kitchen.hdf5").read(kitchen_file(tmp_path), task)
    config = make_config("dt", {"n_layer": 1, "n_embd": 32, "n_head": 2}, task=task)
    setup = TrainingSetup(task=task, dataset=dataset, observation_space=task.observation_space,
                          action_space=task.action_space, device=torch.device("cpu"), seed=0)
    algorithm = build_algorithm("dt", config, setup)
    assert algorithm.model.config.max_timestep == 1000
    windows = algorithm.sampler.windows(np.array([499, 1499]))  # the kept episode's and the split one's last steps
    assert windows.timesteps[0, -1] == 499 and windows.timesteps[1, -1] == 999
    assert windows.timesteps.max() < algorithm.model.config.max_timestep


# --- data ratios ------------------------------------------------------------------------------------------

def small_dataset(tmp_path, lengths=None):
    lengths = lengths or [3 + (i * 7) % 11 for i in range(50)]
    return load_d4rl_dataset(write_d4rl_dataset(tmp_path / "small.hdf5", synthetic_arrays(lengths)))


def test_subsample_keeps_whole_trajectories_and_floor_of_ratio(tmp_path):
    dataset = small_dataset(tmp_path)
    subset = subsample_trajectories(dataset, 0.1, seed=0)
    assert subset.num_episodes == 5 and len(set(subset.episode_ids)) == 5
    for new_start, length, source in zip(subset.episodes.starts, subset.episodes.lengths, subset.episode_ids):
        old_start = dataset.episodes.starts[source]
        assert length == dataset.episodes.lengths[source]
        np.testing.assert_array_equal(subset.rewards[new_start:new_start + length],
                                      dataset.rewards[old_start:old_start + length])
    assert subsample_trajectories(dataset, 1.0, seed=0).num_episodes == 50


def test_subsample_depends_on_seed_and_ratio(tmp_path):
    dataset = small_dataset(tmp_path)
    ids = lambda ratio, seed: subsample_trajectories(dataset, ratio, seed).episode_ids.tolist()  # noqa: E731
    assert ids(0.2, 0) == ids(0.2, 0)
    assert ids(0.2, 0) != ids(0.2, 1)
    assert ids(0.2, 0) != ids(0.3, 0)[:10]


_SUBSET_SCRIPT = """
import json, sys
from trainers.data.d4rl import load_d4rl_dataset
from trainers.data.subsets import subsample_trajectories
d = load_d4rl_dataset(sys.argv[1])
print(json.dumps(subsample_trajectories(d, 0.2, seed=7).episode_ids.tolist()))
"""


def test_subsample_is_identical_in_separate_processes(tmp_path):
    dataset = small_dataset(tmp_path)
    runs = [json.loads(subprocess.run([sys.executable, "-c", _SUBSET_SCRIPT, str(dataset.source)], check=True,
                                      capture_output=True, text=True,
                                      env={**os.environ, "PYTHONHASHSEED": str(hash_seed)}).stdout)
            for hash_seed in (1, 2)]
    assert runs[0] == runs[1] == subsample_trajectories(dataset, 0.2, seed=7).episode_ids.tolist()


def test_ratio_selecting_no_trajectory_names_the_dataset_size(tmp_path):
    dataset = small_dataset(tmp_path)
    with pytest.raises(DatasetError, match="has 50 trajectories"):
        subsample_trajectories(dataset, 0.01, seed=0)
    with pytest.raises(DatasetError, match=r"in \(0, 1\]"):
        subsample_trajectories(dataset, 1.5, seed=0)


def test_state_statistics_come_from_the_subset(tmp_path):
    dataset = small_dataset(tmp_path)
    subset = subsample_trajectories(dataset, 0.1, seed=0)
    mean, std = subset.state_statistics()
    np.testing.assert_allclose(mean, subset.observations.mean(0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(mean, dataset.state_statistics()[0])


def test_top_fraction_keeps_highest_returns(tmp_path):
    dataset = small_dataset(tmp_path)  # episode i's rewards are ≈ i, so later episodes have higher returns
    best = top_fraction_by_return(dataset, 0.1)
    returns = dataset.episode_returns()
    assert set(best.episode_ids.tolist()) == set(np.argsort(-returns)[:5].tolist())
    assert best.episode_returns().min() >= np.sort(returns)[-5]


# --- tasks and locating files -----------------------------------------------------------------------------

def test_unknown_task_lists_known_ones():
    with pytest.raises(KeyError, match="known tasks: .*hopper-medium.*reacher2d-medium"):
        get_task("hoper-medium")


def test_normalized_score_uses_reference_returns():
    hopper = get_task("hopper-medium")
    assert hopper.normalized_score(3234.3) == pytest.approx(100.0)
    assert hopper.normalized_score(-20.272305) == pytest.approx(0.0)
    assert normalized_score(50.0, 0.0, 100.0) == 50.0
    assert get_task("kitchen-partial").normalized_score(2.0) == 50.0
    assert get_task("reacher2d-medium").normalized_score(30.0) == 30.0


@pytest.mark.parametrize("name, obs_dim, act_dim", [("hopper-medium", 11, 3), ("halfcheetah-medium", 17, 6),
                                                    ("walker2d-medium", 17, 6), ("reacher2d-medium", 12, 2),
                                                    ("kitchen-partial", 60, 9)])
def test_task_environments_have_the_d4rl_spaces(name, obs_dim, act_dim):
    env = get_task(name).make_env()
    try:
        assert env.observation_space.shape == (obs_dim,) and env.action_space.shape == (act_dim,)
        obs, _ = env.reset(seed=0)
        assert obs.shape == (obs_dim,)
    finally:
        env.close()


def test_walker2d_uses_the_v2_era_foot_friction():
    env = get_task("walker2d-medium").make_env()
    model = env.unwrapped.model
    frictions = {model.geom(i).name: model.geom_friction[i, 0] for i in range(model.ngeom)}
    env.close()
    assert frictions["foot_geom"] == pytest.approx(0.9) and frictions["foot_left_geom"] == pytest.approx(1.9)


def test_missing_dataset_lists_paths_tried_and_how_to_get_it(d4rl_dir):
    with pytest.raises(DatasetError) as error:
        load_task_dataset(get_task("hopper-medium"))
    message = str(error.value)
    assert str(d4rl_dir / "hopper_medium-v2.hdf5") in message and ".d4rl/datasets" in message
    assert "python -m trainers.tools.fetch hopper-medium" in message
    assert "http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2/hopper_medium-v2.hdf5" in message
    with pytest.raises(DatasetError, match="python -m trainers.tools.make_dataset --task reacher2d-expert"):
        load_task_dataset(get_task("reacher2d-expert"))


def test_cache_convention_finds_the_file(d4rl_dir, reacher_medium_path):
    (d4rl_dir / "reacher2d-medium.hdf5").write_bytes(reacher_medium_path.read_bytes())
    dataset = load_task_dataset(get_task("reacher2d-medium"))
    assert dataset.name == "reacher2d-medium" and dataset.observation_dim == 12


# --- bad input --------------------------------------------------------------------------------------------

def _broken(arrays: dict, key: str, value) -> dict:
    broken = dict(arrays)
    if value is None:
        del broken[key]
    else:
        broken[key] = value
    return broken


GOOD = synthetic_arrays([5, 5], obs_dim=12, act_dim=2)
BAD_CASES = {
    "missing key": (_broken(GOOD, "actions", None), r"actions: missing"),
    "wrong observation width": (_broken(GOOD, "observations", np.zeros((10, 11), np.float32)),
                                r"observations: expected shape \(N, 12\)"),
    "wrong action width": (_broken(GOOD, "actions", np.zeros((10, 3), np.float32)),
                           r"actions: expected shape \(10, 2\), got \(10, 3\)"),
    "mismatched length": (_broken(GOOD, "rewards", np.zeros(9, np.float32)),
                          r"rewards: expected shape \(10,\) \(same length as observations\), got \(9,\)"),
    "mismatched flags": (_broken(GOOD, "terminals", np.zeros(11, bool)), r"terminals: expected shape \(10,\)"),
    "empty": ({k: v[:0] for k, v in GOOD.items()}, r"observations: expected a non-empty"),
    "nan": (_broken(GOOD, "observations", np.where(np.eye(10, 12) > 0, np.nan, 0).astype(np.float32)),
            r"observations: 10 rows contain NaN or inf \(first at index 0\)"),
    "inf reward": (_broken(GOOD, "rewards", np.r_[np.zeros(9), np.inf].astype(np.float32)),
                   r"rewards: 1 rows contain NaN or inf \(first at index 9\)"),
}


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_files_are_rejected_naming_key_and_expected_shape(tmp_path, case):
    arrays, message = BAD_CASES[case]
    path = tmp_path / "bad.hdf5"
    write_raw(path, arrays)
    with pytest.raises(DatasetError, match=message) as error:
        load_d4rl_dataset(path, task=get_task("reacher2d-medium"))
    assert str(path) in str(error.value)


@pytest.mark.parametrize("case", BAD_CASES)
def test_nothing_is_written_when_validation_fails(tmp_path, case):
    arrays, message = BAD_CASES[case]
    with pytest.raises(DatasetError, match=message):
        write_d4rl_dataset(tmp_path / "out.hdf5", arrays, task=get_task("reacher2d-medium"))
    assert list(tmp_path.iterdir()) == []


def test_all_problems_are_reported_together(tmp_path):
    arrays = _broken(_broken(GOOD, "rewards", np.zeros(3)), "terminals", np.zeros(4, bool))
    with pytest.raises(DatasetError, match="rewards: .*; terminals: "):
        write_d4rl_dataset(tmp_path / "out.hdf5", arrays)


def test_registry_entries_are_complete():
    for task in TASKS.values():
        assert task.ref_max_score > task.ref_min_score and task.target_returns and task.horizon > 0
        assert task.context_len > 0
        # Every task's data has a reader: D4RL's hdf5 file, a Minari dataset, or DQN Replay checkpoints
        reader = task.dataset_reader
        assert isinstance(reader, (D4RLFile, MinariData, DQNReplay)), task.name
        assert not isinstance(reader, D4RLFile) or reader.file_name.endswith(".hdf5")
        assert task.dataset_name == reader.name and task.dataset_id == reader.dataset_id
