from __future__ import annotations

import inspect
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import GPT2LMHeadModel, GPT2Model

from trainers.sequence.language import corpora, pretrain
from trainers.sequence.language.batches import LanguageBatches
from trainers.sequence.language.corpora import load_corpus
from trainers.sequence.language.hub import load_pretrained_gpt2
from trainers.sequence.language.pretrain import pretrain_tiny_gpt2
from trainers.sequence.language.tokenizers import (
    ByteTokenizer,
    HFTokenizer,
    load_tokenizer,
    tokenize_corpus,
)

# The pre-training test's budget: ~200 k tokens, a few tens of seconds on 2 cores.
PRETRAIN = dict(steps=200, seq_len=128, batch=8, lr=3e-3, seed=0)


@pytest.fixture(scope="session")
def corpus_cache(tmp_path_factory) -> Path:
    """One builtin-corpus cache for the session, never the user's ~/.cache."""
    return tmp_path_factory.mktemp("lamo-cache")


@pytest.fixture(scope="session")
def builtin(corpus_cache) -> list[str]:
    return load_corpus("builtin", cache_dir=corpus_cache)


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory, corpus_cache) -> Path:
    return pretrain_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"), "builtin", cache_dir=corpus_cache, **PRETRAIN)


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """Offline flags set after import (as a user's shell would), and empty caches, so nothing can be found."""
    import datasets.config
    import huggingface_hub.constants

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")


# ---------------------------------------------------------------- corpora

def test_builtin_corpus_is_deterministic_sizeable_stdlib_text(builtin, corpus_cache, tmp_path):
    assert list(corpus_cache.glob("builtin-corpus-*.json")), "the assembled corpus is cached"
    assert load_corpus("builtin", cache_dir=corpus_cache) == builtin
    # A second, independent collection (fresh interpreter, other cache) yields exactly the same documents.
    assert load_corpus("builtin", cache_dir=tmp_path) == builtin
    text = "\n".join(builtin)
    assert len(builtin) > 300 and len(text) > 1_000_000
    assert inspect.cleandoc(json.dumps.__doc__) in text
    assert inspect.cleandoc(Path.__doc__) in text
    assert "Return a new array of given shape" not in text  # third-party (numpy) docs stay out
    assert all(isinstance(doc, str) and doc for doc in builtin)


def test_txt_directory_corpus_reads_files_in_sorted_order(tmp_path):
    for relative, text in [("b.txt", "second"), ("a.txt", "first é"), ("sub/c.txt", "fourth"),
                           ("sub/a.txt", "third"), ("notes.md", "not a corpus file"), ("empty.txt", "")]:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text, encoding="utf-8")
    assert load_corpus(tmp_path) == ["first é", "second", "third", "fourth"]
    assert load_corpus(str(tmp_path / "sub" / "c.txt")) == ["fourth"]


def test_corpus_errors_name_the_accepted_forms(tmp_path):
    (tmp_path / "data.csv").write_text("a,b\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    for spec, match in [("wikitext-104", "neither a corpus name"), (tmp_path / "missing", "neither a corpus name"),
                        (tmp_path / "data.csv", "not a .txt file"), (tmp_path / "empty", "no .txt files")]:
        with pytest.raises(ValueError, match=match) as error:
            load_corpus(spec)
        assert "'builtin', 'wikitext-103'" in str(error.value)
    with pytest.raises(ValueError, match="latin1.txt is not UTF-8"):
        load_corpus(tmp_path / "latin1.txt")


def test_wikitext_offline_fails_fast_with_a_clear_error(offline_hub):
    started = time.perf_counter()
    with pytest.raises(RuntimeError, match="offline mode is set") as error:
        load_corpus("wikitext-2")
    assert time.perf_counter() - started < 20
    assert "wikitext-2-raw-v1" in str(error.value) and "builtin" in str(error.value)


def test_wikitext_unreachable_hub_fails_fast(monkeypatch, offline_hub):
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name)
    monkeypatch.setattr(corpora, "hub_reachable", lambda timeout_s=3.0: False)
    with pytest.raises(RuntimeError, match="Hub is unreachable"):
        load_corpus("wikitext-103")


