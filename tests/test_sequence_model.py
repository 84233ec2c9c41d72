"""The trajectory transformer, its presets and the LaMo specifics (LoRA set, language loss, adapters)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from peft import PeftModel
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

from trainers.data.d4rl import load_d4rl_dataset
from trainers.data.samplers import to_torch
from trainers.runtime.algorithm import ConfigError, NonFiniteLossError, TrainingSetup
from trainers.runtime.registry import build_algorithm, make_config
from trainers.runtime.tasks import get_task
from trainers.sequence.gpt2 import GPT2, gpt2_config
from trainers.sequence.model import TrajectoryModelConfig, TrajectoryTransformer

TASK = get_task("reacher2d-medium")


def setup_for(dataset=None, seed=0) -> TrainingSetup:
    env = TASK.make_env()
    spaces = env.observation_space, env.action_space
    env.close()
    return TrainingSetup(task=TASK, dataset=dataset, observation_space=spaces[0], action_space=spaces[1],
                         device=torch.device("cpu"), seed=seed)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A tiny GPT-2 saved with save_pretrained (briefly pre-trained on the built-in corpus)."""
    from trainers.sequence.language.pretrain import pretrain_tiny_gpt2

    return pretrain_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"), steps=20, n_layer=2, n_embd=32, n_head=2,
                              seq_len=64, batch=4)


@pytest.fixture(scope="module")
def gpt2_small_dir(tmp_path_factory):
    """GPT-2 small's architecture (config only; weights are never downloaded here)."""
    directory = tmp_path_factory.mktemp("gpt2-small-config")
    GPT2Config().save_pretrained(directory)
    return directory


@pytest.mark.parametrize("activation", ["gelu_pytorch_tanh", "gelu_new", "gelu", "relu"])
def test_our_gpt2_equals_hugging_face_without_position_embeddings(activation):
    torch.manual_seed(0)
    hf = GPT2Model(gpt2_config(2, 64, 4, dropout=0.0, vocab_size=50, activation_function=activation)).eval()
    with torch.no_grad():
        hf.wpe.weight.zero_()
    ours = GPT2.from_hf(hf).eval()
    x = torch.randn(3, 10, 64)
    valid = torch.ones(3, 10, dtype=torch.bool)
    valid[0, :4] = False  # left padding
    with torch.no_grad():
        if activation == "gelu_new":  # HF's tanh formula in Python vs PyTorch's fused kernel: equal up to rounding
            torch.testing.assert_close(ours(x), hf(inputs_embeds=x).last_hidden_state, rtol=0, atol=1e-5)
        else:  # the same kernels: bit for bit
            assert torch.equal(hf(inputs_embeds=x).last_hidden_state, ours(x))
        theirs = hf(inputs_embeds=x, attention_mask=valid.long()).last_hidden_state
        mine = ours(x, valid)
        torch.testing.assert_close(mine[valid], theirs[valid], rtol=0, atol=1e-6)
        torch.testing.assert_close(ours(x, valid, last_query_only=True)[:, 0], mine[:, -1], rtol=0, atol=1e-5)


def test_language_loss_is_hugging_faces_with_positions_or_with_none():
    """With positional embeddings: GPT2LMHeadModel's own loss (LaMo's Atari co-training); without: the same model
    with wpe at zero (LaMo's D4RL language batches)."""
    torch.manual_seed(0)
    lm = GPT2LMHeadModel(gpt2_config(2, 64, 4, dropout=0.0, vocab_size=50)).eval()
    ours = GPT2.from_hf(lm.transformer).eval()
    tokens = torch.randint(0, 50, (3, 11))
    with torch.no_grad():
        with_positions = lm(input_ids=tokens, labels=tokens).loss
        torch.testing.assert_close(ours.language_loss(tokens, positional_embeddings=True), with_positions)
        lm.transformer.wpe.weight.zero_()
        without = lm(input_ids=tokens, labels=tokens).loss
        torch.testing.assert_close(ours.language_loss(tokens), without)
    assert not torch.isclose(with_positions, without)


def test_an_activation_our_gpt2_does_not_implement_is_refused():
    with pytest.raises(ValueError, match=r"activation_function='silu' is not implemented here; supported: gelu, "
                                         r"gelu_new, gelu_pytorch_tanh, relu"):
        GPT2.from_hf(GPT2Model(gpt2_config(1, 16, 1, dropout=0.0, activation_function="silu")))


def tiny_overrides(preset: str, backbone) -> dict:
    """A tiny model for each preset: DT builds its own backbone, the others load the tiny pre-trained GPT-2."""
    return {"n_layer": 1, "n_embd": 16, "n_head": 1} if preset == "dt" else {"backbone": str(backbone)}


