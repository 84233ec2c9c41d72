"""Language-modelling batches for LaMo's auxiliary loss: windows at uniform positions of a corpus' token stream,
which is tokenized once per node and memory-mapped by every trial (trainers/sequence/language/token_cache.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainers.sequence.language.corpora import corpus_identity, load_corpus
from trainers.sequence.language.token_cache import (
    ensure_token_stream,
    open_token_stream,
)
from trainers.sequence.language.tokenizers import (
    ByteTokenizer,
    HFTokenizer,
    document_tokens,
    load_tokenizer,
    tokenize_corpus,
)


def cached_token_stream(corpus: str | Path, tokenizer: ByteTokenizer | HFTokenizer,
                        cache_dir: str | Path | None = None) -> np.ndarray:
    """`tokenize_corpus(load_corpus(corpus), tokenizer)`, built once per node into the token cache
    (trainers/sequence/language/token_cache.py, under cache_dir or $LAMO_CACHE_DIR) and returned as a read-only
    memory map."""
    # 16 documents per encode_batch call: the tokenizer's per-token Encoding objects of 1,024 documents peaked at
    # 790 MB above the corpus on 600 Debian docs; 16 at 370 MB, for the same CPU time and the same stream.
    entry = ensure_token_stream(f"{corpus_identity(corpus, cache_dir)}|{tokenizer.identity()}",
                                tokenizer.vocab_size,
                                lambda: document_tokens(load_corpus(corpus, cache_dir=cache_dir), tokenizer, chunk=16),
                                cache_dir)
    return open_token_stream(entry.path)


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