def test_wikitext_rows_are_regrouped_into_articles():
    rows = [" = A = \n", "", " intro\n", " = = Section = = \n", " body\n", " = B = \n", " text\n"]
    assert corpora._wikitext_articles(rows) == [" = A = \n intro\n = = Section = = \n body\n", " = B = \n text\n"]


# ---------------------------------------------------------------- tokenizers

def test_byte_tokenizer_round_trip():
    tokenizer = load_tokenizer(None)
    text = "héllo wörld ✓ \x00"
    ids = tokenizer.encode(text)
    assert bytes(ids) == text.encode("utf-8") and tokenizer.decode(ids) == text
    assert (tokenizer.vocab_size, tokenizer.eos_id) == (257, 256) and max(ids) < tokenizer.eos_id
    assert [list(a) for a in tokenizer.encode_batch(["ab", ""])] == [[97, 98], []]


def test_tokenizer_from_pretrained_directory(pretrained, tmp_path):
    assert isinstance(load_tokenizer(pretrained), ByteTokenizer)
    assert isinstance(load_tokenizer(str(pretrained)), ByteTokenizer)
    with pytest.raises(FileNotFoundError, match="holds no tokenizer"):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")


def test_hugging_face_tokenizer_directory_and_vocab_check(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer, backend.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    backend.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>").save_pretrained(tmp_path)
    tokenizer = load_tokenizer(tmp_path)
    assert isinstance(tokenizer, HFTokenizer)
    assert tokenizer.eos_id == backend.token_to_id("<|endoftext|>") and tokenizer.vocab_size == backend.get_vocab_size()
    assert tokenizer.encode("the lazy fox") == backend.encode("the lazy fox").ids
    assert tokenizer.encode_batch(["the lazy fox", "dog"]) == [tokenizer.encode(t) for t in ("the lazy fox", "dog")]
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 100}))
    with pytest.raises(ValueError, match=f"{tokenizer.vocab_size} ids but the model's embedding table only 100"):
        load_tokenizer(tmp_path)


# ---------------------------------------------------------------- batches

def test_corpus_is_one_stream_with_eos_after_each_document():
    tokens = tokenize_corpus(["ab", "c"], ByteTokenizer())
    assert tokens.tolist() == [97, 98, 256, 99, 256] and tokens.dtype == np.int32


def test_language_batches_are_real_shifted_windows(builtin):
    batches = LanguageBatches(builtin, ByteTokenizer(), seq_len=1024, num_sequences=2, seed=0)
    windows = batches.sample()
    assert windows.shape == (2, 1025) and windows.dtype == torch.int64
    inputs, targets = windows[:, :-1], windows[:, 1:]
    assert inputs.shape == targets.shape == (2, 1024) and torch.equal(inputs[:, 1:], targets[:, :-1])
    stream = tokenize_corpus(builtin, ByteTokenizer())
    for window in windows.numpy():  # each is a slice of the stream: narrow the candidate starts token by token
        starts = np.arange(len(stream) - 1024)
        for k in range(1025):
            starts = starts[stream[starts + k] == window[k]]
        assert len(starts) >= 1
    # An arange stream makes every window's position explicit: consecutive ids, uniform over all starts.
    many = LanguageBatches(np.arange(300), seq_len=9, num_sequences=20_000, seed=3).sample()
    assert torch.equal(many - many[:, :1], torch.arange(10).expand(20_000, 10))
    starts = many[:, 0].numpy()
    assert starts.min() == 0 and starts.max() == 300 - 10
    assert np.bincount(starts, minlength=291).std() < 0.25 * 20_000 / 291


def test_language_batches_seeding_and_rng_state():
    stream = np.arange(10_000)
    first, same, other = (LanguageBatches(stream, seq_len=16, num_sequences=4, seed=seed) for seed in (0, 0, 1))
    assert torch.equal(first.sample(), same.sample()) and not torch.equal(first.sample(), other.sample())
    state = first.rng_state()
    expected = first.sample()
    first.sample()
    first.set_rng_state(state)
    assert torch.equal(first.sample(), expected)


