"""A small GPT-2 pre-trained here, where weights cannot be downloaded:

    python -m trainers.sequence.language pretrain --out models/tiny-gpt2 --steps 300
    python -m trainers.sequence.language evaluate --corpus CORPUS models/tiny-gpt2 random:models/tiny-gpt2

`pretrain` trains a GPT-2 from scratch on a local corpus (default: the standard library's documentation,
trainers/sequence/language/corpora.py) and saves it as a `from_pretrained` directory with its tokenizer and a
pretrain_log.json: a backbone the sequence models load like `gpt2`. Every 20th document is held out. With
--cpu-seconds it stops when this sitting has used that much CPU time, leaving pretrain_checkpoint.pt in the output
directory; the same command run again continues from it (same windows, same schedule) until --steps are done.
`evaluate` reports models' loss on a corpus' held-out documents (`random:DIR` is DIR's architecture with fresh
weights), per token, as perplexity and, for byte-level models, in bits per byte.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from trainers.sequence.language.batches import LanguageBatches
from trainers.sequence.language.corpora import CORPUS_FORMS, load_corpus
from trainers.sequence.language.hub import FAST_GELU, load_pretrained_gpt2
from trainers.sequence.language.tokenizers import (
    ByteTokenizer,
    load_tokenizer,
    tokenize_corpus,
    unigram_entropy,
)

CHECKPOINT = "pretrain_checkpoint.pt"
HELD_OUT_EVERY = 20  # documents 19, 39, 59, … are held out
EVAL_WINDOWS = 64  # fixed, evenly spaced windows of the held-out stream: every model is scored on the same text


def split_documents(documents: list[str]) -> tuple[list[str], list[str]]:
    """(training, held-out) documents: every 20th held out."""
    last = HELD_OUT_EVERY - 1
    return ([doc for i, doc in enumerate(documents) if i % HELD_OUT_EVERY != last],
            documents[last::HELD_OUT_EVERY])


def evaluation_windows(tokens: np.ndarray, seq_len: int, count: int = EVAL_WINDOWS) -> torch.Tensor:
    """`count` windows of seq_len + 1 tokens at evenly spaced positions of a token stream (no randomness)."""
    starts = np.linspace(0, len(tokens) - seq_len - 1, count).astype(np.int64)
    return torch.from_numpy(tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int64))


def mean_loss(model: torch.nn.Module, windows: torch.Tensor, batch: int = 16) -> float:
    """Mean next-token cross-entropy (nats/token) over the windows, in eval mode without gradients."""
    was_training, losses = model.training, []
    model.eval()
    with torch.no_grad():
        for chunk in windows.split(batch):
            logits = model(input_ids=chunk[:, :-1]).logits
            losses.append(torch.nn.functional.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten()).item()
                          * len(chunk))
    model.train(was_training)
    return float(sum(losses) / len(windows))


def pretrain_tiny_gpt2(out_dir: str | Path, corpus: str | Path = "builtin", *, steps: int = 1000, n_layer: int = 2,
                       n_embd: int = 128, n_head: int = 2, seq_len: int = 256, batch: int = 8, lr: float = 3e-3,
                       seed: int = 0, n_positions: int = 1024, tokenizer: str | Path | None = None,
                       cache_dir: str | Path | None = None, progress: bool | None = None,
                       cpu_seconds: float | None = None, checkpoint_every: int = 500) -> Path:
    """Pre-train a randomly initialised GPT2LMHeadModel with causal-LM cross-entropy and save it with its
    tokenizer and pretrain_log.json, a directory `load_pretrained_gpt2` loads. Deterministic given the seed,
    whether it runs in one sitting or resumes from its checkpoint. Logged losses are nats/token on fixed windows
    of held-out documents (every 20th). With cpu_seconds, a sitting that reaches that much process CPU time (after
    at least one step) saves the checkpoint and returns before the model is complete (the directory then holds only
    pretrain_checkpoint.pt, written every checkpoint_every steps too)."""
    if n_positions < seq_len:
        raise ValueError(f"n_positions={n_positions} must be at least seq_len={seq_len}")
    out = Path(out_dir)
    settings = {"corpus": str(corpus), "steps": steps, "n_layer": n_layer, "n_embd": n_embd, "n_head": n_head,
                "seq_len": seq_len, "batch": batch, "lr": lr, "seed": seed, "n_positions": n_positions,
                "tokenizer": None if tokenizer is None else str(tokenizer)}
    saved = _read_checkpoint(out / CHECKPOINT, settings)
    started, cpu_started = time.perf_counter(), time.process_time()
    tok = load_tokenizer(tokenizer)
    train_documents, held_out_documents = split_documents(load_corpus(corpus, cache_dir=cache_dir))
    tokens, held_out = tokenize_corpus(train_documents, tok), tokenize_corpus(held_out_documents, tok)
    if len(held_out) < 4 * (seq_len + 1) or len(tokens) < seq_len + 1:  # too small to spare: in-sample
        tokens = held_out = np.concatenate([tokens, held_out])
    train = LanguageBatches(tokens, seq_len=seq_len, num_sequences=batch, seed=seed)
    windows = evaluation_windows(held_out, seq_len)
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

    if saved is None:
        state = {"step": 0, "curve": [], "cpu_seconds": 0.0, "wall_seconds": 0.0, "sittings": 0,
                 "initial_loss": mean_loss(model, windows)}
    else:
        model.load_state_dict(saved.pop("model"))
        optimizer.load_state_dict(saved.pop("optimizer"))
        scheduler.load_state_dict(saved.pop("scheduler"))
        train.set_rng_state(saved.pop("sampler"))
        state = saved["state"]

    def save_checkpoint() -> None:
        state["cpu_seconds"] += time.process_time() - sitting_cpu[0]
        state["wall_seconds"] += time.perf_counter() - sitting_wall[0]
        sitting_cpu[0], sitting_wall[0] = time.process_time(), time.perf_counter()
        out.mkdir(parents=True, exist_ok=True)
        scratch = out / (CHECKPOINT + ".partial")
        torch.save({"settings": settings, "state": state, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "sampler": train.rng_state()}, scratch)
        os.replace(scratch, out / CHECKPOINT)

    from rich.console import Console
    from rich.progress import Progress
    sitting_cpu, sitting_wall = [cpu_started], [started]
    state["sittings"] += 1
    show = sys.stderr.isatty() if progress is None else progress  # a bar on terminals, nothing in logs
    with Progress(console=Console(stderr=True), disable=not show) as bar:
        task = bar.add_task(f"pre-training on {corpus}", total=steps, completed=state["step"])
        first_step = state["step"]
        while state["step"] < steps:
            # Every sitting makes at least one step, so any budget moves the pre-training on.
            if (cpu_seconds is not None and state["step"] > first_step
                    and time.process_time() - cpu_started >= cpu_seconds):
                save_checkpoint()
                return out
            loss = loss_of(train.sample())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            state["curve"].append(round(loss.item(), 4))
            state["step"] += 1
            bar.update(task, advance=1, description=f"pre-training on {corpus}: loss {loss.item():.3f}")
            if checkpoint_every and state["step"] % checkpoint_every == 0 and state["step"] < steps:
                save_checkpoint()
    final_loss = mean_loss(model, windows)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save(out)
    state["cpu_seconds"] += time.process_time() - sitting_cpu[0]
    state["wall_seconds"] += time.perf_counter() - sitting_wall[0]
    curve = state["curve"]
    log = {"corpus": str(corpus), "seed": seed, "steps": steps, "tokens_seen": steps * batch * seq_len,
           "train_tokens": len(tokens), "held_out_tokens": len(held_out),
           "eval": "held-out documents" if held_out is not tokens else "in-sample",
           "eval_windows": f"{len(windows)} × {seq_len}", "initial_loss": state["initial_loss"],
           "final_loss": final_loss, "unigram_entropy": unigram_entropy(tokens),
           "seconds": round(state["wall_seconds"], 2), "cpu_seconds": round(state["cpu_seconds"], 2),
           "sittings": state["sittings"], "threads": torch.get_num_threads(), "tokenizer": type(tok).__name__,
           "seq_len": seq_len, "batch": batch, "lr": lr,
           "parameters": sum(p.numel() for p in model.parameters()),  # dims: config.json
           "train_loss_curve": curve[::max(1, steps // 50)]}
    (out / "pretrain_log.json").write_text(json.dumps(log, indent=2) + "\n")
    (out / CHECKPOINT).unlink(missing_ok=True)
    return out


def _read_checkpoint(path: Path, settings: dict) -> dict | None:
    """The saved state of an unfinished pre-training, refused (naming the file and fields) if it was started with
    other settings."""
    if not path.is_file():
        return None
    saved = torch.load(path, weights_only=True)  # tensors and plain values: no pickled objects
    differing = {key: (saved["settings"].get(key), value) for key, value in settings.items()
                 if saved["settings"].get(key) != value}
    if differing:
        raise ValueError(f"{path} continues a pre-training started with other settings: "
                         + ", ".join(f"{key} {old!r} there, {new!r} now" for key, (old, new) in differing.items())
                         + "; pass the same settings or delete it to start over")
    return saved


def evaluate_models(models: list[str], corpus: str | Path, *, seq_len: int = 256, seed: int = 0,
                    cache_dir: str | Path | None = None) -> list[dict]:
    """Each model's loss on the corpus' held-out documents (the split pretraining holds out) over the same fixed
    windows: nats/token, perplexity and, for byte-level models, bits per byte. 'random:DIR' is DIR's architecture
    with fresh weights (torch seed `seed`)."""
    _, held_out_documents = split_documents(load_corpus(corpus, cache_dir=cache_dir))
    rows = []
    for name in models:
        directory = name.removeprefix("random:")
        torch.manual_seed(seed)
        model = load_pretrained_gpt2(directory, random_init=name.startswith("random:"), lm_head=True)
        tok = load_tokenizer(directory)
        loss = mean_loss(model, evaluation_windows(tokenize_corpus(held_out_documents, tok), seq_len))
        rows.append({"model": name, "nats_per_token": loss, "perplexity": math.exp(loss),
                     "bits_per_byte": loss / math.log(2) if isinstance(tok, ByteTokenizer) else None,
                     "parameters": sum(p.numel() for p in model.parameters())})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trainers.sequence.language", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    pretrain = commands.add_parser("pretrain", help="pre-train a small GPT-2 from scratch and save it as a "
                                   "from_pretrained directory (resumes from its checkpoint there)")
    pretrain.add_argument("--out", required=True, type=Path, help="directory to save the model in")
    pretrain.add_argument("--corpus", default="builtin", help=f"one of: {CORPUS_FORMS}")
    pretrain.add_argument("--tokenizer", help="model directory or hub id to take the tokenizer from "
                          "(default: byte-level)")
    for flag, kind, default in [("--steps", int, 1000), ("--n-layer", int, 2), ("--n-embd", int, 128),
                                ("--n-head", int, 2), ("--seq-len", int, 256), ("--batch", int, 8),
                                ("--lr", float, 3e-3), ("--seed", int, 0), ("--n-positions", int, 1024),
                                ("--checkpoint-every", int, 500)]:
        pretrain.add_argument(flag, type=kind, default=default)
    pretrain.add_argument("--cpu-seconds", type=float, help="stop this sitting after this much process CPU time "
                          "(checkpoint kept; run the same command again to continue)")
    evaluate = commands.add_parser("evaluate", help="held-out loss and perplexity of saved models on a corpus")
    evaluate.add_argument("models", nargs="+", help="model directories; random:DIR for DIR's architecture with "
                          "fresh weights")
    evaluate.add_argument("--corpus", default="builtin", help=f"one of: {CORPUS_FORMS}")
    evaluate.add_argument("--seq-len", type=int, default=256)
    evaluate.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args(argv)
    if args.command == "evaluate":
        rows = evaluate_models(args.models, args.corpus, seq_len=args.seq_len)
        for row in rows:
            per_byte = "" if row["bits_per_byte"] is None else f", {row['bits_per_byte']:.3f} bits/byte"
            print(f"{row['model']}: {row['nats_per_token']:.3f} nats/token, perplexity {row['perplexity']:.2f}"
                  f"{per_byte} ({row['parameters']:,} parameters)")
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2) + "\n")
        return
    out = pretrain_tiny_gpt2(args.out, args.corpus, steps=args.steps, n_layer=args.n_layer, n_embd=args.n_embd,
                             n_head=args.n_head, seq_len=args.seq_len, batch=args.batch, lr=args.lr,
                             seed=args.seed, n_positions=args.n_positions, tokenizer=args.tokenizer,
                             cpu_seconds=args.cpu_seconds, checkpoint_every=args.checkpoint_every)
    if (out / CHECKPOINT).is_file():
        saved = torch.load(out / CHECKPOINT, weights_only=True)
        print(f"paused {out} at step {saved['state']['step']} of {args.steps} after "
              f"{saved['state']['cpu_seconds']:.0f} CPU s in all; run the same command to continue")
        return
    log = json.loads((out / "pretrain_log.json").read_text())
    print(f"saved {out}: {log['steps']} steps in {log['seconds']} s ({log['cpu_seconds']} CPU s); {log['eval']} loss "
          f"{log['initial_loss']:.3f} → {log['final_loss']:.3f} nats/token (unigram entropy "
          f"{log['unigram_entropy']:.3f})")


if __name__ == "__main__":
    main()
