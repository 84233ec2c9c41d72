"""The offline RL baselines (baselines/): what one update changes, learning on real reacher2d data in the real
simulator, exact checkpoints and exports, determinism, and errors on bad input.

Everything runs single-threaded (small networks gain nothing from a second thread, and one thread keeps the
timings steady when the machine is shared); the whole file takes about a minute and a half on two cores, most
of it in the five learning tests.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import fields

import gymnasium as gym
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from trainers.data.d4rl import load_d4rl_dataset
from trainers.data.samplers import TransitionBatch, to_torch
from trainers.runtime.algorithm import (
    Algorithm,
    ConfigError,
    NonFiniteLossError,
    StatelessPolicy,
    TrainingSetup,
)
from trainers.runtime.evaluation import evaluate_batched
from trainers.runtime.registry import build_algorithm, make_config
from trainers.runtime.tasks import get_task
from trainers.tools.make_dataset import make_dataset

ALGORITHMS = ("cql", "iql", "td3_bc", "bc", "bc_10")
MODULE_NAME = {"cql": "cql", "iql": "iql", "td3_bc": "td3_bc", "bc": "bc", "bc_10": "bc"}
# Tiny networks for the mechanical tests; CQL's BC warm start ends after the first update so both actor
# objectives run.
TINY = {
    "cql": {"hidden_dims": (32, 32), "cql_n_actions": 3, "bc_steps": 1},
    "iql": {"hidden_dims": (32, 32)},
    "td3_bc": {"hidden_dims": (32, 32)},
    "bc": {"hidden_dims": (32, 32)},
    "bc_10": {"hidden_dims": (32, 32)},
}
TASK = get_task("reacher2d-medium")
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def spaces() -> tuple[gym.spaces.Box, gym.spaces.Box]:
    env = TASK.make_env()
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


@pytest.fixture(scope="module")
def small(reacher_medium_path):
    """60 medium episodes (the session's shared file) for the mechanical tests."""
    return load_d4rl_dataset(reacher_medium_path)


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    return load_d4rl_dataset(make_dataset("reacher2d-medium", out=tmp_path_factory.mktemp("bl") / "medium.hdf5",
                                          seed=0, num_episodes=200, random_episodes=5))


@pytest.fixture(scope="module")
def expert(tmp_path_factory):
    return load_d4rl_dataset(make_dataset("reacher2d-expert", out=tmp_path_factory.mktemp("bl") / "expert.hdf5",
                                          seed=0, num_episodes=100, random_episodes=5))


def make_setup(spaces, dataset, seed: int = 0, action_space: gym.Space | None = None) -> TrainingSetup:
    observation_space, box = spaces
    return TrainingSetup(task=TASK, dataset=dataset, observation_space=observation_space,
                         action_space=action_space if action_space is not None else box, device=CPU, seed=seed)


def build(name: str, spaces, dataset, seed: int = 0, **overrides):
    config = make_config(name, {**TINY[name], **overrides})
    return build_algorithm(name, config, make_setup(spaces, dataset, seed)), config


def batch_of(algorithm, rng: np.random.Generator, size: int = 64) -> TransitionBatch:
    return to_torch(algorithm.sampler.sample(size, rng), CPU)


def train(algorithm, steps: int, rng: np.random.Generator, batch_size: int = 64) -> list[dict[str, float]]:
    """What the worker loop does: sample → to_torch → update."""
    return [algorithm.update(batch_of(algorithm, rng, batch_size)) for _ in range(steps)]


def snapshot(algorithm) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {key: value.detach().clone() for key, value in module.state_dict().items()}
            for name, module in algorithm.networks().items()}


def assert_all_changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], what: str) -> None:
    for key in before:
        assert not torch.equal(before[key], after[key]), f"{what}.{key} did not change"


def assert_unchanged(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], what: str) -> None:
    for key in before:
        assert torch.equal(before[key], after[key]), f"{what}.{key} changed"


def assert_polyak(old_target, new_online, new_target, tau: float, what: str) -> None:
    for key in old_target:
        expected = (1 - tau) * old_target[key] + tau * new_online[key]
        assert torch.equal(new_target[key], expected), f"{what}.{key} is not (1 − τ)·old + τ·online"


def actions_on(algorithm, observations: np.ndarray) -> np.ndarray:
    policy = algorithm.policy(len(observations), None)
    assert isinstance(policy, StatelessPolicy)
    actions = policy.act(observations)
    assert actions.dtype == np.float32 and actions.shape == (len(observations), 2)
    return actions


