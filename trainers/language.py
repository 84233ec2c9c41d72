"""Language data for LaMo's auxiliary LM loss, and a tiny GPT-2 pre-trained here.

LaMo co-trains its Decision Transformer with next-token prediction on WikiText-103 (2 sequences of 1024 tokens
per step). This module gives the corpus as a config choice (`load_corpus`), a tokenizer (`load_tokenizer`), a
vectorised window sampler (`LanguageBatches`) and the sequence trainer's GPT-2 loader (`load_pretrained_gpt2`).
Where weights cannot be downloaded, `pretrain_tiny_gpt2` (`python -m trainers.language pretrain --out DIR`)
pre-trains a small GPT-2 from scratch on text every Python install has — the standard library's documentation —
and saves it as a `from_pretrained` directory. A trial's corpus is tokenized once per node and memory-mapped
(`cached_token_stream`, trainers/corpus_cache.py), never once per trial.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import inspect
import json
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

import numpy as np
import torch

from trainers.checksums import sha256_of_file
from trainers.corpus_cache import default_cache_dir, ensure_token_stream, open_token_stream

# transformers is imported where a GPT-2 is built (~3 s): the sweep driver and every non-GPT trial load this
# module without it.
if TYPE_CHECKING:
    from transformers import GPT2LMHeadModel, GPT2Model

WIKITEXT = {"wikitext-103": "wikitext-103-raw-v1", "wikitext-2": "wikitext-2-raw-v1"}
CORPUS_FORMS = "'builtin', 'wikitext-103', 'wikitext-2', a directory of .txt files (recursive) or a .txt file"
BYTE_TOKENIZER_FILE = "byte_tokenizer.json"
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")
FAST_GELU = "gelu_pytorch_tanh"  # GPT-2's gelu_new, same formula, one fused kernel (a DT-size forward went 77 → 41 ms on CPU)
PRETRAIN_HINT = "pre-train a local model with `python -m trainers.language pretrain --out DIR` and pass DIR"
T = TypeVar("T")


# ------------------------------------------------------------ Hugging Face Hub access that fails fast offline

def _env_true(*names: str) -> bool:
    return any(os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"} for name in names)


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """One TCP connect to the hub (or the HTTPS proxy): offline, huggingface_hub's own retries with back-off
    take ~25 s to give up."""
    url = urlparse(os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
                   or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        port = url.port or (80 if url.scheme == "http" else 443)
        socket.create_connection((url.hostname, port), timeout=timeout_s).close()
        return True
    except (OSError, TypeError, ValueError):
        return False


def _from_hub(load: Callable[..., T], name: str) -> T:
    """`load(**kwargs)` for a hub id; offline it looks only in the local cache and names the way out."""
    offline = _env_true("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") or not hub_reachable()
    try:
        return load(local_files_only=True) if offline else load()
    except OSError as error:
        why = "is offline or unreachable and it is not in the local cache" if offline else "does not have it"
        raise OSError(f"{name!r} is not a local directory and the Hugging Face Hub {why}; {PRETRAIN_HINT} "
                      f"({error})") from error


# ------------------------------------------------------------ corpora

def load_corpus(spec: str | Path, *, cache_dir: str | Path | None = None, split: str = "train") -> list[str]:
    """The documents of a corpus: 'builtin', 'wikitext-103', 'wikitext-2', a directory of .txt files (one
    document per file, recursive, sorted by relative path) or one .txt file. Names win over same-named paths
    (write ./builtin for a directory called builtin)."""
    name = str(spec)
    if name == "builtin":
        return builtin_corpus(cache_dir)
    if name in WIKITEXT:
        return _wikitext(WIKITEXT[name], split)
    documents = []
    for file in corpus_files(name):
        try:
            documents.append(file.read_text(encoding="utf-8"))
        except UnicodeDecodeError as error:
            raise ValueError(f"corpus file {file} is not UTF-8 text: {error}") from None
    return [document for document in documents if document]


def corpus_files(spec: str | Path) -> list[Path]:
    """The .txt files of a directory corpus (recursive, sorted by relative path) or the one file of a file
    corpus, in document order."""
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(path.rglob("*.txt"), key=lambda file: file.relative_to(path).as_posix())
    elif path.is_file() and path.suffix == ".txt":
        files = [path]
    else:
        what = "is not a .txt file" if path.exists() else "is neither a corpus name nor an existing path"
        raise ValueError(f"corpus {str(spec)!r} {what}; accepted: {CORPUS_FORMS}")
    if not files:
        raise ValueError(f"corpus directory {path} holds no .txt files; accepted: {CORPUS_FORMS}")
    return files


def corpus_identity(spec: str | Path, cache_dir: str | Path | None = None) -> str:
    """What a corpus' documents depend on, for cache keys: the bytes (and relative paths, which fix the order)
    of a text corpus' files, the builtin corpus' cached text, or WikiText's immutable release name."""
    name = str(spec)
    if name in WIKITEXT:
        return f"hf-datasets:wikitext/{WIKITEXT[name]}/train"
    if name == "builtin":
        return f"builtin:{sha256_of_file(builtin_corpus_file(cache_dir))}"
    path = Path(name).expanduser()
    root = path if path.is_dir() else path.parent
    digest = hashlib.sha256()
    for file in corpus_files(path):
        digest.update(f"{file.relative_to(root).as_posix()}\0{sha256_of_file(file)}\n".encode())
    return f"text:{digest.hexdigest()}"