def test_dt_runs_decision_transformers_relu_mlp_and_pretrained_backbones_their_own(tiny_lm):
    x = torch.randn(4, 16)
    mlp = build_algorithm("dt", make_config("dt", tiny_overrides("dt", tiny_lm)), setup_for()).model.backbone.h[0].mlp
    assert torch.equal(mlp.eval()(x), mlp.c_proj(torch.relu(mlp.c_fc(x))))
    # A checkpoint keeps the activation its config names (the tiny GPT-2 is saved with GPT-2's tanh-GELU).
    mlp = build_algorithm("lamo", make_config("lamo", {"backbone": str(tiny_lm)}), setup_for()).model.backbone.h[0].mlp
    x = torch.randn(4, 32)
    assert torch.equal(mlp.eval()(x), mlp.c_proj(torch.nn.functional.gelu(mlp.c_fc(x), approximate="tanh")))
    with pytest.raises(ConfigError, match="activation_function='relu' applies only when backbone is None"):
        make_config("lamo", {"backbone": str(tiny_lm), "activation_function": "relu"})
    with pytest.raises(ConfigError, match="activation_function: Input should be 'relu', 'gelu', 'gelu_new' or "
                                          "'gelu_pytorch_tanh', got 'silu'"):
        make_config("dt", {"activation_function": "silu"})


def _is_layer_normed(x: torch.Tensor) -> bool:
    """Per-token mean 0 and variance 1: the output of a freshly initialised LayerNorm (weight 1, bias 0)."""
    return bool((x.mean(-1).abs() < 1e-5).all() and ((x.var(-1, unbiased=False) - 1).abs() < 1e-3).all())


@pytest.mark.parametrize("preset", ["dt", "wiki_rl", "lamo", "lamo_no_lm", "lamo_random_init", "lamo_full_ft",
                                    "lamo_linear_emb"])
def test_timestep_embedding_is_added_after_the_embedding_layernorm_except_in_dt(tiny_lm, preset):
    """DT's gym experiment adds the timestep embedding to each token, then normalises; LaMo's and Wiki-RL's code
    normalise the stacked tokens, then add it."""
    model = build_algorithm(preset, make_config(preset, tiny_overrides(preset, tiny_lm)), setup_for()).model
    batch, k = 2, model.config.context_len
    states, actions = torch.randn(batch, k, 12), torch.rand(batch, k, 2) * 2 - 1
    returns, timesteps = torch.rand(batch, k) * 8, torch.randint(0, 100, (batch, k))
    with torch.no_grad():
        tokens = model._tokens(model.encode_states(states), actions, returns, timesteps)
        time = model.embed_timestep(timesteps).repeat_interleave(3, dim=1)
    assert _is_layer_normed(tokens) == (preset == "dt")
    assert _is_layer_normed(tokens - time) == (preset != "dt")


@pytest.mark.parametrize(("preset", "eps", "warmup"), [
    ("dt", 1e-8, 10_000),  # DT gym/experiment.py: torch's AdamW default eps, --warmup_steps 10000
    ("wiki_rl", 1e-6, 10_000),  # Wiki-RL and LaMo utils.py get_optimizer (pretrained_lm set): eps 1e-6; 10000
    ("lamo", 1e-6, 2_500),  # LaMo utils.py (pretrained_lm set) and run.sh warmup_steps=2500
    ("lamo_full_ft", 1e-6, 2_500),
    ("lamo_random_init", 1e-8, 2_500),  # LaMo's random init runs with pretrained_lm unset: AdamW's default eps
])
def test_adamw_eps_and_warmup_follow_each_presets_source(tiny_lm, preset, eps, warmup):
    algorithm = build_algorithm(preset, make_config(preset, tiny_overrides(preset, tiny_lm)), setup_for())
    assert {group["eps"] for group in algorithm.optimizer.param_groups} == {eps}
    assert algorithm.learning_rate(tokens=0) == pytest.approx(algorithm.config.learning_rate / warmup)  # update 1


def test_sequence_models_evaluate_20_episodes_per_target_the_baselines_their_references_count():
    sequence_models = ["lamo", "lamo_no_lm", "lamo_random_init", "lamo_full_ft", "lamo_linear_emb", "dt", "wiki_rl"]
    assert {name: make_config(name).eval_episodes for name in sequence_models} == dict.fromkeys(sequence_models, 20)
    assert {name: make_config(name).eval_episodes for name in ["cql", "iql", "td3_bc", "bc", "bc_10"]} == \
        dict.fromkeys(["cql", "iql", "td3_bc", "bc", "bc_10"], 10)


