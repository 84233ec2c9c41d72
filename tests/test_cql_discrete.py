"""Discrete CQL in the CQL authors' Atari form (baselines/cql_discrete.py): one update's QR-DQN + CQL loss against a
computation written out here, the target network's copy schedule, TensorFlow's Adam ε, the resolved Atari config,
the greedy policy over quantile means, and the fidelity note."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from baselines.cql_discrete import DIFFERENCES, DiscreteCQL
from baselines.discrete_common import PixelNetwork
from orchestrator.fidelity import fidelity_notes
from orchestrator.runs import TrialRun
from trainers.data.samplers import TransitionBatch
from trainers.runtime.record import make_record
from trainers.runtime.registry import TrainingSetup, declaration, make_config
from trainers.runtime.tasks import get_task

TASK = get_task("breakout-medium")
SMALL = {"batch_size": 4, "num_quantiles": 5, "feature_size": 16, "cnn_channels": (4, 8, 8)}

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def build(overrides=None, seed=0) -> DiscreteCQL:
    config = make_config("cql", SMALL | (overrides or {}), task=TASK)
    setup = TrainingSetup(task=TASK, dataset=None, observation_space=TASK.observation_space,
                          action_space=TASK.action_space, device=torch.device("cpu"), seed=seed)
    return DiscreteCQL(config, setup)


def random_batch(rng: np.random.Generator, size: int = 4) -> TransitionBatch:
    def frames():
        return torch.from_numpy(rng.integers(0, 256, (size, 4, 84, 84), dtype=np.uint8))

    return TransitionBatch(observations=frames(), actions=torch.from_numpy(rng.integers(0, 4, size)),
                           rewards=torch.tensor([0.0, 1.0, -1.0, 1.0][:size]), next_observations=frames(),
                           dones=torch.tensor([0.0, 0.0, 1.0, 0.0][:size]))


def raw_quantiles(network, frames) -> np.ndarray:
    """The head's outputs (B, A·N) read as (B, A, N), in float64, bypassing the module's own reshaping."""
    with torch.no_grad():
        out = PixelNetwork.forward(network, frames).double().numpy()
    return out.reshape(len(out), network.num_actions, network.num_quantiles)


def hand_loss(online: np.ndarray, target_next: np.ndarray, batch: TransitionBatch, gamma: float, kappa: float,
              alpha: float) -> tuple[float, float, float, dict]:
    """QR-DQN's loss with the CQL term, element by element (quantile_agent.py's formulas)."""
    size, actions, n = online.shape
    taus = [(2 * i + 1) / (2 * n) for i in range(n)]
    seen = {"linear": False, "quadratic": False, "negative": False, "positive": False}
    td_per_sample, lse, q_data = [], [], []
    for b in range(size):
        a = int(batch.actions[b])
        r, d = float(batch.rewards[b]), float(batch.dones[b])
        next_means = [sum(target_next[b, k]) / n for k in range(actions)]
        best = max(range(actions), key=lambda k: next_means[k])  # the target network's greedy action
        targets = [r + gamma * (1 - d) * target_next[b, best, j] for j in range(n)]
        total = 0.0
        for i in range(n):
            row = 0.0
            for j in range(n):
                u = targets[j] - online[b, a, i]
                if abs(u) <= kappa:
                    huber, seen["quadratic"] = 0.5 * u * u, True
                else:
                    huber, seen["linear"] = kappa * (abs(u) - 0.5 * kappa), True
                seen["negative" if u < 0 else "positive"] = True
                row += abs(taus[i] - (1.0 if u < 0 else 0.0)) * huber
            total += row / n  # mean over the target's quantiles, summed over the prediction's
        td_per_sample.append(total)
        means = [sum(online[b, k]) / n for k in range(actions)]
        lse.append(math.log(sum(math.exp(m) for m in means)))
        q_data.append(means[a])
    td = sum(td_per_sample) / size
    conservative = sum(lse) / size - sum(q_data) / size
    return td + alpha * conservative, td, conservative, seen


def test_one_update_computes_the_quantile_huber_loss_with_the_target_networks_action_and_the_cql_term():
    algorithm = build({"cql_alpha": 0.7, "kappa": 1.0, "discount": 0.9})
    with torch.no_grad():  # a target network unlike the online one, and quantiles spread over several κ
        algorithm.target_network.load_state_dict(build(seed=1).network.state_dict())
        algorithm.network.head.weight.mul_(40.0)
        algorithm.target_network.head.weight.mul_(40.0)
    batch = random_batch(np.random.default_rng(0))
    online = raw_quantiles(algorithm.network, batch.observations)
    target_next = raw_quantiles(algorithm.target_network, batch.next_observations)
    online_next = raw_quantiles(algorithm.network, batch.next_observations)
    # Double DQN (online argmax) would pick other actions here, so the check below tells the two apart.
    assert (online_next.mean(-1).argmax(-1) != target_next.mean(-1).argmax(-1)).any()

    loss, td, conservative, seen = hand_loss(online, target_next, batch, gamma=0.9, kappa=1.0, alpha=0.7)
    assert all(seen.values()), seen  # both Huber branches and both signs of u were exercised
    metrics = algorithm.update(batch)
    assert metrics["td_loss"] == pytest.approx(td, rel=1e-5)
    assert metrics["conservative_loss"] == pytest.approx(conservative, rel=1e-5, abs=1e-6)
    assert metrics["loss"] == pytest.approx(loss, rel=1e-5)


def test_tensorflow_adam_epsilon_on_the_first_update():
    """TF1's Adam adds ε to √v before bias correction: the first step is lr·g/(|g| + ε/√(1 − β₂))."""
    algorithm = build({"adam_eps": 1e-3, "learning_rate": 1e-2})
    batch = random_batch(np.random.default_rng(1))
    before = copy.deepcopy(algorithm.network)
    loss, _ = algorithm.loss(batch)
    grads = torch.autograd.grad(loss, list(algorithm.network.parameters()))
    algorithm.update(batch)
    for old, new, g in zip(before.parameters(), algorithm.network.parameters(), grads, strict=True):
        expected = old.detach() - 1e-2 * g / (g.abs() + 1e-3 / math.sqrt(1 - 0.999))
        torch.testing.assert_close(new.detach(), expected, rtol=1e-5, atol=1e-7)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_target_network_is_copied_after_every_interval_th_update_and_only_then():
    algorithm = build({"target_update_interval": 3, "learning_rate": 1e-3})
    rng = np.random.default_rng(2)
    last_copy = copy.deepcopy(algorithm.network)
    for step in range(1, 8):
        algorithm.update(random_batch(rng))
        if step % 3 == 0:
            assert same_weights(algorithm.target_network, algorithm.network), step
            last_copy = copy.deepcopy(algorithm.network)
        else:
            assert not same_weights(algorithm.target_network, algorithm.network), step
            assert same_weights(algorithm.target_network, last_copy), step
    assert algorithm.step == 7


