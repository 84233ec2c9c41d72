"""Pieces the four baselines share: networks, the normalizer, Polyak averaging, optimizers, and the plumbing
that turns a module set into an `Algorithm` (policy, checkpoint, export).

Conventions every baseline follows:
- Networks see normalized observations and actions in [-1, 1]^A. `Normalizer` holds the observation mean/std
  and the map between [-1, 1] and the environment's action box as buffers, so they travel with checkpoints
  and exported weights and a policy rebuilt without a dataset acts exactly like the trained one.
- Weights are initialised under a forked CPU RNG seeded from `setup.seed`; sampling noise during updates
  comes from the algorithm's own `torch.Generator`, whose state is part of `state_dict()`. Nothing reads or
  advances torch's global RNG, so two trials in one process cannot disturb each other.
- Twin critics are one `EnsembleMLP`: both Q-functions are evaluated with batched matmuls in one pass.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from trainers.data.samplers import TransitionSampler
from trainers.data.trajectories import TrajectoryDataset
from trainers.runtime.algorithm import NonFiniteLossError, StatelessPolicy, TrainingSetup, check_finite

# --- checks done in build(), before anything is trained -----------------------------------------------------


def require_continuous(algorithm: str, setup: TrainingSetup) -> tuple[int, int]:
    """(obs_dim, act_dim), or ValueError when the spaces are not flat, bounded boxes (e.g. Discrete actions)."""
    action_space, observation_space = setup.action_space, setup.observation_space
    if not isinstance(action_space, gym.spaces.Box) or len(action_space.shape) != 1:
        raise ValueError(f"{algorithm} needs a continuous 1-D Box action space; task {setup.task.name!r} has "
                         f"{action_space!r}")
    if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
        raise ValueError(f"{algorithm} squashes actions with tanh and needs finite action bounds; got {action_space!r}")
    if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) != 1:
        raise ValueError(f"{algorithm} needs a flat Box observation space; got {observation_space!r}")
    obs_dim, act_dim = observation_space.shape[0], action_space.shape[0]
    dataset = setup.dataset
    if dataset is not None and (dataset.observation_dim, dataset.action_dim) != (obs_dim, act_dim):
        raise ValueError(f"{algorithm}: dataset {dataset.name} has {dataset.observation_dim}-d observations and "
                         f"{dataset.action_dim}-d actions, the task's spaces {obs_dim} and {act_dim}")
    return obs_dim, act_dim


@contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Parameter initialisation from `seed` without touching the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    """The update-noise stream, seeded independently of the initialisation seed."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(np.random.SeedSequence([seed, 1]).generate_state(1)[0]))
    return generator


# --- normalization --------------------------------------------------------------------------------------------


