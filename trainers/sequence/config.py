"""The sequence models' settings: one Config for LaMo, its ablations, Decision Transformer and Wiki-RL on both
modalities, the named presets, LaMo's Atari settings, and how their runs differ from the sources.

LaMo's facts come from its paper (Shi et al., ICLR 2024, appendix) and official code (srzer/LaMo-2023:
experiment-d4rl/experiment.py, run.sh, utils.py get_optimizer, decision_transformer/models/ and the LoRA settings
of trajectory_gpt2_LoRA.py; on Atari experiment-atari/: cfgs/config.yaml, run.sh, core.py, model.py); DT's from
kzl/decision-transformer gym/experiment.py and its models/ (Atari: atari/run_dt_atari.py, mingpt/trainer_atari.py);
Wiki-RL's from Reid et al. 2022 and machelreid/can-wikipedia-help-offline-rl code/. Each field and preset below
says where it comes from and where it departs from its source; `ATARI` holds what LaMo's Atari code sets for every
model (where its config and its run script disagree, the run script — the command that turns on LoRA and the MLP
embeddings, i.e. LaMo itself — wins). A config resolves as trainers/runtime/registry.py says: the defaults, the
domain's training settings, the preset, `ATARI` on Atari, then the preset's Atari part.

Known defects of the official LaMo code that are NOT reproduced here: data subsets drawn from the unseeded global
RNG (trainers/data/subsets.py seeds them per cell), the highest-return trajectory dropped by an off-by-one when
sorting, episodes split across file boundaries (split on terminals OR timeouts), and the language-model forward
pass run every step even when its loss is multiplied by 0 (here λ = 0 skips it).

Deviations from LaMo's Atari code, each for a stated reason (each reaches the report of an Atari run as a fidelity
note, `DIFFERENCES` below):
- evaluation every 2,500 steps (LaMo: 200): trainers/runtime/tasks.py `DOMAIN_TRAINING`;
- LoRA r 32, α 32, no dropout, biases frozen (peft defaults, as LaMo) on each of q, k and v of GPT-2's c_attn
  (trainers/sequence/gpt2.py splits the fused projection); LaMo's peft adapter sits on the fused c_attn, so its q,
  k and v updates share one rank-32 down-projection where here each has its own;
- windows are drawn as Decision Transformer's (a uniform step, left-padded; trainers/data/samplers.py) — LaMo
  draws a trajectory ∝ length and a start in [0, len − K), right-padding, never using a trajectory's last step;
- returns-to-go include the step's own reward (R̂_t = Σ_{k≥t} r_k), as DT's Atari code and as every evaluation
  (LaMo's too) computes them; LaMo's buffer.py trains on Σ_{k>t} r_k (its cumulative sums subtract r_t) while its
  evaluation conditions on Σ_{k≥t}. Kept: training and evaluation then mean the same by the return token;
- the learning-rate schedule (`warmup_cosine`, trainers/sequence/schedule.py): LaMo's effective one is an accident of
  its scheduler, matched in its warm-up and mean rate but not in its swings;
- the return embedding runs in fp32 under bf16 autocast, as on D4RL (LaMo trains Atari in fp32 throughout).
The language loss (Wiki-RL's λ 0.1 on Atari) adds GPT-2's positional embeddings where the trajectory path adds them,
as LaMo's Atari co-training does (GPT2LMHeadModel on the token ids, experiment-atari/core.py); on D4RL neither path
adds them (LaMo's trajectory_gpt2.py: to_add_position_embeds False for the language batches too).

Decision Transformer on Atari: LaMo's code builds its `pretrained_lm none` model as GPT2Config(n_layer=3, n_head=1,
n_embed=128) (experiment-atari/model.py) — `n_embed` is not a GPT2Config field, so the model runs GPT-2's default
width 768, with gelu_new. `dt` runs what LaMo's code runs; `dt_128` runs the intended 128 (DT's D4RL width).
"""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from trainers.runtime.algorithm import (
    ExternalInput,
    KnownDifference,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Preset,
    RanTrial,
    Rate,
    TrainingConfig,
    algorithm_config,
    listed,
)
from trainers.sequence.language.corpora import check_corpus
from trainers.sequence.language.hub import pretrained_gpt2_config
from trainers.sequence.model import NATURE_CNN_CHANNELS
from trainers.sequence.schedule import lamo_atari_mean_multiplier, mean_multiplier


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
    n_embd: PositiveInt | None = None  # model width; None = the backbone's (128 when built here)
    n_head: PositiveInt = 1  # only when backbone is None
    # GPT-2 MLP activation, only when backbone is None (default relu: DT gym/experiment.py and LaMo experiment.py
    # --activation_function); a checkpoint, pre-trained or randomly initialised, uses the one its config names.
    activation_function: Literal["relu", "gelu", "gelu_new", "gelu_pytorch_tanh"] | None = None
    dropout: Rate = 0.1  # GPT-2's own dropout (LaMo's Atari drop_p 0.1 is passed to its model but never used)
    # --- trajectory model ---
    context_len: PositiveInt | None = None  # K; None = the task's (20 locomotion/kitchen, 5 reacher2d, 30 Atari)
    embedding: Literal["linear", "mlp"] = "mlp"  # LaMo: residual MLP embeddings (Atari: run.sh mlp_embedding=1)
    action_head: Literal["linear_tanh", "mlp"] = "mlp"  # LaMo: Linear → GELU → Linear, clipped at evaluation
    timestep_after_layernorm: bool = True  # LaMo adds the timestep embedding after the embedding LayerNorm
    positional_embeddings: bool = False  # GPT-2's wpe added to the tokens (LaMo's Atari code: GPT2Model's own)
    cnn_channels: tuple[PositiveInt, PositiveInt, PositiveInt] = NATURE_CNN_CHANNELS  # frames (config.yaml)
    # --- adaptation ---
    adaptation: Literal["lora", "full"] = "lora"  # lora: backbone frozen, LoRA on c_attn's q, k, v
    lora_r: PositiveInt = 16
    lora_alpha: PositiveInt = 32
    lora_dropout: Rate = 0.1
    lora_bias: Literal["lora_only", "none"] = "lora_only"  # peft: the adapted layers' biases trainable, or frozen
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
    grad_clip: PositiveFloat = 0.25
    lr_schedule: Literal["warmup", "warmup_cosine", "dt_atari"] = "warmup"  # trainers/sequence/algorithm.py
    warmup_steps: NonNegativeInt = 2500  # warmup, warmup_cosine
    warmup_tokens: NonNegativeInt = 512 * 20  # dt_atari (DT-Atari run_dt_atari.py)
    final_tokens: PositiveInt | None = None  # dt_atari; None = 2 · (transitions trained on) · 3K, run_dt_atari.py
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


