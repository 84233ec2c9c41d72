"""TD3+BC (Fujimoto & Gu, "A Minimalist Approach to Offline Reinforcement Learning", NeurIPS 2021).

TD3 with one change to the actor: maximise λ·Q(s, π(s)) − (π(s) − a)², where λ = α / mean|Q| keeps the two
terms on the same scale whatever the reward scale; states are standardised with the dataset's mean and std.

Per update (sfujim/TD3_BC, TD3_BC.py):
1. critic: y = r + γ(1 − d)·min_i Q̄_i(s′, clip(π̄(s′) + clip(ε, ±c), −1, 1)), ε ~ N(0, σ²); both Qs regress y;
2. every `policy_delay` updates: the actor step above (through Q1 of the just-updated critic), then Polyak
   averaging of the target critic AND target actor — targets move only on actor steps.

Defaults are the paper's D4RL locomotion settings; CORL's td3_bc.py and configs use the same numbers.

Seeds trained together (`resources.seeds_per_trial`) update as one: `FusedTD3BC` (baselines/seed_stack.py).
"""

from __future__ import annotations

import torch

from baselines.common import (
    DeterministicActor,
    OfflineAlgorithm,
    TwinCritic,
    finite_metrics,
    frozen_copy,
    fused_metrics,
    make_adam,
    polyak_,
    seeded_init,
)
from baselines.seed_stack import SeedStack, StackedNormalizer, adam_for, ensemble, mlp, stacked_batch, sync_seeds
from trainers.data.samplers import TransitionBatch
from trainers.runtime.algorithm import (
    AlgorithmDeclaration,
    Fraction,
    NonFiniteLossError,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    TrainingConfig,
    TrainingSetup,
    algorithm_config,
)


@algorithm_config
class Config(TrainingConfig):
    # num_steps 1e6, eval_every 5e3, eval_episodes 10, batch_size 256: TD3_BC/main.py defaults (max_timesteps,
    # eval_freq, eval_episodes in eval_policy, batch_size), inherited from TrainingConfig.
    alpha: NonNegativeFloat = 2.5  # α in λ = α / mean|Q(s, π(s))|: weight of the Q term against BC (paper §5, main.py)
    discount: Fraction = 0.99  # γ (main.py)
    tau: Fraction = 0.005  # Polyak rate of both target networks (main.py)
    policy_noise: NonNegativeFloat = 0.2  # σ of the target-policy smoothing noise, × the action half-range (main.py)
    noise_clip: NonNegativeFloat = 0.5  # c: that noise is clipped to ±c, × the action half-range (main.py)
    policy_delay: PositiveInt = 2  # actor and targets update once per this many critic updates (main.py policy_freq)
    actor_lr: PositiveFloat = 3e-4  # Adam (TD3_BC.py)
    critic_lr: PositiveFloat = 3e-4  # Adam (TD3_BC.py)
    hidden_dims: tuple[PositiveInt, ...] = (256, 256)  # actor and each critic (TD3_BC.py)
    normalize_states: bool = True  # standardise states with the dataset's mean / (std + eps) (main.py)
    state_eps: PositiveFloat = 1e-3  # the eps above (utils.py normalize_states)


class TD3BC(OfflineAlgorithm):
    name = "td3_bc"

    def __init__(self, config: Config, setup: TrainingSetup):
        super().__init__(config, setup, setup.dataset)
        obs_dim, act_dim = self.obs_dim, self.act_dim
        with seeded_init(setup.seed):
            self.actor = DeterministicActor(obs_dim, act_dim, config.hidden_dims)
            self.critic = TwinCritic(obs_dim, act_dim, config.hidden_dims)
        for module in (self.normalizer, self.actor, self.critic):
            module.to(self.device)
        self.actor_target, self.critic_target = frozen_copy(self.actor), frozen_copy(self.critic)
        self.optimizers = {
            "actor": make_adam([{"params": self.actor.parameters(), "lr": config.actor_lr}], self.device),
            "critic": make_adam([{"params": self.critic.parameters(), "lr": config.critic_lr}], self.device),
        }

    def networks(self):
        return {"normalizer": self.normalizer, "actor": self.actor, "critic": self.critic,
                "actor_target": self.actor_target, "critic_target": self.critic_target}

    # The losses are pure tensor functions of their inputs (noise included); update() does the sampling,
    # backward passes and optimizer steps. (bench/baselines.py hands the losses to torch.compile.)

    def critic_loss(self, batch: TransitionBatch, noise: torch.Tensor):
        """1. Both Qs regress the clipped double-Q target with target-policy smoothing."""
        c = self.config
        obs, actions = self.normalizer.observations(batch.observations), self.normalizer.unit_actions(batch.actions)
        with torch.no_grad():
            next_obs = self.normalizer.observations(batch.next_observations)
            noise = (noise * c.policy_noise).clamp(-c.noise_clip, c.noise_clip)
            next_actions = (self.actor_target(next_obs) + noise).clamp(-1.0, 1.0)
            target_q = self.critic_target(next_obs, next_actions).min(0).values
            y = batch.rewards + c.discount * (1.0 - batch.dones) * target_q
        q = self.critic(obs, actions)  # (2, B)
        loss = (q - y).square().mean(1).sum()  # MSE(Q1, y) + MSE(Q2, y)
        return loss, {"critic_loss": loss, "q1_mean": q[0].mean(), "q2_mean": q[1].mean(),
                      "target_q_mean": target_q.mean()}

    def actor_loss(self, batch: TransitionBatch):
        """2. −λ·Q1(s, π(s)) + (π(s) − a)², through the just-updated critic with its weights detached."""
        obs, actions = self.normalizer.observations(batch.observations), self.normalizer.unit_actions(batch.actions)
        pi = self.actor(obs)
        q_pi = self.critic(obs, pi, detach_params=True, member=0)[0]
        lmbda = self.config.alpha / q_pi.abs().mean().detach()
        bc_loss = (pi - actions).square().mean()
        loss = -lmbda * q_pi.mean() + bc_loss
        return loss, {"actor_loss": loss, "bc_loss": bc_loss, "lmbda": lmbda, "q_pi_mean": q_pi.mean()}

    def update(self, batch: TransitionBatch) -> dict[str, float]:
        c, step = self.config, self.step + 1
        noise = torch.randn(batch.actions.shape, generator=self.generator, device=self.device)
        loss, metrics = self.critic_loss(batch, noise)
        self.optimizers["critic"].zero_grad(set_to_none=True)
        loss.backward()
        self.optimizers["critic"].step()
        if step % c.policy_delay == 0:  # delayed actor step, then both targets move
            loss, actor_metrics = self.actor_loss(batch)
            self.optimizers["actor"].zero_grad(set_to_none=True)
            loss.backward()
            self.optimizers["actor"].step()
            polyak_(self.critic_target, self.critic, c.tau)
            polyak_(self.actor_target, self.actor, c.tau)
            metrics.update(actor_metrics)
        self.step = step
        return finite_metrics(step, **metrics)


