"""LaMo, its ablations, Decision Transformer and Wiki-RL on Atari: discrete actions from frame stacks.

The registry runs this module instead of trainers/sequence_trainer.py for a task with a Discrete action space
(trainers/registry.py). The model is LaMo's Atari model (trainers/atari_model.py); settings come from LaMo's
Atari code (srzer/LaMo-2023 experiment-atari/: cfgs/config.yaml, run.sh, core.py, model.py) unless said
otherwise. Where its config and its run script disagree, the run script — the command that turns on LoRA and
the MLP embeddings, i.e. LaMo itself — wins: learning rate 1e-3 and weight decay 0.01 (config.yaml: 3e-4, 0.1).

Learning-rate schedule: Decision Transformer's Atari schedule (kzl/decision-transformer atari/mingpt/
trainer_atari.py): linear warm-up over `warmup_tokens` action tokens, then a cosine down to 10 % of the rate at
`final_tokens`, held there; tokens = unpadded action targets seen. Defaults are DT's own Atari run
(run_dt_atari.py: warm-up 512·20 tokens, final 2 · |data| · 3K). LaMo's config keeps the class defaults
(375e6 / 260e9), but its scheduler adds the running total to its counter every step (core.py passes the
cumulative count to CustomLRScheduler.step, which adds it again), so its warm-up ends after ~500 steps and the
cosine's argument grows with the square of the step, swinging the rate between 10 % and 100 % for the rest of
training. That accident is not reproduced.

Deviations from LaMo's Atari code, each for a stated reason:
- eval_every 2500 (LaMo: 200; every evaluation runs all target returns × episodes to the horizon, and 500 of
  them would dwarf training) — set it in a sweep to match;
- LoRA r 32, α 32, no dropout, biases frozen (peft defaults, as LaMo) on each of q, k and v of GPT-2's c_attn
  (trainers/gpt2.py splits the fused projection); LaMo's peft adapter sits on the fused c_attn, so its q, k and v
  updates share one rank-32 down-projection where here each has its own;
- windows are drawn as Decision Transformer's (a uniform step, left-padded; trainers/samplers.py) — LaMo draws
  a trajectory ∝ length and a start in [0, len − K), right-padding, never using a trajectory's last step;
- the language loss (when λ > 0) runs without positional embeddings, as on D4RL; LaMo's Atari runs use λ = 0.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
from pydantic import model_validator
from safetensors.torch import load_file, save_file
from torch import nn

from trainers.algorithm import (
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Rate,
    TrainingConfig,
    TrainingSetup,
    algorithm_config,
    check_finite,
)
from trainers.atari_model import AtariTrajectoryModelConfig, AtariTrajectoryTransformer
from trainers.language import LanguageBatches
from trainers.samplers import WindowBatch, WindowSampler
from trainers.sequence_trainer import LORA_TARGETS, build_backbone
from trainers.sequence_trainer import external_inputs as _sequence_external_inputs

# peft (and the transformers it imports, ~3 s) is imported where LoRA is applied or loaded: the sweep driver and
# every trial that uses no LoRA load this module without it.

RETURN_CONDITIONED = True
DISCRETE_ACTIONS = True


@algorithm_config
class Config(TrainingConfig):
    # --- schedule (LaMo config.yaml train: 100K steps, batch 128, 5 episodes per target) ---
    num_steps: PositiveInt = 100_000
    eval_every: PositiveInt = 2500  # LaMo: 200 (see the module doc)
    eval_episodes: PositiveInt = 5
    batch_size: PositiveInt = 128
    # --- backbone (LaMo: pretrained_lm gpt2; its "none" builds n_layer 3, n_head 1) ---
    backbone: str | None = "gpt2"  # hub id or local directory; None = build n_layer/n_embd/n_head here
    pretrained_weights: bool = True  # False: the backbone's architecture, randomly initialised
    n_layer: PositiveInt = 3  # only when backbone is None
    n_embd: PositiveInt | None = None  # model width; None = the backbone's (128 when built here)
    n_head: PositiveInt = 1  # only when backbone is None
    # GPT-2 MLP activation, only when backbone is None (see the dt preset); a checkpoint uses its config's.
    activation_function: Literal["relu", "gelu", "gelu_new", "gelu_pytorch_tanh"] | None = None
    dropout: Rate = 0.1  # GPT-2's own dropout (LaMo's drop_p 0.1 is passed to its model but never used)
    # --- trajectory model ---
    context_len: PositiveInt | None = None  # K; None = the task's (30, config.yaml model.context_len)
    embedding: Literal["linear", "mlp"] = "mlp"  # run.sh model.mlp_embedding=1
    positional_embeddings: bool = True  # GPT-2's wpe added (GPT2Model with inputs_embeds)
    cnn_channels: tuple[PositiveInt, PositiveInt, PositiveInt] = (32, 64, 64)  # config.yaml model.cnn_channels
    # --- adaptation (run.sh use_adapt=1, use_lora=1, lora_attn_dim=32; model.py LoraConfig(r=α=32)) ---
    adaptation: Literal["lora", "full"] = "lora"  # lora: backbone frozen, embeddings and head trained
    lora_r: PositiveInt = 32
    lora_alpha: PositiveInt = 32
    lora_dropout: Rate = 0.0  # peft's default
    # --- auxiliary language loss (run.sh and config.yaml: nlp_train.co_training 0) ---
    lm_coef: NonNegativeFloat = 0.0  # λ; 0 skips the language forward entirely
    lm_corpus: str = "wikitext-103"  # "wikitext-103", a directory or file of .txt, or "builtin"
    lm_sequences: PositiveInt = 2
    lm_seq_len: PositiveInt = 1024
    # --- optimisation (core.py: AdamW, torch's betas and eps; clip_grad_norm_ 1.0) ---
    learning_rate: PositiveFloat = 1e-3  # run.sh train.lr (config.yaml: 3e-4)
    weight_decay: NonNegativeFloat = 0.01  # run.sh train.weight_decay (config.yaml: 0.1)
    grad_clip: PositiveFloat = 1.0
    warmup_tokens: NonNegativeInt = 512 * 20  # DT-Atari run_dt_atari.py
    final_tokens: PositiveInt | None = None  # None = 2 · (transitions trained on) · 3K, DT-Atari run_dt_atari.py
    # --- numerics ---
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU

    @model_validator(mode="after")
    def language_loss_needs_a_language_model(self):
        if self.backbone is None and self.lm_coef > 0:
            raise ValueError(f"lm_coef={self.lm_coef} needs a language model backbone (a hub id or a pre-trained "
                             f"directory), but backbone is None; set lm_coef to 0 or name a backbone")
        if self.backbone is not None and self.activation_function is not None:
            raise ValueError(f"activation_function={self.activation_function!r} applies only when backbone is None; "
                             f"backbone {self.backbone!r} uses the activation its config names")
        return self


PRESETS: dict[str, dict] = {
    "lamo": {},
    "lamo_no_lm": {"lm_coef": 0.0},  # the same as lamo here: LaMo's Atari runs train without the language loss
    "lamo_random_init": {"pretrained_weights": False},
    "lamo_full_ft": {"adaptation": "full"},
    "lamo_linear_emb": {"embedding": "linear"},
    # LaMo's code with pretrained_lm none: GPT2Config(n_layer=3, n_head=1, n_embed=128) — the misspelt n_embed
    # leaves GPT-2's default width 768 in effect there; the intended 128 (DT's D4RL size) is used here. Its MLP
    # keeps GPT2Config's default activation, gelu_new (LaMo's Atari code sets no activation_function).
    "dt": {"backbone": None, "n_layer": 3, "n_head": 1, "n_embd": 128, "activation_function": "gelu_new",
           "embedding": "linear", "adaptation": "full"},
    # Pre-trained GPT-2 fully fine-tuned with linear embeddings and LaMo's co-training weight (co_lambda 0.1).
    "wiki_rl": {"adaptation": "full", "embedding": "linear", "lm_coef": 0.1},
}


def external_inputs(config: Config):
    """The pre-trained backbone (when there is one) and the language corpus (when λ > 0)."""
    return _sequence_external_inputs(config)


def require_atari_spaces(algorithm: str, setup: TrainingSetup) -> tuple[int, int]:
    """(frame_stack, num_actions), or ValueError when the task is not frames → Discrete actions."""
    observation, action = setup.observation_space, setup.action_space
    if not isinstance(action, gym.spaces.Discrete):
        raise ValueError(f"{algorithm} (Atari variant) needs a Discrete action space; task {setup.task.name!r} has "
                         f"{action!r}")
    if not isinstance(observation, gym.spaces.Box) or len(observation.shape) != 3 or observation.dtype != np.uint8:
        raise ValueError(f"{algorithm} (Atari variant) needs (frame_stack, H, W) uint8 frame stacks; task "
                         f"{setup.task.name!r} has {observation!r}")
    dataset = setup.dataset
    if dataset is not None and dataset.state_shape != tuple(observation.shape):
        raise ValueError(f"{algorithm}: dataset {dataset.name} has states of shape {dataset.state_shape}, the task's "
                         f"observations {observation.shape}")
    return int(observation.shape[0]), int(action.n)


def dt_atari_lr_multiplier(tokens: float, warmup_tokens: float, final_tokens: float) -> float:
    """Decision Transformer's Atari schedule: linear warm-up, then cosine to 10 % at final_tokens, held."""
    if tokens < warmup_tokens:
        return tokens / max(1.0, warmup_tokens)
    progress = (tokens - warmup_tokens) / max(1.0, final_tokens - warmup_tokens)
    return max(0.1, 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


class TrainingObjective(nn.Module):
    """Everything one update differentiates, in one forward (so DDP sees one forward per step)."""

    def __init__(self, model: AtariTrajectoryTransformer):
        super().__init__()
        self.model = model

    def forward(self, batch: WindowBatch, lm_tokens: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        action_loss = self.model.action_loss(batch.states, batch.actions, batch.returns_to_go, batch.timesteps,
                                             batch.mask)
        if lm_tokens is None:
            return action_loss, torch.zeros((), device=action_loss.device)
        return action_loss, self.model.backbone.language_loss(lm_tokens)


class AtariSequenceModelAlgorithm:
    return_conditioned = RETURN_CONDITIONED

    def __init__(self, config: Config, setup: TrainingSetup):
        frame_stack, num_actions = require_atari_spaces("sequence model", setup)
        task, device = setup.task, setup.device
        self.config, self.task, self.device = config, task, device
        torch.manual_seed(setup.seed)
        backbone = build_backbone(config)
        backbone.wte.requires_grad_(config.lm_coef > 0)  # token embeddings serve only the language loss
        if config.adaptation == "lora":
            from peft import LoraConfig, get_peft_model

            for parameter in backbone.parameters():
                parameter.requires_grad_(False)
            backbone = get_peft_model(backbone, LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                                                           lora_dropout=config.lora_dropout,
                                                           target_modules=LORA_TARGETS))
        else:  # GPT2LMHeadModel trains its position table with everything else
            backbone.wpe.weight.requires_grad_(config.positional_embeddings)
        self.context_len = config.context_len or task.context_len
        model_config = AtariTrajectoryModelConfig(
            num_actions=num_actions, frame_stack=frame_stack, context_len=self.context_len,
            max_timestep=task.horizon, n_embd=backbone.config.n_embd, embedding=config.embedding,
            positional_embeddings=config.positional_embeddings, cnn_channels=config.cnn_channels)
        self.model = AtariTrajectoryTransformer(model_config, backbone).to(device)
        self.objective: nn.Module = TrainingObjective(self.model)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=config.learning_rate, weight_decay=config.weight_decay,
                                           fused=device.type == "cuda")
        bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
        self.autocast_dtype = torch.bfloat16 if bf16 else None
        self.step, self.tokens_seen = 0, 0
        dataset = setup.dataset
        self.final_tokens = config.final_tokens or (2 * len(dataset) * 3 * self.context_len if dataset else 1)
        self.sampler = None
        if dataset is not None:
            self.sampler = WindowSampler(dataset, self.context_len, task.return_scale, max_timestep=task.horizon)
        self.language = None
        if config.lm_coef > 0 and dataset is not None:
            self.language = LanguageBatches.for_backbone(config.backbone, config.lm_corpus, config.lm_sequences,
                                                         config.lm_seq_len, seed=setup.seed)

    def distribute(self, wrap) -> None:
        self.objective = wrap(self.objective)

    def update(self, batch: WindowBatch) -> dict[str, float]:
        self.model.train()
        # The rate for this update counts its own tokens, so the first update is not a zero-rate step.
        tokens = self.tokens_seen + int(batch.mask.sum())
        rate = self.config.learning_rate * dt_atari_lr_multiplier(tokens, self.config.warmup_tokens, self.final_tokens)
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
        check_finite(self.step, **metrics)
        self.optimizer.step()
        self.step, self.tokens_seen = self.step + 1, tokens
        return metrics

    def policy(self, num_envs: int, target_returns: Sequence[float] | None) -> AtariContextPolicy:
        if target_returns is None:
            raise ValueError("sequence models are conditioned on target returns; none were given")
        return AtariContextPolicy(self.model, num_envs, target_returns, self.task.return_scale, self.device,
                                  self.autocast_dtype)

    # --- checkpoints and artifacts ------------------------------------------------------------------------

    def trainable_state(self) -> dict[str, torch.Tensor]:
        names = {id(p): n for n, p in self.model.named_parameters()}
        return {names[id(p)]: p.detach() for p in self.trainable}

    def state_dict(self) -> dict:
        """A snapshot: later updates do not change it (the optimizer's moments are copied too)."""
        return {"model": {k: v.clone() for k, v in self.trainable_state().items()},
                "optimizer": copy.deepcopy(self.optimizer.state_dict()), "step": self.step,
                "tokens_seen": self.tokens_seen,
                "final_tokens": self.final_tokens,
                "language_rng": self.language.rng_state() if self.language is not None else None}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.trainable_state()) - set(state["model"])
        if missing:
            raise KeyError(f"checkpoint lacks trainable weights: {sorted(missing)[:5]} …")
        self.model.load_state_dict(state["model"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.tokens_seen, self.final_tokens = state["step"], state["tokens_seen"], state["final_tokens"]
        if self.language is not None and state.get("language_rng") is not None:
            self.language.set_rng_state(state["language_rng"])

    def export(self, directory: Path) -> list[Path]:
        """LoRA adapter via peft `save_pretrained`; every other trainable weight in `weights.safetensors`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        weights = {k: v.contiguous().cpu() for k, v in self.trainable_state().items()}
        if self.config.adaptation == "lora":
            self.model.backbone.save_pretrained(directory / "adapter")
            written += sorted((directory / "adapter").iterdir())
            weights = {k: v for k, v in weights.items() if not k.startswith("backbone.")}
        save_file(weights, directory / "weights.safetensors")
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
        missing = [k for k in self.trainable_state() if k not in weights and
                   not (self.config.adaptation == "lora" and k.startswith("backbone."))]
        if missing:
            raise KeyError(f"{directory / 'weights.safetensors'} lacks {missing[:5]}")
        self.model.load_state_dict(weights, strict=False)


class AtariContextPolicy:
    """The evaluation policy: a rolling K-step context per environment, greedy (argmax) actions.

    Each frame stack is encoded once, when it arrives, and its embedding kept in the context (the encoder is
    per state and the model is in eval mode, so this equals re-encoding the window every step). The return-to-go
    falls by each reward (LaMo core.py eval: target − return so far); the current step's action token is a
    placeholder 0 until predicted."""

    def __init__(self, model: AtariTrajectoryTransformer, num_envs: int, target_returns: Sequence[float],
                 return_scale: float, device: torch.device | str = "cpu", autocast_dtype: torch.dtype | None = None):
        if len(target_returns) != num_envs:
            raise ValueError(f"{len(target_returns)} target returns for {num_envs} environments")
        config = model.config
        k = config.context_len
        self.model, self.device, self.autocast_dtype = model, torch.device(device), autocast_dtype
        self.return_scale, self.max_timestep = return_scale, config.max_timestep
        self.states = torch.zeros((num_envs, k, config.n_embd), device=self.device)
        self.actions = np.zeros((num_envs, k), np.int64)
        self.returns_to_go = np.zeros((num_envs, k), np.float32)
        self.timesteps = np.zeros((num_envs, k), np.int64)
        self.mask = np.zeros((num_envs, k), bool)
        self.current_return = np.asarray(target_returns, np.float64) / return_scale
        self.t = np.zeros(num_envs, np.int64)
        self.live = np.ones(num_envs, bool)

    @torch.no_grad()
    def act(self, observations: np.ndarray) -> np.ndarray:
        actions = np.zeros(len(observations), np.int64)
        rows = np.flatnonzero(self.live)
        if len(rows) == 0:
            return actions
        was_training = self.model.training
        self.model.eval()
        device_rows = torch.from_numpy(rows).to(self.device)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            embedded = self.model.encode_states(torch.from_numpy(np.asarray(observations)[rows]).to(self.device))
            self.states[device_rows] = torch.roll(self.states[device_rows], -1, dims=1)
            self.states[device_rows, -1] = embedded.float()
            for buffer in (self.actions, self.returns_to_go, self.timesteps, self.mask):
                buffer[rows, :-1] = buffer[rows, 1:]
            self.actions[rows, -1] = 0
            self.returns_to_go[rows, -1] = self.current_return[rows]
            self.timesteps[rows, -1] = np.minimum(self.t[rows], self.max_timestep - 1)
            self.mask[rows, -1] = True
            as_tensor = lambda a: torch.from_numpy(a[rows]).to(self.device)  # noqa: E731
            # Once every live context is full the mask is all ones: attention takes its unmasked causal path.
            mask = None if self.mask[rows].all() else as_tensor(self.mask)
            logits = self.model.predict_last_action(self.states[device_rows], as_tensor(self.actions),
                                                    as_tensor(self.returns_to_go), as_tensor(self.timesteps), mask)
        self.model.train(was_training)
        actions[rows] = logits.float().argmax(-1).cpu().numpy()
        self.actions[rows, -1] = actions[rows]
        return actions

    def observe(self, rewards: np.ndarray, dones: np.ndarray) -> None:
        self.current_return[self.live] -= rewards[self.live] / self.return_scale
        self.t[self.live] += 1
        self.live &= ~np.asarray(dones, bool)


def build(config: Config, setup: TrainingSetup) -> AtariSequenceModelAlgorithm:
    return AtariSequenceModelAlgorithm(config, setup)