def test_language_batches_too_small_corpus():
    with pytest.raises(ValueError, match="corpus has 4 tokens, fewer than the 11"):
        LanguageBatches(["abc"], ByteTokenizer(), seq_len=10)


# ---------------------------------------------------------------- pre-training and loading

def unigram_entropy_from_counts(tokens: np.ndarray) -> float:
    _, counts = np.unique(tokens, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def test_pretraining_learns_and_saves_a_loadable_gpt2(pretrained, builtin):
    log = json.loads((pretrained / "pretrain_log.json").read_text())
    entropy = unigram_entropy_from_counts(tokenize_corpus(builtin, ByteTokenizer()))
    assert log["steps"] == PRETRAIN["steps"] and log["seed"] == 0 and log["corpus"] == "builtin"
    assert log["tokens_seen"] == PRETRAIN["steps"] * PRETRAIN["batch"] * PRETRAIN["seq_len"]
    assert log["initial_loss"] == pytest.approx(np.log(257), abs=0.2)  # a random model: uniform over the vocab
    assert abs(log["unigram_entropy"] - entropy) < 0.05
    # Held-out documents: clearly below where it started and below what token frequencies alone give.
    assert log["final_loss"] < log["initial_loss"] - 2.0
    assert log["final_loss"] < entropy - 0.3, (log["final_loss"], entropy)

    reference = GPT2LMHeadModel.from_pretrained(pretrained).eval()
    ours = load_pretrained_gpt2(pretrained, lm_head=True).eval()
    body = load_pretrained_gpt2(str(pretrained)).eval()
    assert isinstance(body, GPT2Model) and body.config.activation_function == "gelu_pytorch_tanh"
    reference_state = reference.state_dict()
    assert all(torch.equal(tensor, reference_state[name]) for name, tensor in ours.state_dict().items())
    assert all(torch.equal(tensor, reference_state[f"transformer.{name}"]) for name, tensor in body.state_dict().items()
               if not name.endswith("attn.bias"))
    sample = torch.tensor([ByteTokenizer().encode("Return the absolute value of the argument.")])
    with torch.no_grad():
        assert torch.equal(reference(sample).logits, ours(sample).logits)
        assert torch.equal(reference.transformer(sample).last_hidden_state, body(sample).last_hidden_state)
    assert load_pretrained_gpt2(pretrained, dropout=0.2).config.attn_pdrop == 0.2
    random = load_pretrained_gpt2(pretrained, random_init=True)
    assert random.config.n_embd == body.config.n_embd and not torch.equal(random.wte.weight, body.wte.weight)


def test_pretraining_is_deterministic_given_the_seed(tmp_path, corpus_cache):
    quick = dict(steps=3, seq_len=32, batch=2, cache_dir=corpus_cache)
    runs = [load_file(pretrain_tiny_gpt2(tmp_path / f"run{i}", seed=seed, **quick) / "model.safetensors")
            for i, seed in enumerate((0, 0, 1))]
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][name], runs[1][name]) for name in runs[0])
    assert not torch.equal(runs[0]["transformer.h.0.attn.c_attn.weight"], runs[2]["transformer.h.0.attn.c_attn.weight"])


def test_pretrain_cli(tmp_path, corpus_cache, monkeypatch, capsys):
    monkeypatch.setenv("LAMO_CACHE_DIR", str(corpus_cache))
    pretrain.main(["pretrain", "--out", str(tmp_path / "cli"), "--steps", "2", "--seq-len", "16", "--batch", "2",
                   "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--seed", "5"])
    assert "saved" in capsys.readouterr().out
    config = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert (config["n_layer"], config["n_embd"], config["vocab_size"], config["activation_function"]) == \
        (1, 32, 257, "gelu_pytorch_tanh")
    assert config["n_positions"] >= 16 and (tmp_path / "cli" / "byte_tokenizer.json").is_file()