# --- what one update changes -----------------------------------------------------------------------------------


def test_td3_bc_updates_the_actor_and_targets_only_every_policy_delay_steps(spaces, small):
    algorithm, config = build("td3_bc", spaces, small)
    rng = np.random.default_rng(0)
    before = snapshot(algorithm)
    metrics = algorithm.update(batch_of(algorithm, rng))
    after = snapshot(algorithm)
    assert "actor_loss" not in metrics
    assert_all_changed(before["critic"], after["critic"], "critic")
    for name in ("actor", "actor_target", "critic_target", "normalizer"):
        assert_unchanged(before[name], after[name], name)

    metrics = algorithm.update(batch_of(algorithm, rng))  # step 2 = policy_delay: actor and both targets
    final = snapshot(algorithm)
    assert "actor_loss" in metrics and "lmbda" in metrics
    assert_all_changed(after["actor"], final["actor"], "actor")
    assert_all_changed(after["critic"], final["critic"], "critic")
    assert_polyak(after["critic_target"], final["critic"], final["critic_target"], config.tau, "critic_target")
    assert_polyak(after["actor_target"], final["actor"], final["actor_target"], config.tau, "actor_target")
    assert_unchanged(after["normalizer"], final["normalizer"], "normalizer")


def test_iql_updates_value_actor_critic_and_polyak_averages_the_target(spaces, small):
    algorithm, config = build("iql", spaces, small)
    before = snapshot(algorithm)
    metrics = algorithm.update(batch_of(algorithm, np.random.default_rng(0)))
    after = snapshot(algorithm)
    for name in ("value", "actor", "critic"):
        assert_all_changed(before[name], after[name], name)
    assert_polyak(before["critic_target"], after["critic"], after["critic_target"], config.tau, "critic_target")
    assert_unchanged(before["normalizer"], after["normalizer"], "normalizer")
    # Cosine decay of the actor's lr over num_steps (optax.cosine_decay_schedule).
    assert metrics["actor_lr"] == pytest.approx(config.actor_lr)
    assert algorithm.actor_lr(config.num_steps // 2) == pytest.approx(config.actor_lr / 2)
    assert algorithm.actor_lr(config.num_steps) == pytest.approx(0.0, abs=1e-12)
    # Rewards scaled by horizon / (max − min trajectory return) of the training set.
    returns = small.episode_returns()
    assert algorithm.reward_scale == pytest.approx(TASK.horizon / (returns.max() - returns.min()))


def test_cql_updates_actor_critic_and_temperature_and_polyak_averages_the_target(spaces, small):
    algorithm, config = build("cql", spaces, small)
    rng = np.random.default_rng(0)
    for _ in range(2):  # update 1 uses the BC actor objective, update 2 the Q objective
        before = snapshot(algorithm)
        algorithm.update(batch_of(algorithm, rng))
        after = snapshot(algorithm)
        for name in ("actor", "critic", "log_alpha"):
            assert_all_changed(before[name], after[name], name)
        assert_polyak(before["critic_target"], after["critic"], after["critic_target"], config.tau, "critic_target")
        assert_unchanged(before["normalizer"], after["normalizer"], "normalizer")


@pytest.mark.parametrize("name", ["bc", "bc_10"])
def test_bc_has_no_critic_and_updates_only_its_actor(spaces, small, name):
    algorithm, config = build(name, spaces, small)
    assert set(algorithm.networks()) == {"normalizer", "actor"}
    before = snapshot(algorithm)
    algorithm.update(batch_of(algorithm, np.random.default_rng(0)))
    after = snapshot(algorithm)
    assert_all_changed(before["actor"], after["actor"], "actor")
    assert_unchanged(before["normalizer"], after["normalizer"], "normalizer")
    if name == "bc_10":  # the top 10 % of trajectories by return, and statistics of that subset
        kept = algorithm.dataset
        assert kept.num_episodes == small.num_episodes // 10
        assert kept.episode_returns().min() >= np.sort(small.episode_returns())[-kept.num_episodes]
        np.testing.assert_allclose(algorithm.normalizer.obs_mean.numpy(), kept.state_statistics(1e-3)[0])


def test_ensemble_critic_matches_separate_networks_and_cpu_blocking(monkeypatch):
    """Member i of the ensemble is the MLP with weights[·][i]; row blocking on CPU changes nothing but speed."""
    from baselines.common import EnsembleMLP

    torch.manual_seed(0)
    ensemble, x = EnsembleMLP(2, 5, (16, 16), 1), torch.randn(50, 5)
    out = ensemble(x)
    for i in range(2):
        h = x
        for layer, (w, b) in enumerate(zip(ensemble.weights, ensemble.biases)):
            h = h @ w[i] + b[i]
            h = torch.relu(h) if layer < 2 else h
        torch.testing.assert_close(out[i], h)
        torch.testing.assert_close(ensemble(x, member=i)[0], h)
    out.square().sum().backward()
    grads = [p.grad.clone() for p in ensemble.parameters()]
    ensemble.zero_grad()
    monkeypatch.setattr(EnsembleMLP, "CPU_BLOCK_ROWS", 7)
    blocked = ensemble(x)
    blocked.square().sum().backward()
    torch.testing.assert_close(blocked, out)
    for grad, p in zip(grads, ensemble.parameters()):
        torch.testing.assert_close(p.grad, grad)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_algorithm_protocol_fused_adam_and_defaults(spaces, small, name):
    algorithm, _ = build(name, spaces, small)
    assert isinstance(algorithm, Algorithm)
    assert algorithm.return_conditioned is False
    assert all(optimizer.defaults.get("fused") for optimizer in algorithm.optimizers.values())
    config = make_config(name)
    assert (config.num_steps, config.eval_every, config.eval_episodes, config.batch_size) == (1_000_000, 5000, 10, 256)
    kitchen = importlib.import_module(f"baselines.{MODULE_NAME[name]}").ALGORITHM.domain_settings.get("kitchen", {})
    assert set(kitchen) <= {f.name for f in fields(config)}
    make_config(name, kitchen)  # valid values too


def test_published_defaults():
    td3 = make_config("td3_bc")
    assert (td3.alpha, td3.policy_noise, td3.noise_clip, td3.policy_delay, td3.actor_lr, td3.critic_lr,
            td3.discount, td3.tau, td3.normalize_states) == (2.5, 0.2, 0.5, 2, 3e-4, 3e-4, 0.99, 0.005, True)
    iql = make_config("iql")
    assert (iql.expectile, iql.temperature, iql.max_weight, iql.actor_lr, iql.discount, iql.tau,
            iql.deterministic_actor) == (0.7, 3.0, 100.0, 3e-4, 0.99, 0.005, False)
    cql = make_config("cql")
    assert (cql.cql_alpha, cql.cql_n_actions, cql.critic_lr, cql.policy_lr) == (5.0, 10, 3e-4, 1e-4)
    assert make_config("bc_10").top_fraction == 0.1 and make_config("bc").top_fraction == 1.0


# --- learning on real data --------------------------------------------------------------------------------------


def normalized_score(make_policy, episodes: int = 50) -> float:
    return float(evaluate_batched(TASK, make_policy, episodes, seed=1).targets[0].normalized.mean())


@pytest.fixture(scope="module")
def random_score() -> float:
    rng = np.random.default_rng(0)
    return normalized_score(lambda n, _: StatelessPolicy(
        lambda obs: rng.uniform(-1, 1, size=(len(obs), 2)).astype(np.float32)))


# (algorithm, data, gradient steps, overrides): 128-unit networks except BC on expert data (default 256, which
# gets close to the expert sooner); CQL also with 4 sampled actions per proposal, a 1000-step BC warm start and
# larger learning rates to fit the budget. Everything else is the default.
LEARNING = [
    ("bc", "expert", 6000, {"hidden_dims": (256, 256)}),
    ("bc_10", "medium", 2000, {}),
    ("td3_bc", "medium", 3000, {}),
    ("iql", "medium", 4000, {}),
    ("cql", "medium", 2400, {"cql_n_actions": 4, "bc_steps": 1000, "policy_lr": 1e-3, "critic_lr": 1e-3}),
]


@pytest.mark.parametrize("name, data, steps, overrides", LEARNING, ids=[case[0] for case in LEARNING])
def test_learns_well_above_a_random_policy(spaces, request, random_score, name, data, steps, overrides):
    dataset = request.getfixturevalue(data)
    config = make_config(name, {"hidden_dims": (128, 128), **overrides})
    algorithm = build_algorithm(name, config, make_setup(spaces, dataset))
    started = time.perf_counter()
    train(algorithm, steps, np.random.default_rng(0), batch_size=256)
    trained = time.perf_counter() - started
    score = normalized_score(algorithm.policy)
    print(f"{name} on {data}: {score:.1f} after {steps} steps ({trained:.0f} s), random {random_score:.1f}")
    assert score >= random_score + 10.0
    if data == "expert":  # BC on expert data approaches the expert (normalized score = return on reacher2d)
        assert score >= 0.7 * dataset.episode_returns().mean()


# --- checkpoints, export, determinism -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALGORITHMS)
def test_checkpoint_round_trip_reproduces_actions_and_the_next_update(spaces, small, tmp_path, name):
    algorithm, config = build(name, spaces, small, normalize_states=True)
    rng = np.random.default_rng(0)
    train(algorithm, 3, rng)
    torch.save(algorithm.state_dict(), tmp_path / "checkpoint.pt")  # as the worker loop stores it
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    fresh = build_algorithm(name, config, make_setup(spaces, small, seed=123))  # other seed: all must come from state
    fresh.load_state_dict(state)
    observations = small.observations[:64]
    np.testing.assert_array_equal(actions_on(fresh, observations), actions_on(algorithm, observations))
    batch = batch_of(algorithm, rng)
    assert fresh.update(batch) == algorithm.update(batch)  # every loss and statistic, bit for bit
    assert fresh.step == algorithm.step == 4
    np.testing.assert_array_equal(actions_on(fresh, observations), actions_on(algorithm, observations))


@pytest.mark.parametrize("overrides", [{"deterministic_actor": True}, "kitchen"], ids=["deterministic", "kitchen"])
def test_iql_variants_resume_exactly(spaces, small, overrides):
    """The deterministic-actor variant and the kitchen settings (actor dropout, whose masks come from the
    checkpointed generator, so a resumed run continues bit for bit)."""
    from baselines.iql import DOMAIN_SETTINGS

    overrides = DOMAIN_SETTINGS["kitchen"] if overrides == "kitchen" else overrides
    algorithm, config = build("iql", spaces, small, **overrides)
    rng = np.random.default_rng(0)
    train(algorithm, 3, rng)
    fresh = build_algorithm("iql", config, make_setup(spaces, small, seed=9))
    fresh.load_state_dict(algorithm.state_dict())
    batch = batch_of(algorithm, rng)
    assert fresh.update(batch) == algorithm.update(batch)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_export_then_rebuild_without_data_reproduces_actions(spaces, small, tmp_path, name):
    algorithm, config = build(name, spaces, small, normalize_states=True)
    train(algorithm, 3, np.random.default_rng(0))
    paths = algorithm.export(tmp_path)
    assert [p.suffix for p in paths] == [".safetensors"] and all(p.is_file() for p in paths)
    tensors = load_file(str(paths[0]))
    assert {"normalizer.obs_mean", "normalizer.obs_std"} <= set(tensors)
    assert not any(key.startswith(("critic", "value")) for key in tensors)  # only what acting needs
    rebuilt = build_algorithm(name, config, make_setup(spaces, None, seed=7))
    assert rebuilt.sampler is None
    observations = small.observations[:64]
    assert not np.array_equal(actions_on(rebuilt, observations), actions_on(algorithm, observations))
    rebuilt.load_exported(tmp_path)
    np.testing.assert_array_equal(actions_on(rebuilt, observations), actions_on(algorithm, observations))


@pytest.mark.parametrize("name", ALGORITHMS)
def test_same_seed_gives_the_same_first_50_losses(spaces, small, name):
    runs = [train(build(name, spaces, small, seed=seed)[0], 50, np.random.default_rng(0)) for seed in (5, 5, 6)]
    assert runs[0] == runs[1]
    assert runs[0][0] != runs[2][0]


# --- bad input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALGORITHMS)
def test_unknown_hyperparameter_lists_the_valid_ones(name):
    with pytest.raises(ConfigError, match=r"unknown hyperparameter\(s\) lernrate; valid: .*num_steps"):
        make_config(name, {"lernrate": 1e-3})


@pytest.mark.parametrize("name", ALGORITHMS)
def test_discrete_action_space_is_rejected_before_training(spaces, small, name):
    config = make_config(name, TINY[name])
    setup = make_setup(spaces, small, action_space=gym.spaces.Discrete(3))
    with pytest.raises(ValueError, match=rf"^{MODULE_NAME[name]} needs a continuous .*Discrete\(3\)"):
        build_algorithm(name, config, setup)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_nan_in_a_batch_raises_naming_the_step_and_quantities(spaces, small, name):
    algorithm, _ = build(name, spaces, small)
    rng = np.random.default_rng(0)
    train(algorithm, 2, rng)
    batch = batch_of(algorithm, rng)
    batch.observations[3, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"at step 3: .*(critic|actor)_loss=nan") as error:
        algorithm.update(batch)
    assert error.value.step == 3
    assert any(np.isnan(value) for value in error.value.quantities.values())
