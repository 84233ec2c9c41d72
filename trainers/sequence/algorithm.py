"""LaMo, its ablations, Decision Transformer and Wiki-RL: one trajectory transformer trained one way, both modalities.

The task's spaces pick the modality (trainers/sequence/model.py): vector states with continuous actions (D4RL,
Minari, reacher2d) or frame stacks with discrete actions (Atari); the model's ends, the loss and the policy's action
rule follow from it, everything else is this one algorithm: the backbone (a pre-trained or randomly initialised
GPT-2, or one built here), LoRA or full fine-tuning, AdamW with gradient clipping, the auxiliary language loss.
Its settings, presets and their sources: trainers/sequence/config.py.

Learning-rate schedules (`lr_schedule`): trainers/sequence/schedule.py. The language loss (λ > 0) adds GPT-2's
positional embeddings exactly when the trajectory path does (`positional_embeddings`: LaMo's Atari model and its
co-training through GPT2LMHeadModel), and neither adds them on D4RL (LaMo's trajectory_gpt2.py).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from trainers.data.samplers import WindowBatch, WindowSampler
from trainers.runtime.algorithm import (
    AlgorithmDeclaration,
    TrainingSetup,
    check_finite,
    discrete_frame_spaces,
)
from trainers.sequence.config import (
    ATARI,
    DIFFERENCES,
    PRESETS,
    Config,
    external_inputs,
)
from trainers.sequence.gpt2 import GPT2, gpt2_config, random_gpt2
from trainers.sequence.language.batches import LanguageBatches
from trainers.sequence.language.hub import load_pretrained_gpt2
from trainers.sequence.model import TrajectoryModelConfig, TrajectoryTransformer
from trainers.sequence.policy import ContextPolicy
from trainers.sequence.schedule import cosine_multiplier, step_multiplier

# peft (and the transformers it imports, ~3 s) is imported where LoRA is applied or loaded: the sweep driver and
# every trial that uses no LoRA load this module without it.


def build_backbone(config: Config) -> GPT2:
    if config.backbone is None:
        width = config.n_embd or 128
        return random_gpt2(gpt2_config(config.n_layer, width, config.n_head, config.dropout,
                                       activation_function=config.activation_function or "relu"))
    hf = load_pretrained_gpt2(config.backbone, random_init=not config.pretrained_weights, dropout=config.dropout)
    if config.n_embd is not None and config.n_embd != hf.config.n_embd:
        raise ValueError(f"n_embd={config.n_embd} does not match the width {hf.config.n_embd} of backbone "
                         f"{config.backbone!r}")
    return GPT2.from_hf(hf)


LORA_TARGETS = r"h\.\d+\.attn\.c_attn\.(q|k|v)"


def apply_lora(backbone: GPT2, config: Config) -> nn.Module:
    """Freeze the backbone and add LoRA to c_attn's q, k and v (their biases trainable with `lora_only`), via peft."""
    from peft import LoraConfig, get_peft_model

    for parameter in backbone.parameters():
        parameter.requires_grad_(False)
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=LORA_TARGETS, bias=config.lora_bias)
    return get_peft_model(backbone, lora)


def model_spaces(setup: TrainingSetup) -> tuple[Literal["vector", "frames"], int, int]:
    """(modality, observation size or frames per stack, action size or number of actions) of the task."""
    if isinstance(setup.action_space, gym.spaces.Discrete):
        return "frames", *discrete_frame_spaces("sequence model", setup)
    observation, action = setup.observation_space, setup.action_space
    if not isinstance(action, gym.spaces.Box) or len(action.shape) != 1 or len(observation.shape) != 1:
        raise ValueError(f"the sequence models need vector observations with continuous (Box) actions, or frame "
                         f"stacks with Discrete actions; task {setup.task.name!r} has {observation!r} → {action!r}")
    return "vector", observation.shape[0], action.shape[0]


