"""The trajectory transformer behind Decision Transformer, LaMo and Wiki-RL.

Tokens (R̂_t, s_t, a_t) for K steps go through a GPT-2 backbone; the action at step t is predicted from the
hidden state of the s_t token. Every design choice that distinguishes the algorithms is a field of
`TrajectoryModelConfig`; the named presets live with the sequence-model trainer.

GPT-2's learned positional embeddings are not used (as in the Decision Transformer and LaMo code): the
backbone's `wpe` table is zeroed and frozen, so position information comes from the timestep embedding only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers import GPT2Config, GPT2Model


@dataclass
class TrajectoryModelConfig:
    observation_dim: int
    action_dim: int
    context_len: int = 20  # K, steps per window
    max_timestep: int = 1000  # size of the timestep embedding table (episode horizon)
    n_layer: int = 3
    n_embd: int = 128
    n_head: int = 1
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


def random_gpt2_backbone(config: TrajectoryModelConfig) -> GPT2Model:
    gpt2_config = GPT2Config(
        vocab_size=1, bos_token_id=None, eos_token_id=None,  # tokens come in as embeddings: no vocabulary
        n_positions=max(1024, 3 * config.context_len), n_embd=config.n_embd, n_layer=config.n_layer,
        n_head=config.n_head, n_inner=4 * config.n_embd, resid_pdrop=config.dropout,
        embd_pdrop=config.dropout, attn_pdrop=config.dropout,
        activation_function="gelu_pytorch_tanh",  # GPT-2's gelu_new as one fused kernel (4× faster on CPU)
    )
    return GPT2Model(gpt2_config)


def disable_positional_embeddings(backbone: GPT2Model) -> None:
    with torch.no_grad():
        backbone.wpe.weight.zero_()
    backbone.wpe.weight.requires_grad_(False)


class TrajectoryTransformer(nn.Module):
    def __init__(self, config: TrajectoryModelConfig, backbone: GPT2Model | None = None):
        super().__init__()
        self.config = config
        self.backbone = backbone if backbone is not None else random_gpt2_backbone(config)
        if self.backbone.config.n_embd != config.n_embd:
            raise ValueError(f"model width n_embd={config.n_embd} does not match the backbone's "
                             f"{self.backbone.config.n_embd}")
        disable_positional_embeddings(self.backbone)
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

    def forward(self, states: torch.Tensor, actions: torch.Tensor, returns_to_go: torch.Tensor,
                timesteps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, K, ·) windows → (B, K, act_dim) action predictions, one per state token."""
        batch, k = states.shape[:2]
        time = self.embed_timestep(timesteps)
        tokens = [self.embed_return(returns_to_go.unsqueeze(-1)), self.embed_state(states),
                  self.embed_action(actions)]
        if not self.config.timestep_after_layernorm:
            tokens = [token + time for token in tokens]
        stacked = torch.stack(tokens, dim=2).reshape(batch, 3 * k, -1)  # R̂_1, s_1, a_1, R̂_2, ...
        stacked = self.embed_ln(stacked)
        if self.config.timestep_after_layernorm:
            stacked = stacked + time.repeat_interleave(3, dim=1)
        attention_mask = mask.repeat_interleave(3, dim=1).to(stacked.dtype)
        hidden = self.backbone(inputs_embeds=stacked, attention_mask=attention_mask).last_hidden_state
        state_hidden = hidden.reshape(batch, k, 3, -1)[:, :, 1]
        return self.predict_action(state_hidden)
