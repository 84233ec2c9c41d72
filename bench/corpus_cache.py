"""A LaMo trial's language-data start-up at real corpus size: today's per-trial tokenization beside the token cache.

    python -m bench.corpus_cache [--megabytes 100] [--vocab 50257]
    python -m bench.corpus_cache --corpus-only    # only assemble the corpus and print its directory

Nothing can be downloaded here, so the corpus is real English text this machine already has: the UTF-8 text
files of Debian's package documentation under /usr/share/doc (READMEs, NEWS files, changelogs, copyright
files; gzip-compressed ones decompressed; byte-identical files kept once; markup, code and data files left
out), one document per file in path order, up to --megabytes. The tokenizer is a GPT-2-like byte-level BPE
(vocabulary --vocab, <|endoftext|> as EOS) trained on that corpus with the `tokenizers` library. Both are built
once under bench/results/corpus_cache/.

Each "trial" is a fresh process that builds its LaMo language batches and draws 100 batches of 2 × 1024 tokens:
- baseline: `LanguageBatches(load_corpus(corpus), tokenizer)`, the per-trial tokenization every LaMo trial did
  before the cache (the corpus read into memory and tokenized in the trial's worker);
- ours: `LanguageBatches.for_backbone(model_dir, corpus)`, which reads the node's token cache
  (trainers/sequence/language/token_cache.py) and builds it first when it is not there.
Both run twice, in that order, in one run, the cache starting empty: the first cached trial pays the build.
Reported per trial: the start-up — building the batches; the imports, equal for both, excluded — in wall seconds
and in CPU seconds of all the process's threads (the Rust tokenizer encodes in parallel; CPU seconds are what a
machine loaded by other work does not inflate), peak resident memory over the process's imports, and resident /
unique (USS) memory after the 100 batches. Memory is read from /proc (psutil, VmHWM).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "corpus_cache"
DOC_ROOT = Path("/usr/share/doc")
# Prose in /usr/share/doc comes as these; HTML, code, images and data files are left out.
TEXT_NAMES = ("readme", "news", "changelog", "changes", "copyright", "authors", "thanks", "todo", "history",
              "faq", "bugs", "install", "usage", "notes", "credits")
TEXT_SUFFIXES = {"", ".txt", ".md", ".rst", ".text", ".debian"}


# ------------------------------------------------------------------------------------------------ inputs

def _is_prose(path: Path) -> bool:
    name = path.name.lower().removesuffix(".gz")
    suffix = Path(name).suffix
    return suffix in TEXT_SUFFIXES or name.startswith(TEXT_NAMES)


def assemble_corpus(directory: Path, megabytes: float) -> dict:
    """Write the corpus as numbered .txt files (one per source document) and a manifest of what went in."""
    manifest_path = directory / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest["megabytes"] == megabytes:
            return manifest
        shutil.rmtree(directory)
    scratch = directory.with_name(directory.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    budget, seen, total, sources = int(megabytes * 1e6), set(), 0, []
    for source in sorted(DOC_ROOT.rglob("*")):
        if total >= budget or not source.is_file() or source.is_symlink() or not _is_prose(source):
            continue
        try:
            data = source.read_bytes()
            data = gzip.decompress(data) if source.suffix == ".gz" else data
            text = data.decode("utf-8")
        except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile):
            continue
        digest = hashlib.sha256(data).digest()
        if not text.strip() or digest in seen:
            continue
        seen.add(digest)
        (scratch / f"{len(sources):06d}.txt").write_text(text, encoding="utf-8")
        sources.append(str(source))
        total += len(data)
    manifest = {"megabytes": megabytes, "bytes": total, "documents": len(sources), "root": str(DOC_ROOT),
                "packages": len({Path(s).relative_to(DOC_ROOT).parts[0] for s in sources})}
    (scratch / "manifest.json").write_text(json.dumps(manifest, indent=2))
    os.replace(scratch, directory)
    return manifest


def train_tokenizer(corpus: Path, directory: Path, vocab: int) -> Path:
    """A GPT-2-like byte-level BPE trained on the corpus, saved as a transformers tokenizer directory."""
    if (directory / "tokenizer.json").is_file():
        return directory
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from trainers.sequence.language.corpora import load_corpus

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(load_corpus(corpus), trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>").save_pretrained(directory)
    return directory


# ------------------------------------------------------------------------------------------------ one trial

def _memory() -> dict:
    import psutil

    info = psutil.Process().memory_full_info()
    return {"rss": info.rss, "uss": info.uss}


def _reset_peak_rss() -> None:
    """Start the kernel's peak-RSS counter (VmHWM) afresh. getrusage's ru_maxrss would not do: it survives fork
    and exec, so a child would report its parent's peak."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def child(kind: str, corpus: str, model_dir: str, cache_dir: str) -> None:
    from trainers.sequence.language.batches import LanguageBatches
    from trainers.sequence.language.corpora import load_corpus
    from trainers.sequence.language.tokenizers import load_tokenizer

    before = _memory()
    _reset_peak_rss()
    started, cpu_started = time.perf_counter(), time.process_time()
    if kind == "baseline":
        batches = LanguageBatches(load_corpus(corpus), load_tokenizer(model_dir), seq_len=1024, num_sequences=2)
    else:
        batches = LanguageBatches.for_backbone(model_dir, corpus, seq_len=1024, num_sequences=2,
                                               cache_dir=cache_dir)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    for _ in range(100):
        batches.sample()
    after = _memory()
    peak = _peak_rss()
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "tokens": len(batches.tokens),
                      "peak_over_imports": peak - before["rss"], "rss_after": after["rss"] - before["rss"],
                      "uss_after": after["uss"] - before["uss"]}))


