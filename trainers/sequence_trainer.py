"""LaMo, its ablations, Decision Transformer and Wiki-RL: one trajectory transformer, named presets.

LaMo's facts come from its paper (Shi et al., ICLR 2024, appendix) and official code (srzer/LaMo-2023:
experiment-d4rl/experiment.py, run.sh, utils.py get_optimizer, decision_transformer/models/ and the LoRA settings
of trajectory_gpt2_LoRA.py); DT's from kzl/decision-transformer gym/experiment.py and its models/; Wiki-RL's from
Reid et al. 2022 and machelreid/can-wikipedia-help-offline-rl code/. Each preset below says where it departs from
its source. Known defects of the official LaMo code that are NOT reproduced here: data subsets drawn from the
unseeded global RNG (datasets.py seeds them per cell), the highest-return trajectory dropped by an off-by-one
when sorting, episodes split across file boundaries (datasets.py splits on terminals OR timeouts), and the
language-model forward pass run every step even when its loss is multiplied by 0 (here λ = 0 skips it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from pydantic import model_validator
from torch import nn

from trainers.algorithm import (
    ExternalInput,
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
from trainers.gpt2 import GPT2, gpt2_config, random_gpt2
from trainers.language import LanguageBatches, check_corpus, load_pretrained_gpt2, pretrained_gpt2_config
from trainers.samplers import WindowBatch, WindowSampler
from trainers.sequence_policy import ContextPolicy
from trainers.trajectory_model import TrajectoryModelConfig, TrajectoryTransformer

# peft (and the transformers it imports, ~3 s) is imported where LoRA is applied or loaded: the sweep driver and
# every trial that uses no LoRA load this module without it.


RETURN_CONDITIONED = True  # evaluated once per target return of the task


@algorithm_config
class Config(TrainingConfig):
    # --- schedule (LaMo run.sh: 40 × 2500 = 100K steps, evaluation every 2500, batch 64) ---
    num_steps: PositiveInt = 100_000
    eval_every: PositiveInt = 2500
    # per target return (LaMo run.sh num_eval_episodes=20; DT's and Wiki-RL's default: 100)
    eval_episodes: PositiveInt = 20
    batch_size: PositiveInt = 64
    # --- backbone ---
    backbone: str | None = "gpt2"  # hub id or local directory of a GPT-2; None = build n_layer/n_embd/n_head here
    pretrained_weights: bool = True  # False: the backbone's architecture, randomly initialised
    n_layer: PositiveInt = 3  # only when backbone is None
    n_embd: PositiveInt | None = None  # model width; None = the backbone's; a value that differs from it is an error
    n_head: PositiveInt = 1  # only when backbone is None
    # GPT-2 MLP activation, only when backbone is None (default relu: DT gym/experiment.py and LaMo experiment.py
    # --activation_function); a checkpoint, pre-trained or randomly initialised, uses the one its config names.
    activation_function: Literal["relu", "gelu", "gelu_new", "gelu_pytorch_tanh"] | None = None
    dropout: Rate = 0.1
    # --- trajectory model ---
    context_len: PositiveInt | None = None  # K; None = the task's default (20 locomotion/kitchen, 5 reacher2d)
    embedding: Literal["linear", "mlp"] = "mlp"  # LaMo: residual MLP embeddings
    action_head: Literal["linear_tanh", "mlp"] = "mlp"  # LaMo: Linear → GELU → Linear, clipped at evaluation
    timestep_after_layernorm: bool = True  # LaMo adds the timestep embedding after the embedding LayerNorm
    # --- adaptation ---
    adaptation: Literal["lora", "full"] = "lora"  # lora: backbone frozen, LoRA on c_attn's q, k, v
    lora_r: PositiveInt = 16
    lora_alpha: PositiveInt = 32
    lora_dropout: Rate = 0.1
    # --- auxiliary language loss (λ · causal-LM cross-entropy) ---
    lm_coef: NonNegativeFloat = 0.1  # λ; 0 skips the language forward entirely
    lm_corpus: str = "wikitext-103"  # "wikitext-103", a directory or file of .txt, or "builtin"
    lm_sequences: PositiveInt = 2  # sequences per step
    lm_seq_len: PositiveInt = 1024  # tokens per sequence
    # --- optimisation (LaMo: AdamW eps 1e-6 (utils.py), lr 1e-4, wd 1e-5, 2500 warm-up steps (run.sh), clip 0.25
    # (seq_trainer.py)). run.sh also passes -lmlr 1e-5, but get_optimizer gives it only to model children whose
    # class path contains "transformers", and LaMo's GPT-2 classes live in decision_transformer.models: every
    # trainable parameter, LoRA included, trains at lr 1e-4 with weight decay 1e-5. ---
    learning_rate: PositiveFloat = 1e-4
    weight_decay: NonNegativeFloat = 1e-5
    adam_eps: PositiveFloat = 1e-6
    warmup_steps: NonNegativeInt = 2500
    grad_clip: PositiveFloat = 0.25
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
    "lamo_no_lm": {"lm_coef": 0.0},
    # Same architecture, adaptation and language loss; only the pre-trained weights are missing. LaMo's code can
    # build a random GPT-2 only with pretrained_lm unset, and then get_optimizer takes its other branch: AdamW
    # with torch's default eps 1e-8.
    "lamo_random_init": {"pretrained_weights": False, "adam_eps": 1e-8},
    "lamo_full_ft": {"adaptation": "full"},
    "lamo_linear_emb": {"embedding": "linear", "action_head": "linear_tanh"},
    # DT's gym experiment: 3 layers × 128 wide, 1 head, ReLU MLP, dropout 0.1; timestep embedding added to each
    # token before the embedding LayerNorm; AdamW lr 1e-4, wd 1e-4, torch's default eps 1e-8, 10K warm-up; clip
    # 0.25 (seq_trainer.py); batch 64, K 20, 100K steps. Departure: 20 evaluation episodes per target every 2500
    # steps (LaMo's protocol; DT evaluates 100 after each 10K steps). LaMo's own code would run this baseline with
    # its single token order (timestep after the LayerNorm).
    "dt": {"backbone": None, "n_layer": 3, "n_embd": 128, "n_head": 1, "activation_function": "relu",
           "embedding": "linear", "action_head": "linear_tanh", "timestep_after_layernorm": False,
           "adaptation": "full", "lm_coef": 0.0, "weight_decay": 1e-4, "adam_eps": 1e-8, "warmup_steps": 10_000},
    # Wiki-RL (Reid et al. 2022) as LaMo's code runs it: pre-trained GPT-2 fully fine-tuned, linear embeddings,
    # Linear → tanh head, λ 0.1 language loss. Both repositories' decision_transformer.py apply the embedding
    # LayerNorm before adding the timestep embedding, and both utils.py get_optimizer use AdamW eps 1e-6 when a
    # pre-trained LM is loaded; weight decay 1e-4 and 10K warm-up steps are both experiment.py defaults (LaMo's
    # scripts for its baselines are not in its repository). Not reproduced from Wiki-RL's paper and run.sh:
    # - its k-means auxiliary loss (--gpt_kmeans 1000 --gpt_kmeans_const 0.1: input embeddings pulled towards
    #   1000 clusters of GPT-2's token embeddings, annealed away over the first ~5K steps); LaMo's code has no
    #   such loss either, so LaMo's Wiki-RL numbers come without it;
    # - the timestep table initialised from GPT-2's position embeddings (--extend_positions), and the action
    #   head tied to the action embedding (--share_input_output_proj): options in both codes, off by default;
    # - dropout 0.2 (run.sh; 0.1 is both experiment.py defaults) and 100 evaluation episodes per target
    #   (experiment.py default; here LaMo's protocol);
    # - λ: Wiki-RL's lm_cotraining/seq_trainer.py adds the LM loss with weight 1 in fp32 (0.1 only under --fp16);
    #   0.1 is LaMo's co_lambda.
    "wiki_rl": {"adaptation": "full", "embedding": "linear", "action_head": "linear_tanh",
                "timestep_after_layernorm": True, "weight_decay": 1e-4, "adam_eps": 1e-6, "warmup_steps": 10_000},
}


def external_inputs(config: Config) -> list[ExternalInput]:
    """The pre-trained backbone (when there is one) and the language corpus (when λ > 0)."""
    def check_backbone(value: str) -> None:
        width = pretrained_gpt2_config(value).get("n_embd")
        if config.n_embd is not None and config.n_embd != width:
            raise ValueError(f"n_embd={config.n_embd} does not match the width {width} of backbone {value!r}")

    inputs = []
    if config.backbone is not None:
        inputs.append(ExternalInput("backbone", "pre-trained GPT-2", config.backbone, check_backbone))
    if config.lm_coef > 0:
        inputs.append(ExternalInput("lm_corpus", "language corpus", config.lm_corpus, check_corpus))
    return inputs


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
    """Freeze the backbone and add LoRA to c_attn's q, k and v (their biases stay trainable), via peft."""
    from peft import LoraConfig, get_peft_model

    for parameter in backbone.parameters():
        parameter.requires_grad_(False)
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=LORA_TARGETS, bias="lora_only")
    return get_peft_model(backbone, lora)


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
        return action_loss, self.model.backbone.language_loss(lm_tokens)


