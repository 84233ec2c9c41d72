"""The trajectory transformer of LaMo's Atari code (srzer/LaMo-2023 experiment-atari/model.py), and the
Nature-DQN image encoder it shares with the discrete baselines.

Tokens (R̂_t, s_t, a_t) for K steps go through a GPT-2 backbone (trainers/gpt2.py); the action at step t is
predicted from the hidden state of the s_t token. What differs from the D4RL model (trainers/trajectory_model.py),
as LaMo's Atari code has it:
- s_t is a stack of 4 uint8 frames, scaled by 1/255 and encoded by the Nature-DQN CNN (32/64/64 channels,
  kernels 8/4/3, strides 4/2/1, ReLU) and a Linear layer to the model width, then, with MLP embeddings, LaMo's
  residual block (ResidualBlock(hidden, hidden) there);
- a_t is an action id: an embedding table, plus with MLP embeddings a GELU → Linear residual (ResidualEmbedBlock);
- the timestep embedding is added to every token BEFORE the embedding LayerNorm;
- GPT-2's positional embeddings ARE added: LaMo calls Hugging Face's GPT2Model with inputs_embeds, which adds
  `wpe`. Positions count from a window's first real token, so a left-padded window gets the positions an
  unpadded one of its length would (LaMo pads its training windows on the right and grows its evaluation
  context from one step, so its real tokens always start at position 0);
- the action head is Linear → tanh, whatever the embeddings: logits lie in [-1, 1] and are trained with
  cross-entropy (which therefore cannot fall below that of a ±1 logit gap); evaluation takes the argmax.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from trainers.gpt2 import GPT2
from trainers.trajectory_model import ResidualMLPEmbedding

NATURE_CNN_CHANNELS = (32, 64, 64)
CNN_OUTPUT_SIZE = 7 * 7  # the third convolution's output on an 84×84 frame stack, per channel


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


class ResidualActionEmbedding(nn.Module):
    """LaMo's ResidualEmbedBlock: an embedding e(a), then e(a) + Linear(GELU(e(a)))."""

    def __init__(self, num_actions: int, width: int):
        super().__init__()
        self.first = nn.Embedding(num_actions, width)
        self.second = nn.Linear(width, width)

    def forward(self, actions: torch.Tensor) -> torch.Tensor:
        hidden = self.first(actions)
        return hidden + self.second(F.gelu(hidden))


@dataclass
class AtariTrajectoryModelConfig:
    num_actions: int
    frame_stack: int = 4
    context_len: int = 30  # K
    max_timestep: int = 4096  # size of the timestep embedding table (LaMo breakout.yaml max_timestep)
    n_embd: int = 768
    embedding: Literal["linear", "mlp"] = "mlp"  # LaMo (run.sh model.mlp_embedding=1): residual MLP blocks
    positional_embeddings: bool = True  # add the backbone's wpe, as GPT2Model(inputs_embeds=...) does
    cnn_channels: tuple[int, int, int] = NATURE_CNN_CHANNELS


class AtariTrajectoryTransformer(nn.Module):
    def __init__(self, config: AtariTrajectoryModelConfig, backbone: GPT2 | nn.Module):
        super().__init__()
        self.config = config
        self.backbone = backbone  # a GPT2, possibly wrapped by peft
        width, mlp = config.n_embd, config.embedding == "mlp"
        cnn_features = config.cnn_channels[-1] * CNN_OUTPUT_SIZE
        state = [nature_cnn(config.frame_stack, config.cnn_channels), nn.Linear(cnn_features, width)]
        self.embed_state = nn.Sequential(*state, ResidualMLPEmbedding(width, width)) if mlp else nn.Sequential(*state)
        self.embed_action = (ResidualActionEmbedding(config.num_actions, width) if mlp
                             else nn.Embedding(config.num_actions, width))
        self.embed_return = ResidualMLPEmbedding(1, width) if mlp else nn.Linear(1, width)
        self.embed_timestep = nn.Embedding(config.max_timestep, width)
        self.embed_ln = nn.LayerNorm(width)
        self.predict_action = nn.Sequential(nn.Linear(width, config.num_actions), nn.Tanh())

    def encode_states(self, frames: torch.Tensor) -> torch.Tensor:
        """(..., S, 84, 84) uint8 frame stacks → (..., width) state embeddings."""
        lead = frames.shape[:-3]
        encoded = self.embed_state(scale_frames(frames.reshape(-1, *frames.shape[-3:])))
        return encoded.reshape(*lead, -1)

    def _tokens(self, state_embeddings, actions, returns_to_go, timesteps) -> torch.Tensor:
        """(B, K, ·) → (B, 3K, width): R̂_1, s_1, a_1, R̂_2, …, timestep added, then the LayerNorm."""
        batch, k = actions.shape
        time = self.embed_timestep(timesteps)
        tokens = torch.stack([self.embed_return(returns_to_go.unsqueeze(-1)) + time, state_embeddings + time,
                              self.embed_action(actions) + time], dim=2)
        return self.embed_ln(tokens.reshape(batch, 3 * k, -1))

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
        """(B, K, S, 84, 84) frames, (B, K) action ids, returns-to-go and timesteps → (B, K, num_actions) logits."""
        batch, k = actions.shape
        tokens = self._tokens(self.encode_states(states), actions, returns_to_go, timesteps)
        valid = None if mask is None else mask.repeat_interleave(3, dim=1)
        hidden = self._transformer(tokens, valid)
        return self.predict_action(hidden.reshape(batch, k, 3, -1)[:, :, 1])

    def predict_last_action(self, state_embeddings: torch.Tensor, actions: torch.Tensor,
                            returns_to_go: torch.Tensor, timesteps: torch.Tensor,
                            mask: torch.Tensor | None) -> torch.Tensor:
        """(B, num_actions) logits for the last state of each window, from already encoded states (evaluation
        encodes each frame stack once, when it arrives). The trailing action token cannot influence s_K's output
        and is dropped; the last layer computes only the s_K query."""
        tokens = self._tokens(state_embeddings, actions, returns_to_go, timesteps)[:, :-1]
        valid = None if mask is None else mask.repeat_interleave(3, dim=1)[:, :-1]
        hidden = self._transformer(tokens, valid, last_query_only=True)
        return self.predict_action(hidden[:, -1])

    def action_loss(self, states, actions, returns_to_go, timesteps, mask) -> torch.Tensor:
        """Cross-entropy of the dataset's actions on unpadded positions (LaMo core.py: logits[mask])."""
        logits = self.forward(states, actions, returns_to_go, timesteps, mask)
        return F.cross_entropy(logits[mask].float(), actions[mask])
