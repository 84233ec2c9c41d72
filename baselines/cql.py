"""CQL(H) (Kumar, Zhou, Tucker & Levine, "Conservative Q-Learning for Offline Reinforcement Learning", 2020).

SAC with automatic entropy tuning whose critics also minimise α·(log Σ_a exp Q(s, a) − Q(s, a_data)): Q is
pushed down on actions the policy or a uniform proposal would pick and up on the dataset's, which makes it a
lower bound where data is missing. The log-sum-exp is estimated by importance sampling over N uniform
actions, N policy actions at s and N policy actions at s′ (all evaluated at s), each divided by its proposal
density (min_q_version 3 in the reference).
Seeds trained together (`resources.seeds_per_trial`) update as one on accelerators: `FusedCQL`
(baselines/seed_stack.py); on a CPU one after another.

Per update (aviralkumar2907/CQL d4rl/rlkit/torch/sac/cql.py; young-geng/CQL SimpleSAC/conservative_sac.py):
  entropy: L_α = −log α·(log π(ã|s) + H̄)              H̄ = −dim(A)
  actor:   L_π = E[α·log π(ã|s) − min_i Q_i(s, ã)]      (for the first bc_steps updates −log π(a_data|s)
                                                        replaces −Q: the reference's BC warm start)
  critic:  Σ_i E[(Q_i(s, a) − r − γ(1 − d)·min_j Q̄_j(s′, ã′))²] + α_cql·Σ_i E[logsumexp_IS Q_i − Q_i(s, a)]
           (no entropy term in the backup: deterministic_backup=True)
All three losses are computed from the same parameters, as in the references, so they share one backward
and one fused Adam step over three param groups. The actor runs once on [s; s′] and every sampled action
(1 + N per state) comes from that single pass; the critic evaluates all 1 + 3N actions per state in one
ensemble forward.

Defaults, and where the sources differ (we follow the original authors' code/README for D4RL -v2 data):
  α_cql 5.0: README ("min_q_weight 5.0 or 10.0"), young-geng 5.0; CORL's default and hopper configs use 10.0.
  policy lr 1e-4: README and cql_mujoco_new.py; the README says its values differ from the paper's because
      the D4RL datasets changed (the paper's, quoted in aviralkumar2907/CQL#5 as policy_lr 3e-5 with the
      Lagrange threshold 10, were tuned on -v0 data). CORL keeps 3e-5; young-geng uses 3e-4.
  fixed α_cql, no Lagrange: README for Gym (lagrange_thresh −1), young-geng and CORL alike.
  3 × 256 hidden layers for actor and critics: cql_mujoco_new.py (CORL also 3; young-geng 2).
  bc_steps 40 000: cql_mujoco_new.py policy_eval_start (CORL's configs 0; young-geng none).
  raw states and rewards: the reference normalises neither (CORL's hopper-medium-v2 config normalises both).
"""

from __future__ import annotations

import math

import torch

from baselines.common import (
    LogScalar,
    OfflineAlgorithm,
    TanhGaussianActor,
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
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    TrainingConfig,
    TrainingSetup,
    algorithm_config,
)


@algorithm_config
class Config(TrainingConfig):
    # num_steps 1e6, eval_every 5e3, eval_episodes 10, batch_size 256: inherited; batch 256 and 1000 updates
    # per epoch as cql_mujoco_new.py (which runs 3000 epochs; 1e6 matches the other baselines and CORL).
    # Evaluation differs between the sources: cql_mujoco_new.py collects num_eval_steps_per_epoch=1000 steps
    # (about one 1000-step episode) after each epoch, young-geng 5 episodes every 10 epochs, CORL cql.py
    # n_episodes=10 every eval_freq=5000; we take CORL's, the protocol of the other baselines' references.
    cql_alpha: NonNegativeFloat = 5.0  # α_cql, weight of the conservative penalty (README min_q_weight; see module doc)
    cql_n_actions: PositiveInt = 10  # N sampled actions per proposal (num_random; all three sources agree)
    cql_temperature: PositiveFloat = 1.0  # temperature of the log-sum-exp (temp)
    policy_lr: PositiveFloat = 1e-4  # actor Adam lr, also the entropy temperature's (README; see module doc)
    critic_lr: PositiveFloat = 3e-4  # qf_lr (all three sources)
    discount: Fraction = 0.99  # γ
    tau: Fraction = 0.005  # Polyak rate of the target critic, every update (soft_target_tau)
    bc_steps: NonNegativeInt = 40_000  # initial updates whose actor loss is BC (policy_eval_start)
    target_entropy: float | None = None  # H̄; None = −dim(A) (all three sources)
    hidden_dims: tuple[PositiveInt, ...] = (256, 256, 256)  # actor and each critic (cql_mujoco_new.py [M, M, M])
    normalize_states: bool = False  # the reference does not; CORL does
    state_eps: PositiveFloat = 1e-3