def run_trial(kind: str, corpus: Path, model_dir: Path, cache_dir: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.corpus_cache", "--child", kind, str(corpus), str(model_dir),
                          str(cache_dir)], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ report

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=float, default=100.0)
    parser.add_argument("--vocab", type=int, default=50257, help="BPE vocabulary size (GPT-2: 50,257)")
    parser.add_argument("--corpus-only", action="store_true", help="assemble the corpus (a directory of .txt files "
                        "a LaMo sweep's lm_corpus or `python -m trainers.sequence.language pretrain --corpus` takes), "
                        "print its path and stop")
    parser.add_argument("--child", nargs=4, metavar=("KIND", "CORPUS", "MODEL", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(width=150)
    started = time.perf_counter()
    corpus = RESULTS / f"english-{args.megabytes:g}mb"
    manifest = assemble_corpus(corpus, args.megabytes)
    if args.corpus_only:
        print(corpus.relative_to(Path.cwd()) if corpus.is_relative_to(Path.cwd()) else corpus)
        return
    console.print(f"corpus: {manifest['bytes'] / 1e6:.1f} MB of UTF-8 text, {manifest['documents']:,} documents "
                  f"from {manifest['packages']:,} packages' docs under {manifest['root']} "
                  f"({time.perf_counter() - started:.0f} s)")
    started = time.perf_counter()
    model_dir = train_tokenizer(corpus, RESULTS / f"bpe-{args.vocab}-{args.megabytes:g}mb", args.vocab)
    console.print(f"tokenizer: byte-level BPE, vocabulary {args.vocab:,}, in {model_dir} "
                  f"({time.perf_counter() - started:.0f} s)")
    cache_dir = RESULTS / "token-cache"
    shutil.rmtree(cache_dir, ignore_errors=True)  # the first cached trial builds from scratch
    rows = []
    for kind, label in (("baseline", "per-trial tokenization (today)"), ("cached", "token cache (ours)")):
        for trial in (1, 2):
            result = run_trial(kind, corpus, model_dir, cache_dir)
            rows.append((label, trial, result))
            console.print(f"  {label}, trial {trial}: {result['seconds']:.2f} s")
    table = Table(title=f"LaMo language-data start-up per trial: {manifest['bytes'] / 1e6:.0f} MB corpus, "
                        f"{rows[0][2]['tokens']:,} tokens")
    for column in ("", "trial", "start-up (s)", "start-up CPU (s)", "peak RSS over imports (MB)",
                   "RSS after 100 batches (MB)", "USS after 100 batches (MB)"):
        table.add_column(column, justify="left" if not column else "right")
    for label, trial, r in rows:
        cpu = f"{r['cpu_seconds']:.2f}" if "cpu_seconds" in r else "–"
        table.add_row(label, str(trial), f"{r['seconds']:.2f}", cpu, f"{r['peak_over_imports'] / 1e6:.0f}",
                      f"{r['rss_after'] / 1e6:.0f}", f"{r['uss_after'] / 1e6:.0f}")
    console.print(table)
    baseline, ours = rows[1][2], rows[3][2]
    console.print(f"second trial: {baseline['seconds']:.2f} s → {ours['seconds']:.3f} s start-up "
                  f"({baseline['seconds'] / max(ours['seconds'], 1e-9):.0f}× faster), unique memory "
                  f"{baseline['uss_after'] / 1e6:.0f} MB → {ours['uss_after'] / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
