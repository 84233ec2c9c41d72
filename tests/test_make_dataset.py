from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from trainers.data.d4rl import load_d4rl_dataset
from trainers.data.loading import load_task_dataset
from trainers.data.trajectories import DatasetError
from trainers.runtime.tasks import get_task
from trainers.tools.make_dataset import main, make_dataset


def test_generated_reacher_file_has_d4rl_layout_and_honest_metadata(reacher_medium_path):
    task = get_task("reacher2d-medium")
    dataset = load_d4rl_dataset(reacher_medium_path, task=task)
    meta = dataset.metadata
    assert dataset.num_episodes == 60 and (dataset.episodes.lengths == 100).all()
    assert dataset.timeouts.sum() == 60 and not dataset.terminals.any()
    assert meta["behaviour_mean_return"] == pytest.approx(dataset.episode_returns().mean())
    assert meta["task"] == "reacher2d-medium" and meta["env_id"] == "Reacher2d-v0" and meta["seed"] == 0
    assert "medium" in meta["behaviour_policy"] and meta["mujoco_version"]
    # The medium behaviour is clearly better than random and clearly worse than a perfect policy.
    assert meta["random_mean_return"] + 10 < meta["behaviour_mean_return"] < 60
    np.testing.assert_allclose(dataset.next_observations[:-1][~dataset.timeouts[:-1]],
                               dataset.observations[1:][~dataset.timeouts[:-1]])


def test_generation_is_deterministic_and_seeded(tmp_path):
    paths = [make_dataset("reacher2d-expert", out=tmp_path / f"{i}.hdf5", seed=seed, num_episodes=4,
                          random_episodes=2) for i, seed in enumerate((3, 3, 4))]
    a, b, c = (load_d4rl_dataset(p) for p in paths)
    np.testing.assert_array_equal(a.observations, b.observations)
    np.testing.assert_array_equal(a.actions, b.actions)
    assert not np.array_equal(a.observations, c.observations)


def test_step_budget_keeps_whole_episodes(tmp_path):
    path = make_dataset("hopper-random-gen", out=tmp_path / "h.hdf5", num_steps=300, random_episodes=2)
    dataset = load_d4rl_dataset(path, task=get_task("hopper-random-gen"))
    assert 300 <= len(dataset) < 300 + 16 * 1000
    assert not dataset.episodes.truncated.any()  # every episode ran to its terminal or timeout
    assert dataset.terminals.sum() == dataset.num_episodes  # random hopper always falls


def test_sac_medium_policy_path(tmp_path):
    pytest.importorskip("stable_baselines3")
    path = make_dataset("hopper-medium-gen", out=tmp_path / "m.hdf5", num_steps=200, sac_steps=150,
                        random_episodes=2)
    meta = load_d4rl_dataset(path).metadata
    assert "SAC trained online for 150 steps" in meta["behaviour_policy"]


def test_existing_file_is_never_overwritten_silently(tmp_path, reacher_medium_path):
    before = reacher_medium_path.read_bytes()
    with pytest.raises(DatasetError, match="already exists; pass --overwrite"):
        make_dataset("reacher2d-medium", out=reacher_medium_path, num_episodes=2)
    assert reacher_medium_path.read_bytes() == before


def test_cli_writes_to_the_d4rl_cache_by_default(d4rl_dir):
    assert main(["--task", "reacher2d-random", "--episodes", "3"]) == 0
    assert load_task_dataset(get_task("reacher2d-random")).num_episodes == 3


@pytest.mark.parametrize("args, message", [
    (["--task", "hopper-medium"], "reads an external dataset (hopper-medium-v2; fetch it with `python -m "
                                  "trainers.tools.fetch hopper-medium`)"),
    (["--task", "nope"], "unknown task 'nope'; known tasks:"),
])
def test_cli_bad_input_is_a_clear_error_and_writes_nothing(d4rl_dir, args, message):
    run = subprocess.run([sys.executable, "-m", "trainers.tools.make_dataset", *args], capture_output=True, text=True)
    assert run.returncode == 2 and message in run.stderr
    assert not any(d4rl_dir.glob("*.hdf5"))