# LaMo's Atari code, for every model it runs (experiment-atari/cfgs/config.yaml, run.sh, core.py, model.py).
ATARI = {
    "batch_size": 128,  # config.yaml train.batch_size
    "action_head": "linear_tanh",  # model.py: Linear → tanh logits, whatever the embeddings
    "timestep_after_layernorm": False,  # model.py adds the timestep embedding before the LayerNorm
    "positional_embeddings": True,  # GPT2Model(inputs_embeds=...) adds wpe
    "lora_r": 32, "lora_alpha": 32, "lora_dropout": 0.0, "lora_bias": "none",  # run.sh lora_attn_dim=32; peft
    "lm_coef": 0.0,  # run.sh and config.yaml: nlp_train.co_training 0
    "learning_rate": 1e-3, "weight_decay": 0.01,  # run.sh train.lr, train.weight_decay (config.yaml: 3e-4, 0.1)
    "adam_eps": 1e-8, "grad_clip": 1.0,  # core.py: AdamW with torch's betas and eps; clip_grad_norm_ 1.0
    # LaMo's CustomLRScheduler as it runs (its token counter grows with the square of the step): warm-up ends near
    # update ~440, then the rate swings between 10 % and 100 % of lr, averaging 0.53 of it over 100K updates.
    # Here: warm-up over 500 updates, one cosine to 10 % by the last update (mean 0.51), the same for every data
    # ratio (trainers/sequence/schedule.py).
    "lr_schedule": "warmup_cosine", "warmup_steps": 500,
}

_DT = {"backbone": None, "n_layer": 3, "n_embd": 128, "n_head": 1, "activation_function": "relu",
       "embedding": "linear", "action_head": "linear_tanh", "timestep_after_layernorm": False, "adaptation": "full",
       "lm_coef": 0.0, "weight_decay": 1e-4, "adam_eps": 1e-8, "warmup_steps": 10_000}

