"""Discrete CQL (Kumar, Zhou, Tucker & Levine 2020) for Atari in its authors' form: QR-DQN whose Q-values (the
mean over each action's quantiles) are also pushed down by log Σ_a exp Q(s, a) and up at the dataset's action.

The registry runs this module for `cql` on a task with a Discrete action space. Per update (aviralkumar2907/CQL:
atari/batch_rl/multi_head/quantile_agent.py `_build_target_distribution` and `_build_train_op`; the network is
atari_helpers.py `QuantileNetwork`; Dopamine's dqn_agent.py `_train_step` schedules updates and target copies):

  quantiles: θ_i(s, a) for i < N; Q(s, a) = (1/N)·Σ_i θ_i(s, a)
  target:    a* = argmax_a Q̄(s′, a)  — the target network both picks and values the next action (no Double DQN)
             T_j = r + γ(1 − d)·θ̄_j(s′, a*)                                  one step (update_horizon 1)
  TD loss:   u_ij = T_j − θ_i(s, a_data),  τ̂_i = (2i + 1)/(2N)
             ρ_ij = |τ̂_i − 1(u_ij < 0)|·H_κ(u_ij),  H_κ(u) = ½u² where |u| ≤ κ, else κ(|u| − ½κ)
             L_TD = batch mean of Σ_i mean_j ρ_ij                          (sum over θ's quantiles, mean over T's)
  CQL term:  L_CQL = batch mean of log Σ_a exp Q(s, a) − batch mean of Q(s, a_data)     (mean-over-quantile Qs)
  loss:      L_TD + α·L_CQL, one Adam step;
  every target_update_interval updates: Q̄ ← Q (a hard copy, after that update)

The network is the pixel network of baselines/discrete_common.py with num_actions × N outputs read as (A, N);
frames scaled by 1/255; evaluation is greedy on the mean over quantiles (its forward). DQN Replay rewards are
stored clipped to [-1, 1] already (Dopamine's runner), so no reward scaling is applied.

Where each setting comes from (the authors' configs: atari/batch_rl/fixed_replay/configs/quantile*.gin, the same
in every game's file; their defaults in quantile_agent.py; their README.md, "Atari Experiments"):
  N 200, κ 1, γ 0.99, one-step targets, uniform replay, batch 32: num_atoms, kappa (the agent's default),
      gamma, update_horizon, replay_scheme 'uniform', WrappedFixedReplayBuffer.batch_size.
  Target copy every 2,000 updates: target_update_period = 8000 counts agent steps, and a gradient update runs
      every update_period = 4 of them (dqn_agent.py `_train_step`), so 8000 / 4 = 2,000 gradient updates.
      Dopamine copies at agent steps 0, 8000, … right after that step's update, i.e. after updates 1, 2001,
      4001, … (its target network starts from an init of its own until then); here the target starts as a
      copy of the network and is copied after updates 2000, 4000, …: the same period, one update later.
  Adam lr 5e-5, ε 3.125e-4 (= 0.01/32): the gin files' tf.train.AdamOptimizer. TensorFlow 1 adds ε to √v
      before the bias correction (tf.raw_ops.ApplyAdam), torch after it; with tf_adam_eps torch's eps at update
      t is ε/√(1 − β₂ᵗ), which makes the two updates equal (the difference fades after a few thousand updates).
  Initialisation (init "dopamine"): QuantileNetwork's Keras VarianceScaling(1/√3, fan_in, uniform) weights,
      zero biases.
  α (minq_weight) 1.0: the gin files. Their README says to use 4.0 for 1 % data and 1.0 for 10 %; the config
      cannot see the data ratio, so 1.0 stands for both and the fidelity note names the 1 % runs.
  Budget: the gin files run 200 iterations × 250,000 agent steps at one update per 4 = 12.5M updates (the
      README's example command sets 1,000 iterations); LaMo's Atari protocol gives every algorithm 100K updates
      (trainers/runtime/tasks.py, DOMAIN_TRAINING). The fidelity note states each sweep's budget.
Deviations: the convolutions are unpadded (the Nature CNN shared with the sequence models: 7×7 maps, 3136
features), where QuantileNetwork pads 'same' (21/11/11 maps, 7744 features); the one-update offset of the target
copies above. quantile_agent.py hands min_q_weight to a RainbowAgent constructor that Dopamine's releases do not take,
so the authors ran a modified Dopamine that their repository does not hold; the loss here is the one
quantile_agent.py writes.

q_head "mean" is d3rlpy's DiscreteCQL instead (d3rlpy/algos/qlearning/cql.py DiscreteCQLConfig; torch/cql_impl.py
DiscreteCQLImpl; torch/dqn_impl.py DoubleDQNImpl): one Q-value per action, Double DQN targets
y = r + γ(1 − d)·Q̄(s′, argmax_a Q(s′, a)), Huber(Q(s, a_data) − y) with threshold 1, the same CQL term. d3rlpy's
defaults for it are learning_rate 6.25e-5, adam_eps 1e-8, tf_adam_eps False, target_update_interval 8000,
init "torch" (and num_quantiles is unused).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from baselines.common import finite_metrics, frozen_copy, make_adam, seeded_init
from baselines.discrete_common import DiscreteOfflineAlgorithm, PixelNetwork
from trainers.data.samplers import TransitionBatch
from trainers.runtime.algorithm import (
    AlgorithmDeclaration,
    Fraction,
    KnownDifference,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    RanTrial,
    TrainingConfig,
    TrainingSetup,
    algorithm_config,
    listed,
)

AUTHORS_UPDATES = 200 * 250_000 // 4  # quantile*.gin: num_iterations × training_steps (agent steps) / update_period
README_ALPHA = {0.01: 4.0, 0.1: 1.0}  # the authors' README: minq_weight per data ratio


@algorithm_config
class Config(TrainingConfig):
    # num_steps, eval_every, eval_episodes: LaMo's Atari protocol, for every algorithm (trainers/runtime/tasks.py,
    # DOMAIN_TRAINING); the authors run 12.5M updates (module doc, fidelity note)
    batch_size: PositiveInt = 32  # WrappedFixedReplayBuffer.batch_size (quantile*.gin)
    q_head: Literal["quantile", "mean"] = "quantile"  # the authors' QR-DQN; "mean": d3rlpy's DiscreteCQL (module doc)
    num_quantiles: PositiveInt = 200  # N (quantile*.gin num_atoms); unused by the mean head
    kappa: PositiveFloat = 1.0  # κ of the quantile Huber loss (quantile_agent.py default; the gin files keep it)
    learning_rate: PositiveFloat = 5e-5  # tf.train.AdamOptimizer.learning_rate (quantile*.gin)
    adam_eps: PositiveFloat = 3.125e-4  # tf.train.AdamOptimizer.epsilon (quantile*.gin), 0.01/32
    tf_adam_eps: bool = True  # ε applied as TensorFlow 1's Adam applies it (module doc); False: torch's
    discount: Fraction = 0.99  # γ (quantile*.gin gamma; one-step targets, update_horizon 1)
    # Hard copy every this many gradient updates: quantile*.gin target_update_period 8000 agent steps at one update
    # every update_period 4 steps (Dopamine dqn_agent.py _train_step)
    target_update_interval: PositiveInt = 2000
    cql_alpha: NonNegativeFloat = 1.0  # α, minq_weight of quantile*.gin (README: 4.0 for 1 % data, 1.0 for 10 %)
    init: Literal["dopamine", "torch"] = "dopamine"  # atari_helpers.py QuantileNetwork's init; "torch": defaults
    feature_size: PositiveInt = 512  # QuantileNetwork dense1 (and d3rlpy's PixelEncoderFactory.feature_size)
    cnn_channels: tuple[PositiveInt, PositiveInt, PositiveInt] = (32, 64, 64)  # QuantileNetwork conv1-3 (Nature)


class QuantileNetwork(PixelNetwork):
    """(B, S, 84, 84) uint8 → quantiles (B, A, N); its forward gives the Q-values (B, A), their mean."""

    def __init__(self, frame_stack: int, num_actions: int, num_quantiles: int, feature_size: int,
                 channels: tuple[int, int, int]):
        super().__init__(frame_stack, num_actions * num_quantiles, feature_size, channels)
        self.num_actions, self.num_quantiles = num_actions, num_quantiles

    def quantiles(self, frames: torch.Tensor) -> torch.Tensor:
        return super().forward(frames).view(-1, self.num_actions, self.num_quantiles)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.quantiles(frames).mean(-1)


@torch.no_grad()
def dopamine_init_(network: nn.Module) -> None:
    """Keras VarianceScaling(scale 1/√3, fan_in, uniform) weights — U(±√(3·scale/fan_in)) — and zero biases, on
    every convolution and linear layer (atari_helpers.py QuantileNetwork)."""
    for layer in network.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            bound = math.sqrt(3.0 / math.sqrt(3.0) / layer.weight[0].numel())
            layer.weight.uniform_(-bound, bound)
            layer.bias.zero_()


def tau_hat(num_quantiles: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Quantile midpoints τ̂_i = (2i + 1)/(2N)."""
    return (torch.arange(num_quantiles, device=device, dtype=torch.float32) + 0.5) / num_quantiles


