"""The trajectory transformer behind Decision Transformer, LaMo and Wiki-RL, for both modalities.

Tokens (R̂_t, s_t, a_t) for K steps go through a GPT-2 backbone (trainers/sequence/gpt2.py); the action at step t is
predicted from the hidden state of the s_t token. The task's modality picks the model's two ends:

| | `vector` (D4RL, Minari, reacher2d) | `frames` (Atari; LaMo's experiment-atari/model.py) |
|---|---|---|
| state s_t | (obs_dim,) floats: Linear, or LaMo's residual MLP | uint8 (S, 84, 84): Nature-DQN CNN → Linear (→ MLP) |
| action a_t | (act_dim,) floats: Linear or residual MLP | an id: embedding table (→ GELU → Linear residual) |
| head | Linear → tanh, or Linear → GELU → Linear | Linear → tanh logits (cross-entropy cannot go below a ±1 gap) |
| loss | MSE on unpadded positions | cross-entropy on unpadded positions (LaMo core.py: logits[mask]) |

Everything else is one field of `TrajectoryModelConfig`, whatever the modality: where the timestep embedding is
added (before the embedding LayerNorm: DT and LaMo's Atari code; after it: LaMo's D4RL code), and GPT-2's
positional embeddings (off: position comes from the timestep embedding only; on: added as Hugging Face's
GPT2Model(inputs_embeds=...) does in LaMo's Atari code, counted from a window's first real token, so a
left-padded window gets the positions an unpadded one of its length would). The named presets live in
trainers/sequence/config.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from trainers.sequence.gpt2 import GPT2, gpt2_config, random_gpt2

NATURE_CNN_CHANNELS = (32, 64, 64)
CNN_OUTPUT_SIZE = 7 * 7  # the third convolution's output on an 84×84 frame stack, per channel


@dataclass
class TrajectoryModelConfig:
    observation_dim: int  # vector: the observation's size; frames: the frames per stack
    action_dim: int  # vector: the action's size; frames: the number of discrete actions
    modality: Literal["vector", "frames"] = "vector"
    context_len: int = 20  # K, steps per window
    max_timestep: int = 1000  # size of the timestep embedding table (episode horizon)
    n_layer: int = 3  # backbone size when it is built here (ignored for a given backbone)
    n_embd: int = 128
    n_head: int = 1
    activation_function: str = "relu"  # backbone MLP when built here: DT's ReLU (ignored for a given backbone)
    dropout: float = 0.1
    embedding: Literal["linear", "mlp"] = "linear"  # LaMo: residual MLP embeddings
    action_head: Literal["linear_tanh", "mlp"] = "linear_tanh"  # DT: Linear → tanh; LaMo: Linear → GELU → Linear
    timestep_after_layernorm: bool = False  # DT adds it before the embedding LayerNorm, LaMo (D4RL) after
    positional_embeddings: bool = False  # add the backbone's wpe (LaMo's Atari code)
    cnn_channels: tuple[int, int, int] = NATURE_CNN_CHANNELS  # frames: the Nature-DQN trunk's channels


class ResidualMLPEmbedding(nn.Module):
    """LaMo's embedding: Linear → GELU → Linear, plus the first Linear's output."""

    def __init__(self, in_dim: int, width: int):
        super().__init__()
        self.first = nn.Linear(in_dim, width)
        self.second = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.first(x)
        return hidden + self.second(nn.functional.gelu(hidden))


class ResidualActionEmbedding(nn.Module):
    """LaMo's Atari ResidualEmbedBlock: an embedding e(a), then e(a) + Linear(GELU(e(a)))."""

    def __init__(self, num_actions: int, width: int):
        super().__init__()
        self.first = nn.Embedding(num_actions, width)
        self.second = nn.Linear(width, width)

    def forward(self, actions: torch.Tensor) -> torch.Tensor:
        hidden = self.first(actions)
        return hidden + self.second(F.gelu(hidden))


