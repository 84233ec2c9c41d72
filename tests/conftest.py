from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainers.make_dataset import make_dataset


def synthetic_arrays(episode_lengths: list[int], obs_dim: int = 3, act_dim: int = 2, seed: int = 0,
                     end: str = "timeout") -> dict[str, np.ndarray]:
    """D4RL-layout arrays with the given episodes; rewards encode (episode, step) so splits are checkable."""
    rng = np.random.default_rng(seed)
    n = sum(episode_lengths)
    rewards = np.concatenate([np.full(length, float(i)) + np.arange(length) / 1000
                              for i, length in enumerate(episode_lengths)])
    ends = np.cumsum(episode_lengths) - 1
    terminals = np.zeros(n, bool)
    timeouts = np.zeros(n, bool)
    (timeouts if end == "timeout" else terminals)[ends] = True
    return {"observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
            "actions": rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32),
            "rewards": rewards.astype(np.float32), "terminals": terminals, "timeouts": timeouts}


@pytest.fixture(scope="session")
def reacher_medium_path(tmp_path_factory) -> Path:
    """A small reacher2d-medium dataset generated with the real simulator (shared by the session's tests)."""
    return make_dataset("reacher2d-medium", out=tmp_path_factory.mktemp("d4rl") / "reacher2d-medium.hdf5",
                        seed=0, num_episodes=60, random_episodes=10)


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray instance for the session's Train/Tune tests, stopped at the end (ray.shutdown stops the
    processes ray.init started)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=True, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def d4rl_dir(tmp_path, monkeypatch) -> Path:
    """An empty d4rl cache directory, so no test sees a user's real ~/.d4rl."""
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path
