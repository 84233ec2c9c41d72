"""Several seeds of one baseline as batched tensors: the pieces a baseline's fused form (`FusedSeeds`: bc.py's
`FusedBC`, td3_bc.py's `FusedTD3BC`) is made of.

`SeedStack` holds the seeds' copies of one network as one tensor per parameter, with the seeds first: seed k's
`layers.0.weight` (out, in) is `stack["layers.0.weight"][k]`. `mlp` and `ensemble` compute the networks of
baselines/common.py (`MLP`, `EnsembleMLP`) for every seed at once, on inputs of shape (K, B, in): one batched matmul
per layer for all seeds. An optimiser over the stacked tensors (Adam is elementwise) is every seed's own optimiser at
once: `StackedAdam` takes the seeds' moments and step when built and gives them back in `sync`, as `SeedStack.sync`
gives back the weights, so each seed's algorithm checkpoints, evaluates and exports exactly as alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from baselines.common import EnsembleMLP, make_adam


class SeedStack(nn.Module):
    """The seeds' copies of one network, parameter by parameter, seeds first; trainable or frozen (a target)."""

    def __init__(self, nets: Sequence[nn.Module], trainable: bool = True):
        super().__init__()
        self.nets = list(nets)  # the seeds' own networks, which `sync` writes back (not registered as submodules)
        own = [dict(net.named_parameters()) for net in self.nets]
        self.names = list(own[0])
        self.stacked = nn.ParameterList(
            nn.Parameter(torch.stack([seed[name].detach() for seed in own]).clone(), requires_grad=trainable)
            for name in self.names)

    def __getitem__(self, name: str) -> nn.Parameter:
        return self.stacked[self.names.index(name)]

    def seed_parameters(self, k: int) -> list[nn.Parameter]:
        """Seed k's own parameters, in the order of `self.stacked` (its optimiser's order)."""
        own = dict(self.nets[k].named_parameters())
        return [own[name] for name in self.names]

    @torch.no_grad()
    def sync(self) -> None:
        for k in range(len(self.nets)):
            for stacked, own in zip(self.stacked, self.seed_parameters(k)):
                own.copy_(stacked[k])


def mlp(stack: SeedStack, x: torch.Tensor, prefix: str = "") -> torch.Tensor:
    """common.MLP (ReLU, no dropout) for every seed — the stack's, or its submodule `prefix` (e.g. "net.") — :
    x (K, B, in) → (K, B, out)."""
    layers = sum(name.startswith(f"{prefix}layers.") and name.endswith(".weight") for name in stack.names)
    for i in range(layers):
        weight, bias = stack[f"{prefix}layers.{i}.weight"], stack[f"{prefix}layers.{i}.bias"]
        x = torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
        if i < layers - 1:
            x = x.relu()
    return x


