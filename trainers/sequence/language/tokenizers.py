"""Tokenizers: this project's byte-level one (256 ids + EOS), or the one saved with a model (Hugging Face's), and
a corpus turned into one stream of token ids, each document followed by EOS.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from trainers.data.checksums import sha256_of_file
from trainers.sequence.language.hub import from_hub, local_path

BYTE_TOKENIZER_FILE = "byte_tokenizer.json"
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


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


def load_tokenizer(model_dir: str | Path | None = None) -> ByteTokenizer | HFTokenizer:
    """The byte tokenizer for None; else the tokenizer saved with a model (a directory or a hub id), checked
    to fit the model's embedding table (config.json vocab_size)."""
    if model_dir is None:
        return ByteTokenizer()
    from transformers import AutoConfig, AutoTokenizer

    path = local_path(model_dir)
    if path is None:
        name = str(model_dir)
        tokenizer: ByteTokenizer | HFTokenizer = HFTokenizer(
            from_hub(lambda **kw: AutoTokenizer.from_pretrained(name, **kw), name))
        model_vocab = from_hub(lambda **kw: AutoConfig.from_pretrained(name, **kw), name).vocab_size
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


def unigram_entropy(tokens: np.ndarray) -> float:
    """Entropy (nats) of the token frequencies: the loss of the best model that ignores context."""
    counts = np.bincount(tokens)
    p = counts[counts > 0] / len(tokens)
    return float(-(p * np.log(p)).sum())
