"""A tiny GPT-2 pre-trained here, where weights cannot be downloaded:

    python -m trainers.sequence.language pretrain --out models/tiny-gpt2 --steps 300

pre-trains a small GPT-2 from scratch on a local corpus (default: the standard library's documentation,
trainers/sequence/language/corpora.py) and saves it as a `from_pretrained` directory with its tokenizer and a
pretrain_log.json: a backbone the sequence models load like `gpt2`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from trainers.sequence.language.batches import LanguageBatches
from trainers.sequence.language.corpora import CORPUS_FORMS, load_corpus
from trainers.sequence.language.hub import FAST_GELU
from trainers.sequence.language.tokenizers import (
    load_tokenizer,
    tokenize_corpus,
    unigram_entropy,
)


def pretrain_tiny_gpt2(out_dir: str | Path, corpus: str | Path = "builtin", *, steps: int = 1000, n_layer: int = 2,
                       n_embd: int = 128, n_head: int = 2, seq_len: int = 256, batch: int = 8, lr: float = 3e-3,
                       seed: int = 0, n_positions: int = 1024, tokenizer: str | Path | None = None,
                       cache_dir: str | Path | None = None, progress: bool | None = None) -> Path:
    """Pre-train a randomly initialised GPT2LMHeadModel with causal-LM cross-entropy and save it with its
    tokenizer and pretrain_log.json, a directory `load_pretrained_gpt2` loads. Deterministic given the seed.
    Logged losses are nats/token on fixed windows of held-out documents (every 20th)."""
    if n_positions < seq_len:
        raise ValueError(f"n_positions={n_positions} must be at least seq_len={seq_len}")
    started = time.perf_counter()
    tok = load_tokenizer(tokenizer)
    documents = load_corpus(corpus, cache_dir=cache_dir)
    tokens = tokenize_corpus([doc for i, doc in enumerate(documents) if i % 20 != 19], tok)
    held_out = tokenize_corpus(documents[19::20], tok)
    if len(held_out) < 4 * (seq_len + 1) or len(tokens) < seq_len + 1:  # too small to spare: in-sample
        tokens = held_out = tokenize_corpus(documents, tok)
    train = LanguageBatches(tokens, seq_len=seq_len, num_sequences=batch, seed=seed)
    evaluation = LanguageBatches(held_out, seq_len=seq_len, num_sequences=batch, seed=seed + 1)
    evaluation_windows = [evaluation.sample() for _ in range(4)]
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(
        vocab_size=tok.vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        # No dropout: a tiny model seeing about one epoch underfits. The sequence trainer sets its own with
        # load_pretrained_gpt2(..., dropout=...).
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, activation_function=FAST_GELU,
        bos_token_id=tok.eos_id, eos_token_id=tok.eos_id))
    # lr 3e-3 (1000 steps, builtin corpus): held-out 2.29 nats/byte, below the corpus' bigram entropy (2.60);
    # 1e-3 stalls at the bigram level (2.58). Unigram entropy: 3.28.
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    warmup = max(1, min(100, steps // 10))

    def schedule(step: int) -> float:  # linear warm-up, then cosine decay to lr / 10
        decayed = (step - warmup) / max(1, steps - warmup)
        return (step + 1) / warmup if step < warmup else 0.55 + 0.45 * math.cos(math.pi * decayed)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    def loss_of(windows: torch.Tensor) -> torch.Tensor:
        logits = model(input_ids=windows[:, :-1]).logits
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten())

    def evaluate() -> float:
        model.eval()
        with torch.no_grad():
            value = float(np.mean([loss_of(windows).item() for windows in evaluation_windows]))
        model.train()
        return value

    from rich.console import Console
    from rich.progress import Progress
    initial_loss, curve = evaluate(), []
    show = sys.stderr.isatty() if progress is None else progress  # a bar on terminals, nothing in logs
    with Progress(console=Console(stderr=True), disable=not show) as bar:
        task = bar.add_task(f"pre-training on {corpus}", total=steps)
        for _ in range(steps):
            loss = loss_of(train.sample())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            curve.append(loss.item())
            bar.update(task, advance=1, description=f"pre-training on {corpus}: loss {curve[-1]:.3f}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save(out)
    log = {"corpus": str(corpus), "seed": seed, "steps": steps, "tokens_seen": steps * batch * seq_len,
           "train_tokens": len(tokens), "eval": "held-out documents" if held_out is not tokens else "in-sample",
           "initial_loss": initial_loss, "final_loss": evaluate(), "unigram_entropy": unigram_entropy(tokens),
           "seconds": round(time.perf_counter() - started, 2), "tokenizer": type(tok).__name__, "seq_len": seq_len,
           "batch": batch, "lr": lr, "parameters": sum(p.numel() for p in model.parameters()),  # dims: config.json
           "train_loss_curve": [round(value, 4) for value in curve[::max(1, steps // 50)]]}
    (out / "pretrain_log.json").write_text(json.dumps(log, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trainers.sequence.language", description=__doc__.split("\n\n")[0])
    pretrain = parser.add_subparsers(dest="command", required=True).add_parser(
        "pretrain", help="pre-train a tiny GPT-2 from scratch and save it as a from_pretrained directory")
    pretrain.add_argument("--out", required=True, type=Path, help="directory to save the model in")
    pretrain.add_argument("--corpus", default="builtin", help=f"one of: {CORPUS_FORMS}")
    pretrain.add_argument("--tokenizer", help="model directory or hub id to take the tokenizer from "
                          "(default: byte-level)")
    for flag, kind, default in [("--steps", int, 1000), ("--n-layer", int, 2), ("--n-embd", int, 128),
                                ("--n-head", int, 2), ("--seq-len", int, 256), ("--batch", int, 8),
                                ("--lr", float, 3e-3), ("--seed", int, 0), ("--n-positions", int, 1024)]:
        pretrain.add_argument(flag, type=kind, default=default)
    args = parser.parse_args(argv)
    out = pretrain_tiny_gpt2(args.out, args.corpus, steps=args.steps, n_layer=args.n_layer, n_embd=args.n_embd,
                             n_head=args.n_head, seq_len=args.seq_len, batch=args.batch, lr=args.lr,
                             seed=args.seed, n_positions=args.n_positions, tokenizer=args.tokenizer)
    log = json.loads((out / "pretrain_log.json").read_text())
    print(f"saved {out}: {log['steps']} steps in {log['seconds']} s; {log['eval']} loss {log['initial_loss']:.3f} "
          f"→ {log['final_loss']:.3f} nats/token (unigram entropy {log['unigram_entropy']:.3f})")


if __name__ == "__main__":
    main()