def check_corpus(spec: str | Path) -> None:
    """Raise ValueError when `spec` names no usable corpus, without reading it (a sweep's pre-flight)."""
    name = str(spec)
    if name == "builtin" or name in WIKITEXT:  # WikiText's availability offline is reported by _wikitext
        return
    path = Path(name).expanduser()
    if path.is_dir():
        if next(path.rglob("*.txt"), None) is None:
            raise ValueError(f"corpus directory {path} holds no .txt files; accepted: {CORPUS_FORMS}")
    elif not (path.is_file() and path.suffix == ".txt"):
        what = "is not a .txt file" if path.exists() else "is neither a corpus name nor an existing path"
        raise ValueError(f"corpus {name!r} {what}; accepted: {CORPUS_FORMS}")


def _wikitext(config_name: str, split: str) -> list[str]:
    try:
        import datasets
    except ImportError:
        raise ImportError("WikiText needs the `datasets` package: pip install 'lamo-sweeps[wikitext]'") from None
    import huggingface_hub.constants

    forced = _env_true("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    offline = forced or not hub_reachable()
    try:
        # datasets and huggingface_hub read HF_*_OFFLINE once, at import: set their flags for this call, so the
        # environment (or the failed probe) applies even when they were imported before it changed.
        flags = [(datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE"),
                 (huggingface_hub.constants, "HF_HUB_OFFLINE")] if offline else []
        with _attributes_set(flags, True):
            lines = datasets.load_dataset("wikitext", config_name, split=split)["text"]
    except Exception as error:
        if not offline:
            raise
        why = "offline mode is set (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE)" if forced else "the Hub is unreachable"
        raise RuntimeError(f"cannot load WikiText ({config_name}): {why} and it is not in the local datasets "
                           f"cache. Use the corpus 'builtin', a directory of .txt files or a .txt file instead, or "
                           f"run once with network access to fill the cache ({error})") from error
    return _wikitext_articles(lines)


@contextlib.contextmanager
def _attributes_set(targets: list[tuple[Any, str]], value: Any) -> Iterator[None]:
    """Set each (module, attribute) to `value` for the duration, then restore what was there."""
    saved = [(module, name, getattr(module, name)) for module, name in targets]
    try:
        for module, name in targets:
            setattr(module, name, value)
        yield
    finally:
        for module, name, previous in saved:
            setattr(module, name, previous)


def _wikitext_articles(lines: Iterable[str]) -> list[str]:
    """WikiText's rows are lines: regroup them into articles (" = Title = "; sections are " = = Section = = ")
    so that EOS separates articles, as in GPT-2's training data, rather than paragraphs."""
    articles: list[list[str]] = [[]]
    for line in lines:
        if re.match(r"^ = [^=].* = $", line.rstrip("\n")) and articles[-1]:
            articles.append([])
        articles[-1].append(line)
    return [text for text in map("".join, articles) if text.strip()]


def builtin_corpus(cache_dir: str | Path | None = None) -> list[str]:
    """The standard library's docstrings (one document per module) and help() topics: ~1.9 MB of technical
    English. Cached as JSON (in cache_dir, else $LAMO_CACHE_DIR, else ~/.cache/lamo-sweeps) under a key of the
    Python build and of the collector's own source."""
    return json.loads(builtin_corpus_file(cache_dir).read_text(encoding="utf-8"))


def builtin_corpus_file(cache_dir: str | Path | None = None) -> Path:
    """The builtin corpus' JSON cache file, collected first if it is not there yet."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    source = inspect.getsource(_collect_stdlib_docs)
    key = hashlib.sha256(f"{sys.version}|{sys.platform}|{sys.base_prefix}|{source}".encode()).hexdigest()[:16]
    path = cache / f"builtin-corpus-{key}.json"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        # A fresh isolated interpreter (-I: no user site, no PYTHON* variables; -S: no site-packages) keeps the
        # side effects of importing the whole stdlib out of this process, and the text independent of how this
        # process was started (-OO strips docstrings) or what it imported.
        done = subprocess.run([sys.executable, "-I", "-S", "-c", f"{source}\n_collect_stdlib_docs({str(partial)!r})"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"collecting the builtin corpus failed: {done.stderr[-2000:]}")
        os.replace(partial, path)  # atomic: concurrent trials never read a half-written cache
    return path


def _collect_stdlib_docs(out_path: str) -> None:
    """Runs alone in a fresh interpreter (see builtin_corpus), so it imports what it needs itself."""
    import importlib, inspect, json, os, pkgutil, sys, sysconfig, warnings  # noqa: E401
    warnings.simplefilter("ignore")  # deprecated modules warn on import
    # Side effects on import (antigravity opens a browser, this prints), GUI toolkits, test suites, readline
    # (touches the terminal); private modules (_x, __main__) run code or duplicate the public ones.
    skip = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "tests", "lib2to3",
            "ensurepip", "readline", "pydoc_data"}
    modules, seen, documents = [], set(), []

    def visit(names):  # noqa: ANN001, ANN202 (no typing imports in the fresh interpreter)
        for name in sorted(names):
            if any(part.startswith("_") or part in skip for part in name.split(".")):
                continue
            try:
                module = importlib.import_module(name)
            except (Exception, SystemExit):  # other platforms' modules (winreg), missing system libraries
                continue
            modules.append(module)
            if hasattr(module, "__path__"):
                visit(info.name for info in pkgutil.iter_modules(module.__path__, name + "."))

    def add(obj, parts):  # noqa: ANN001, ANN202
        text = getattr(obj, "__doc__", None)
        if isinstance(text, str) and (text := inspect.cleandoc(text)) and text not in seen:
            seen.add(text)
            parts.append(text)

    stdlib = sysconfig.get_paths()["stdlib"]
    visit({info.name for info in pkgutil.iter_modules([stdlib, os.path.join(stdlib, "lib-dynload")])}
          | set(sys.builtin_module_names))
    for module in modules:
        parts = []
        add(module, parts)
        for _, obj in sorted(vars(module).items()):
            # What the module defines, not what it re-imports (os re-exports posix, ...).
            if (inspect.isclass(obj) or inspect.isroutine(obj)) and getattr(obj, "__module__", None) == module.__name__:
                add(obj, parts)
                for _, member in sorted(vars(obj).items()) if inspect.isclass(obj) else ():
                    if inspect.isroutine(member) or isinstance(member, property):
                        add(member, parts)
        if parts:
            documents.append("\n\n".join(parts))
    import pydoc_data.topics  # help()'s language-reference pages: prose rather than docstrings
    documents += [pydoc_data.topics.topics[topic] for topic in sorted(pydoc_data.topics.topics)]
    with open(out_path, "w", encoding="utf-8") as out:
        json.dump(documents, out)


# ------------------------------------------------------------ tokenizers

class ByteTokenizer:
    """UTF-8 bytes as ids 0..255 plus EOS = 256: no vocabulary file, no dependency, every text encodes."""

    eos_id, vocab_size = 256, 257

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(text.encode("utf-8"), np.uint8) for text in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def save(self, directory: str | Path) -> None:
        (Path(directory) / BYTE_TOKENIZER_FILE).write_text(json.dumps(
            {"type": "byte-level", "eos_id": self.eos_id, "vocab_size": self.vocab_size}) + "\n")

    def identity(self) -> str:
        """What its token ids depend on, for cache keys."""
        return f"byte-level:{self.vocab_size}:{self.eos_id}"


class HFTokenizer:
    """A transformers tokenizer behind the same members; adds no special tokens per document (we add EOS)."""

    def __init__(self, tokenizer: Any):
        if tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer {tokenizer.name_or_path} has no EOS token to separate documents with")
        self.tokenizer, self.eos_id, self.vocab_size = tokenizer, tokenizer.eos_token_id, len(tokenizer)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        backend = getattr(self.tokenizer, "backend_tokenizer", None)  # Rust, parallel, no too-long warnings
        if backend is None:
            return [self.encode(text) for text in texts]
        return [encoding.ids for encoding in backend.encode_batch(texts, add_special_tokens=False)]

    def save(self, directory: str | Path) -> None:
        self.tokenizer.save_pretrained(directory)

    def identity(self) -> str:
        """What its token ids depend on, for cache keys: a fast tokenizer's whole tokenizer.json serialization
        (vocabulary, merges, normalizer, pre-tokenizer), so the same tokenizer saved in two model directories
        shares one cache entry; a slow one's saved files."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            definition = backend.to_str()
        else:
            with tempfile.TemporaryDirectory() as scratch:
                self.save(scratch)
                definition = "".join(f"{p.name}:{sha256_of_file(p)}" for p in sorted(Path(scratch).iterdir()))
        return f"hf:{hashlib.sha256(definition.encode()).hexdigest()}:eos{self.eos_id}"


def _local_path(name_or_path: str | Path) -> Path | None:
    """The path meant, or None for a hub id ('name' or 'owner/name' that does not exist locally)."""
    name = str(name_or_path)
    path = Path(name).expanduser()
    if isinstance(name_or_path, Path) or path.exists() or name.startswith(("/", ".", "~")) \
            or name.count("/") > 1 or (os.sep != "/" and os.sep in name):
        return path
    return None


def load_tokenizer(model_dir: str | Path | None = None) -> ByteTokenizer | HFTokenizer:
    """The byte tokenizer for None; else the tokenizer saved with a model (a directory or a hub id), checked
    to fit the model's embedding table (config.json vocab_size)."""
    if model_dir is None:
        return ByteTokenizer()
    from transformers import AutoConfig, AutoTokenizer

    path = _local_path(model_dir)
    if path is None:
        name = str(model_dir)
        tokenizer: ByteTokenizer | HFTokenizer = HFTokenizer(
            _from_hub(lambda **kw: AutoTokenizer.from_pretrained(name, **kw), name))
        model_vocab = _from_hub(lambda **kw: AutoConfig.from_pretrained(name, **kw), name).vocab_size
    elif (path / BYTE_TOKENIZER_FILE).is_file():
        spec = json.loads((path / BYTE_TOKENIZER_FILE).read_text())
        if spec.get("type") != "byte-level" or spec.get("eos_id") != ByteTokenizer.eos_id:
            raise ValueError(f"{path / BYTE_TOKENIZER_FILE} is not this project's byte tokenizer: {spec}")
        tokenizer = ByteTokenizer()
    elif any((path / name).is_file() for name in HF_TOKENIZER_FILES):
        tokenizer = HFTokenizer(AutoTokenizer.from_pretrained(path))
    else:
        raise FileNotFoundError(f"{path} holds no tokenizer ({BYTE_TOKENIZER_FILE} or any of "
                                f"{', '.join(HF_TOKENIZER_FILES)})" if path.is_dir() else f"{path} does not exist")
    if path is not None:
        config = path / "config.json"
        model_vocab = json.loads(config.read_text()).get("vocab_size") if config.is_file() else None
    if model_vocab is not None and tokenizer.vocab_size > model_vocab:
        raise ValueError(f"the tokenizer of {model_dir} has {tokenizer.vocab_size} ids but the model's embedding "
                         f"table only {model_vocab} (config vocab_size)")
    return tokenizer


# ------------------------------------------------------------ language-modelling batches

def document_tokens(documents: Iterable[str], tokenizer: ByteTokenizer | HFTokenizer,
                    chunk: int = 1024) -> Iterator[np.ndarray]:
    """Each document's ids followed by EOS (GPT-2's <|endoftext|> convention), as int32 arrays. Encoded `chunk`
    documents at a time so WikiText-103's ~120 M tokens never exist as Python int lists all at once."""
    documents, eos = list(documents), np.array([tokenizer.eos_id], np.int32)
    for start in range(0, len(documents), chunk):
        for ids in tokenizer.encode_batch(documents[start:start + chunk]):
            yield np.concatenate([np.asarray(ids, np.int32), eos])


def tokenize_corpus(documents: Iterable[str], tokenizer: ByteTokenizer | HFTokenizer,
                    chunk: int = 1024) -> np.ndarray:
    """All documents as one int32 stream in memory, each followed by EOS."""
    parts = list(document_tokens(documents, tokenizer, chunk))
    return np.concatenate(parts) if parts else np.zeros(0, np.int32)


def cached_token_stream(corpus: str | Path, tokenizer: ByteTokenizer | HFTokenizer,
                        cache_dir: str | Path | None = None) -> np.ndarray:
    """`tokenize_corpus(load_corpus(corpus), tokenizer)`, built once per node into the token cache
    (trainers/corpus_cache.py, under cache_dir or $LAMO_CACHE_DIR) and returned as a read-only memory map."""
    # 16 documents per encode_batch call: the tokenizer's per-token Encoding objects of 1,024 documents peaked at
    # 790 MB above the corpus on 600 Debian docs; 16 at 370 MB, for the same CPU time and the same stream.
    entry = ensure_token_stream(f"{corpus_identity(corpus, cache_dir)}|{tokenizer.identity()}",
                                tokenizer.vocab_size,
                                lambda: document_tokens(load_corpus(corpus, cache_dir=cache_dir), tokenizer, chunk=16),
                                cache_dir)
    return open_token_stream(entry.path)


def unigram_entropy(tokens: np.ndarray) -> float:
    """Entropy (nats) of the token frequencies: the loss of the best model that ignores context."""
    counts = np.bincount(tokens)
    p = counts[counts > 0] / len(tokens)
    return float(-(p * np.log(p)).sum())


class LanguageBatches:
    """Windows of seq_len + 1 tokens at uniform positions of the corpus' token stream (LaMo: 2 × 1024 per
    step): `sample()` gives an int64 (num_sequences, seq_len + 1) tensor, inputs w[:, :-1], targets w[:, 1:].
    `corpus` is documents, tokenized once here, or an already tokenized stream (tokenizer=None)."""

    def __init__(self, corpus: Iterable[str] | np.ndarray, tokenizer: ByteTokenizer | HFTokenizer | None = None,
                 *, seq_len: int = 1024, num_sequences: int = 2, seed: int = 0):
        self.tokens = np.asarray(corpus) if tokenizer is None else tokenize_corpus(corpus, tokenizer)
        if len(self.tokens) < seq_len + 1:
            raise ValueError(f"the corpus has {len(self.tokens)} tokens, fewer than the {seq_len + 1} of one "
                             f"window (seq_len + 1)")
        self.seq_len, self.num_sequences = seq_len, num_sequences
        self.rng = np.random.default_rng(seed)
        self._offsets = np.arange(seq_len + 1)

    @classmethod
    def for_backbone(cls, backbone: str | Path, corpus: str | Path, num_sequences: int = 2, seq_len: int = 1024,
                     seed: int = 0, cache_dir: str | Path | None = None) -> LanguageBatches:
        """The corpus tokenized with the tokenizer saved with `backbone` (a model directory or hub id): once
        per node, memory-mapped by every trial (`cached_token_stream`)."""
        return cls(cached_token_stream(corpus, load_tokenizer(backbone), cache_dir), seq_len=seq_len,
                   num_sequences=num_sequences, seed=seed)

    def sample(self) -> torch.Tensor:
        starts = self.rng.integers(0, len(self.tokens) - self.seq_len, size=self.num_sequences)
        return torch.from_numpy(self.tokens[starts[:, None] + self._offsets].astype(np.int64))

    def rng_state(self) -> dict[str, Any]:
        """For checkpoints: a resumed run draws the windows the uninterrupted one would have."""
        return self.rng.bit_generator.state

    def set_rng_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state


# ------------------------------------------------------------ pre-trained GPT-2

def pretrained_gpt2_config(name_or_path: str | Path) -> dict:
    """The config.json of a GPT-2 given as a local directory or a hub id; a clear error when it is missing, is
    not a model directory, or is not a GPT-2 (used to check a sweep's backbones before anything starts)."""
    name, path = str(name_or_path), _local_path(name_or_path)
    if path is None:
        from transformers import AutoConfig

        config = _from_hub(lambda **kw: AutoConfig.from_pretrained(name, **kw), name).to_dict()
        where = f"hub model {name!r}"
    elif not path.exists():
        raise FileNotFoundError(f"pre-trained model path {path} does not exist; {PRETRAIN_HINT}")
    elif not (path / "config.json").is_file():
        found = sorted(p.name for p in path.iterdir())[:10] if path.is_dir() else "a file, not a directory"
        raise ValueError(f"{path} is not a pre-trained model directory: no config.json (found: {found})")
    else:
        config, where = json.loads((path / "config.json").read_text()), str(path)
    if config.get("model_type") != "gpt2":
        raise ValueError(f"{where} holds a model of type {config.get('model_type')!r} (config.json), not 'gpt2'")
    return config


def load_pretrained_gpt2(name_or_path: str | Path, random_init: bool = False, dropout: float | None = None, *,
                         lm_head: bool = False, **config_overrides: Any) -> GPT2Model | GPT2LMHeadModel:
    """GPT-2 from a local directory or a hub id ('gpt2': needs network or the local HF cache); GPT2Model, or
    GPT2LMHeadModel with lm_head=True. random_init: its architecture with fresh weights (torch's RNG);
    dropout sets all three pdrop; config_overrides go to the config as from_pretrained's kwargs do."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

    cls = GPT2LMHeadModel if lm_head else GPT2Model
    name, path = str(name_or_path), _local_path(name_or_path)
    config = pretrained_gpt2_config(name_or_path)
    if config.get("activation_function", "gelu_new") == "gelu_new":  # never swap a genuinely different one
        config_overrides.setdefault("activation_function", FAST_GELU)
    if dropout is not None:
        config_overrides.update(resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    if random_init:
        return cls(GPT2Config.from_dict({**config, **config_overrides}))
    if path is None:
        return _from_hub(lambda **kw: cls.from_pretrained(name, **config_overrides, **kw), name)
    return cls.from_pretrained(path, **config_overrides)


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
    parser = argparse.ArgumentParser(prog="python -m trainers.language", description=__doc__.split("\n\n")[0])
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