class Normalizer(nn.Module):
    """Observation standardisation and the affine map between [-1, 1] and the action box, as buffers."""

    def __init__(self, action_space: gym.spaces.Box, obs_dim: int):
        super().__init__()
        low = torch.as_tensor(action_space.low, dtype=torch.float32)
        high = torch.as_tensor(action_space.high, dtype=torch.float32)
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        self.register_buffer("action_scale", (high - low) / 2)
        self.register_buffer("action_bias", (high + low) / 2)

    def fit(self, dataset: TrajectoryDataset | None, eps: float) -> Normalizer:
        """Mean and std + eps of the training set's observations (identity without a dataset: the values then
        come from a checkpoint or exported file)."""
        if dataset is not None:
            mean, std = dataset.state_statistics(eps=eps)
            self.obs_mean.copy_(torch.from_numpy(mean))
            self.obs_std.copy_(torch.from_numpy(std))
        return self

    def observations(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.obs_mean) / self.obs_std

    def unit_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Environment actions → [-1, 1] (the identity for the usual [-1, 1] boxes)."""
        return (actions - self.action_bias) / self.action_scale

    def env_actions(self, unit: torch.Tensor) -> torch.Tensor:
        return unit * self.action_scale + self.action_bias


# --- networks -------------------------------------------------------------------------------------------------


def _dropout(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= p
    return x * keep / (1.0 - p)


class MLP(nn.Module):
    """ReLU MLP. `orthogonal` = orthogonal init with gain √2 and zero biases (IQL's Flax default); otherwise
    torch's default Linear init, with the last layer optionally drawn from U(±final_init) (rlkit's init_w)."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, dropout: float = 0.0,
                 orthogonal: bool = False, final_init: float | None = None):
        super().__init__()
        dims = [in_dim, *hidden, out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.dropout = dropout
        for layer in self.layers:
            if orthogonal:
                nn.init.orthogonal_(layer.weight, gain=math.sqrt(2))
                nn.init.zeros_(layer.bias)
        if final_init is not None:
            nn.init.uniform_(self.layers[-1].weight, -final_init, final_init)
            nn.init.uniform_(self.layers[-1].bias, -final_init, final_init)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Dropout (after each hidden activation) applies only when a generator is given, i.e. in training."""
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
            if generator is not None and self.dropout > 0:
                x = _dropout(x, self.dropout, generator)
        return self.layers[-1](x)


class EnsembleMLP(nn.Module):
    """`members` independent ReLU MLPs evaluated together: weights are (members, in, out) and every layer is
    one batched matmul, so twin critics cost one forward and one backward instead of two of each."""

    def __init__(self, members: int, in_dim: int, hidden: Sequence[int], out_dim: int, orthogonal: bool = False,
                 final_init: float | None = None):
        super().__init__()
        dims = [in_dim, *hidden, out_dim]
        self.weights, self.biases = nn.ParameterList(), nn.ParameterList()
        for a, b in zip(dims[:-1], dims[1:]):
            weight, bias = torch.empty(members, a, b), torch.empty(members, 1, b)
            if orthogonal:
                for member in weight:
                    nn.init.orthogonal_(member, gain=math.sqrt(2))
                nn.init.zeros_(bias)
            else:  # what nn.Linear does: U(±1/√fan_in) for weight and bias
                bound = 1.0 / math.sqrt(a)
                nn.init.uniform_(weight, -bound, bound)
                nn.init.uniform_(bias, -bound, bound)
            self.weights.append(nn.Parameter(weight))
            self.biases.append(nn.Parameter(bias))
        if final_init is not None:
            nn.init.uniform_(self.weights[-1], -final_init, final_init)
            nn.init.uniform_(self.biases[-1], -final_init, final_init)

    # On CPU, rows are processed in blocks of this many: (members × block × width) activations then stay in
    # cache through the forward and backward passes instead of streaming from memory (CQL's 1 + 3N actions
    # per state make N ≈ 8000 rows). One pass regardless of N on accelerators.
    CPU_BLOCK_ROWS = 1024

    def forward(self, x: torch.Tensor, detach_params: bool = False, member: int | None = None) -> torch.Tensor:
        """x (N, in), shared by all members → (members, N, out). `member` evaluates that one alone;
        `detach_params` lets gradients reach x but not the weights (an actor's loss through a critic)."""
        if x.device.type == "cpu" and x.shape[0] > 2 * self.CPU_BLOCK_ROWS:
            return torch.cat([self(part, detach_params, member) for part in x.split(self.CPU_BLOCK_ROWS)], dim=1)
        params = list(zip(self.weights, self.biases))
        if member is not None:
            params = [(w[member:member + 1], b[member:member + 1]) for w, b in params]
        if detach_params:
            params = [(w.detach(), b.detach()) for w, b in params]
        (w, b), rest = params[0], params[1:]
        # (N, in) @ (E, in, out) broadcasts to (E, N, out). Bias and ReLU go in place on the fresh matmul
        # outputs: on CPU, baddbmm would first materialise the broadcast bias, an extra pass over the largest
        # tensors of the update (CQL's 1 + 3N actions per state).
        h = torch.matmul(x, w).add_(b)
        for w, b in rest:
            h = torch.bmm(h.relu_(), w).add_(b)
        return h


class TwinCritic(nn.Module):
    """Q(s, a) for every member at once. obs (..., obs_dim) and actions (..., act_dim) with equal leading
    shapes → (members, ...)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int], members: int = 2, **init: Any):
        super().__init__()
        self.net = EnsembleMLP(members, obs_dim + act_dim, hidden, 1, **init)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        lead = obs.shape[:-1]
        x = torch.cat([obs, actions], dim=-1).reshape(-1, obs.shape[-1] + actions.shape[-1])
        q = self.net(x, **kwargs)
        return q.reshape(q.shape[0], *lead)


class ValueNetwork(nn.Module):
    def __init__(self, obs_dim: int, hidden: Sequence[int], **init: Any):
        super().__init__()
        self.net = MLP(obs_dim, hidden, 1, **init)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


class DeterministicActor(nn.Module):
    """a = tanh(MLP(s)) in [-1, 1] (TD3+BC's and BC's actor)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int], **init: Any):
        super().__init__()
        self.net = MLP(obs_dim, hidden, act_dim, **init)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs))

    deterministic = forward


HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class TanhGaussianActor(nn.Module):
    """SAC's policy: u ~ N(μ(s), σ(s)), a = tanh(u); one head outputs μ and log σ (clamped to [-20, 2], rlkit)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int], log_std_range=(-20.0, 2.0), **init: Any):
        super().__init__()
        self.net = MLP(obs_dim, hidden, 2 * act_dim, **init)
        self.log_std_range = log_std_range

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        return mean, log_std.clamp(*self.log_std_range)

    @staticmethod
    def sample(mean: torch.Tensor, log_std: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised actions and their log-densities; noise ~ N(0, 1) broadcast against mean."""
        u = mean + log_std.exp() * noise
        return torch.tanh(u), (-0.5 * noise.square() - log_std - HALF_LOG_2PI - _tanh_log_det(u)).sum(-1)

    @staticmethod
    def log_prob(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        u = torch.atanh(actions.clamp(-1 + eps, 1 - eps))
        z = (u - mean) * torch.exp(-log_std)
        return (-0.5 * z.square() - log_std - HALF_LOG_2PI - _tanh_log_det(u)).sum(-1)

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self(obs)[0])


def _tanh_log_det(u: torch.Tensor) -> torch.Tensor:
    """log(1 − tanh(u)²), written so it stays finite for large |u|."""
    return 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))


