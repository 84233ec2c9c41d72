"""Gradient updates per second of the baselines at batch 256, beside the same updates written the plain way.

    python -m bench.baselines [--seconds 3] [--rounds 3] [--threads 1] [--compile]

Data has hopper's shape (11-d observations, 3-d actions; synthetic values — the cost of an update does not
depend on them). "ours" is the algorithm built through the registry (baselines/) with its default settings:
twin critics as one ensemble, one fused Adam step per optimizer, CQL's 12 critic-module calls per update
reduced to 3 ensemble passes and its 4 actor calls to 1, one backward pass for CQL's three losses. "plain" is
the same update written as the reference implementations (CORL, sfujim/TD3_BC) write it: one module per
critic, one optimizer per network, separate backward passes, Adam(foreach=False), `.item()` per metric.

CPU figures are per thread by default (--threads 1): a sweep runs one trial per core, and on a shared machine
two OpenMP threads per process stall each other. glibc's allocator is tuned as the worker loop tunes it.

Variants are measured in interleaved rounds (ours, plain, ours, plain, …) and each reports its median round,
so load from other processes on a shared machine affects both alike. With CUDA, the table adds our update on
the GPU, eager and under torch.compile(mode="max-autotune-no-cudagraphs"); --compile adds the compiled
update on CPU too (slow to compile). The JAX ports of these baselines report 4–28× over plain PyTorch.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

from trainers.data.samplers import TransitionBatch, TransitionSampler, to_torch
from trainers.data.trajectories import TrajectoryDataset, split_episodes
from trainers.runtime.algorithm import TrainingSetup
from trainers.runtime.cpu_allocator import keep_freed_memory_for_reuse
from trainers.runtime.registry import build_algorithm, make_config
from trainers.runtime.tasks import get_task

OBS, ACT, BATCH = 11, 3, 256
ALGORITHMS = ("bc", "td3_bc", "iql", "cql")


def hopper_shaped(num_episodes: int = 50, length: int = 1000, seed: int = 0) -> TrajectoryDataset:
    rng = np.random.default_rng(seed)
    n = num_episodes * length
    terminals, timeouts = np.zeros(n, bool), np.zeros(n, bool)
    timeouts[length - 1::length] = True
    return TrajectoryDataset(
        name="hopper-shaped", observations=rng.normal(size=(n, OBS)).astype(np.float32),
        actions=rng.uniform(-1, 1, (n, ACT)).astype(np.float32), rewards=rng.uniform(0, 4, n).astype(np.float32),
        terminals=terminals, timeouts=timeouts, episodes=split_episodes(terminals, timeouts))


# --- the plain way ----------------------------------------------------------------------------------------------


def mlp(in_dim: int, out_dim: int, hidden=(256, 256)) -> nn.Sequential:
    dims, layers = [in_dim, *hidden], []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(dims[-1], out_dim))


def adam(module: nn.Module, lr: float = 3e-4) -> torch.optim.Adam:
    return torch.optim.Adam(module.parameters(), lr=lr, foreach=False)


def soft_update(target: nn.Module, source: nn.Module, tau: float = 0.005) -> None:
    for t, s in zip(target.parameters(), source.parameters()):
        t.data.copy_((1 - tau) * t.data + tau * s.data)


class Q(nn.Module):
    def __init__(self, hidden=(256, 256)):
        super().__init__()
        self.net = mlp(OBS + ACT, 1, hidden)

    def forward(self, s, a):
        if a.dim() == 3:  # (B, N, A): repeat the states, as the reference does
            n = a.shape[1]
            return self(s.unsqueeze(1).repeat(1, n, 1).reshape(-1, OBS), a.reshape(-1, ACT)).reshape(-1, n)
        return self.net(torch.cat([s, a], -1)).squeeze(-1)


def plain_bc(device):
    actor = nn.Sequential(mlp(OBS, ACT), nn.Tanh()).to(device)
    opt = adam(actor)

    def update(b: TransitionBatch):
        loss = F.mse_loss(actor(b.observations), b.actions)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"actor_loss": loss.item()}
    return update


def plain_td3_bc(device):
    actor = nn.Sequential(mlp(OBS, ACT), nn.Tanh()).to(device)
    q1, q2 = Q().to(device), Q().to(device)
    actor_t, q1_t, q2_t = copy.deepcopy(actor), copy.deepcopy(q1), copy.deepcopy(q2)
    opt_a, opt_1, opt_2 = adam(actor), adam(q1), adam(q2)
    step = [0]

    def update(b: TransitionBatch):
        step[0] += 1
        s, a, r, s2, d = b.observations, b.actions, b.rewards, b.next_observations, b.dones
        with torch.no_grad():
            noise = (torch.randn_like(a) * 0.2).clamp(-0.5, 0.5)
            a2 = (actor_t(s2) + noise).clamp(-1, 1)
            y = r + 0.99 * (1 - d) * torch.min(q1_t(s2, a2), q2_t(s2, a2))
        loss = F.mse_loss(q1(s, a), y) + F.mse_loss(q2(s, a), y)
        opt_1.zero_grad()
        opt_2.zero_grad()
        loss.backward()
        opt_1.step()
        opt_2.step()
        out = {"critic_loss": loss.item()}
        if step[0] % 2 == 0:
            pi = actor(s)
            q = q1(s, pi)
            actor_loss = -2.5 / q.abs().mean().detach() * q.mean() + F.mse_loss(pi, a)
            opt_a.zero_grad()
            actor_loss.backward()
            opt_a.step()
            for t, o in ((q1_t, q1), (q2_t, q2), (actor_t, actor)):
                soft_update(t, o)
            out["actor_loss"] = actor_loss.item()
        return out
    return update


def plain_iql(device):
    net, log_std = mlp(OBS, ACT).to(device), nn.Parameter(torch.zeros(ACT, device=device))
    value, q1, q2 = mlp(OBS, 1).to(device), Q().to(device), Q().to(device)
    q1_t, q2_t = copy.deepcopy(q1), copy.deepcopy(q2)
    opt_a = torch.optim.Adam([*net.parameters(), log_std], lr=3e-4, foreach=False)
    opt_v, opt_q = adam(value), torch.optim.Adam([*q1.parameters(), *q2.parameters()], lr=3e-4, foreach=False)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt_a, 1_000_000)

    def update(b: TransitionBatch):
        s, a, r, s2, d = b.observations, b.actions, b.rewards, b.next_observations, b.dones
        with torch.no_grad():
            tq = torch.min(q1_t(s, a), q2_t(s, a))
        u = tq - value(s).squeeze(-1)
        v_loss = (torch.abs(0.7 - (u < 0).float()) * u ** 2).mean()
        opt_v.zero_grad()
        v_loss.backward()
        opt_v.step()
        with torch.no_grad():
            v, v2 = value(s).squeeze(-1), value(s2).squeeze(-1)
        w = torch.exp(3.0 * (tq - v)).clamp(max=100)
        dist = torch.distributions.Normal(torch.tanh(net(s)), log_std.clamp(-5, 2).exp())
        actor_loss = -(w * dist.log_prob(a).sum(-1)).mean()
        opt_a.zero_grad()
        actor_loss.backward()
        opt_a.step()
        sched.step()
        y = r + 0.99 * (1 - d) * v2
        q_loss = F.mse_loss(q1(s, a), y) + F.mse_loss(q2(s, a), y)
        opt_q.zero_grad()
        q_loss.backward()
        opt_q.step()
        soft_update(q1_t, q1)
        soft_update(q2_t, q2)
        return {"value_loss": v_loss.item(), "actor_loss": actor_loss.item(), "critic_loss": q_loss.item()}
    return update


def plain_cql(device, n: int = 10, hidden=(256, 256, 256)):
    net = mlp(OBS, 2 * ACT, hidden).to(device)
    q1, q2 = Q(hidden).to(device), Q(hidden).to(device)
    q1_t, q2_t = copy.deepcopy(q1), copy.deepcopy(q2)
    log_alpha = nn.Parameter(torch.zeros((), device=device))
    opt_pi, opt_alpha = adam(net, 1e-4), torch.optim.Adam([log_alpha], lr=1e-4, foreach=False)
    opt_1, opt_2 = adam(q1), adam(q2)

    def policy(s, repeat=None):
        if repeat is not None:
            s = s.unsqueeze(1).repeat(1, repeat, 1)
        mean, log_std = net(s).chunk(2, -1)
        dist = torch.distributions.TransformedDistribution(
            torch.distributions.Normal(mean, log_std.clamp(-20, 2).exp()),
            torch.distributions.TanhTransform(cache_size=1))
        action = dist.rsample()
        return action, dist.log_prob(action).sum(-1)

    def update(b: TransitionBatch):
        s, a, r, s2, d = b.observations, b.actions, b.rewards, b.next_observations, b.dones
        new_a, log_pi = policy(s)
        alpha_loss = -(log_alpha * (log_pi + (-ACT)).detach()).mean()
        alpha = log_alpha.exp()
        policy_loss = (alpha * log_pi - torch.min(q1(s, new_a), q2(s, new_a))).mean()
        p1, p2 = q1(s, a), q2(s, a)
        a2, _ = policy(s2)
        y = (r + 0.99 * (1 - d) * torch.min(q1_t(s2, a2), q2_t(s2, a2))).detach()
        rand = a.new_empty(a.shape[0], n, ACT).uniform_(-1, 1)
        cur, cur_lp = [x.detach() for x in policy(s, n)]
        nxt, nxt_lp = [x.detach() for x in policy(s2, n)]
        losses = []
        for q, pred in ((q1, p1), (q2, p2)):
            cat = torch.cat([q(s, rand) - np.log(0.5 ** ACT), q(s, nxt) - nxt_lp, q(s, cur) - cur_lp], 1)
            losses.append(F.mse_loss(pred, y) + 5.0 * (torch.logsumexp(cat, 1) - pred).mean())
        qf_loss = losses[0] + losses[1]
        opt_alpha.zero_grad()
        alpha_loss.backward()
        opt_alpha.step()
        opt_pi.zero_grad()
        policy_loss.backward()
        opt_pi.step()
        opt_1.zero_grad()
        opt_2.zero_grad()
        qf_loss.backward()
        opt_1.step()
        opt_2.step()
        soft_update(q1_t, q1)
        soft_update(q2_t, q2)
        return {"policy_loss": policy_loss.item(), "qf_loss": qf_loss.item(), "alpha": alpha.item(),
                "log_pi": log_pi.mean().item(), "q1": p1.mean().item(), "q2": p2.mean().item()}
    return update


PLAIN: dict[str, Callable] = {"bc": plain_bc, "td3_bc": plain_td3_bc, "iql": plain_iql, "cql": plain_cql}
# Each baseline's loss methods: pure tensor functions of the batch (and its noise), what --compile compiles.
LOSS_METHODS = {"bc": ("loss",), "td3_bc": ("critic_loss", "actor_loss"), "iql": ("value_loss", "actor_critic_loss"),
                "cql": ("loss",)}


# --- measuring --------------------------------------------------------------------------------------------------


def ours(name: str, device: torch.device, dataset: TrajectoryDataset, compile_mode: str | None = None):
    observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (ACT,), np.float32)
    setup = TrainingSetup(get_task("hopper-medium"), dataset, observation_space, action_space, device, seed=0)
    # CQL is timed after its BC warm start (its actor loss then goes through the critic, as plain_cql's does).
    algorithm = build_algorithm(name, make_config(name, {"bc_steps": 0} if name == "cql" else {}), setup)
    if compile_mode is not None:  # the losses are pure tensor functions; sampling and optimizer steps stay eager
        for method in LOSS_METHODS[name]:
            setattr(algorithm, method, torch.compile(getattr(algorithm, method), mode=compile_mode))
    return algorithm.update


def rate(update: Callable, batches: list[TransitionBatch], seconds: float, sync: Callable[[], None]) -> float:
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        update(batches[count % len(batches)])
        count += 1
    sync()
    return count / (time.perf_counter() - started)


def measure(variants: dict[str, Callable], batches, seconds: float, rounds: int, warmup: int, sync) -> dict[str, float]:
    for update in variants.values():
        for i in range(warmup):
            update(batches[i % len(batches)])
    sync()
    samples: dict[str, list[float]] = {key: [] for key in variants}
    for _ in range(rounds):
        for key, update in variants.items():
            samples[key].append(rate(update, batches, seconds, sync))
    return {key: statistics.median(values) for key, values in samples.items()}


def fmt(rate: float) -> str:
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per variant per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--compile", action="store_true", help="also torch.compile our update on CPU")
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory_for_reuse()  # as the worker loop does; applies to both variants
    torch.manual_seed(0)
    dataset = hopper_shaped()
    sampler, rng = TransitionSampler(dataset), np.random.default_rng(0)
    host = [sampler.sample(BATCH, rng) for _ in range(16)]
    cpu, cuda = torch.device("cpu"), torch.cuda.is_available()
    columns = ["algorithm", "plain (upd/s)", "ours CPU (upd/s)", "× plain"]
    if args.compile:
        columns += ["ours CPU compiled", "× plain"]
    if cuda:
        columns += ["plain CUDA", "ours CUDA", "ours CUDA compiled", "compiled × plain CUDA"]
    table = Table(*columns, title=f"gradient updates/s, batch {BATCH}, hopper-shaped ({OBS}-d obs, {ACT}-d actions); "
                                  f"CPU threads {args.threads}; torch {torch.__version__}")
    compile_mode = "max-autotune-no-cudagraphs"
    for name in args.algorithms:
        batches = [to_torch(b, cpu) for b in host]
        variants = {"plain": PLAIN[name](cpu), "ours": ours(name, cpu, dataset)}
        if args.compile:
            variants["compiled"] = ours(name, cpu, dataset, "max-autotune-no-cudagraphs")
        result = measure(variants, batches, args.seconds, args.rounds, warmup=20 if args.compile else 5,
                         sync=lambda: None)
        row = [name, fmt(result["plain"]), fmt(result["ours"]), f"{result['ours'] / result['plain']:.2f}×"]
        if args.compile:
            row += [fmt(result["compiled"]), f"{result['compiled'] / result['plain']:.2f}×"]
        if cuda:
            gpu = torch.device("cuda")
            gpu_batches = [to_torch(b, gpu) for b in host]
            gpu_variants = {"plain": PLAIN[name](gpu), "ours": ours(name, gpu, dataset),
                            "compiled": ours(name, gpu, dataset, compile_mode)}
            g = measure(gpu_variants, gpu_batches, args.seconds, args.rounds, warmup=30, sync=torch.cuda.synchronize)
            row += [fmt(g["plain"]), fmt(g["ours"]), fmt(g["compiled"]), f"{g['compiled'] / g['plain']:.2f}×"]
        table.add_row(*row)
        Console(width=160).print(f"[dim]{name} done[/dim]")
    Console(width=160).print(table)
    if not cuda:
        Console(width=160).print("[dim]no CUDA device: GPU and torch.compile columns skipped[/dim]")


if __name__ == "__main__":
    main()
