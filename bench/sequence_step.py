"""LaMo train steps/s on GPT-2 small's architecture (random init), batch 64, K 20 — ours beside the official
formulation of the same step, measured in the same run.

    python -m bench.sequence_step [--steps 3] [--width 768] [--layers 12]

Official formulation (LaMo's code, rebuilt here from its behaviour): Hugging Face GPT-2 with eager
attention and the unfused gelu_new, LoRA on the fused c_attn, fp32, AdamW without fused kernels, and the
language-model forward (2 × 1024 tokens through the LM head) computed on every step — its loss added with
λ = 0.1 when co-training, computed and discarded by default. Ours: trainers.sequence.algorithm as the sweeps
run it (split q/k/v LoRA via peft, SDPA attention, fused tanh-GELU, λ = 0 skips the language forward),
in fp32 and with bf16 autocast (AVX512-BF16 CPUs and GPUs). On CUDA, ours also uses fused AdamW.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from rich.console import Console
from rich.table import Table
from transformers import GPT2Config, GPT2LMHeadModel

from trainers.data.samplers import to_torch
from trainers.data.trajectories import TrajectoryDataset, split_episodes
from trainers.runtime.algorithm import TrainingSetup
from trainers.runtime.registry import build_algorithm, make_config
from trainers.runtime.tasks import get_task
from trainers.sequence.language.tokenizers import ByteTokenizer


def hopper_like(n_episodes: int = 20, length: int = 200, seed: int = 0) -> TrajectoryDataset:
    rng = np.random.default_rng(seed)
    n = n_episodes * length
    terminals = np.zeros(n, bool)
    timeouts = np.zeros(n, bool)
    timeouts[length - 1::length] = True
    return TrajectoryDataset(name="bench", observations=rng.normal(size=(n, 11)).astype(np.float32),
                             actions=rng.uniform(-1, 1, (n, 3)).astype(np.float32),
                             rewards=rng.uniform(0, 3, n).astype(np.float32), terminals=terminals,
                             timeouts=timeouts, episodes=split_episodes(terminals, timeouts))


class OfficialStep:
    """The official code's step: HF GPT-2 (eager), fused c_attn LoRA, LM forward always computed, fp32."""

    def __init__(self, gpt2_config: GPT2Config, co_train: bool, device: torch.device):
        from trainers.sequence.model import ResidualMLPEmbedding

        config = GPT2Config(**{**gpt2_config.to_dict(), "activation_function": "gelu_new"})
        config._attn_implementation = "eager"
        lm = GPT2LMHeadModel(config)
        self.lm = get_peft_model(lm, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.1, target_modules=["c_attn"],
                                                bias="lora_only", fan_in_fan_out=True)).to(device)
        width = config.n_embd
        self.heads = torch.nn.ModuleDict({
            "time": torch.nn.Embedding(1000, width), "ret": ResidualMLPEmbedding(1, width),
            "state": ResidualMLPEmbedding(11, width), "action": ResidualMLPEmbedding(3, width),
            "ln": torch.nn.LayerNorm(width),
            "head": torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.GELU(), torch.nn.Linear(width, 3)),
        }).to(device)
        params = [p for p in list(self.lm.parameters()) + list(self.heads.parameters()) if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-5, eps=1e-6, foreach=False)
        self.params, self.co_train, self.device = params, co_train, device
        self.vocab = config.vocab_size

    def update(self, batch) -> None:
        h = self.heads
        b, k = batch.states.shape[:2]
        time_emb = h["time"](batch.timesteps)
        tokens = torch.stack([h["ret"](batch.returns_to_go.unsqueeze(-1)), h["state"](batch.states),
                              h["action"](batch.actions)], dim=2).reshape(b, 3 * k, -1)
        tokens = h["ln"](tokens) + time_emb.repeat_interleave(3, dim=1)
        mask = batch.mask.repeat_interleave(3, dim=1).long()
        transformer = self.lm.base_model.model.transformer
        hidden = transformer(inputs_embeds=tokens, attention_mask=mask).last_hidden_state
        predicted = h["head"](hidden.reshape(b, k, 3, -1)[:, :, 1])
        loss = ((predicted - batch.actions) ** 2).mean(-1)[batch.mask].mean()
        text = torch.randint(0, self.vocab, (2, 1024), device=self.device)
        lm_loss = self.lm(input_ids=text, labels=text).loss  # computed every step, as in the official code
        if self.co_train:
            loss = loss + 0.1 * lm_loss
        self.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 0.25)
        self.optimizer.step()


def steps_per_second(update, batches, warmup: int = 1) -> float:
    for batch in batches[:warmup]:
        update(batch)
    started = time.perf_counter()
    for batch in batches[warmup:]:
        update(batch)
    return (len(batches) - warmup) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per row (after one warm-up step)")
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpt2 = GPT2Config(n_embd=args.width, n_layer=args.layers, n_head=args.heads, n_positions=1024)
    import tempfile

    backbone_dir = tempfile.mkdtemp(prefix="gpt2-config-")
    gpt2.save_pretrained(backbone_dir)
    ByteTokenizer().save(backbone_dir)  # text for the language loss; the LM head still spans GPT-2's vocabulary
    task = get_task("hopper-medium")
    dataset = hopper_like()
    rng = np.random.default_rng(0)
    from gymnasium.spaces import Box

    setup = TrainingSetup(task=task, dataset=dataset, observation_space=Box(-np.inf, np.inf, (11,)),
                          action_space=Box(-1, 1, (3,)), device=device, seed=0)
    rows = []

    def ours(lm_coef: float, autocast: bool) -> float:
        torch.manual_seed(0)
        config = make_config("lamo", {"backbone": backbone_dir, "pretrained_weights": False, "lm_coef": lm_coef,
                                      "lm_corpus": "builtin", "context_len": 20,
                                      "precision": "bf16" if autocast else "fp32"})
        algorithm = build_algorithm("lamo", config, setup)
        batches = [to_torch(algorithm.sampler.sample(64, rng), device) for _ in range(args.steps + 1)]
        return steps_per_second(algorithm.update, batches)

    def official(co_train: bool) -> float:
        torch.manual_seed(0)
        step = OfficialStep(gpt2, co_train, device)
        from trainers.data.samplers import WindowSampler

        sampler = WindowSampler(dataset, 20, 1000.0, max_timestep=1000)
        batches = [to_torch(sampler.sample(64, rng), device) for _ in range(args.steps + 1)]
        return steps_per_second(step.update, batches)

    official_default, official_cotrain = official(False), official(True)
    rows.append(("official: LM forward computed and discarded (default), fp32", official_default, official_default))
    rows.append(("official: co-training λ = 0.1, fp32", official_cotrain, official_cotrain))
    rows.append(("ours (b): λ = 0, fp32", ours(0.0, False), official_default))
    rows.append(("ours (b): λ = 0, bf16 autocast", ours(0.0, True), official_default))
    rows.append(("ours (a): λ = 0.1, fp32", ours(0.1, False), official_cotrain))
    rows.append(("ours (a): λ = 0.1, bf16 autocast", ours(0.1, True), official_cotrain))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    table = Table("train step", "s/step", "steps/s", "× its official counterpart",
                  title=f"LaMo on GPT-2 {args.layers}×{args.width} (random init), batch 64, K 20, {device}, "
                        f"{torch.get_num_threads()} threads; peak RSS {peak:.1f} GiB")
    for label, speed, baseline in rows:
        table.add_row(label, f"{1 / speed:.2f}", f"{speed:.3f}", f"{speed / baseline:.2f}×")
    Console(width=130).print(table)


if __name__ == "__main__":
    main()