def quantile_huber_loss(quantiles: torch.Tensor, targets: torch.Tensor, kappa: float) -> torch.Tensor:
    """(B, N) predicted quantiles, (B, N′) target samples → the batch mean of Σ_i mean_j |τ̂_i − 1(u_ij < 0)|·H_κ(u_ij),
    u_ij = targets_j − quantiles_i."""
    u = targets[:, None, :] - quantiles[:, :, None]
    abs_u = u.abs()
    huber = torch.where(abs_u <= kappa, 0.5 * u.square(), kappa * (abs_u - 0.5 * kappa))
    weight = (tau_hat(quantiles.shape[1], quantiles.device)[None, :, None] - (u < 0).float()).abs()
    return (weight * huber).mean(2).sum(1).mean()


class DiscreteCQL(DiscreteOfflineAlgorithm):
    name = "cql_discrete"

    def __init__(self, config: Config, setup: TrainingSetup):
        super().__init__(config, setup, setup.dataset)
        c = config
        with seeded_init(setup.seed):
            if c.q_head == "quantile":
                self.network = QuantileNetwork(self.frame_stack, self.num_actions, c.num_quantiles, c.feature_size,
                                               c.cnn_channels)
            else:
                self.network = PixelNetwork(self.frame_stack, self.num_actions, c.feature_size, c.cnn_channels)
            if c.init == "dopamine":
                dopamine_init_(self.network)
        self.network.to(self.device)
        self.target_network = frozen_copy(self.network)
        self.optimizers = {"q": make_adam([{"params": self.network.parameters(), "lr": c.learning_rate,
                                            "eps": c.adam_eps}], self.device)}

    def networks(self):
        return {"network": self.network, "target_network": self.target_network}

    def loss(self, batch: TransitionBatch):
        if self.config.q_head == "quantile":
            return self.quantile_loss(batch)
        return self.mean_loss(batch)

    def quantile_loss(self, batch: TransitionBatch):
        c, rows = self.config, torch.arange(len(batch.actions), device=batch.actions.device)
        quantiles = self.network.quantiles(batch.observations)  # (B, A, N)
        with torch.no_grad():
            next_quantiles = self.target_network.quantiles(batch.next_observations)
            best_next = next_quantiles.mean(-1).argmax(-1)  # the target network's greedy action
            targets = (batch.rewards[:, None]
                       + c.discount * (1.0 - batch.dones[:, None]) * next_quantiles[rows, best_next])
        td_loss = quantile_huber_loss(quantiles[rows, batch.actions], targets, c.kappa)
        q = quantiles.mean(-1)
        q_data = q[rows, batch.actions]
        conservative = torch.logsumexp(q, dim=-1).mean() - q_data.mean()
        loss = td_loss + c.cql_alpha * conservative
        return loss, {"loss": loss, "td_loss": td_loss, "conservative_loss": conservative,
                      "q_data_mean": q_data.mean(), "target_mean": targets.mean()}

    def mean_loss(self, batch: TransitionBatch):
        c = self.config
        q = self.network(batch.observations)
        with torch.no_grad():
            best_next = self.network(batch.next_observations).argmax(-1, keepdim=True)
            next_value = self.target_network(batch.next_observations).gather(-1, best_next).squeeze(-1)
            y = batch.rewards + c.discount * (1.0 - batch.dones) * next_value
        q_data = q.gather(-1, batch.actions[:, None]).squeeze(-1)
        td_loss = F.smooth_l1_loss(q_data, y)  # Huber with threshold 1 (d3rlpy compute_huber_loss)
        conservative = (torch.logsumexp(q, dim=-1) - q_data).mean()
        loss = td_loss + c.cql_alpha * conservative
        return loss, {"loss": loss, "td_loss": td_loss, "conservative_loss": conservative,
                      "q_data_mean": q_data.mean(), "target_mean": y.mean()}

    def update(self, batch: TransitionBatch) -> dict[str, float]:
        step = self.step + 1
        loss, metrics = self.loss(batch)
        optimizer = self.optimizers["q"]
        if self.config.tf_adam_eps:  # Adam's step count is `step` here: ε/√(1 − β₂ᵗ) (module doc)
            group = optimizer.param_groups[0]
            group["eps"] = self.config.adam_eps / math.sqrt(1.0 - group["betas"][1] ** step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % self.config.target_update_interval == 0:
            self.target_network.load_state_dict(self.network.state_dict())
        self.step = step
        return finite_metrics(step, **metrics)


# --- how these runs differ from the CQL authors' Atari setup (the report's fidelity notes) --------------------

def _form(config) -> str:
    """What one run's config trained, from its record (records from before q_head existed ran the mean head)."""
    get = config.get
    if get("q_head", "mean") == "quantile":
        head = f"QR-DQN with {get('num_quantiles')} quantiles (κ {get('kappa'):g})"
    else:
        head = "d3rlpy's mean-Q Double DQN (Huber TD)"
    eps = f"{get('adam_eps', 1e-8):g}" + (" in TensorFlow's form" if get("tf_adam_eps", False) else "")
    return (f"{head}, a target copy every {get('target_update_interval'):,} updates, Adam lr "
            f"{get('learning_rate'):g} eps {eps}, α {get('cql_alpha'):g}")


def _atari_form_and_budget(runs: list[RanTrial]) -> str | None:
    if not runs:
        return None
    steps = listed(f"{n:,}" for n in sorted({int(r.config["num_steps"]) for r in runs}))
    forms = "; ".join(dict.fromkeys(_form(r.config) for r in runs))
    text = (f"Discrete CQL ran {forms}, for {steps} updates. The CQL authors' Atari "
            f"code (aviralkumar2907/CQL, atari/) trains QR-DQN with 200 quantiles, a target copy every 2,000 updates "
            f"(8,000 agent steps, one update per 4), Adam lr 5e-05 eps 0.0003125 and α 1 (their gin files) for "
            f"{AUTHORS_UPDATES / 1e6:g}M updates (200 iterations of 250,000 agent steps) at every data ratio. Its "
            f"convolutions are unpadded (the Nature CNN shared with the sequence models, 7x7 maps), where "
            f"the authors' QuantileNetwork pads 'same'.")
    off = sorted({(r.ratio, r.config.get("cql_alpha")) for r in runs
                  if r.ratio in README_ALPHA and r.config.get("cql_alpha") != README_ALPHA[r.ratio]})
    if off:
        text += (" Their README sets α 4 for 1 % data and 1 for 10 %; here "
                 + ", ".join(f"{100 * ratio:g} % ran α {alpha:g}" for ratio, alpha in off) + ".")
    untuned = sorted({r.ratio for r in runs if r.ratio not in README_ALPHA})
    if untuned:
        text += (" The authors give no α for " + ", ".join(f"{100 * ratio:g} %" for ratio in untuned)
                 + " data (their README names 1 % and 10 %), and α was not tuned for it here.")
    return text


DIFFERENCES = [
    KnownDifference("cql: atari form and budget",
                    "aviralkumar2907/CQL: atari/batch_rl/multi_head/quantile_agent.py, "
                    "atari/batch_rl/fixed_replay/configs/quantile.gin, README.md (Atari Experiments); google/dopamine "
                    "dqn_agent.py (_train_step); baselines/cql_discrete.py", _atari_form_and_budget),
]


ALGORITHM = AlgorithmDeclaration(config=Config, build=DiscreteCQL, action_spaces=frozenset({"discrete"}),
                                 differences=DIFFERENCES)
