"""IQL (Kostrikov, Nair & Levine, "Offline Reinforcement Learning with Implicit Q-Learning", ICLR 2022).

Never queries Q at actions outside the dataset: V(s) is fitted as an upper expectile of Q̄(s, a) over the
dataset's actions, Q regresses r + γ·V(s′), and the policy is extracted by advantage-weighted regression.

Per update, in the order of the reference (ikostrikov/implicit_q_learning, learner.py `_update_jit`):
1. value:  L_V = E[|τ − 1(u < 0)|·u²], u = min_i Q̄_i(s, a) − V(s)       (target critic, expectile τ);
2. actor:  L_π = −E[min(exp(β·(min_i Q̄_i(s, a) − V(s))), 100)·log π(a|s)]   (with the updated V);
3. critic: L_Q = Σ_i E[(Q_i(s, a) − r − γ(1 − d)·V(s′))²]                  (with the updated V);
4. Q̄ ← Polyak(Q̄, Q, 0.005).
Steps 2 and 3 touch disjoint parameters and read the same V, so they share one backward and one fused
optimizer step. The actor's learning rate follows a cosine decay from actor_lr to 0 over num_steps.

Actor: Gaussian, as in the paper and reference code — mean tanh(MLP(s)), state-independent log σ; evaluation
acts with the mean. (CORL's configs use a deterministic MSE actor for some datasets, hopper-medium-v2 among
them; `deterministic_actor=True` gives that variant.) Differences from CORL's iql.py, which follow the reference:
the critic loss sums the two Qs' MSEs (CORL averages them), the actor's advantage uses V after its update
(CORL uses V before), orthogonal init (Flax default_init), and no state normalization by default.
Seeds trained together (`resources.seeds_per_trial`) update as one, without actor dropout: `FusedIQL`
(baselines/seed_stack.py).
"""

from __future__ import annotations

import math

import torch

from baselines.common import (
    HALF_LOG_2PI,
    DeterministicActor,
    GaussianActor,
    OfflineAlgorithm,
    TwinCritic,
    ValueNetwork,
    finite_metrics,
    frozen_copy,
    fused_metrics,
    make_adam,
    polyak_,
    seeded_init,
)
from baselines.seed_stack import SeedStack, StackedNormalizer, adam_for, ensemble, mlp, stacked_batch, sync_seeds
from trainers.data.samplers import TransitionBatch
from trainers.data.trajectories import TrajectoryDataset
from trainers.runtime.algorithm import (
    AlgorithmDeclaration,
    Fraction,
    NonFiniteLossError,
    OpenUnit,
    PositiveFloat,
    PositiveInt,
    Rate,
    TrainingConfig,
    TrainingSetup,
    algorithm_config,
)


@algorithm_config
class Config(TrainingConfig):
    # num_steps 1e6, eval_every 5e3, eval_episodes 10, batch_size 256: train_offline.py flags (max_steps,
    # eval_interval, eval_episodes, batch_size), inherited from TrainingConfig.
    expectile: OpenUnit = 0.7  # τ of the value's expectile regression (configs/mujoco_config.py)
    temperature: PositiveFloat = 3.0  # β, inverse temperature of the advantage weights (mujoco_config.py)
    max_weight: PositiveFloat = 100.0  # exp(β·A) is clipped at this (actor.py)
    discount: Fraction = 0.99  # γ (mujoco_config.py)
    tau: Fraction = 0.005  # Polyak rate of the target critic (mujoco_config.py)
    actor_lr: PositiveFloat = 3e-4  # initial actor lr, cosine-decayed to 0 over num_steps (mujoco_config.py, learner.py)
    value_lr: PositiveFloat = 3e-4  # (mujoco_config.py)
    critic_lr: PositiveFloat = 3e-4  # (mujoco_config.py)
    hidden_dims: tuple[PositiveInt, ...] = (256, 256)  # actor, value and each critic (mujoco_config.py)
    actor_dropout: Rate = 0.0  # dropout after the actor's hidden layers (0 = none on locomotion; kitchen 0.1)
    deterministic_actor: bool = False  # False: the paper's Gaussian actor; True: CORL's advantage-weighted MSE
    # Rewards × scale_target / (max − min trajectory return) over the training set (train_offline.py normalize,
    # applied to halfcheetah/hopper/walker2d only there). Set False for tasks the reference leaves unscaled.
    normalize_rewards: bool = True
    # train_offline.py multiplies by 1000 = the locomotion horizon (CORL's modify_reward multiplies by
    # max_episode_steps); None uses the task's horizon, i.e. exactly 1000 on locomotion, and keeps the mean
    # per-step reward of a best-minus-worst trajectory at 1 on shorter tasks (reacher2d: 100).
    reward_scale_target: PositiveFloat | None = None
    normalize_states: bool = False  # the reference feeds raw states; CORL standardises them (normalize: true)
    state_eps: PositiveFloat = 1e-3


