"""What the discrete-action (Atari) baselines share: the space check, the pixel network, a greedy policy, and
the checkpoint/export plumbing of `OfflineAlgorithm` (baselines/common.py), reused as it is.

The network is d3rlpy's default for image observations (PixelEncoderFactory: the Nature-DQN convolutions, a
Linear layer to 512 features, ReLU) with a linear head: Q-values for discrete CQL, logits for discrete BC. Frames
arrive as uint8 stacks and are scaled by 1/255 inside (d3rlpy's PixelObservationScaler). The convolutional trunk
is the same module the sequence models encode frame stacks with (trainers/sequence/model.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from baselines.common import OfflineAlgorithm, make_generator
from trainers.data.samplers import TransitionSampler
from trainers.data.trajectories import TrajectoryDataset
from trainers.runtime.algorithm import (
    StatelessPolicy,
    TrainingSetup,
    discrete_frame_spaces,
)
from trainers.sequence.model import (
    CNN_OUTPUT_SIZE,
    NATURE_CNN_CHANNELS,
    nature_cnn,
    scale_frames,
)


class PixelNetwork(nn.Module):
    """(B, S, 84, 84) uint8 → (B, outputs): Nature CNN → Linear(→ feature_size) → ReLU → Linear."""

    def __init__(self, frame_stack: int, outputs: int, feature_size: int = 512,
                 channels: tuple[int, int, int] = NATURE_CNN_CHANNELS):
        super().__init__()
        self.encoder = nn.Sequential(nature_cnn(frame_stack, channels),
                                     nn.Linear(channels[-1] * CNN_OUTPUT_SIZE, feature_size), nn.ReLU())
        self.head = nn.Linear(feature_size, outputs)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(scale_frames(frames)))


class DiscreteOfflineAlgorithm(OfflineAlgorithm):
    """`OfflineAlgorithm` for frame stacks and Discrete actions: its checkpoints and export, a transition sampler
    whose states are stacked on demand, and a greedy policy over `self.network`'s outputs. A subclass sets
    `name`, `network` and `optimizers`, lists its modules in `networks()` and implements `update`."""

    network: nn.Module

    def __init__(self, config: Any, setup: TrainingSetup, dataset: TrajectoryDataset | None):
        self.frame_stack, self.num_actions = discrete_frame_spaces(self.name, setup)
        self.config = config
        self.device = torch.device(setup.device)
        self.step = 0
        self.sampler = TransitionSampler(dataset) if dataset is not None else None
        self.generator = make_generator(self.device, setup.seed)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    def policy(self, num_envs: int, target_returns: Sequence[float] | None) -> StatelessPolicy:
        """Greedy actions: argmax over the network's outputs (LaMo evaluates every Atari policy greedily)."""
        network, device = self.network, self.device

        @torch.inference_mode()
        def act(observations: np.ndarray) -> np.ndarray:
            frames = torch.from_numpy(np.asarray(observations, dtype=np.uint8)).to(device)
            return network(frames).argmax(-1).cpu().numpy()

        return StatelessPolicy(act)

    def _exported(self) -> dict[str, nn.Module]:
        return {"network": self.network}
