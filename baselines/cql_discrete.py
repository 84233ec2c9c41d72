"""Discrete CQL (Kumar, Zhou, Tucker & Levine 2020) for Atari, as d3rlpy's DiscreteCQL: Double DQN whose
Q-values are also pushed down by log Σ_a exp Q(s, a) and up at the dataset's action.

The registry runs this module for `cql` on a task with a Discrete action space. Per update (d3rlpy
d3rlpy/algos/qlearning/cql.py DiscreteCQLConfig/DiscreteCQL; torch/cql_impl.py DiscreteCQLImpl; torch/dqn_impl.py
DoubleDQNImpl; the mean Q-function's compute_error):

  target:   y = r + γ(1 − d)·Q̄(s′, argmax_a Q(s′, a))       Double DQN: online argmax, target network's value
  loss:     Huber(Q(s, a_data) − y) + α·E[log Σ_a exp Q(s, a) − Q(s, a_data)]
  every target_update_interval updates: Q̄ ← Q (a hard copy, after the update)

The Q-network is d3rlpy's default pixel encoder with a linear head (baselines/discrete_common.py), frames scaled
by 1/255; evaluation is greedy. DQN Replay rewards are stored clipped to [-1, 1] already (Dopamine's runner),
so no reward scaling is applied.

Defaults are DiscreteCQLConfig's. Where the sources differ: the CQL paper's Atari experiments build on QR-DQN,
and d3rlpy's own Atari reproduction (reproductions/offline/discrete_cql.py) uses a quantile head (q_func_factory
"qr") with Adam eps 1e-2/32; this is the config's mean-Q form, with d3rlpy's default Adam.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from baselines.common import finite_metrics, frozen_copy, make_adam, seeded_init
from baselines.discrete_common import DiscreteOfflineAlgorithm, PixelNetwork
from trainers.data.samplers import TransitionBatch
from trainers.runtime.algorithm import (
    AlgorithmDeclaration,
    Fraction,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    TrainingConfig,
    TrainingSetup,
    algorithm_config,
)


@algorithm_config
class Config(TrainingConfig):
    # num_steps, eval_every, eval_episodes: LaMo's Atari protocol, for every algorithm (trainers/runtime/tasks.py,
    # DOMAIN_TRAINING)
    batch_size: PositiveInt = 32  # DiscreteCQLConfig.batch_size
    learning_rate: PositiveFloat = 6.25e-5  # DiscreteCQLConfig.learning_rate (Adam, d3rlpy's default betas, eps)
    discount: Fraction = 0.99  # DiscreteCQLConfig.gamma
    target_update_interval: PositiveInt = 8000  # DiscreteCQLConfig.target_update_interval (hard copy)
    cql_alpha: NonNegativeFloat = 1.0  # DiscreteCQLConfig.alpha, weight of the conservative term
    feature_size: PositiveInt = 512  # PixelEncoderFactory.feature_size
    cnn_channels: tuple[PositiveInt, PositiveInt, PositiveInt] = (32, 64, 64)  # PixelEncoderFactory.filters (Nature)


class DiscreteCQL(DiscreteOfflineAlgorithm):
    name = "cql_discrete"

    def __init__(self, config: Config, setup: TrainingSetup):
        super().__init__(config, setup, setup.dataset)
        with seeded_init(setup.seed):
            self.network = PixelNetwork(self.frame_stack, self.num_actions, config.feature_size, config.cnn_channels)
        self.network.to(self.device)
        self.target_network = frozen_copy(self.network)
        self.optimizers = {"q": make_adam([{"params": self.network.parameters(), "lr": config.learning_rate}],
                                          self.device)}

    def networks(self):
        return {"network": self.network, "target_network": self.target_network}

    def loss(self, batch: TransitionBatch):
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
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % self.config.target_update_interval == 0:
            self.target_network.load_state_dict(self.network.state_dict())
        self.step = step
        return finite_metrics(step, **metrics)


ALGORITHM = AlgorithmDeclaration(config=Config, build=DiscreteCQL, action_spaces=frozenset({"discrete"}))
