"""The token cache: one tokenization per (corpus, tokenizer) and node, memory-mapped by every trial, built under
a file lock by exactly one of several concurrent processes, never left half-written."""

from __future__ import annotations

import ast
import fcntl
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from trainers.sequence.language import token_cache
from trainers.sequence.language.batches import LanguageBatches, cached_token_stream
from trainers.sequence.language.corpora import corpus_identity, load_corpus
from trainers.sequence.language.token_cache import (
    ensure_token_stream,
    lock_path,
    token_cache_path,
)
from trainers.sequence.language.tokenizers import (
    ByteTokenizer,
    document_tokens,
    load_tokenizer,
    tokenize_corpus,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def corpus(tmp_path) -> Path:
    directory = tmp_path / "corpus"
    for i, text in enumerate(["The quick brown fox jumps over the lazy dog. " * 30, "Pack my box with five dozen "
                              "liquor jugs. " * 25, "How vexingly quick daft zebras jump! é ✓ " * 20]):
        (directory / f"sub{i % 2}").mkdir(parents=True, exist_ok=True)
        (directory / f"sub{i % 2}" / f"{i}.txt").write_text(text, encoding="utf-8")
    return directory


@pytest.fixture
def bpe_model_dir(tmp_path, corpus) -> Path:
    """A GPT-2-like byte-level BPE tokenizer trained here, saved as a transformers tokenizer directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer, backend.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    backend.train_from_iterator(load_corpus(corpus), trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    directory = tmp_path / "bpe"
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>").save_pretrained(directory)
    return directory


def test_cached_stream_is_the_tokenized_corpus_memory_mapped(tmp_path, corpus, bpe_model_dir):
    for tokenizer in (ByteTokenizer(), load_tokenizer(bpe_model_dir)):
        stream = cached_token_stream(corpus, tokenizer, tmp_path / "cache")
        expected = tokenize_corpus(load_corpus(corpus), tokenizer)
        np.testing.assert_array_equal(stream, expected)
        assert isinstance(stream, np.memmap) and stream.dtype == np.uint16 and not stream.flags.writeable
        assert stream[-1] == tokenizer.eos_id


def test_second_call_reads_the_file_without_tokenizing(tmp_path, corpus):
    identity = f"{corpus_identity(corpus)}|{ByteTokenizer().identity()}"
    calls = []

    def encode():
        calls.append(1)
        return document_tokens(load_corpus(corpus), ByteTokenizer())

    first = ensure_token_stream(identity, 257, encode, tmp_path)
    second = ensure_token_stream(identity, 257, encode, tmp_path)
    assert (first.built, second.built, len(calls)) == (True, False, 1)
    assert first.path == second.path and first.path.parent == tmp_path / "tokens"


def test_key_follows_the_corpus_bytes_and_the_tokenizer_definition(tmp_path, corpus, bpe_model_dir):
    before = corpus_identity(corpus)
    assert corpus_identity(corpus) == before
    (corpus / "sub0" / "0.txt").write_text("changed text", encoding="utf-8")
    assert corpus_identity(corpus) != before
    # The same tokenizer saved in another directory is the same cache entry; another tokenizer is not.
    copy = tmp_path / "copy"
    load_tokenizer(bpe_model_dir).save(copy)
    assert load_tokenizer(copy).identity() == load_tokenizer(bpe_model_dir).identity()
    assert load_tokenizer(bpe_model_dir).identity() != ByteTokenizer().identity()


def test_builtin_and_wikitext_have_identities_without_reading_wikitext(tmp_path):
    assert corpus_identity("wikitext-103") == "hf-datasets:wikitext/wikitext-103-raw-v1/train"
    assert corpus_identity("builtin", tmp_path).startswith("builtin:")


def test_for_backbone_samples_windows_of_the_cached_stream(tmp_path, corpus, bpe_model_dir):
    batches = LanguageBatches.for_backbone(bpe_model_dir, corpus, num_sequences=3, seq_len=8, cache_dir=tmp_path)
    assert list((tmp_path / "tokens").glob("tokens-*.npy"))
    stream = tokenize_corpus(load_corpus(corpus), load_tokenizer(bpe_model_dir))
    for window in batches.sample().numpy():
        starts = [s for s in range(len(stream) - 8) if np.array_equal(stream[s:s + 9], window)]
        assert starts


# Only the cache module (numpy): the workers start in a second, and the lock is what is under test.
_WORKER = """
import sys
from pathlib import Path
import numpy as np
from trainers.sequence.language.token_cache import ensure_token_stream
corpus, cache = Path(sys.argv[1]), sys.argv[2]
print("ready", flush=True)
encode = lambda: [np.frombuffer(f.read_bytes(), np.uint8) for f in sorted(corpus.rglob("*.txt"))]
entry = ensure_token_stream("bytes of " + str(corpus), 256, encode, cache)
print("built" if entry.built else "found", flush=True)
"""


def test_concurrent_processes_tokenize_once(tmp_path, corpus):
    cache = tmp_path / "cache"
    path = token_cache_path(f"bytes of {corpus}", cache)
    path.parent.mkdir(parents=True)
    # Hold the build lock, as a process in the middle of building would, so both workers meet it.
    with open(lock_path(path), "a+b") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        workers = [subprocess.Popen([sys.executable, "-c", _WORKER, str(corpus), str(cache)], cwd=ROOT,
                                    stdout=subprocess.PIPE, text=True) for _ in range(2)]
        assert [w.stdout.readline().strip() for w in workers] == ["ready", "ready"]
        time.sleep(1.0)  # both are now past the fast path and blocked on the lock
        assert all(w.poll() is None for w in workers) and not path.exists()
        fcntl.flock(held, fcntl.LOCK_UN)
    outcomes = sorted(w.communicate(timeout=120)[0].strip() for w in workers)
    assert outcomes == ["built", "found"] and all(w.returncode == 0 for w in workers)
    expected = np.concatenate([np.frombuffer(f.read_bytes(), np.uint8) for f in sorted(corpus.rglob("*.txt"))])
    np.testing.assert_array_equal(np.load(path), expected)


def test_a_failed_build_leaves_nothing_to_read(tmp_path):
    def broken():
        yield np.arange(5)
        raise RuntimeError("tokenizer crashed")

    with pytest.raises(RuntimeError, match="tokenizer crashed"):
        ensure_token_stream("some corpus|some tokenizer", 257, broken, tmp_path)
    leftovers = [p.name for p in (tmp_path / "tokens").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []
    entry = ensure_token_stream("some corpus|some tokenizer", 257, lambda: [np.arange(5)], tmp_path)
    assert entry.built and np.load(entry.path).tolist() == [0, 1, 2, 3, 4]


def test_ids_that_do_not_fit_are_refused(tmp_path):
    with pytest.raises(ValueError, match="do not fit uint16"):
        ensure_token_stream("x", 300, lambda: [np.array([1, 70_000])], tmp_path)
    assert token_cache.token_dtype(100_000) == np.int32


def test_an_unusable_cache_directory_is_named(tmp_path):
    blocker = tmp_path / "a-file"  # a cache directory that cannot be created (works as root too)
    blocker.write_text("")
    with pytest.raises(OSError, match=f"{blocker / 'tokens'} is not writable.*LAMO_CACHE_DIR"):
        ensure_token_stream("x", 257, lambda: [np.arange(3)], blocker)


def test_default_cache_directory_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LAMO_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert token_cache_path("x").parent == tmp_path / "elsewhere" / "tokens"


def test_production_code_imports_no_test_utilities():
    for package in ("trainers", "baselines", "orchestrator"):
        for source in (ROOT / package).rglob("*.py"):
            tree = ast.parse(source.read_text(), str(source))
            imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
            imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
            assert not {name for name in imported if name.split(".")[0] in ("unittest", "pytest")}, source