class FusedTD3BC:
    """The seeds of a stack as one update (trainers/runtime/stack.py): each network's seeds one `SeedStack` (critics
    and targets too), each optimiser one `StackedAdam`; every seed's losses on its own batch, normalizer and
    smoothing noise (drawn from its own generator, as alone); what seed k computes alone, one kernel per layer for all
    seeds."""

    def __init__(self, seeds: list[TD3BC]):
        self.seeds, self.step, self.config, device = seeds, seeds[0].step, seeds[0].config, seeds[0].device
        self.actor = SeedStack([seed.actor.net for seed in seeds])
        self.critic = SeedStack([seed.critic.net for seed in seeds])
        self.actor_target = SeedStack([seed.actor_target.net for seed in seeds], trainable=False)
        self.critic_target = SeedStack([seed.critic_target.net for seed in seeds], trainable=False)
        self.optimizers = {name: adam_for([stack], [seed.optimizers[name] for seed in seeds], device)
                           for name, stack in (("actor", self.actor), ("critic", self.critic))}
        self.normalizer = StackedNormalizer([seed.normalizer for seed in seeds])

    @staticmethod
    def q(critic: SeedStack, obs: torch.Tensor, actions: torch.Tensor, **kwargs) -> torch.Tensor:
        """TwinCritic for every seed: (K, B, ·) → (K, members, B)."""
        return ensemble(critic, torch.cat([obs, actions], dim=-1), **kwargs).squeeze(-1)

    def update(self, batches: list[TransitionBatch]) -> list[dict[str, float] | NonFiniteLossError]:
        c, step, b = self.config, self.step + 1, stacked_batch(batches)
        noise = torch.stack([torch.randn(batch.actions.shape, generator=seed.generator, device=seed.device)
                             for seed, batch in zip(self.seeds, batches)])
        obs, actions = self.normalizer.observations(b["observations"]), self.normalizer.unit_actions(b["actions"])
        with torch.no_grad():  # 1. the clipped double-Q target with target-policy smoothing
            next_obs = self.normalizer.observations(b["next_observations"])
            noise = (noise * c.policy_noise).clamp(-c.noise_clip, c.noise_clip)
            next_actions = (torch.tanh(mlp(self.actor_target, next_obs)) + noise).clamp(-1.0, 1.0)
            target_q = self.q(self.critic_target, next_obs, next_actions).min(1).values  # (K, B)
            y = b["rewards"] + c.discount * (1.0 - b["dones"]) * target_q
        q = self.q(self.critic, obs, actions)  # (K, 2, B)
        critic_loss = (q - y.unsqueeze(1)).square().mean(2).sum(1)  # (K,)
        self.optimizers["critic"].zero_grad()
        critic_loss.sum().backward()
        self.optimizers["critic"].step()
        metrics = {"critic_loss": critic_loss.detach(), "q1_mean": q[:, 0].detach().mean(1),
                   "q2_mean": q[:, 1].detach().mean(1), "target_q_mean": target_q.mean(1)}
        if step % c.policy_delay == 0:  # 2. the delayed actor step, then both targets move
            pi = torch.tanh(mlp(self.actor, obs))
            q_pi = self.q(self.critic, obs, pi, detach_params=True, member=0)[:, 0]  # (K, B)
            lmbda = c.alpha / q_pi.abs().mean(1).detach()
            bc_loss = (pi - actions).square().mean(dim=(1, 2))
            actor_loss = -lmbda * q_pi.mean(1) + bc_loss
            self.optimizers["actor"].zero_grad()
            actor_loss.sum().backward()
            self.optimizers["actor"].step()
            polyak_(self.critic_target, self.critic, c.tau)
            polyak_(self.actor_target, self.actor, c.tau)
            metrics |= {"actor_loss": actor_loss.detach(), "bc_loss": bc_loss.detach(), "lmbda": lmbda,
                        "q_pi_mean": q_pi.detach().mean(1)}
        self.step = step
        return fused_metrics(step, **metrics)

    def sync(self) -> None:
        sync_seeds(self.seeds, self.step,
                   [self.actor, self.critic, self.actor_target, self.critic_target], self.optimizers.values())


# The paper evaluates on D4RL locomotion and AntMaze only; it gives no kitchen settings, so kitchen tasks run
# with the defaults above.
ALGORITHM = AlgorithmDeclaration(config=Config, build=TD3BC, fused_seeds=FusedTD3BC)
