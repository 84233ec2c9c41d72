from __future__ import annotations

import numpy as np
import pytest
from conftest import synthetic_arrays

from bench.dt_reference import PerSampleWindowSampler
from trainers.data.d4rl import load_d4rl_dataset, write_d4rl_dataset
from trainers.data.samplers import PAD_ACTION, TransitionSampler, WindowSampler

LENGTHS = [1, 4, 12, 30, 7, 25]


@pytest.fixture
def dataset(tmp_path):
    return load_d4rl_dataset(write_d4rl_dataset(tmp_path / "d.hdf5", synthetic_arrays(LENGTHS, end="terminal")))


def test_windows_equal_decision_transformers_per_sample_batches(dataset):
    mean, std = dataset.state_statistics()
    k, scale, max_t = 8, 10.0, 20
    ours = WindowSampler(dataset, k, scale, mean, std, max_timestep=max_t)
    reference = PerSampleWindowSampler(dataset, k, scale, mean, std, max_t)
    starts = np.arange(len(dataset))  # every possible window start, each episode's last step included
    batch = ours.windows(starts)
    episode = np.repeat(np.arange(dataset.num_episodes), dataset.episodes.lengths)  # of each step
    for i, start in enumerate(starts):
        expected = reference.window(int(episode[start]), int(start - dataset.episodes.starts[episode[start]]))
        for key, value in expected.items():
            np.testing.assert_allclose(getattr(batch, key)[i], value, rtol=1e-5, atol=1e-6, err_msg=key)


def test_padding_is_on_the_left_with_dt_values(dataset):
    batch = WindowSampler(dataset, 5, 1.0).windows(np.array([0]))  # the one-step episode
    assert batch.mask[0].tolist() == [False] * 4 + [True]
    assert (batch.actions[0, :4] == PAD_ACTION).all() and (batch.states[0, :4] == 0).all()
    assert (batch.timesteps[0] == 0).all() and (batch.returns_to_go[0, :4] == 0).all()


def test_windows_never_cross_an_episode_end(dataset):
    batch = WindowSampler(dataset, 10, 1.0).sample(500, np.random.default_rng(0))
    episode_of_reward = np.floor(batch.rewards)  # synthetic rewards are episode index + step / 1000
    for row, mask in zip(episode_of_reward, batch.mask):
        assert len(set(row[mask])) == 1


def test_trajectories_are_drawn_in_proportion_to_length(dataset):
    batch = WindowSampler(dataset, 1, 1.0).sample(60_000, np.random.default_rng(1))
    counts = np.bincount(np.floor(batch.rewards[:, 0]).astype(int), minlength=len(LENGTHS))
    expected = np.array(LENGTHS) / sum(LENGTHS)
    np.testing.assert_allclose(counts / counts.sum(), expected, atol=0.01)


def test_transitions_follow_episodes_and_treat_timeouts_as_non_terminal(tmp_path):
    arrays = synthetic_arrays([3, 4, 2], end="timeout")
    arrays["terminals"][6] = True  # the second episode terminates instead
    arrays["timeouts"][6] = False
    dataset = load_d4rl_dataset(write_d4rl_dataset(tmp_path / "t.hdf5", arrays))
    sampler = TransitionSampler(dataset)
    # Steps 2 (timeout) and 8 (trailing timeout) have no successor in the file and are left out.
    assert len(sampler) == 9 - 2
    batch = sampler.sample(2000, np.random.default_rng(0))
    for obs, next_obs, done, reward in zip(batch.observations, batch.next_observations, batch.dones, batch.rewards):
        i = int(np.flatnonzero((dataset.observations == obs).all(1))[0])
        assert i not in (2, 8)
        assert done == (i == 6)
        np.testing.assert_array_equal(next_obs, dataset.observations[i if i == 6 else i + 1])
        assert reward == dataset.rewards[i]


def test_transitions_use_stored_next_observations(tmp_path):
    arrays = synthetic_arrays([3, 4])
    arrays["next_observations"] = arrays["observations"] + 100
    dataset = load_d4rl_dataset(write_d4rl_dataset(tmp_path / "n.hdf5", arrays))
    sampler = TransitionSampler(dataset)
    assert len(sampler) == 7
    batch = sampler.sample(50, np.random.default_rng(0))
    np.testing.assert_array_equal(batch.next_observations, batch.observations + 100)
    assert (batch.dones == 0).all()