class CQL(OfflineAlgorithm):
    name = "cql"

    def __init__(self, config: Config, setup: TrainingSetup):
        super().__init__(config, setup, setup.dataset)
        obs_dim, act_dim = self.obs_dim, self.act_dim
        self.target_entropy = -float(act_dim) if config.target_entropy is None else config.target_entropy
        with seeded_init(setup.seed):
            # rlkit initialises the last layers from U(±1e-3) (policy) and U(±3e-3) (Q-functions).
            self.actor = TanhGaussianActor(obs_dim, act_dim, config.hidden_dims, final_init=1e-3)
            self.critic = TwinCritic(obs_dim, act_dim, config.hidden_dims, final_init=3e-3)
            self.log_alpha = LogScalar(0.0)
        for module in (self.normalizer, self.actor, self.critic, self.log_alpha):
            module.to(self.device)
        self.critic_target = frozen_copy(self.critic)
        self.optimizers = {"all": make_adam([
            {"params": self.actor.parameters(), "lr": config.policy_lr},
            {"params": self.critic.parameters(), "lr": config.critic_lr},
            {"params": self.log_alpha.parameters(), "lr": config.policy_lr},
        ], self.device)}

    def networks(self):
        return {"normalizer": self.normalizer, "actor": self.actor, "critic": self.critic,
                "critic_target": self.critic_target, "log_alpha": self.log_alpha}

    def loss(self, batch: TransitionBatch, noise: torch.Tensor, uniform: torch.Tensor, bc_phase: bool):
        """Entropy-temperature, actor and critic losses, summed (they touch disjoint parameters)."""
        c = self.config
        obs, actions = self.normalizer.observations(batch.observations), self.normalizer.unit_actions(batch.actions)
        next_obs = self.normalizer.observations(batch.next_observations)
        b, n = actions.shape[0], c.cql_n_actions

        # One actor pass over [s; s′]; 1 + N reparameterised samples per state from that one distribution.
        mean, log_std = self.actor(torch.cat([obs, next_obs]))
        sampled, log_pis = TanhGaussianActor.sample(mean[:, None], log_std[:, None], noise)
        new_actions, log_pi = sampled[:b, 0], log_pis[:b, 0]  # the only samples that carry gradients
        sampled, log_pis = sampled.detach(), log_pis.detach()

        # Entropy temperature (its loss sees log π as a constant; the other losses see α as one).
        log_alpha = self.log_alpha.value
        alpha = log_alpha.exp().detach()
        alpha_loss = -(log_alpha * (log_pi.detach() + self.target_entropy)).mean()

        # Actor: maximise min Q − α log π (critic weights detached), or the data's log-likelihood at first.
        if bc_phase:
            objective = TanhGaussianActor.log_prob(mean[:b], log_std[:b], actions)
        else:
            objective = self.critic(obs, new_actions, detach_params=True).min(0).values
        actor_loss = (alpha * log_pi - objective).mean()

        # Critic target: min over target twins at a′ ~ π(s′), no entropy bonus.
        with torch.no_grad():
            target_q = self.critic_target(next_obs, sampled[b:, 0]).min(0).values
            y = batch.rewards + c.discount * (1.0 - batch.dones) * target_q

        # All critic queries in one ensemble pass: the data action, N uniform, N from π(s), N from π(s′).
        queries = torch.cat([actions[:, None], uniform, sampled[:b, 1:], sampled[b:, 1:]], dim=1)
        q_all = self.critic(obs[:, None].expand(b, 1 + 3 * n, obs.shape[-1]), queries)  # (2, B, 1 + 3N)
        q_data = q_all[..., 0]
        bellman_loss = (q_data - y).square().mean(1).sum()
        # Importance weights: the uniform density on [-1, 1]^A is 0.5^A; policy samples use their log π.
        log_density = torch.cat([torch.full((b, n), actions.shape[1] * math.log(0.5), device=obs.device),
                                 log_pis[:b, 1:], log_pis[b:, 1:]], dim=1)
        t = c.cql_temperature
        logsumexp = torch.logsumexp((q_all[..., 1:] - log_density) / t, dim=-1) * t  # (2, B)
        cql_gap = (logsumexp - q_data).mean(1)  # (2,)
        critic_loss = bellman_loss + c.cql_alpha * cql_gap.sum()
        return actor_loss + alpha_loss + critic_loss, {
            "actor_loss": actor_loss, "alpha_loss": alpha_loss, "alpha": alpha, "log_pi": log_pi.mean(),
            "critic_loss": critic_loss, "bellman_loss": bellman_loss, "cql_gap": cql_gap.mean(),
            "q_data_mean": q_data.mean(), "target_q_mean": target_q.mean(),
            "q_random_mean": q_all[..., 1:1 + n].mean(), "q_logsumexp_mean": logsumexp.mean()}

    def update(self, batch: TransitionBatch) -> dict[str, float]:
        c, step = self.config, self.step + 1
        (b, act_dim), n = batch.actions.shape, c.cql_n_actions
        noise = torch.randn((2 * b, n + 1, act_dim), generator=self.generator, device=self.device)
        uniform = torch.rand((b, n, act_dim), generator=self.generator, device=self.device) * 2.0 - 1.0
        loss, metrics = self.loss(batch, noise, uniform, step <= c.bc_steps)
        optimizer = self.optimizers["all"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        polyak_(self.critic_target, self.critic, c.tau)
        self.step = step
        return finite_metrics(step, **metrics)


class FusedCQL:
    """The seeds of a stack as one update (trainers/runtime/stack.py): actor, critic, target critic and entropy
    temperature as one `SeedStack` each, the one Adam as one `StackedAdam` (its three groups); every seed's losses on
    its own batch, normalizer and samples (its noise drawn from its own generator, as alone): what seed k computes
    alone, one kernel per layer for all seeds (the critic's 1 + 3N queries per state included).

    Used on accelerators only: on a CPU this compute-bound update is no faster fused than seed after seed
    (bench/stacked_seeds.py measured 0.89–0.97× at k = 3 and 5), so there the seeds train one after another."""

    on_cpu = False  # the tests set it to check the fused form against the seeds alone where no GPU is

    @classmethod
    def build(cls, seeds: list[CQL]) -> FusedCQL | None:
        return cls(seeds) if seeds[0].device.type != "cpu" or cls.on_cpu else None

    def __init__(self, seeds: list[CQL]):
        self.seeds, self.step, self.config, device = seeds, seeds[0].step, seeds[0].config, seeds[0].device
        self.actor = SeedStack([seed.actor for seed in seeds])
        self.critic = SeedStack([seed.critic.net for seed in seeds])
        self.critic_target = SeedStack([seed.critic_target.net for seed in seeds], trainable=False)
        self.log_alpha = SeedStack([seed.log_alpha for seed in seeds])
        self.optimizer = adam_for([self.actor, self.critic, self.log_alpha], [seed.optimizers["all"] for seed in seeds],
                                  device)
        self.normalizer = StackedNormalizer([seed.normalizer for seed in seeds])
        self.target_entropy, self.log_std_range = seeds[0].target_entropy, seeds[0].actor.log_std_range

    @staticmethod
    def q(critic: SeedStack, obs: torch.Tensor, actions: torch.Tensor, **kwargs) -> torch.Tensor:
        """TwinCritic for every seed: obs and actions (K, ..., ·) with equal leading shapes → (K, 2, ...)."""
        x = torch.cat([obs, actions], dim=-1)
        q = ensemble(critic, x.reshape(x.shape[0], -1, x.shape[-1]), **kwargs)
        return q.reshape(*q.shape[:2], *x.shape[1:-1])

    def update(self, batches: list[TransitionBatch]) -> list[dict[str, float] | NonFiniteLossError]:
        c, step, batch = self.config, self.step + 1, stacked_batch(batches)
        (b, act_dim), n = batches[0].actions.shape, c.cql_n_actions
        noise, uniform = (torch.stack(draws) for draws in zip(*(
            (torch.randn((2 * b, n + 1, act_dim), generator=seed.generator, device=seed.device),
             torch.rand((b, n, act_dim), generator=seed.generator, device=seed.device) * 2.0 - 1.0)
            for seed in self.seeds)))
        obs = self.normalizer.observations(batch["observations"])
        actions = self.normalizer.unit_actions(batch["actions"])
        next_obs = self.normalizer.observations(batch["next_observations"])
        mean, log_std = mlp(self.actor, torch.cat([obs, next_obs], dim=1), prefix="net.").chunk(2, dim=-1)
        log_std = log_std.clamp(*self.log_std_range)
        sampled, log_pis = TanhGaussianActor.sample(mean[:, :, None], log_std[:, :, None], noise)
        new_actions, log_pi = sampled[:, :b, 0], log_pis[:, :b, 0]
        sampled, log_pis = sampled.detach(), log_pis.detach()

        log_alpha = self.log_alpha["value"]  # (K,)
        alpha = log_alpha.exp().detach()
        alpha_loss = -(log_alpha[:, None] * (log_pi.detach() + self.target_entropy)).mean(1)
        if step <= c.bc_steps:
            objective = TanhGaussianActor.log_prob(mean[:, :b], log_std[:, :b], actions)
        else:
            objective = self.q(self.critic, obs, new_actions, detach_params=True).min(1).values
        actor_loss = (alpha[:, None] * log_pi - objective).mean(1)
        with torch.no_grad():
            target_q = self.q(self.critic_target, next_obs, sampled[:, b:, 0]).min(1).values  # (K, B)
            y = batch["rewards"] + c.discount * (1.0 - batch["dones"]) * target_q
        queries = torch.cat([actions[:, :, None], uniform, sampled[:, :b, 1:], sampled[:, b:, 1:]], dim=2)
        q_all = self.q(self.critic, obs[:, :, None].expand(*queries.shape[:3], obs.shape[-1]), queries)  # (K,2,B,·)
        q_data = q_all[..., 0]
        bellman_loss = (q_data - y[:, None]).square().mean(2).sum(1)
        log_density = torch.cat([torch.full((len(self.seeds), b, n), act_dim * math.log(0.5), device=obs.device),
                                 log_pis[:, :b, 1:], log_pis[:, b:, 1:]], dim=2)
        t = c.cql_temperature
        logsumexp = torch.logsumexp((q_all[..., 1:] - log_density[:, None]) / t, dim=-1) * t  # (K, 2, B)
        cql_gap = (logsumexp - q_data).mean(2)  # (K, 2)
        critic_loss = bellman_loss + c.cql_alpha * cql_gap.sum(1)
        self.optimizer.zero_grad()
        (actor_loss + alpha_loss + critic_loss).sum().backward()
        self.optimizer.step()
        polyak_(self.critic_target, self.critic, c.tau)
        self.step = step
        metrics = {"actor_loss": actor_loss, "alpha_loss": alpha_loss, "alpha": alpha, "log_pi": log_pi.mean(1),
                   "critic_loss": critic_loss, "bellman_loss": bellman_loss, "cql_gap": cql_gap.mean(1),
                   "q_data_mean": q_data.mean((1, 2)), "target_q_mean": target_q.mean(1),
                   "q_random_mean": q_all[..., 1:1 + n].mean((1, 2, 3)), "q_logsumexp_mean": logsumexp.mean((1, 2))}
        return fused_metrics(step, **metrics)

    def sync(self) -> None:
        sync_seeds(self.seeds, self.step,
                   [self.actor, self.critic, self.critic_target, self.log_alpha], [self.optimizer])


# The CQL paper reports kitchen results, but neither its released code nor its README gives kitchen
# settings we could verify, so kitchen tasks run with the defaults above.
ALGORITHM = AlgorithmDeclaration(config=Config, build=CQL, fused_seeds=FusedCQL.build)