@pytest.mark.parametrize("preset", ["dt", "lamo"])
def test_bf16_autocast_keeps_nearby_returns_to_go_apart(tiny_lm, preset):
    """bf16 keeps 8 significant bits: 3.600 and 3.597 both round to 3.59375. The return embedding must see the
    fp32 values, so hopper's per-step decrement of the target return stays visible to the model."""
    config = make_config(preset, tiny_overrides(preset, tiny_lm) | {"precision": "bf16"})
    algorithm = build_algorithm(preset, config, setup_for())
    assert algorithm.autocast_dtype == torch.bfloat16
    model, k = algorithm.model.eval(), algorithm.model.config.context_len
    states, actions = torch.randn(1, k, 12).expand(2, k, 12), torch.zeros(2, k, 2)
    returns = torch.tensor([[3.600], [3.597]]).expand(2, k)
    timesteps = torch.arange(k).expand(2, k)
    with torch.no_grad():
        exact = model._tokens(model.encode_states(states), actions, returns, timesteps)
        with torch.autocast("cpu", dtype=algorithm.autocast_dtype):
            mixed = model._tokens(model.encode_states(states), actions, returns, timesteps)
    return_tokens = mixed[:, 0::3].float()
    assert not torch.equal(return_tokens[0], return_tokens[1])
    torch.testing.assert_close(return_tokens, exact[:, 0::3], rtol=0, atol=1e-6)  # as in fp32


@pytest.mark.parametrize("after_layernorm", [False, True])
def test_fp32_tokens_are_the_sources_formula(after_layernorm):
    """Without autocast the tokens are exactly DT's (timestep before the LayerNorm) or LaMo's (after)."""
    torch.manual_seed(0)
    model = TrajectoryTransformer(TrajectoryModelConfig(12, 2, context_len=4, max_timestep=100, n_layer=1, n_embd=16,
                                                        timestep_after_layernorm=after_layernorm))
    states, actions, returns = torch.randn(3, 4, 12), torch.rand(3, 4, 2), torch.rand(3, 4) * 4
    timesteps = torch.randint(0, 100, (3, 4))
    with torch.no_grad():
        time = model.embed_timestep(timesteps)
        parts = [model.embed_return(returns.unsqueeze(-1)), model.embed_state(states), model.embed_action(actions)]
        if after_layernorm:
            expected = model.embed_ln(torch.stack(parts, dim=2).reshape(3, 12, 16)) + time.repeat_interleave(3, dim=1)
        else:
            expected = model.embed_ln(torch.stack([p + time for p in parts], dim=2).reshape(3, 12, 16))
        assert torch.equal(model._tokens(model.encode_states(states), actions, returns, timesteps), expected)


def test_lamo_trains_exactly_the_lamo_parameter_set_on_gpt2_small(gpt2_small_dir):
    config = make_config("lamo", {"backbone": str(gpt2_small_dir), "pretrained_weights": False})
    algorithm = build_algorithm("lamo", config, setup_for())
    trainable = {name for name, p in algorithm.model.named_parameters() if p.requires_grad}
    backbone_trainable = {n for n in trainable if n.startswith("backbone.")}
    lamo_set = re.compile(r"backbone\.base_model\.model\.h\.\d+\.attn\.c_attn\.[qkv]\."
                          r"(base_layer\.bias|lora_[AB]\.default\.weight)")
    assert all(lamo_set.fullmatch(name) for name in backbone_trainable), sorted(backbone_trainable)[:3]
    assert {n.split(".")[0] for n in trainable - backbone_trainable} == {
        "embed_timestep", "embed_return", "embed_state", "embed_action", "embed_ln", "predict_action"}
    count = lambda names: sum(p.numel() for n, p in algorithm.model.named_parameters() if n in names)  # noqa: E731
    backbone_total = sum(p.numel() for n, p in algorithm.model.named_parameters()
                         if n.startswith("backbone.") and "lora_" not in n)
    assert count(backbone_trainable) == 12 * (36_864 + 36_864 + 2_304) == 912_384
    assert backbone_total == 124_439_808  # GPT-2 small
    assert count(backbone_trainable) / backbone_total == pytest.approx(0.00733, abs=5e-5)


@pytest.mark.parametrize("preset", ["lamo_full_ft", "wiki_rl"])
def test_full_fine_tuning_presets_train_the_backbone(tiny_lm, preset):
    algorithm = build_algorithm(preset, make_config(preset, {"backbone": str(tiny_lm)}), setup_for())
    assert all(p.requires_grad for n, p in algorithm.model.backbone.named_parameters() if "wpe" not in n)
    assert not any("lora" in n for n, _ in algorithm.model.named_parameters())