def ensemble(stack: SeedStack, x: torch.Tensor, detach_params: bool = False, member: int | None = None
             ) -> torch.Tensor:
    """common.EnsembleMLP for every seed: x (K, N, in), shared by a seed's members → (K, members, N, out). On CPU the
    rows go in blocks, as EnsembleMLP's do, so that all seeds' activations of a block stay in cache."""
    block = max(1, EnsembleMLP.CPU_BLOCK_ROWS // x.shape[0])
    if x.device.type == "cpu" and x.shape[1] > 2 * block:
        return torch.cat([ensemble(stack, part, detach_params, member) for part in x.split(block, dim=1)], dim=2)
    layers = sum(name.startswith("weights.") for name in stack.names)
    h = None
    for i in range(layers):
        weight, bias = stack[f"weights.{i}"], stack[f"biases.{i}"]  # (K, M, in, out), (K, M, 1, out)
        if member is not None:
            weight, bias = weight[:, member:member + 1], bias[:, member:member + 1]
        if detach_params:
            weight, bias = weight.detach(), bias.detach()
        seeds, members = weight.shape[:2]
        if h is None:
            h = x.unsqueeze(1).expand(seeds, members, *x.shape[1:]).reshape(seeds * members, *x.shape[1:])
        else:
            h = h.relu()
        h = torch.baddbmm(bias.reshape(seeds * members, 1, -1), h, weight.reshape(seeds * members, *weight.shape[2:]))
    return h.reshape(seeds, members, *h.shape[1:])


class StackedAdam:
    """One Adam over stacked tensors standing for each seed's Adam over its own (same hyperparameters, same step):
    one param group per group of the seeds' optimisers, built from their states and written back by `sync`."""

    def __init__(self, groups: list[tuple[list[nn.Parameter], list[list[nn.Parameter]]]],
                 optimizers: list[torch.optim.Optimizer], device: torch.device):
        """groups: per param group of the seeds' optimisers, (the stacked parameters, each seed's own in the same
        order)."""
        settings = optimizers[0].param_groups
        self.optimizer = make_adam([{"params": stacked, "lr": group["lr"]}
                                    for (stacked, _), group in zip(groups, settings, strict=True)], device)
        for mine, group in zip(self.optimizer.param_groups, settings):
            mine.update(betas=group["betas"], eps=group["eps"], weight_decay=group["weight_decay"])
        self.pairs = [(stacked, [own[i] for own in seeds]) for stacked_list, seeds in groups
                      for i, stacked in enumerate(stacked_list)]
        self.optimizers = optimizers
        for stacked, own in self.pairs:
            states = [optimizer.state.get(p, {}) for optimizer, p in zip(optimizers, own)]
            if states[0]:
                self.optimizer.state[stacked] = {
                    "step": states[0]["step"].clone(),
                    **{key: torch.stack([state[key] for state in states]) for key in ("exp_avg", "exp_avg_sq")}}

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.optimizer.step()

    @torch.no_grad()
    def sync(self) -> None:
        for i, optimizer in enumerate(self.optimizers):
            for mine, group in zip(self.optimizer.param_groups, optimizer.param_groups):
                group["lr"] = mine["lr"]
            for stacked, own in self.pairs:
                state = self.optimizer.state.get(stacked)
                if state:
                    optimizer.state[own[i]] = {"step": state["step"].clone(),
                                               **{key: state[key][i].clone() for key in ("exp_avg", "exp_avg_sq")}}


def adam_for(stacks: Sequence[SeedStack], optimizers: list[torch.optim.Optimizer], device: torch.device
             ) -> StackedAdam:
    """A StackedAdam whose param group g is stack g of `stacks` (the seeds' optimisers have one group per network)."""
    return StackedAdam([(list(stack.stacked), [stack.seed_parameters(k) for k in range(len(stack.nets))])
                        for stack in stacks], optimizers, device)


def stacked_buffer(values: Sequence[torch.Tensor]) -> torch.Tensor:
    """The seeds' copies of a per-feature buffer (e.g. observation means) as (K, 1, features), to broadcast over
    (K, B, features)."""
    return torch.stack([v.detach() for v in values]).unsqueeze(1)


class StackedNormalizer:
    """The seeds' `Normalizer`s (each fitted on its own subset) for inputs of shape (K, B, features)."""

    def __init__(self, normalizers: Sequence[nn.Module]):
        self.obs_mean, self.obs_std, self.action_scale, self.action_bias = (
            stacked_buffer([getattr(n, name) for n in normalizers])
            for name in ("obs_mean", "obs_std", "action_scale", "action_bias"))

    def observations(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.obs_mean) / self.obs_std

    def unit_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return (actions - self.action_bias) / self.action_scale


def stacked_batch(batches: Sequence) -> dict[str, torch.Tensor]:
    """The seeds' batches field by field, seeds first: {"observations": (K, B, obs_dim), ...}."""
    return {f.name: torch.stack([getattr(b, f.name) for b in batches]) for f in dataclasses.fields(batches[0])}


def sync_seeds(seeds: Sequence, step: int, stacks: Sequence[SeedStack], optimizers: Sequence[StackedAdam]
               ) -> None:
    """A fused form's `sync`: its stacks' weights, its optimisers' state and its step back into each seed."""
    for stack in stacks:
        stack.sync()
    for optimizer in optimizers:
        optimizer.sync()
    for seed in seeds:
        seed.step = step