PRESETS: dict[str, Preset] = {
    "lamo": Preset(),
    "lamo_no_lm": Preset({"lm_coef": 0.0}),  # on Atari the same as lamo: LaMo's Atari runs have no language loss
    # Same architecture, adaptation and language loss; only the pre-trained weights are missing. LaMo's code can
    # build a random GPT-2 only with pretrained_lm unset, and then get_optimizer takes its other branch: AdamW
    # with torch's default eps 1e-8.
    "lamo_random_init": Preset({"pretrained_weights": False, "adam_eps": 1e-8}),
    "lamo_full_ft": Preset({"adaptation": "full"}),
    "lamo_linear_emb": Preset({"embedding": "linear", "action_head": "linear_tanh"}),
    # DT's gym experiment: 3 layers × 128 wide, 1 head, ReLU MLP, dropout 0.1; timestep embedding added to each
    # token before the embedding LayerNorm; AdamW lr 1e-4, wd 1e-4, torch's default eps 1e-8, 10K warm-up; clip
    # 0.25 (seq_trainer.py); batch 64, K 20, 100K steps. Departure: 20 evaluation episodes per target every 2500
    # steps (LaMo's protocol; DT evaluates 100 after each 10K steps). LaMo's own code would run this baseline with
    # its single token order (timestep after the LayerNorm).
    # Atari: what LaMo's code runs with pretrained_lm none: GPT2Config(n_layer=3, n_head=1, n_embed=128), whose
    # misspelt n_embed leaves GPT-2's default width 768 in effect, and whose MLP keeps GPT2Config's default
    # activation, gelu_new (LaMo's Atari code sets no activation_function). `dt_128`: the intended 128.
    "dt": Preset(_DT, domains={"atari": {"n_embd": 768, "activation_function": "gelu_new"}}),
    "dt_128": Preset(_DT, domains={"atari": {"activation_function": "gelu_new"}}),
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
    #   0.1 is LaMo's co_lambda, on Atari too (where the other models train without the language loss).
    "wiki_rl": Preset({"adaptation": "full", "embedding": "linear", "action_head": "linear_tanh",
                       "timestep_after_layernorm": True, "weight_decay": 1e-4, "adam_eps": 1e-6,
                       "warmup_steps": 10_000},
                      domains={"atari": {"lm_coef": 0.1}}),
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


# --- how these runs differ from LaMo's code (the report's fidelity notes) -----------------------------------

def _in_preset_order(names) -> str:
    return listed(sorted(set(names), key=list(PRESETS).index))


def _whole_trajectories(runs: list[RanTrial]) -> str | None:
    algorithms = [r.algorithm for r in runs if r.domain != "atari"]  # LaMo's D4RL code
    if not algorithms:
        return None
    return (f"The sequence models ({_in_preset_order(algorithms)}) train on every trajectory of their data. LaMo's "
            f"experiment.py negates the returns before sorting and stops its pct_traj loop one trajectory early (a "
            f"strict <), so it drops the highest-return trajectory even at pct_traj = 1; that off-by-one is not "
            f"reproduced.")


def _language_pass_skipped(runs: list[RanTrial]) -> str | None:
    # LaMo's Atari code computes the language loss only when co-training is on (experiment-atari/core.py).
    algorithms = [r.algorithm for r in runs if r.config["lm_coef"] == 0 and r.config["backbone"] is not None
                  and r.domain != "atari"]
    if not algorithms:
        return None
    return (f"Without LaMo's language loss (lm_coef 0: {_in_preset_order(algorithms)}) the language model's forward "
            f"pass is skipped; LaMo's D4RL seq_trainer.py computes it every step and leaves it out of the loss "
            f"(compute only, but it draws dropout randomness).")


def _mixed_precision(runs: list[RanTrial]) -> str | None:
    algorithms = [r.algorithm for r in runs if r.config["precision"] == "bf16"
                  or (r.config["precision"] == "auto" and r.gpu_hours > 0)]
    if not algorithms:
        return None
    return (f"bf16 autocast on GPU ({_in_preset_order(algorithms)}), where LaMo trains in float32 (its --fp16 flag "
            f"is off); the return embedding stays float32.")


def _on_atari(runs: list[RanTrial]) -> list[RanTrial]:
    return [r for r in runs if r.domain == "atari"]


def _atari_schedule(runs: list[RanTrial]) -> str | None:
    parts = {}
    for run in _on_atari(runs):
        c = run.config
        if c["lr_schedule"] == "dt_atari":
            text = (f"DT's Atari schedule as written (warm-up over {c['warmup_tokens']:,} action tokens, cosine to "
                    f"10 % at 2 x the subset's transitions x 3K tokens: a different schedule for each data ratio)")
        else:
            mean = mean_multiplier(c["lr_schedule"], c["warmup_steps"], c["num_steps"])
            shape = ("then cosine to 10 % by the last update" if c["lr_schedule"] == "warmup_cosine"
                     else "then constant")
            text = (f"warm-up over {c['warmup_steps']:,} updates, {shape}: mean multiplier {mean:.2f} of lr "
                    f"{c['learning_rate']:g} over {c['num_steps']:,} updates (LaMo's scheduler over as many updates "
                    f"of 128 x 30 tokens: {lamo_atari_mean_multiplier(c['num_steps'], 128 * 30):.2f})")
        parts.setdefault(text, []).append(run.algorithm)
    if not parts:
        return None
    shown = "; ".join(f"{_in_preset_order(names)}: {text}" for text, names in parts.items())
    return (f"Learning rate on Atari: {shown}. LaMo's CustomLRScheduler adds its running token count to itself "
            f"every update (core.py): at 128 x 30 tokens per update its warm-up ends near update 440, and from update "
            f"~11,600 on the rate swings between 10 % and 100 % of lr.")


def _atari_lora(runs: list[RanTrial]) -> str | None:
    ranks = {f"{r.algorithm} (r {r.config['lora_r']})" for r in _on_atari(runs) if r.config["adaptation"] == "lora"}
    if not ranks:
        return None
    return (f"LoRA on Atari ({', '.join(sorted(ranks))}) adapts each of q, k and v of GPT-2's attention with its own "
            f"low-rank pair; LaMo's peft adapter sits on the fused c_attn, so its q, k and v updates share one "
            f"down-projection of that rank.")


def _atari_windows(runs: list[RanTrial]) -> str | None:
    algorithms = [r.algorithm for r in _on_atari(runs)]
    if not algorithms:
        return None
    return (f"Training windows on Atari ({_in_preset_order(algorithms)}): a uniformly drawn step and the K steps up "
            f"to it, left-padded at an episode's start (Decision Transformer's sampling); returns-to-go include the "
            f"step's own reward (sum over k >= t), as at evaluation. LaMo's buffer.py draws a trajectory in proportion "
            f"to its length and a start in [0, len - K), right-pads, never trains on a trajectory's last step, and "
            f"trains on returns-to-go without the step's own reward (k > t) while its evaluation includes it.")


def _atari_width(runs: list[RanTrial]) -> str | None:
    widths = {f"{r.algorithm} {r.config['n_embd'] or 128} wide"
              for r in _on_atari(runs) if r.config["backbone"] is None}
    if not widths:
        return None
    return (f"Transformers built from scratch on Atari: {', '.join(sorted(widths))}. LaMo's code builds its "
            f"pretrained_lm none model as GPT2Config(n_layer=3, n_head=1, n_embed=128), whose misspelt n_embed "
            f"leaves GPT-2's default width 768 in effect: the dt preset's width on Atari; dt_128's is the intended "
            f"128.")


DIFFERENCES = [
    KnownDifference("training data: whole trajectories",
                    "LaMo code: experiment-d4rl/experiment.py (pct_traj selection); trainers/sequence/config.py",
                    _whole_trajectories),
    KnownDifference("language model",
                    "LaMo code: experiment-d4rl/decision_transformer/training/seq_trainer.py (train_step); "
                    "trainers/sequence/algorithm.py", _language_pass_skipped),
    KnownDifference("numerics", "LaMo code: experiment-d4rl/experiment.py (--fp16); trainers/sequence/config.py "
                    "(precision)", _mixed_precision),
    KnownDifference("learning-rate schedule: atari",
                    "LaMo code: experiment-atari/core.py (CustomLRScheduler); kzl/decision-transformer "
                    "atari/mingpt/trainer_atari.py; trainers/sequence/schedule.py", _atari_schedule),
    KnownDifference("lora: atari", "LaMo code: experiment-atari/model.py (peft LoraConfig on c_attn); "
                    "trainers/sequence/gpt2.py (c_attn split into q, k, v)", _atari_lora),
    KnownDifference("training windows: atari", "LaMo code: experiment-atari/buffer.py (AtariBuffer.sample, "
                    "rewards_to_go); trainers/data/samplers.py (WindowSampler)", _atari_windows),
    KnownDifference("model width: atari", "LaMo code: experiment-atari/model.py (GPT2Config(..., n_embed=128)); "
                    "trainers/sequence/config.py (PRESETS dt, dt_128)", _atari_width),
]
