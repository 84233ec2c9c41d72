"""Behaviour cloning for discrete actions (Atari): a categorical policy over frame stacks, trained by
cross-entropy on the dataset's actions; greedy (argmax) at evaluation.

The registry runs this module for `bc` and `bc_10` on a task with a Discrete action space. It follows d3rlpy's
DiscreteBC (d3rlpy/algos/qlearning/bc.py DiscreteBCConfig; the loss is compute_discrete_imitation_loss):

    L = −log π(a_data | s) + β · mean(logits²)          β 0.5, Adam lr 1e-3, batch 100

with d3rlpy's default pixel encoder (baselines/discrete_common.py). BC-10 % keeps the top 10 % of trajectories
by return, as on D4RL (baselines/bc.py). The update budget and evaluation cadence are every Atari algorithm's
(trainers/runtime/tasks.py, DOMAIN_TRAINING), so all get the same number of updates.
"""

from __future__ import annotations

import torch.nn.functional as F

from baselines.bc import PRESETS
from baselines.common import finite_metrics, make_adam, seeded_init
from baselines.discrete_common import DiscreteOfflineAlgorithm, PixelNetwork
from trainers.data.samplers import TransitionBatch
from trainers.data.subsets import top_fraction_by_return
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
    batch_size: PositiveInt = 100  # DiscreteBCConfig.batch_size
    top_fraction: Fraction = 1.0  # train on this fraction of trajectories, highest returns first (BC-10 %: 0.1)
    lr: PositiveFloat = 1e-3  # DiscreteBCConfig.learning_rate (Adam, d3rlpy's default betas and eps)
    beta: NonNegativeFloat = 0.5  # DiscreteBCConfig.beta: weight of the mean squared logit
    feature_size: PositiveInt = 512  # PixelEncoderFactory.feature_size
    cnn_channels: tuple[PositiveInt, PositiveInt, PositiveInt] = (32, 64, 64)  # PixelEncoderFactory.filters (Nature)


class DiscreteBC(DiscreteOfflineAlgorithm):
    name = "bc_discrete"

    def __init__(self, config: Config, setup: TrainingSetup):
        dataset = setup.dataset
        if dataset is not None and config.top_fraction < 1.0:
            dataset = top_fraction_by_return(dataset, config.top_fraction)
        super().__init__(config, setup, dataset)
        with seeded_init(setup.seed):
            self.network = PixelNetwork(self.frame_stack, self.num_actions, config.feature_size, config.cnn_channels)
        self.network.to(self.device)
        self.optimizers = {"policy": make_adam([{"params": self.network.parameters(), "lr": config.lr}],
                                               self.device)}

    def networks(self):
        return {"network": self.network}

    def loss(self, batch: TransitionBatch):
        logits = self.network(batch.observations)
        imitation = F.cross_entropy(logits, batch.actions)
        penalty = logits.square().mean()
        loss = imitation + self.config.beta * penalty
        accuracy = (logits.argmax(-1) == batch.actions).float().mean()
        return loss, {"loss": loss, "imitation_loss": imitation, "logit_penalty": penalty, "accuracy": accuracy}

    def update(self, batch: TransitionBatch) -> dict[str, float]:
        step = self.step + 1
        loss, metrics = self.loss(batch)
        optimizer = self.optimizers["policy"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        self.step = step
        return finite_metrics(step, **metrics)


ALGORITHM = AlgorithmDeclaration(config=Config, build=DiscreteBC, action_spaces=frozenset({"discrete"}),
                                 presets=PRESETS)  # baselines/bc.py's: BC and BC-10 %