# configs/kitchen_config.py: β 0.5, policy dropout 0.1, same expectile 0.7 (everything else as mujoco_config.py);
# train_offline.py scales rewards for halfcheetah/hopper/walker2d only, so kitchen rewards stay as they are.
DOMAIN_SETTINGS: dict[str, dict[str, object]] = {
    "kitchen": {"expectile": 0.7, "temperature": 0.5, "actor_dropout": 0.1, "normalize_rewards": False}}


def reward_scale(dataset: TrajectoryDataset | None, config: Config, horizon: int) -> float:
    """scale_target / (max − min) of the trajectory returns; 1 when disabled, without data (the value is then
    restored from the checkpoint) or when every trajectory has the same return (the reference would divide
    by zero)."""
    if not config.normalize_rewards or dataset is None:
        return 1.0
    returns = dataset.episode_returns()
    spread = float(returns.max() - returns.min())
    target = config.reward_scale_target if config.reward_scale_target is not None else float(horizon)
    return target / spread if spread > 0 else 1.0


class IQL(OfflineAlgorithm):
    name = "iql"

    def __init__(self, config: Config, setup: TrainingSetup):
        super().__init__(config, setup, setup.dataset)
        obs_dim, act_dim = self.obs_dim, self.act_dim
        self.reward_scale = reward_scale(setup.dataset, config, setup.task.horizon)
        init = {"orthogonal": True}
        with seeded_init(setup.seed):
            actor_cls = DeterministicActor if config.deterministic_actor else GaussianActor
            self.actor = actor_cls(obs_dim, act_dim, config.hidden_dims, dropout=config.actor_dropout, **init)
            self.value = ValueNetwork(obs_dim, config.hidden_dims, **init)
            self.critic = TwinCritic(obs_dim, act_dim, config.hidden_dims, **init)
        for module in (self.normalizer, self.actor, self.value, self.critic):
            module.to(self.device)
        self.critic_target = frozen_copy(self.critic)
        self.optimizers = {
            "value": make_adam([{"params": self.value.parameters(), "lr": config.value_lr}], self.device),
            # group 0 (actor) has its lr rewritten every step by the cosine schedule
            "actor_critic": make_adam([{"params": self.actor.parameters(), "lr": config.actor_lr},
                                       {"params": self.critic.parameters(), "lr": config.critic_lr}], self.device),
        }

    def networks(self):
        return {"normalizer": self.normalizer, "actor": self.actor, "value": self.value, "critic": self.critic,
                "critic_target": self.critic_target}

    def extra_state(self):
        return {"reward_scale": self.reward_scale}

    def load_extra_state(self, state):
        self.reward_scale = float(state["reward_scale"])

    def actor_lr(self, updates_done: int) -> float:
        """optax.cosine_decay_schedule(actor_lr, num_steps) at count = updates already done."""
        fraction = min(updates_done, self.config.num_steps) / max(self.config.num_steps, 1)
        return self.config.actor_lr * 0.5 * (1.0 + math.cos(math.pi * fraction))

    def value_loss(self, batch: TransitionBatch):
        """1. Expectile regression of V(s) towards the target critic's min over the twins."""
        obs, actions = self.normalizer.observations(batch.observations), self.normalizer.unit_actions(batch.actions)
        with torch.no_grad():
            target_q = self.critic_target(obs, actions).min(0).values
        u = target_q - self.value(obs)
        loss = (torch.abs(self.config.expectile - (u < 0).float()) * u.square()).mean()
        return loss, target_q, {"value_loss": loss}

    def actor_critic_loss(self, batch: TransitionBatch, target_q: torch.Tensor, dropout: torch.Generator | None):
        """2. and 3., both reading the updated V (at s for advantages, at s′ for targets, in one forward)."""
        c = self.config
        obs, actions = self.normalizer.observations(batch.observations), self.normalizer.unit_actions(batch.actions)
        with torch.no_grad():
            next_obs = self.normalizer.observations(batch.next_observations)
            v, next_v = self.value(torch.cat([obs, next_obs])).chunk(2)
            advantage = target_q - v
            weights = torch.exp(c.temperature * advantage).clamp(max=c.max_weight)
            y = batch.rewards * self.reward_scale + c.discount * (1.0 - batch.dones) * next_v
        # 2. Actor: advantage-weighted regression (dropout masks, if any, from the algorithm's generator).
        if c.deterministic_actor:
            pi = torch.tanh(self.actor.net(obs, dropout))
            actor_loss = (weights * (pi - actions).square().sum(-1)).mean()
            log_prob_mean = torch.zeros((), device=obs.device)
        else:
            log_prob = self.actor.log_prob(obs, actions, dropout)
            actor_loss = -(weights * log_prob).mean()
            log_prob_mean = log_prob.mean()
        # 3. Critic: regress r + γ(1 − d)·V(s′); no max over actions anywhere.
        q = self.critic(obs, actions)
        critic_loss = (q - y).square().mean(1).sum()
        return actor_loss + critic_loss, {
            "actor_loss": actor_loss, "critic_loss": critic_loss, "v_mean": v.mean(), "q1_mean": q[0].mean(),
            "q2_mean": q[1].mean(), "advantage_mean": advantage.mean(), "weight_max": weights.max(),
            "log_prob": log_prob_mean}

    def update(self, batch: TransitionBatch) -> dict[str, float]:
        step = self.step + 1
        loss, target_q, metrics = self.value_loss(batch)
        self.optimizers["value"].zero_grad(set_to_none=True)
        loss.backward()
        self.optimizers["value"].step()

        dropout = self.generator if self.config.actor_dropout > 0 else None
        loss, actor_critic_metrics = self.actor_critic_loss(batch, target_q, dropout)
        optimizer = self.optimizers["actor_critic"]
        optimizer.param_groups[0]["lr"] = self.actor_lr(self.step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        polyak_(self.critic_target, self.critic, self.config.tau)  # 4.

        self.step = step
        return finite_metrics(step, **metrics, **actor_critic_metrics, actor_lr=optimizer.param_groups[0]["lr"])


class FusedIQL:
    """The seeds of a stack as one update (trainers/runtime/stack.py): value, actor, critic and target critic as one
    `SeedStack` each, the value's and the actor-critic's Adam as one `StackedAdam` each (the actor's cosine rate in
    group 0, as alone); every seed's losses on its own batch, normalizer and reward scale. What seed k computes alone,
    one kernel per layer for all seeds. Not for actor dropout (kitchen): its masks come from each seed's generator
    inside the forward; those seeds train one after another."""

    def __init__(self, seeds: list[IQL]):
        self.seeds, self.step, self.config, device = seeds, seeds[0].step, seeds[0].config, seeds[0].device
        self.actor = SeedStack([seed.actor for seed in seeds])
        self.value = SeedStack([seed.value.net for seed in seeds])
        self.critic = SeedStack([seed.critic.net for seed in seeds])
        self.critic_target = SeedStack([seed.critic_target.net for seed in seeds], trainable=False)
        self.optimizers = {
            "value": adam_for([self.value], [seed.optimizers["value"] for seed in seeds], device),
            "actor_critic": adam_for([self.actor, self.critic], [seed.optimizers["actor_critic"] for seed in seeds],
                                     device)}
        self.normalizer = StackedNormalizer([seed.normalizer for seed in seeds])
        self.reward_scale = torch.tensor([seed.reward_scale for seed in seeds], device=device).unsqueeze(1)

    @classmethod
    def build(cls, seeds: list[IQL]) -> FusedIQL | None:
        return cls(seeds) if seeds[0].config.actor_dropout == 0 else None

    @staticmethod
    def q(critic: SeedStack, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return ensemble(critic, torch.cat([obs, actions], dim=-1)).squeeze(-1)  # (K, 2, B)

    def update(self, batches: list[TransitionBatch]) -> list[dict[str, float] | NonFiniteLossError]:
        c, step, b = self.config, self.step + 1, stacked_batch(batches)
        obs, actions = self.normalizer.observations(b["observations"]), self.normalizer.unit_actions(b["actions"])
        # 1. Expectile regression of V(s) towards the target critic's min over the twins.
        with torch.no_grad():
            target_q = self.q(self.critic_target, obs, actions).min(1).values  # (K, B)
        u = target_q - mlp(self.value, obs).squeeze(-1)
        value_loss = (torch.abs(c.expectile - (u < 0).float()) * u.square()).mean(1)
        self.optimizers["value"].zero_grad()
        value_loss.sum().backward()
        self.optimizers["value"].step()
        # 2. and 3., both reading the updated V.
        with torch.no_grad():
            next_obs = self.normalizer.observations(b["next_observations"])
            v, next_v = mlp(self.value, torch.cat([obs, next_obs], dim=1)).squeeze(-1).chunk(2, dim=1)
            advantage = target_q - v
            weights = torch.exp(c.temperature * advantage).clamp(max=c.max_weight)
            y = b["rewards"] * self.reward_scale + c.discount * (1.0 - b["dones"]) * next_v
        mean = torch.tanh(mlp(self.actor, obs, prefix="net."))
        if c.deterministic_actor:
            actor_loss = (weights * (mean - actions).square().sum(-1)).mean(1)
            log_prob_mean = torch.zeros_like(actor_loss)
        else:
            log_std = self.actor["log_std"].clamp(*self.seeds[0].actor.log_std_range).unsqueeze(1)  # (K, 1, A)
            z = (actions - mean) * torch.exp(-log_std)
            log_prob = (-0.5 * z.square() - log_std - HALF_LOG_2PI).sum(-1)
            actor_loss = -(weights * log_prob).mean(1)
            log_prob_mean = log_prob.detach().mean(1)
        q = self.q(self.critic, obs, actions)
        critic_loss = (q - y.unsqueeze(1)).square().mean(2).sum(1)
        optimizer = self.optimizers["actor_critic"]
        optimizer.param_groups[0]["lr"] = self.seeds[0].actor_lr(self.step)
        optimizer.zero_grad()
        (actor_loss + critic_loss).sum().backward()
        optimizer.step()
        polyak_(self.critic_target, self.critic, c.tau)  # 4.
        self.step = step
        metrics = {"value_loss": value_loss.detach(), "actor_loss": actor_loss.detach(),
                   "critic_loss": critic_loss.detach(), "v_mean": v.mean(1), "q1_mean": q[:, 0].detach().mean(1),
                   "q2_mean": q[:, 1].detach().mean(1), "advantage_mean": advantage.mean(1),
                   "weight_max": weights.max(1).values, "log_prob": log_prob_mean,
                   "actor_lr": torch.full_like(v[:, 0], optimizer.param_groups[0]["lr"])}
        return fused_metrics(step, **metrics)

    def sync(self) -> None:
        sync_seeds(self.seeds, self.step,
                   [self.actor, self.value, self.critic, self.critic_target], self.optimizers.values())


ALGORITHM = AlgorithmDeclaration(config=Config, build=IQL, domain_settings=DOMAIN_SETTINGS,
                                 fused_seeds=FusedIQL.build)