def test_atari_config_is_the_authors_setting():
    config = make_config("cql", task=TASK)
    assert type(config).__module__ == "baselines.cql_discrete"
    assert (config.q_head, config.num_quantiles, config.kappa, config.target_update_interval) == ("quantile", 200,
                                                                                                 1.0, 2000)
    assert (config.learning_rate, config.adam_eps, config.tf_adam_eps) == (5e-5, 3.125e-4, True)
    assert (config.batch_size, config.discount, config.cql_alpha, config.init) == (32, 0.99, 1.0, "dopamine")
    assert config.num_steps == 100_000  # LaMo's Atari budget (DOMAIN_TRAINING), not the authors' 12.5M


def test_policy_is_greedy_on_the_mean_over_quantiles_and_the_init_is_dopamines():
    algorithm = build({"num_quantiles": 200, "feature_size": 512, "cnn_channels": (32, 64, 64)})
    head = algorithm.network.head
    assert head.out_features == 4 * 200
    bound = math.sqrt(math.sqrt(3.0) / 512)  # VarianceScaling(1/√3, fan_in, uniform)
    assert head.weight.abs().max() <= bound and head.weight.abs().max() > 0.99 * bound
    assert head.bias.abs().max() == 0
    with torch.no_grad():
        head.weight.mul_(50.0)
    frames = np.random.default_rng(3).integers(0, 256, (16, 4, 84, 84), dtype=np.uint8)
    quantiles = raw_quantiles(algorithm.network, torch.from_numpy(frames))
    expected = quantiles.mean(-1).argmax(-1)
    assert (expected != quantiles.reshape(16, -1).argmax(-1) // 200).any()  # not the action of the largest quantile
    np.testing.assert_array_equal(algorithm.policy(16, None).act(frames), expected)


def test_the_mean_head_is_d3rlpys_double_dqn():
    algorithm = build({"q_head": "mean", "init": "torch", "tf_adam_eps": False, "discount": 0.9})
    batch = random_batch(np.random.default_rng(4))
    with torch.no_grad():
        q, q_next = algorithm.network(batch.observations), algorithm.network(batch.next_observations)
        target_next = algorithm.target_network(batch.next_observations)
    y = batch.rewards + 0.9 * (1 - batch.dones) * target_next.gather(1, q_next.argmax(1, keepdim=True)).squeeze(1)
    q_data = q.gather(1, batch.actions[:, None]).squeeze(1)
    td = torch.nn.functional.huber_loss(q_data, y, delta=1.0)
    assert algorithm.update(batch)["td_loss"] == pytest.approx(float(td), rel=1e-6)


def run(ratio: float, values: dict) -> SimpleNamespace:
    return SimpleNamespace(algorithm="cql", task=TASK.name, domain="atari", ratio=ratio, gpu_hours=0.0, config=values)


def test_fidelity_note_states_the_form_the_budget_and_alpha_against_the_authors():
    assert declaration("cql", TASK).differences == DIFFERENCES
    describe = DIFFERENCES[0].describe
    values = json.loads(json.dumps(dataclasses.asdict(make_config("cql", task=TASK))))  # as a trial record holds it
    note = describe([run(0.01, values)])
    assert "QR-DQN with 200 quantiles" in note and "every 2,000 updates" in note and "eps 0.0003125" in note
    assert "for 100,000 updates" in note and "12.5M updates" in note
    assert "α 4 for 1 % data" in note and "1 % ran α 1." in note
    assert "ran α" not in describe([run(0.1, values)])  # α 1 is the README's value for 10 %
    assert "no α for 5 %" in describe([run(0.05, values)])
    old = {k: v for k, v in values.items() if k not in ("q_head", "num_quantiles", "kappa", "adam_eps", "tf_adam_eps")}
    note = describe([run(0.1, old | {"target_update_interval": 8000, "learning_rate": 6.25e-5, "num_steps": 2000})])
    assert "mean-Q Double DQN" in note and "every 8,000 updates" in note and "for 2,000 updates" in note
    assert describe([]) is None


def test_the_note_reaches_the_fidelity_notes_of_cql_on_atari_only():
    def trial(algorithm: str, task: str, ratio: float) -> TrialRun:
        record = make_record(algorithm, task, ratio, 0, {})
        return TrialRun(run_id=f"{algorithm}-{task}", record=record, status="FINISHED", curves={}, gpu_hours=0.0)

    notes = {n.topic: n for n in fidelity_notes([trial("cql", TASK.name, 0.01), trial("bc", TASK.name, 0.01)])}
    note = notes["cql: atari form and budget"]
    assert "for 100,000 updates" in note.text and "12.5M updates" in note.text and "1 % ran α 1." in note.text
    assert "quantile_agent.py" in note.source and "quantile.gin" in note.source
    assert "cql: atari form and budget" not in {n.topic for n in fidelity_notes([trial("cql", "hopper-medium", 0.1)])}