class SequenceModelAlgorithm:
    return_conditioned = RETURN_CONDITIONED

    def __init__(self, config: Config, setup: TrainingSetup):
        task, device = setup.task, setup.device
        self.config, self.task, self.device = config, task, device
        if not hasattr(setup.action_space, "shape") or len(setup.action_space.shape) != 1:
            raise ValueError(f"the sequence models need a continuous (Box) action space, got {setup.action_space}")
        torch.manual_seed(setup.seed)
        backbone = build_backbone(config)
        if config.lm_coef == 0:
            backbone.wte.requires_grad_(False)  # never used without the language loss
        if config.adaptation == "lora":
            backbone = apply_lora(backbone, config)
        self.context_len = config.context_len or task.context_len
        model_config = TrajectoryModelConfig(
            observation_dim=setup.observation_space.shape[0], action_dim=setup.action_space.shape[0],
            context_len=self.context_len, max_timestep=task.horizon, n_embd=backbone.config.n_embd,
            dropout=config.dropout, embedding=config.embedding, action_head=config.action_head,
            timestep_after_layernorm=config.timestep_after_layernorm)
        self.model = TrajectoryTransformer(model_config, backbone).to(device)
        self.objective: nn.Module = TrainingObjective(self.model)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=config.learning_rate, weight_decay=config.weight_decay,
                                           eps=config.adam_eps, fused=device.type == "cuda")
        warmup = max(1, config.warmup_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: min((step + 1) / warmup, 1.0))
        self.step = 0
        bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
        self.autocast_dtype = torch.bfloat16 if bf16 else None
        self.state_mean = np.zeros(model_config.observation_dim, np.float32)
        self.state_std = np.ones(model_config.observation_dim, np.float32)
        self.sampler = None
        if setup.dataset is not None:
            self.state_mean, self.state_std = setup.dataset.state_statistics()
            self.sampler = WindowSampler(setup.dataset, self.context_len, task.return_scale, self.state_mean,
                                         self.state_std, max_timestep=task.horizon)
        self.language = None
        if config.lm_coef > 0 and setup.dataset is not None:
            self.language = LanguageBatches.for_backbone(config.backbone, config.lm_corpus, config.lm_sequences,
                                                         config.lm_seq_len, seed=setup.seed)

    def distribute(self, wrap) -> None:
        """Let the worker loop wrap the training objective (e.g. in DistributedDataParallel)."""
        self.objective = wrap(self.objective)

    def update(self, batch: WindowBatch) -> dict[str, float]:
        self.model.train()
        lm_tokens = self.language.sample().to(self.device) if self.language is not None else None
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            action_loss, lm_loss = self.objective(batch, lm_tokens)
        loss = action_loss + self.config.lm_coef * lm_loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.config.grad_clip)
        metrics = {"loss": loss.item(), "action_loss": action_loss.item(), "grad_norm": grad_norm.item(),
                   "learning_rate": self.scheduler.get_last_lr()[0]}
        if self.language is not None:
            metrics["lm_loss"] = lm_loss.item()
        check_finite(self.step, **metrics,
                     batch_states_abs_max=batch.states.abs().max(), batch_rtg_abs_max=batch.returns_to_go.abs().max())
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return metrics

    def policy(self, num_envs: int, target_returns: Sequence[float] | None) -> ContextPolicy:
        if target_returns is None:
            raise ValueError("sequence models are conditioned on target returns; none were given")
        return ContextPolicy(self.model, num_envs, target_returns, self.task.return_scale, self.state_mean,
                             self.state_std, device=self.device, autocast_dtype=self.autocast_dtype)

    # --- checkpoints and artifacts ------------------------------------------------------------------------

    def trainable_state(self) -> dict[str, torch.Tensor]:
        names = {id(p): n for n, p in self.model.named_parameters()}
        return {names[id(p)]: p.detach() for p in self.trainable}

    def state_dict(self) -> dict:
        return {"model": {k: v.clone() for k, v in self.trainable_state().items()},
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "step": self.step, "state_mean": torch.from_numpy(self.state_mean),
                "state_std": torch.from_numpy(self.state_std),
                "language_rng": self.language.rng_state() if self.language is not None else None}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.trainable_state()) - set(state["model"])
        if missing:
            raise KeyError(f"checkpoint lacks trainable weights: {sorted(missing)[:5]} …")
        self.model.load_state_dict(state["model"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        self.state_mean, self.state_std = state["state_mean"].numpy(), state["state_std"].numpy()
        if self.language is not None and state.get("language_rng") is not None:
            self.language.set_rng_state(state["language_rng"])

    def export(self, directory: Path) -> list[Path]:
        """LoRA adapter via peft `save_pretrained` (safetensors); every other trainable weight and the state
        normalization in `weights.safetensors`; the model's shape in `model.json`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        weights = {k: v.contiguous().cpu() for k, v in self.trainable_state().items()}
        if self.config.adaptation == "lora":
            self.model.backbone.save_pretrained(directory / "adapter")
            written += sorted((directory / "adapter").iterdir())
            weights = {k: v for k, v in weights.items() if not k.startswith("backbone.")}
        weights["state_mean"] = torch.from_numpy(self.state_mean)
        weights["state_std"] = torch.from_numpy(self.state_std)
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
        self.state_mean = weights.pop("state_mean").numpy()
        self.state_std = weights.pop("state_std").numpy()
        missing = [k for k in self.trainable_state() if k not in weights and
                   not (self.config.adaptation == "lora" and k.startswith("backbone."))]
        if missing:
            raise KeyError(f"{directory / 'weights.safetensors'} lacks {missing[:5]}")
        self.model.load_state_dict(weights, strict=False)


def build(config: Config, setup: TrainingSetup) -> SequenceModelAlgorithm:
    return SequenceModelAlgorithm(config, setup)