class TrainingObjective(nn.Module):
    """Everything one update differentiates, in one forward (so DDP sees one forward per step)."""

    def __init__(self, model: TrajectoryTransformer):
        super().__init__()
        self.model = model

    def forward(self, batch: WindowBatch, lm_tokens: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        action_loss = self.model.action_loss(batch.states, batch.actions, batch.returns_to_go, batch.timesteps,
                                             batch.mask)
        if lm_tokens is None:
            return action_loss, torch.zeros((), device=action_loss.device)
        positions = self.model.config.positional_embeddings
        return action_loss, self.model.backbone.language_loss(lm_tokens, positional_embeddings=positions)


class SequenceModelAlgorithm:
    return_conditioned = True

    def __init__(self, config: Config, setup: TrainingSetup):
        modality, observation_dim, action_dim = model_spaces(setup)
        task, device, dataset = setup.task, setup.device, setup.dataset
        self.config, self.task, self.device = config, task, device
        torch.manual_seed(setup.seed)
        backbone = build_backbone(config)
        backbone.wte.requires_grad_(config.lm_coef > 0)  # token embeddings serve only the language loss
        if config.adaptation == "lora":
            backbone = apply_lora(backbone, config)
        else:  # position embeddings train where they are added
            backbone.wpe.weight.requires_grad_(config.positional_embeddings)
        self.context_len = config.context_len or task.context_len
        model_config = TrajectoryModelConfig(
            observation_dim=observation_dim, action_dim=action_dim, modality=modality, context_len=self.context_len,
            max_timestep=task.data_horizon, n_embd=backbone.config.n_embd, dropout=config.dropout,
            embedding=config.embedding, action_head=config.action_head,
            timestep_after_layernorm=config.timestep_after_layernorm,
            positional_embeddings=config.positional_embeddings, cnn_channels=tuple(config.cnn_channels))
        self.model = TrajectoryTransformer(model_config, backbone).to(device)
        self.objective: nn.Module = TrainingObjective(self.model)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=config.learning_rate, weight_decay=config.weight_decay,
                                           eps=config.adam_eps, fused=device.type == "cuda")
        bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
        self.autocast_dtype = torch.bfloat16 if bf16 else None
        self.step, self.tokens_seen = 0, 0
        self.final_tokens = config.final_tokens or (2 * len(dataset) * 3 * self.context_len if dataset else 1)
        # Vector states are normalized with the training data's statistics (frames are scaled in the model).
        self.state_statistics = None
        if modality == "vector":
            self.state_statistics = (np.zeros(observation_dim, np.float32), np.ones(observation_dim, np.float32))
            if dataset is not None:
                self.state_statistics = dataset.state_statistics()
        self.sampler = None
        if dataset is not None:
            mean, std = self.state_statistics or (None, None)
            self.sampler = WindowSampler(dataset, self.context_len, task.return_scale, mean, std,
                                         max_timestep=task.data_horizon)
        self.language = None
        if config.lm_coef > 0 and dataset is not None:
            self.language = LanguageBatches.for_backbone(config.backbone, config.lm_corpus, config.lm_sequences,
                                                         config.lm_seq_len, seed=setup.seed)

    def distribute(self, wrap) -> None:
        """Let the worker loop wrap the training objective (e.g. in DistributedDataParallel)."""
        self.objective = wrap(self.objective)

    def learning_rate(self, tokens: int) -> float:
        """The rate for the next update; the token schedule counts that update's own tokens, so the first update
        is not a zero-rate step."""
        config = self.config
        if config.lr_schedule == "dt_atari":
            return config.learning_rate * cosine_multiplier(tokens, config.warmup_tokens, self.final_tokens)
        return config.learning_rate * step_multiplier(config.lr_schedule, self.step + 1, config.warmup_steps,
                                                      config.num_steps)

    def update(self, batch: WindowBatch) -> dict[str, float]:
        self.model.train()
        tokens = self.tokens_seen + int(batch.mask.sum())
        rate = self.learning_rate(tokens)
        for group in self.optimizer.param_groups:
            group["lr"] = rate
        lm_tokens = self.language.sample().to(self.device) if self.language is not None else None
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            action_loss, lm_loss = self.objective(batch, lm_tokens)
        loss = action_loss + self.config.lm_coef * lm_loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.config.grad_clip)
        metrics = {"loss": loss.item(), "action_loss": action_loss.item(), "grad_norm": grad_norm.item(),
                   "learning_rate": rate}
        if self.language is not None:
            metrics["lm_loss"] = lm_loss.item()
        states = {} if self.state_statistics is None else {"batch_states_abs_max": batch.states.abs().max()}
        check_finite(self.step, **metrics, **states, batch_rtg_abs_max=batch.returns_to_go.abs().max())
        self.optimizer.step()
        self.step, self.tokens_seen = self.step + 1, tokens
        return metrics

    def policy(self, num_envs: int, target_returns: Sequence[float] | None) -> ContextPolicy:
        if target_returns is None:
            raise ValueError("sequence models are conditioned on target returns; none were given")
        mean, std = self.state_statistics or (None, None)
        return ContextPolicy(self.model, num_envs, target_returns, self.task.return_scale, mean, std,
                             device=self.device, autocast_dtype=self.autocast_dtype)

    # --- checkpoints and artifacts ------------------------------------------------------------------------

    def shared_parameters(self) -> dict[str, nn.Parameter]:
        """Parameters every seed builds identically and nothing changes: a pre-trained backbone's frozen weights. Seeds
        trained together keep one copy of them (trainers/runtime/stack.py); none with a random backbone."""
        if self.config.backbone is None or not self.config.pretrained_weights:
            return {}
        return {name: p for name, p in self.model.backbone.named_parameters() if not p.requires_grad}

    def trainable_state(self) -> dict[str, torch.Tensor]:
        names = {id(p): n for n, p in self.model.named_parameters()}
        return {names[id(p)]: p.detach() for p in self.trainable}

    def _statistics(self) -> dict[str, torch.Tensor]:
        if self.state_statistics is None:
            return {}
        mean, std = self.state_statistics
        return {"state_mean": torch.from_numpy(mean), "state_std": torch.from_numpy(std)}

    def state_dict(self) -> dict:
        """A snapshot: later updates do not change it (the optimizer's moments are copied too)."""
        return {"model": {k: v.clone() for k, v in self.trainable_state().items()},
                "optimizer": copy.deepcopy(self.optimizer.state_dict()), "step": self.step,
                "tokens_seen": self.tokens_seen, "final_tokens": self.final_tokens, **self._statistics(),
                "language_rng": self.language.rng_state() if self.language is not None else None}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.trainable_state()) - set(state["model"])
        if missing:
            raise KeyError(f"checkpoint lacks trainable weights: {sorted(missing)[:5]} …")
        self.model.load_state_dict(state["model"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.tokens_seen, self.final_tokens = state["step"], state["tokens_seen"], state["final_tokens"]
        if self.state_statistics is not None:
            self.state_statistics = state["state_mean"].numpy(), state["state_std"].numpy()
        if self.language is not None and state.get("language_rng") is not None:
            self.language.set_rng_state(state["language_rng"])

    def export(self, directory: Path) -> list[Path]:
        """LoRA adapter via peft `save_pretrained` (safetensors); every other trainable weight and the state
        normalization (vector states) in `weights.safetensors`; the model's shape in `model.json`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        weights = {k: v.contiguous().cpu() for k, v in self.trainable_state().items()}
        if self.config.adaptation == "lora":
            self.model.backbone.save_pretrained(directory / "adapter")
            written += sorted((directory / "adapter").iterdir())
            weights = {k: v for k, v in weights.items() if not k.startswith("backbone.")}
        save_file(weights | self._statistics(), directory / "weights.safetensors")
        (directory / "model.json").write_text(json.dumps(asdict(self.model.config), indent=2))
        return written + [directory / "weights.safetensors", directory / "model.json"]

    def load_exported(self, directory: Path) -> None:
        directory = Path(directory)
        if self.config.adaptation == "lora":
            from peft import set_peft_model_state_dict

            adapter = load_file(directory / "adapter" / "adapter_model.safetensors")
            result = set_peft_model_state_dict(self.model.backbone, adapter)
            if getattr(result, "unexpected_keys", None):
                raise KeyError(f"adapter has unexpected keys: {result.unexpected_keys[:5]}")
        weights = load_file(directory / "weights.safetensors")
        if self.state_statistics is not None:
            self.state_statistics = weights.pop("state_mean").numpy(), weights.pop("state_std").numpy()
        missing = [k for k in self.trainable_state() if k not in weights and
                   not (self.config.adaptation == "lora" and k.startswith("backbone."))]
        if missing:
            raise KeyError(f"{directory / 'weights.safetensors'} lacks {missing[:5]}")
        self.model.load_state_dict(weights, strict=False)


ALGORITHM = AlgorithmDeclaration(
    config=Config, build=SequenceModelAlgorithm, action_spaces=frozenset({"box", "discrete"}),
    return_conditioned=True, presets=PRESETS, domain_settings={"atari": ATARI}, external_inputs=external_inputs,
    differences=DIFFERENCES)
