"""The trajectory transformer behind Decision Transformer, LaMo and Wiki-RL.

Tokens (R̂_t, s_t, a_t) for K steps go through a GPT-2 backbone (trainers/gpt2.py, no positional
embeddings: position comes from the timestep embedding only); the action at step t is predicted from the
hidden state of the s_t token. Every design choice that distinguishes the algorithms is a field of
`TrajectoryModelConfig`; the named presets live in trainers/sequence_trainer.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from trainers.gpt2 import GPT2, gpt2_config, random_gpt2


@dataclass
class TrajectoryModelConfig:
    observation_dim: int
    action_dim: int
    context_len: int = 20  # K, steps per window
    max_timestep: int = 1000  # size of the timestep embedding table (episode horizon)
    n_layer: int = 3  # backbone size when it is built here (ignored for a given backbone)
    n_embd: int = 128
    n_head: int = 1
    activation_function: str = "relu"  # backbone MLP when built here: DT's ReLU (ignored for a given backbone)
    dropout: float = 0.1
    embedding: Literal["linear", "mlp"] = "linear"  # LaMo: residual MLP embeddings
    action_head: Literal["linear_tanh", "mlp"] = "linear_tanh"  # DT: Linear → tanh; LaMo: Linear → GELU → Linear
    timestep_after_layernorm: bool = False  # DT adds it before the embedding LayerNorm, LaMo after


class ResidualMLPEmbedding(nn.Module):
    """LaMo's embedding: Linear → GELU → Linear, plus the first Linear's output."""

    def __init__(self, in_dim: int, width: int):
        super().__init__()
        self.first = nn.Linear(in_dim, width)
        self.second = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.first(x)
        return hidden + self.second(nn.functional.gelu(hidden))


def _embedding(config: TrajectoryModelConfig, in_dim: int) -> nn.Module:
    if config.embedding == "mlp":
        return ResidualMLPEmbedding(in_dim, config.n_embd)
    return nn.Linear(in_dim, config.n_embd)


class TrajectoryTransformer(nn.Module):
    def __init__(self, config: TrajectoryModelConfig, backbone: GPT2 | None = None):
        super().__init__()
        self.config = config
        if backbone is None:
            backbone = random_gpt2(gpt2_config(config.n_layer, config.n_embd, config.n_head, config.dropout,
                                               n_positions=max(1024, 3 * config.context_len),
                                               activation_function=config.activation_function))
        if backbone.config.n_embd != config.n_embd:
            raise ValueError(f"model width n_embd={config.n_embd} does not match the backbone's "
                             f"{backbone.config.n_embd}")
        self.backbone = backbone
        width = config.n_embd
        self.embed_timestep = nn.Embedding(config.max_timestep, width)
        self.embed_return = _embedding(config, 1)
        self.embed_state = _embedding(config, config.observation_dim)
        self.embed_action = _embedding(config, config.action_dim)
        self.embed_ln = nn.LayerNorm(width)
        if config.action_head == "mlp":
            self.predict_action = nn.Sequential(nn.Linear(width, width), nn.GELU(),
                                                nn.Linear(width, config.action_dim))
        else:
            self.predict_action = nn.Sequential(nn.Linear(width, config.action_dim), nn.Tanh())

    def _tokens(self, states, actions, returns_to_go, timesteps) -> torch.Tensor:
        """(B, K, ·) → (B, 3K, width): R̂_1, s_1, a_1, R̂_2, … after the embedding LayerNorm.

        Under autocast the return embedding still runs in fp32: bf16 keeps 8 significant bits, so returns-to-go
        3.600 … 3.588 would all become 3.59375 and hopper's per-step decrement would vanish for several steps.
        The timestep lookup stays fp32 anyway, and the fp32 return token makes the stack and LayerNorm fp32.
        """
        batch, k = states.shape[:2]
        time = self.embed_timestep(timesteps)
        with torch.autocast(returns_to_go.device.type, enabled=False):
            returns = self.embed_return(returns_to_go.float().unsqueeze(-1))
        tokens = [returns, self.embed_state(states), self.embed_action(actions)]
        if not self.config.timestep_after_layernorm:
            tokens = [token + time for token in tokens]
        stacked = self.embed_ln(torch.stack(tokens, dim=2).reshape(batch, 3 * k, -1))
        if self.config.timestep_after_layernorm:
            stacked = stacked + time.repeat_interleave(3, dim=1)
        return stacked

    def forward(self, states: torch.Tensor, actions: torch.Tensor, returns_to_go: torch.Tensor,
                timesteps: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(B, K, ·) windows → (B, K, act_dim) action predictions, one per state token."""
        batch, k = states.shape[:2]
        tokens = self._tokens(states, actions, returns_to_go, timesteps)
        valid = None if mask is None else mask.repeat_interleave(3, dim=1)
        hidden = self.backbone(tokens, valid)
        return self.predict_action(hidden.reshape(batch, k, 3, -1)[:, :, 1])

    def predict_last_action(self, states: torch.Tensor, actions: torch.Tensor, returns_to_go: torch.Tensor,
                            timesteps: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(B, act_dim): the action for the last state of each window — the only one evaluation needs.

        The trailing action token is dropped (causality: it cannot influence s_K's output) and the last layer
        computes only the s_K query; same result as `forward(...)[:, -1]`, a quarter less arithmetic.
        """
        tokens = self._tokens(states, actions, returns_to_go, timesteps)[:, :-1]
        valid = None if mask is None else mask.repeat_interleave(3, dim=1)[:, :-1]
        hidden = self.backbone(tokens, valid, last_query_only=True)
        return self.predict_action(hidden[:, -1])

    def action_loss(self, states, actions, returns_to_go, timesteps, mask) -> torch.Tensor:
        """MSE between predicted and dataset actions on unpadded positions (continuous actions)."""
        predicted = self.forward(states, actions, returns_to_go, timesteps, mask)
        squared = (predicted.float() - actions.float()).pow(2).mean(-1)
        return (squared * mask).sum() / mask.sum().clamp(min=1)