class GaussianActor(nn.Module):
    """IQL's policy: N(tanh(MLP(s)), σ) with a state-independent log σ (init 0, clamped to [-5, 2]); the
    distribution itself is not squashed (implicit_q_learning/policy.py, tanh_squash_distribution=False)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int], log_std_range=(-5.0, 2.0), **init: Any):
        super().__init__()
        self.net = MLP(obs_dim, hidden, act_dim, **init)
        self.log_std = nn.Parameter(torch.zeros(act_dim))
        self.log_std_range = log_std_range

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        mean = torch.tanh(self.net(obs, generator))
        log_std = self.log_std.clamp(*self.log_std_range)
        z = (actions - mean) * torch.exp(-log_std)
        return (-0.5 * z.square() - log_std - HALF_LOG_2PI).sum(-1)

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs))


class LogScalar(nn.Module):
    """A learned log-coefficient (SAC's entropy temperature)."""

    def __init__(self, initial: float = 0.0):
        super().__init__()
        self.value = nn.Parameter(torch.tensor(float(initial)))


def frozen_copy(module: nn.Module) -> nn.Module:
    """A target network: same weights, no gradients."""
    return copy.deepcopy(module).requires_grad_(False)


@torch.no_grad()
def polyak_(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target ← (1 − τ)·target + τ·online, with foreach kernels (three ops for all tensors)."""
    targets, onlines = list(target.parameters()), list(online.parameters())
    torch._foreach_mul_(targets, 1.0 - tau)
    torch._foreach_add_(targets, torch._foreach_mul(onlines, tau))


def make_adam(groups: list[dict[str, Any]], device: torch.device) -> torch.optim.Adam:
    """Adam over param groups (each with its lr), fused into one kernel per step where torch supports it on
    this device (CPU since 2.4, CUDA); otherwise the multi-tensor (foreach) implementation."""
    try:
        return torch.optim.Adam(groups, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(groups, foreach=True)


def finite_metrics(step: int, **values: torch.Tensor | float) -> dict[str, float]:
    """The update's metrics as floats with one device sync, raising NonFiniteLossError if any is NaN/inf."""
    tensors = [v.detach().float().reshape(()) if torch.is_tensor(v) else torch.tensor(float(v))
               for v in values.values()]
    device = next((t.device for t in tensors if t.device.type != "cpu"), torch.device("cpu"))
    floats = torch.stack([t.to(device) for t in tensors]).tolist()
    metrics = dict(zip(values, floats))
    check_finite(step, **metrics)
    return metrics


def fused_metrics(step: int, **values: torch.Tensor) -> list[dict[str, float] | NonFiniteLossError]:
    """Each seed's metrics from a fused update (every value one entry per seed) with one device sync, or the
    NonFiniteLossError that seed alone would raise."""
    rows = torch.stack([v.detach().float() for v in values.values()]).tolist()
    outcomes = []
    for k in range(len(rows[0])):
        metrics = {name: row[k] for name, row in zip(values, rows)}
        try:
            check_finite(step, **metrics)
            outcomes.append(metrics)
        except NonFiniteLossError as error:
            outcomes.append(error)
    return outcomes


# --- the Algorithm plumbing -----------------------------------------------------------------------------------


class OfflineAlgorithm:
    """What every baseline shares: a transition sampler, a step counter, the noise generator, a deterministic
    batched policy, exact checkpoints and safetensors export. A subclass sets `name`, `actor`, `normalizer`
    and `optimizers`, lists its networks in `networks()`, and implements `update`."""

    name: str
    return_conditioned = False
    EXPORT_FILE = "policy.safetensors"

    def __init__(self, config: Any, setup: TrainingSetup, dataset: TrajectoryDataset | None):
        """Checks the action space, then sets up what every baseline has: config, device, sampler over `dataset`
        (None when rebuilt from exported weights), the state normalizer (fitted when `config.normalize_states`)
        and the noise generator. Subclasses build their networks after this, under `seeded_init`."""
        self.obs_dim, self.act_dim = require_continuous(self.name, setup)
        self.config = config
        self.device = torch.device(setup.device)
        self.step = 0  # completed gradient updates
        # None when rebuilt without data (evaluation of exported weights); nothing can be trained then.
        self.sampler = TransitionSampler(dataset) if dataset is not None else None
        self.generator = make_generator(self.device, setup.seed)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.actor: nn.Module
        self.normalizer = Normalizer(setup.action_space, self.obs_dim)
        if config.normalize_states:
            self.normalizer.fit(dataset, config.state_eps)

    def networks(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def extra_state(self) -> dict[str, Any]:
        """Anything else a resumed run needs (e.g. IQL's reward scale)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def policy(self, num_envs: int, target_returns: Sequence[float] | None) -> StatelessPolicy:
        """Deterministic (mean) actions for a batch of observations; uses the live actor, so evaluate between
        updates, not concurrently with them."""
        actor, normalizer, device = self.actor, self.normalizer, self.device

        @torch.inference_mode()
        def act(observations: np.ndarray) -> np.ndarray:
            obs = torch.from_numpy(np.asarray(observations, dtype=np.float32)).to(device)
            actions = normalizer.env_actions(actor.deterministic(normalizer.observations(obs)))
            return actions.cpu().numpy()

        return StatelessPolicy(act)

    def state_dict(self) -> dict[str, Any]:
        """A snapshot (deep copy): later updates do not change it."""
        return copy.deepcopy({
            "algorithm": self.name, "step": self.step,
            "networks": {k: m.state_dict() for k, m in self.networks().items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "generator": self.generator.get_state(), "extra": self.extra_state(),
        })

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("algorithm") != self.name:
            raise ValueError(f"checkpoint is for {state.get('algorithm')!r}, not {self.name!r}")
        for key, module in self.networks().items():
            module.load_state_dict(state["networks"][key])
        for key, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][key])
        self.generator.set_state(state["generator"])
        self.step = int(state["step"])
        self.load_extra_state(state["extra"])

    def _exported(self) -> dict[str, nn.Module]:
        return {"actor": self.actor, "normalizer": self.normalizer}

    def export(self, directory: Path) -> list[Path]:
        """The weights needed to act (actor + normalizer buffers) as one safetensors file."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"{prefix}.{key}": value.detach().cpu().contiguous()
                   for prefix, module in self._exported().items() for key, value in module.state_dict().items()}
        path = directory / self.EXPORT_FILE
        save_file(tensors, str(path), metadata={"algorithm": self.name, "step": str(self.step)})
        return [path]

    def load_exported(self, directory: Path) -> None:
        """Load what `export` wrote (a build with dataset=None gets its normalization from here)."""
        tensors = load_file(str(Path(directory) / self.EXPORT_FILE), device=str(self.device))
        for prefix, module in self._exported().items():
            module.load_state_dict({key[len(prefix) + 1:]: value for key, value in tensors.items()
                                    if key.startswith(prefix + ".")})
