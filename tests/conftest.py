from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainers.tools.make_dataset import make_dataset

REPO = Path(__file__).resolve().parents[1]
# What the main job (README command 1) leaves in the checkout, and its caches: no test may see them or need them.
RUN_OUTPUTS = ("models", "data", "mlflow.db", "mlruns", "reports", "ray_results")
DEFAULT_LOCATIONS = (
    "MLFLOW_TRACKING_URI", "LAMO_SWEEPS_STORAGE", "LAMO_D4RL_BASE_URL", "RAY_ADDRESS", "LAMO_DATASET_CACHE")


@pytest.fixture(scope="session", autouse=True)
def away_from_the_checkout(tmp_path_factory):
    """Every test runs in an empty working directory with an empty LaMo cache, so it passes alike in a fresh clone
    and in a checkout where the main job ran: the job's models/, data/, mlflow.db, reports/ and ray_results/ are
    not in the working directory, ~/.cache/lamo-sweeps is not the cache, and defaults that name a location
    (sqlite:///mlflow.db, ray_results) land in the session's directory. Subprocesses inherit both; tests read
    repository files by their path from REPO. At the end, the checkout's run outputs are as they were."""
    before = _run_outputs()
    session = tmp_path_factory.mktemp("session")
    patch = pytest.MonkeyPatch()
    (session / "cwd").mkdir()
    patch.chdir(session / "cwd")
    patch.setenv("LAMO_CACHE_DIR", str(session / "lamo-cache"))
    for name in DEFAULT_LOCATIONS:
        patch.delenv(name, raising=False)
    yield session
    patch.undo()
    assert _run_outputs() == before, "a test wrote the main job's outputs into the checkout"


def _run_outputs() -> dict[str, int | None]:
    return {name: (REPO / name).stat().st_mtime_ns if (REPO / name).exists() else None for name in RUN_OUTPUTS}


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


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small models on a shared 2-core machine: one intra-op thread is several times faster than two contending
    OpenMP threads (measured on the locomotion MLPs: BC at 1–10 steps/s with two instead of ~700). For a whole
    module: `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