def test_language_loss_on_1024_token_chunks_only_when_lambda_positive(tiny_lm, reacher_medium_path, monkeypatch):
    seen = []
    original = GPT2.language_loss
    monkeypatch.setattr(GPT2, "language_loss", lambda self, tokens, positional_embeddings=False: seen.append(
        (tuple(tokens.shape), positional_embeddings)) or original(self, tokens, positional_embeddings))
    dataset = load_d4rl_dataset(reacher_medium_path)
    rng = np.random.default_rng(0)
    for coef, expected in ((0.1, [((2, 1025), False)] * 2), (0.0, [])):  # LaMo's D4RL code: no positions
        seen.clear()
        overrides = {"backbone": str(tiny_lm), "lm_coef": coef, "lm_corpus": "builtin", "batch_size": 4}
        algorithm = build_algorithm("lamo", make_config("lamo", overrides), setup_for(dataset))
        for _ in range(2):
            metrics = algorithm.update(to_torch(algorithm.sampler.sample(4, rng), "cpu"))
        assert seen == expected
        assert ("lm_loss" in metrics) == (coef > 0)
        assert (algorithm.language is None) == (coef == 0)


def test_adapter_and_weights_round_trip_gives_identical_actions(tiny_lm, reacher_medium_path, tmp_path):
    dataset = load_d4rl_dataset(reacher_medium_path)
    config = make_config("lamo", {"backbone": str(tiny_lm), "lm_corpus": "builtin", "lm_coef": 0.0})
    trained = build_algorithm("lamo", config, setup_for(dataset))
    rng = np.random.default_rng(0)
    for _ in range(5):  # move LoRA B away from its zero initialisation
        trained.update(to_torch(trained.sampler.sample(8, rng), "cpu"))
    files = trained.export(tmp_path / "model")
    assert (tmp_path / "model" / "adapter" / "adapter_model.safetensors") in files
    rebuilt = build_algorithm("lamo", config, setup_for(dataset=None, seed=99))
    rebuilt.load_exported(tmp_path / "model")
    observations = np.random.default_rng(1).normal(size=(4, 12))
    policies = [a.policy(4, [76.0, 40.0, 76.0, 40.0]) for a in (trained, rebuilt)]
    for _ in range(3):
        actions = [p.act(observations) for p in policies]
        np.testing.assert_array_equal(actions[0], actions[1])
        for p in policies:
            p.observe(np.ones(4), np.zeros(4, bool))
    # The adapter directory is a real peft adapter: peft loads it onto a fresh backbone.
    from trainers.sequence.language.hub import load_pretrained_gpt2

    peft_model = PeftModel.from_pretrained(GPT2.from_hf(load_pretrained_gpt2(tiny_lm)), tmp_path / "model" / "adapter")
    lora_b = dict(peft_model.named_parameters())["base_model.model.h.0.attn.c_attn.q.lora_B.default.weight"]
    expected = dict(trained.model.backbone.named_parameters())["base_model.model.h.0.attn.c_attn.q.lora_B.default.weight"]
    assert torch.equal(lora_b, expected) and lora_b.abs().sum() > 0


def test_bad_inputs_are_named(tiny_lm, tmp_path):
    with pytest.raises(ConfigError, match="unknown algorithm 'lamo_v2'; valid algorithms: lamo, lamo_no_lm"):
        make_config("lamo_v2")
    with pytest.raises(ConfigError, match="unknown hyperparameter.*lora_rank; valid: .*lora_r"):
        make_config("lamo", {"lora_rank": 8})
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "missing")):
        build_algorithm("lamo", make_config("lamo", {"backbone": str(tmp_path / "missing")}), setup_for())
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="'bert'.*not 'gpt2'"):
        build_algorithm("lamo", make_config("lamo", {"backbone": str(tmp_path / "bert")}), setup_for())
    with pytest.raises(ValueError, match="n_embd=768 does not match the width 32"):
        build_algorithm("lamo", make_config("lamo", {"backbone": str(tiny_lm), "n_embd": 768}), setup_for())


def test_non_finite_loss_stops_with_step_and_batch_statistics(reacher_medium_path):
    dataset = load_d4rl_dataset(reacher_medium_path)
    overrides = {"n_layer": 1, "n_embd": 16, "n_head": 1}
    algorithm = build_algorithm("dt", make_config("dt", overrides), setup_for(dataset))
    batch = algorithm.sampler.sample(4, np.random.default_rng(0))
    batch.states[0, -1, 0] = np.nan
    with pytest.raises(NonFiniteLossError, match=r"at step 0: .*action_loss=nan.*batch_states_abs_max=nan"):
        algorithm.update(to_torch(batch, "cpu"))