def test_pretraining_paused_by_its_cpu_budget_resumes_to_the_uninterrupted_model(tmp_path, corpus_cache):
    quick = dict(steps=12, seq_len=32, batch=2, n_layer=1, n_embd=32, n_head=2, cache_dir=corpus_cache,
                 checkpoint_every=5)
    whole = load_file(pretrain_tiny_gpt2(tmp_path / "whole", **quick) / "model.safetensors")
    assert not (tmp_path / "whole" / pretrain.CHECKPOINT).exists()  # removed once the model is saved
    # A spent budget still makes one step per sitting (any budget moves on), then pauses with a checkpoint.
    out = pretrain_tiny_gpt2(tmp_path / "parts", cpu_seconds=0.0, **quick)
    assert (out / pretrain.CHECKPOINT).is_file() and not (out / "model.safetensors").exists()
    assert torch.load(out / pretrain.CHECKPOINT, weights_only=True)["state"]["step"] == 1
    sittings = 1
    while not (out / "model.safetensors").exists():
        pretrain_tiny_gpt2(out, cpu_seconds=0.0, **quick)
        sittings += 1
        assert sittings <= 12
    parts = load_file(out / "model.safetensors")
    assert parts.keys() == whole.keys() and all(torch.equal(parts[name], whole[name]) for name in whole)
    log = json.loads((out / "pretrain_log.json").read_text())
    assert log["sittings"] == sittings == 12 and log["steps"] == 12 and len(log["train_loss_curve"]) == 12
    # A checkpoint left by other settings is refused, naming the file and the field, before any training.
    pretrain_tiny_gpt2(tmp_path / "other", cpu_seconds=0.0, **quick)
    with pytest.raises(ValueError, match=r"pretrain_checkpoint.pt .*lr 0.003 there, 0.001 now"):
        pretrain_tiny_gpt2(tmp_path / "other", **(quick | {"lr": 1e-3}))


def test_evaluate_scores_models_on_the_same_held_out_windows(pretrained, corpus_cache, monkeypatch, capsys):
    monkeypatch.setenv("LAMO_CACHE_DIR", str(corpus_cache))
    log = json.loads((pretrained / "pretrain_log.json").read_text())
    rows = pretrain.evaluate_models([str(pretrained), f"random:{pretrained}"], "builtin", seq_len=PRETRAIN["seq_len"],
                                    cache_dir=corpus_cache)
    trained, random = rows
    # The same windows pre-training scored its final loss on; a random model is near uniform over 257 bytes.
    assert trained["nats_per_token"] == pytest.approx(log["final_loss"], rel=1e-5)
    assert random["nats_per_token"] == pytest.approx(np.log(257), abs=0.2)
    assert trained["perplexity"] == pytest.approx(np.exp(trained["nats_per_token"]))
    assert trained["bits_per_byte"] == pytest.approx(trained["nats_per_token"] / np.log(2))
    assert trained["parameters"] == random["parameters"]
    pretrain.main(["evaluate", "--corpus", "builtin", "--seq-len", str(PRETRAIN["seq_len"]), str(pretrained)])
    assert f"perplexity {trained['perplexity']:.2f}" in capsys.readouterr().out


# ---------------------------------------------------------------- loader errors

def test_load_pretrained_gpt2_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "missing")):
        load_pretrained_gpt2(tmp_path / "missing")
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 30522, "hidden_size": 64}))
    with pytest.raises(ValueError, match=rf"{bert} holds a model of type 'bert'"):
        load_pretrained_gpt2(bert)
    (tmp_path / "weights-only").mkdir()
    (tmp_path / "weights-only" / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"no config.json \(found: \['model.safetensors'\]\)"):
        load_pretrained_gpt2(str(tmp_path / "weights-only"))


def test_load_pretrained_gpt2_hub_id_offline_fails_fast(offline_hub):
    started = time.perf_counter()
    with pytest.raises(OSError, match="'gpt2' is not a local directory and the Hugging Face Hub is offline") as error:
        load_pretrained_gpt2("gpt2")
    assert "python -m trainers.sequence.language pretrain" in str(error.value)
    assert time.perf_counter() - started < 20
