"""Behaviour cloning: a deterministic tanh actor regressing the dataset's actions by mean squared error.

Seeds trained together (`resources.seeds_per_trial`) update as one: `FusedBC`, each seed's actor a slice of batched
layers (baselines/seed_stack.py).

BC-10 % (Chen et al., "Decision Transformer", 2021, "%BC") is the same learner trained only on the top 10 %
of trajectories by return (`top_fraction_by_return`); the state statistics are those of that subset.

Settings follow CORL's any_percent_bc.py (the implementation behind CORL's BC and BC-10 % tables): a
256-256 MLP, Adam 3e-4, batch 256, standardised states (eps 1e-3). Trajectories are ranked by undiscounted
return, as CORL's BC-10 % configs do (discount: 1.0).
"""

from __future__ import annotations

import torch

from baselines.common import (
    DeterministicActor,
    OfflineAlgorithm,
    finite_metrics,
    fused_metrics,
    make_adam,
    seeded_init,
)
from baselines.seed_stack import SeedStack, StackedNormalizer, adam_for, mlp, stacked_batch, sync_seeds
from trainers.data.samplers import TransitionBatch
from trainers.data.subsets import top_fraction_by_return
from trainers.runtime.algorithm import (
    AlgorithmDeclaration,
    Fraction,
    NonFiniteLossError,
    PositiveFloat,
    PositiveInt,
    Preset,
    TrainingConfig,
    TrainingSetup,
    algorithm_config,
)


@algorithm_config
class Config(TrainingConfig):
    # num_steps 1e6, eval_every 5e3, eval_episodes 10, batch_size 256: CORL any_percent_bc.py TrainConfig.
    top_fraction: Fraction = 1.0  # train on this fraction of trajectories, highest returns first (BC-10 %: 0.1)
    lr: PositiveFloat = 3e-4  # Adam (CORL any_percent_bc.py)
    hidden_dims: tuple[PositiveInt, ...] = (256, 256)  # CORL any_percent_bc.py Actor
    normalize_states: bool = True  # standardise states with the training set's mean / (std + eps) (CORL)
    state_eps: PositiveFloat = 1e-3  # (CORL compute_mean_std eps)


class BC(OfflineAlgorithm):
    name = "bc"

    def __init__(self, config: Config, setup: TrainingSetup):
        dataset = setup.dataset
        if dataset is not None and config.top_fraction < 1.0:
            dataset = top_fraction_by_return(dataset, config.top_fraction)
        super().__init__(config, setup, dataset)
        obs_dim, act_dim = self.obs_dim, self.act_dim
        self.dataset = dataset
        with seeded_init(setup.seed):
            self.actor = DeterministicActor(obs_dim, act_dim, config.hidden_dims)
        self.normalizer.to(self.device)
        self.actor.to(self.device)
        self.optimizers = {"actor": make_adam([{"params": self.actor.parameters(), "lr": config.lr}], self.device)}

    def networks(self):
        return {"normalizer": self.normalizer, "actor": self.actor}

    def loss(self, batch: TransitionBatch):
        pi = self.actor(self.normalizer.observations(batch.observations))
        loss = (pi - self.normalizer.unit_actions(batch.actions)).square().mean()
        return loss, {"actor_loss": loss, "action_abs_mean": pi.detach().abs().mean()}

    def update(self, batch: TransitionBatch) -> dict[str, float]:
        step = self.step + 1
        loss, metrics = self.loss(batch)
        self.optimizers["actor"].zero_grad(set_to_none=True)
        loss.backward()
        self.optimizers["actor"].step()
        self.step = step
        return finite_metrics(step, **metrics)


class FusedBC:
    """The seeds of a stack as one update (trainers/runtime/stack.py): every seed's actor a slice of one `SeedStack`,
    its Adam one `StackedAdam`, the loss computed per seed on its own batch and normalizer; what seed k computes
    alone, with one batched matmul per layer for all seeds."""

    def __init__(self, seeds: list[BC]):
        self.seeds, self.step = seeds, seeds[0].step
        self.actor = SeedStack([seed.actor.net for seed in seeds])
        self.optimizer = adam_for([self.actor], [seed.optimizers["actor"] for seed in seeds], seeds[0].device)
        self.normalizer = StackedNormalizer([seed.normalizer for seed in seeds])

    def update(self, batches: list[TransitionBatch]) -> list[dict[str, float] | NonFiniteLossError]:
        batch = stacked_batch(batches)
        pi = torch.tanh(mlp(self.actor, self.normalizer.observations(batch["observations"])))
        losses = (pi - self.normalizer.unit_actions(batch["actions"])).square().mean(dim=(1, 2))  # each seed's own
        self.optimizer.zero_grad()
        losses.sum().backward()  # the seeds' parameters are disjoint: each gets its own loss's gradient
        self.optimizer.step()
        self.step += 1
        return fused_metrics(self.step, actor_loss=losses, action_abs_mean=pi.abs().mean(dim=(1, 2)))

    def sync(self) -> None:
        sync_seeds(self.seeds, self.step, [self.actor], [self.optimizer])


PRESETS = {"bc": Preset(), "bc_10": Preset({"top_fraction": 0.1})}  # BC-10 %: the top 10 % of trajectories

# BC has no task-specific settings in the reference implementations; kitchen runs with the defaults.
ALGORITHM = AlgorithmDeclaration(config=Config, build=BC, presets=PRESETS, fused_seeds=FusedBC)