def nature_cnn(in_channels: int, channels: tuple[int, int, int] = NATURE_CNN_CHANNELS) -> nn.Sequential:
    """The convolutional trunk of the Nature DQN (Mnih et al. 2015): (B, C, 84, 84) → (B, channels[-1] · 49);
    kernels 8/4/3 and strides 4/2/1; the channel counts are a setting (LaMo's config.yaml model.cnn_channels)."""
    first, second, third = channels
    return nn.Sequential(
        nn.Conv2d(in_channels, first, kernel_size=8, stride=4), nn.ReLU(),
        nn.Conv2d(first, second, kernel_size=4, stride=2), nn.ReLU(),
        nn.Conv2d(second, third, kernel_size=3, stride=1), nn.ReLU(),
        nn.Flatten(),
    )


def scale_frames(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames → float in [0, 1] (LaMo's states.div_(255.0), d3rlpy's PixelObservationScaler)."""
    return frames.float().div_(255.0)


def _embedding(config: TrajectoryModelConfig, in_dim: int) -> nn.Module:
    if config.embedding == "mlp":
        return ResidualMLPEmbedding(in_dim, config.n_embd)
    return nn.Linear(in_dim, config.n_embd)


def _frame_encoder(config: TrajectoryModelConfig) -> nn.Sequential:
    width = config.n_embd
    trunk = [nature_cnn(config.observation_dim, config.cnn_channels),
             nn.Linear(config.cnn_channels[-1] * CNN_OUTPUT_SIZE, width)]
    return nn.Sequential(*trunk, *([ResidualMLPEmbedding(width, width)] if config.embedding == "mlp" else []))


def _action_id_embedding(config: TrajectoryModelConfig) -> nn.Module:
    if config.embedding == "mlp":
        return ResidualActionEmbedding(config.action_dim, config.n_embd)
    return nn.Embedding(config.action_dim, config.n_embd)


class TrajectoryTransformer(nn.Module):
    def __init__(self, config: TrajectoryModelConfig, backbone: GPT2 | nn.Module | None = None):
        super().__init__()
        self.config = config
        if backbone is None:
            backbone = random_gpt2(gpt2_config(config.n_layer, config.n_embd, config.n_head, config.dropout,
                                               n_positions=max(1024, 3 * config.context_len),
                                               activation_function=config.activation_function))
        if backbone.config.n_embd != config.n_embd:
            raise ValueError(f"model width n_embd={config.n_embd} does not match the backbone's "
                             f"{backbone.config.n_embd}")
        self.backbone = backbone  # a GPT2, possibly wrapped by peft
        width = config.n_embd
        # Made in the order of each reference model's code (DT/LaMo D4RL; LaMo Atari), so that a seed gives
        # the same initial weights, and parameters are listed in the same order.
        if config.modality == "frames":
            self.embed_state, self.embed_action = _frame_encoder(config), _action_id_embedding(config)
            self.embed_return, self.embed_timestep = _embedding(config, 1), nn.Embedding(config.max_timestep, width)
        else:
            self.embed_timestep, self.embed_return = nn.Embedding(config.max_timestep, width), _embedding(config, 1)
            self.embed_state = _embedding(config, config.observation_dim)
            self.embed_action = _embedding(config, config.action_dim)
        self.embed_ln = nn.LayerNorm(width)
        if config.action_head == "mlp":
            self.predict_action = nn.Sequential(nn.Linear(width, width), nn.GELU(),
                                                nn.Linear(width, config.action_dim))
        else:
            self.predict_action = nn.Sequential(nn.Linear(width, config.action_dim), nn.Tanh())

    def encode_states(self, states: torch.Tensor) -> torch.Tensor:
        """(..., obs_dim) floats or (..., S, 84, 84) uint8 frame stacks → (..., width) state embeddings."""
        if self.config.modality == "vector":
            return self.embed_state(states)
        lead = states.shape[:-3]
        return self.embed_state(scale_frames(states.reshape(-1, *states.shape[-3:]))).reshape(*lead, -1)

    def _tokens(self, state_embeddings, actions, returns_to_go, timesteps) -> torch.Tensor:
        """(B, K, ·) → (B, 3K, width): R̂_1, s_1, a_1, R̂_2, … after the embedding LayerNorm.

        Under autocast the return embedding still runs in fp32: bf16 keeps 8 significant bits, so returns-to-go
        3.600 … 3.588 would all become 3.59375 and hopper's per-step decrement would vanish for several steps.
        The timestep lookup stays fp32 anyway, and the fp32 return token makes the stack and LayerNorm fp32.
        """
        batch, k = timesteps.shape
        time = self.embed_timestep(timesteps)
        with torch.autocast(returns_to_go.device.type, enabled=False):
            returns = self.embed_return(returns_to_go.float().unsqueeze(-1))
        tokens = [returns, state_embeddings, self.embed_action(actions)]
        if not self.config.timestep_after_layernorm:
            tokens = [token + time for token in tokens]
        stacked = self.embed_ln(torch.stack(tokens, dim=2).reshape(batch, 3 * k, -1))
        if self.config.timestep_after_layernorm:
            stacked = stacked + time.repeat_interleave(3, dim=1)
        return stacked

    def _transformer(self, tokens: torch.Tensor, valid: torch.Tensor | None, last_query_only: bool = False):
        if self.config.positional_embeddings:
            if valid is None:
                positions = torch.arange(tokens.shape[1], device=tokens.device)
            else:  # left padding: real tokens start at position 0
                positions = (valid.long().cumsum(1) - 1).clamp(min=0)
            tokens = tokens + self.backbone.wpe(positions)
        return self.backbone(tokens, valid, last_query_only=last_query_only)

    def forward(self, states: torch.Tensor, actions: torch.Tensor, returns_to_go: torch.Tensor,
                timesteps: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(B, K, ·) windows → (B, K, act_dim) action predictions (frames: logits), one per state token."""
        batch, k = timesteps.shape
        tokens = self._tokens(self.encode_states(states), actions, returns_to_go, timesteps)
        valid = None if mask is None else mask.repeat_interleave(3, dim=1)
        hidden = self._transformer(tokens, valid)
        return self.predict_action(hidden.reshape(batch, k, 3, -1)[:, :, 1])

    def predict_last_action(self, state_embeddings: torch.Tensor, actions: torch.Tensor,
                            returns_to_go: torch.Tensor, timesteps: torch.Tensor,
                            mask: torch.Tensor | None) -> torch.Tensor:
        """(B, act_dim): the action for the last state of each window — the only one evaluation needs — from
        already encoded states (`encode_states`: evaluation encodes each state once, when it arrives).

        The trailing action token is dropped (causality: it cannot influence s_K's output) and the last layer
        computes only the s_K query; same result as `forward(...)[:, -1]`, a quarter less arithmetic.
        """
        tokens = self._tokens(state_embeddings, actions, returns_to_go, timesteps)[:, :-1]
        valid = None if mask is None else mask.repeat_interleave(3, dim=1)[:, :-1]
        hidden = self._transformer(tokens, valid, last_query_only=True)
        return self.predict_action(hidden[:, -1])

    def action_loss(self, states, actions, returns_to_go, timesteps, mask) -> torch.Tensor:
        """The loss on unpadded positions: MSE to the dataset's actions, or cross-entropy of its action ids."""
        predicted = self.forward(states, actions, returns_to_go, timesteps, mask)
        if self.config.modality == "frames":
            return F.cross_entropy(predicted[mask].float(), actions[mask])
        squared = (predicted.float() - actions.float()).pow(2).mean(-1)
        return (squared * mask).sum() / mask.sum().clamp(min=1)
