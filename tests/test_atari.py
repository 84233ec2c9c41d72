"""Atari through the stack: the DQN Replay reader on files the generator wrote in the real emulator, frame stacks,
ratios, samplers, the model and policy, the registry's discrete dispatch, evaluation, bad input, sweep files."""

from __future__ import annotations

import gzip
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO
from transformers import GPT2Model

from trainers.data.dqn_replay import (
    DQNReplay,
    read_npy_gz,
    store_file_name,
    write_npy_gz,
)
from trainers.data.loading import load_task_dataset, resolve_dataset_path
from trainers.data.samplers import TransitionSampler, WindowSampler, to_torch
from trainers.data.subsets import subsample_trajectories
from trainers.data.trajectories import DatasetError, EpisodeIndex, TrajectoryDataset
from trainers.envs.atari import GAMES, make_atari_env
from trainers.runtime.algorithm import StatelessPolicy
from trainers.runtime.evaluation import evaluate_batched, evaluate_sequential
from trainers.runtime.record import make_record
from trainers.runtime.registry import (
    ALGORITHMS,
    TrainingSetup,
    build_algorithm,
    config_fields,
    make_config,
    supports_discrete_actions,
)
from trainers.runtime.tasks import get_task
from trainers.sequence.gpt2 import GPT2, gpt2_config
from trainers.sequence.model import TrajectoryModelConfig, TrajectoryTransformer
from trainers.sequence.policy import ContextPolicy
from trainers.sequence.schedule import cosine_multiplier, mean_multiplier
from trainers.tools.atari_replay import generate, main

TASK = get_task("breakout-medium-gen")
ROWS_PER_FILE = 1200  # two checkpoint files; Breakout episodes of the scripted policy are longer than one


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Checkpoints 10 and 11 of a scripted Breakout run, written by the generator (the real layout)."""
    out = tmp_path_factory.mktemp("dqn-replay")
    result = generate("breakout", 2 * ROWS_PER_FILE, out, seed=3, steps_per_checkpoint=ROWS_PER_FILE)
    return out, result


def raw_arrays(logs: Path, checkpoint: int) -> dict[str, np.ndarray]:
    """The files read with nothing but gzip + np.load (what d4rl-atari does)."""
    arrays = {}
    for key in ("observation", "action", "reward", "terminal"):
        with gzip.open(logs / store_file_name(key, checkpoint), "rb") as f:
            arrays[key] = np.load(f, allow_pickle=False)
    return arrays


def naive_stacks(frames: np.ndarray, episode_starts: np.ndarray, stack: int = 4) -> np.ndarray:
    """d4rl-atari's `_stack`, eagerly: every state stored (N, 4, 84, 84), zero frames before an episode start."""
    out = np.zeros((len(frames), stack, *frames.shape[1:]), np.uint8)
    start_of = np.zeros(len(frames), np.int64)
    for start, end in zip(episode_starts, [*episode_starts[1:], len(frames)]):
        start_of[start:end] = start
    for t in range(len(frames)):
        for j in range(stack):
            step = t - (stack - 1) + j
            if step >= start_of[t]:
                out[t, j] = frames[step]
    return out


def setup_for(dataset=None, task=TASK, seed=0) -> TrainingSetup:
    env = task.make_env()
    spaces = env.observation_space, env.action_space
    env.close()
    return TrainingSetup(task=task, dataset=dataset, observation_space=spaces[0], action_space=spaces[1],
                         device=torch.device("cpu"), seed=seed)


# --- tasks and environment ----------------------------------------------------------------------------------


def test_atari_tasks_have_the_games_spaces_scores_and_targets():
    expected = {"breakout": (4, 1.7, 31.8, (90.0, 120.0)), "qbert": (6, 163.9, 13_455.0, (14_000.0,)),
                "pong": (6, -20.7, 9.3, (20.0,))}
    for game, (actions, random, human, targets) in expected.items():
        task = get_task(f"{game}-medium")
        env = task.make_env()
        assert env.observation_space.shape == (4, 84, 84) and env.observation_space.dtype == np.uint8
        assert env.action_space.n == actions == GAMES[game].num_actions
        env.close()
        assert (task.domain, task.discrete_actions, task.context_len, task.return_scale) == ("atari", True, 30, 1.0)
        assert (task.ref_min_score, task.ref_max_score, task.target_returns) == (random, human, targets)
        assert task.normalized_score(human) == pytest.approx(100) and task.normalized_score(random) == 0
    assert get_task("breakout-medium").horizon == 4096


def test_the_evaluation_env_stacks_the_preprocessed_frames_the_generator_records(generated):
    """Replaying the generated actions in the evaluation environment reproduces the recorded frames; its stacks
    equal the data's from the 4th step of an episode on, and before that repeat the first frame where the data
    (LaMo's buffer, d4rl-atari) has zeros."""
    out, _ = generated
    dataset = DQNReplay("breakout", checkpoints=(10,)).load(path=out)
    states = naive_stacks(dataset.observations, dataset.episodes.starts)
    env = make_atari_env("breakout")
    observation, _ = env.reset(seed=3)
    for t in range(60):
        real = max(0, 3 - t)  # frames before the episode's first: the env repeats it, the data has zeros
        np.testing.assert_array_equal(observation[real:], states[t, real:])
        assert (states[t, :real] == 0).all() and (observation[:real] == dataset.observations[0]).all()
        observation, *_ = env.step(int(dataset.actions[t]))
    env.close()


# --- the reader ---------------------------------------------------------------------------------------------


def test_reader_round_trip_across_checkpoint_files(generated):
    out, result = generated
    logs = result.run_dir / "replay_logs"
    raw = [raw_arrays(logs, c) for c in (10, 11)]
    dataset = DQNReplay("breakout", checkpoints=(10, 11)).load(path=out)
    assert dataset.observations.dtype == np.uint8 and dataset.observations.shape == (2 * ROWS_PER_FILE, 84, 84)
    assert dataset.actions.dtype == np.int64 and dataset.state_shape == (4, 84, 84)
    for key, values in (("observation", dataset.observations), ("action", dataset.actions),
                        ("reward", dataset.rewards), ("terminal", dataset.terminals)):
        np.testing.assert_array_equal(values, np.concatenate([r[key] for r in raw]).astype(values.dtype))
    assert raw[0]["action"].dtype == np.int32 and raw[0]["reward"].dtype == np.float32
    assert raw[0]["terminal"].dtype == np.uint8 and np.abs(dataset.rewards).max() <= 1.0  # clipped
    # Episodes: every terminal ends one; the first file's tail ends at the file boundary (the episode goes on in
    # checkpoint 11, whose first rows start an episode of their own); the last file's tail is truncated.
    assert not dataset.terminals[ROWS_PER_FILE - 1]
    ends = sorted({*(np.flatnonzero(dataset.terminals) + 1), ROWS_PER_FILE, 2 * ROWS_PER_FILE})
    np.testing.assert_array_equal(dataset.episodes.ends, ends)
    assert dataset.episodes.truncated.tolist() == [False] * (len(ends) - 1) + [True]
    assert dataset.timeouts.sum() == 1 and dataset.timeouts[ROWS_PER_FILE - 1]
    assert len(result.episode_returns) == int(dataset.terminals.sum())
    # Checkpoint 11 alone: its first episode is the partial one, starting at its first row.
    second = DQNReplay("breakout", checkpoints=(11,)).load(path=out)
    assert second.episodes.starts[0] == 0 and second.episodes.lengths[0] == dataset.episodes.lengths[
        np.searchsorted(dataset.episodes.starts, ROWS_PER_FILE)]
    assert second.timesteps()[0] == 0 and second.name == "dqn-replay-breakout-run1-ckpt11"


def test_task_reads_the_cache_layouts(generated, tmp_path, monkeypatch):
    """`breakout-medium-gen` finds the generator's output under $D4RL_DATASET_DIR, and `breakout-medium` reads
    d4rl-atari's cache names (<Game>/<run>/<ckpt>/observation.gz) the same as the bucket's."""
    _, result = generated
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    generated_dir = tmp_path / "dqn-replay-gen" / "Breakout" / "1"
    generated_dir.parent.mkdir(parents=True)
    generated_dir.symlink_to(result.run_dir, target_is_directory=True)
    assert resolve_dataset_path(TASK) == generated_dir
    d4rl_atari = tmp_path / "Breakout" / "1" / "10"
    d4rl_atari.mkdir(parents=True)
    for key in ("observation", "action", "reward", "terminal"):
        (d4rl_atari / f"{key}.gz").symlink_to(result.run_dir / "replay_logs" / store_file_name(key, 10))
    real_task = get_task("breakout-medium")
    dataset = load_task_dataset(real_task)
    assert dataset.name == "dqn-replay-breakout-run1-ckpt10" and dataset.metadata["layout"] == "d4rl_atari"
    np.testing.assert_array_equal(dataset.observations, load_task_dataset(TASK).observations)
    record = make_record("bc", "breakout-medium", ratio=0.5, seed=1)
    assert record.dataset.name == "dqn-replay-breakout-run1-ckpt10"
    assert record.dataset.source == str((tmp_path / "Breakout" / "1").resolve())


def test_read_npy_gz_fills_the_given_array_in_place(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (5, 84, 84), dtype=np.uint8)
    write_npy_gz(tmp_path / "f.gz", frames)
    target = np.zeros((8, 84, 84), np.uint8)
    returned = read_npy_gz(tmp_path / "f.gz", target[2:7])
    assert np.shares_memory(returned, target)
    np.testing.assert_array_equal(target[2:7], frames)
    assert (target[:2] == 0).all() and (target[7:] == 0).all()


# --- bad input ----------------------------------------------------------------------------------------------


def write_checkpoint(logs: Path, arrays: dict[str, np.ndarray], checkpoint: int = 10) -> None:
    logs.mkdir(parents=True, exist_ok=True)
    for key, values in arrays.items():
        write_npy_gz(logs / store_file_name(key, checkpoint), values)


def small_checkpoint(rows: int = 6) -> dict[str, np.ndarray]:
    return {"observation": np.zeros((rows, 84, 84), np.uint8), "action": np.zeros(rows, np.int32),
            "reward": np.zeros(rows, np.float32), "terminal": np.zeros(rows, np.uint8)}


@pytest.mark.parametrize("key, values, message", [
    ("observation", np.zeros((6, 210, 160), np.uint8),
     r"observation_ckpt\.10\.gz: observation: expected \(N, 84, 84\) uint8 frames .* got \(6, 210, 160\)"),
    ("observation", np.zeros((6, 4, 84, 84), np.uint8), r"observation: expected \(N, 84, 84\) .*not stacked"),
    ("observation", np.zeros((6, 84, 84), np.float32), r"observation: expected .* uint8 .* float32"),
    ("action", np.array([0, 1, 2, 3, 4, 0], np.int32),
     r"action_ckpt\.10\.gz: action: 1 ids outside Breakout's action set 0\.\.3 \(first: 4 at row 4\)"),
    ("action", np.array([0, -1, 2, 3, 1, 0], np.int32), r"action: 1 ids outside .* \(first: -1 at row 1\)"),
    ("action", np.zeros(5, np.int32), r"action_ckpt\.10\.gz: action: expected shape \(6,\) .* got \(5,\)"),
    ("terminal", np.full(6, 2, np.uint8), r"terminal_ckpt\.10\.gz: terminal: expected 0/1 flags"),
])
def test_bad_files_are_refused_naming_file_and_expectation(tmp_path, key, values, message):
    arrays = small_checkpoint() | {key: values}
    write_checkpoint(tmp_path / "Breakout" / "1" / "replay_logs", arrays)
    with pytest.raises(DatasetError, match=message):
        DQNReplay("breakout").load(path=tmp_path)


def test_damaged_files_are_named(tmp_path):
    logs = tmp_path / "Breakout" / "1" / "replay_logs"
    write_checkpoint(logs, small_checkpoint())
    observation = logs / store_file_name("observation", 10)
    observation.write_bytes(gzip.compress(gzip.decompress(observation.read_bytes())[:-100]))
    with pytest.raises(DatasetError, match=r"observation_ckpt\.10\.gz: truncated"):
        DQNReplay("breakout").load(path=tmp_path)
    observation.write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match=r"observation_ckpt\.10\.gz: not a gzip stream holding one \.npy"):
        DQNReplay("breakout").load(path=tmp_path)


def test_missing_checkpoint_lists_files_places_and_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    write_checkpoint(tmp_path / "cache" / "Breakout" / "1" / "replay_logs",
                     {k: v for k, v in small_checkpoint().items() if k != "reward"})
    with pytest.raises(DatasetError) as error:
        load_task_dataset(get_task("breakout-medium"))
    text = str(error.value)
    assert "replay_logs/$store$_reward_ckpt.10.gz" in text and "10/observation.gz" in text
    assert str(tmp_path / "cache" / "Breakout" / "1") in text and str(tmp_path / "home" / ".d4rl") in text
    assert "bring your own copy" in text
    with pytest.raises(DatasetError, match=r"python -m trainers\.tools\.atari_replay generate --game pong"):
        load_task_dataset(get_task("pong-medium-gen"))


def test_unknown_game_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="unknown Atari game 'pacman'; known games: breakout, qbert, pong"):
        DQNReplay("pacman").load(path=tmp_path)
    with pytest.raises(SystemExit, match="unknown Atari game 'pacman'"):
        main(["generate", "--game", "pacman", "--steps", "10", "--out", str(tmp_path)])
    with pytest.raises(KeyError, match="unknown task 'pacman-medium'"):
        get_task("pacman-medium")
    assert not any(tmp_path.iterdir())


# --- ratios and samplers ------------------------------------------------------------------------------------


def frames_dataset(lengths: list[int], name: str = "frames") -> TrajectoryDataset:
    """Tiny synthetic image dataset: frame t is filled with t % 251 + 1 (never 0, so padding shows)."""
    n = sum(lengths)
    frames = ((np.arange(n) % 251) + 1).astype(np.uint8)[:, None, None] * np.ones((1, 84, 84), np.uint8)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    terminals = np.zeros(n, bool)
    terminals[ends - 1] = True
    episodes = EpisodeIndex(starts.astype(np.int64), np.asarray(lengths, np.int64), np.ones(len(lengths), bool),
                            np.zeros(len(lengths), bool))
    return TrajectoryDataset(name=name, observations=frames, actions=np.arange(n) % 4,
                             rewards=np.ones(n, np.float32), terminals=terminals, timeouts=np.zeros(n, bool),
                             episodes=episodes, frame_stack=4, ratio_sampling="length")


def test_ratio_draws_trajectories_in_proportion_to_length_seeded():
    dataset = frames_dataset([2] * 40 + [60] * 40)
    subset = subsample_trajectories(dataset, 0.5, seed=0)
    assert subset.num_episodes == math.floor(0.5 * 80)
    np.testing.assert_array_equal(subset.episode_ids, subsample_trajectories(dataset, 0.5, seed=0).episode_ids)
    assert not np.array_equal(subset.episode_ids, subsample_trajectories(dataset, 0.5, seed=1).episode_ids)
    long_share = np.mean([(subsample_trajectories(dataset, 0.5, s).episode_ids >= 40).mean() for s in range(20)])
    assert long_share > 0.9  # a uniform draw would keep half of them
    uniform = subsample_trajectories(replace(dataset, ratio_sampling="uniform"), 0.5, seed=0)
    assert (uniform.episode_ids >= 40).mean() < 0.8
    # The subset keeps whole episodes with their frames, and still stacks zero-padded at each start.
    first = subset.episodes.starts[1]
    stacked = TransitionSampler(subset)._frames.at(np.array([first]))[0]
    assert (stacked[:3] == 0).all() and (stacked[3] == subset.observations[first]).all()


def test_window_batches_are_lazily_stacked_and_match_a_naive_loader(generated):
    dataset = DQNReplay("breakout", checkpoints=(10, 11)).load(path=generated[0])
    naive = naive_stacks(dataset.observations, dataset.episodes.starts)
    k = 30
    sampler = WindowSampler(dataset, k, 1.0, max_timestep=4096)
    ends = dataset.episodes.ends
    # Windows at every episode start and those reaching every episode end (left-padded), plus random ones.
    starts = np.unique(np.concatenate([dataset.episodes.starts, ends - 1, ends - 5, ends - k + 1,
                                       np.random.default_rng(0).integers(0, len(dataset), 40)]))
    batch = sampler.windows(starts)
    assert batch.states.shape == (len(starts), k, 4, 84, 84) and batch.states.dtype == np.uint8
    assert batch.actions.shape == (len(starts), k) and batch.actions.dtype == np.int64
    assert np.shares_memory(batch.states[:, 0], batch.states[:, 1])  # a view over the gathered frames
    length = batch.mask.sum(1)
    index = starts[:, None] + np.arange(k) - (k - length)[:, None]
    np.testing.assert_array_equal(batch.states[batch.mask], naive[index[batch.mask]])
    np.testing.assert_array_equal(batch.actions[batch.mask], dataset.actions[index[batch.mask]])
    assert (batch.actions[~batch.mask] == 0).all()
    np.testing.assert_array_equal(batch.timesteps[batch.mask], dataset.timesteps()[index[batch.mask]])
    np.testing.assert_allclose(batch.returns_to_go[batch.mask], dataset.returns_to_go()[index[batch.mask]])
    tensors = to_torch(sampler.sample(8, np.random.default_rng(0)), "cpu")
    assert tensors.states.dtype == torch.uint8 and tensors.states.shape == (8, k, 4, 84, 84)


def test_transition_batches_stack_states_and_next_states(generated):
    dataset = DQNReplay("breakout", checkpoints=(10, 11)).load(path=generated[0])
    naive = naive_stacks(dataset.observations, dataset.episodes.starts)
    sampler = TransitionSampler(dataset)
    boundary = ROWS_PER_FILE - 1  # its s′ is in the next file: never sampled
    assert boundary not in sampler._valid and len(sampler) == len(dataset) - 2  # and the truncated tail
    batch = sampler.sample(256, np.random.default_rng(0))
    assert batch.observations.shape == (256, 4, 84, 84) and batch.actions.dtype == np.int64
    index = sampler._valid[np.random.default_rng(0).integers(0, len(sampler), 256)]  # the sampler's own draw
    np.testing.assert_array_equal(batch.observations, naive[index])
    nxt = np.where(dataset.terminals[index], index, index + 1)
    np.testing.assert_array_equal(batch.next_observations, naive[nxt])
    np.testing.assert_array_equal(batch.dones, dataset.terminals[index].astype(np.float32))


# --- the model and its policy -------------------------------------------------------------------------------


def tiny_model(positional: bool = True, embedding: str = "mlp", k: int = 6) -> TrajectoryTransformer:
    """The Atari model as LaMo's code has it: frame stacks, action ids, timestep before the LayerNorm, tanh logits."""
    torch.manual_seed(0)
    backbone = GPT2.from_hf(GPT2Model(gpt2_config(2, 32, 2, dropout=0.0)))
    config = TrajectoryModelConfig(4, 4, modality="frames", context_len=k, max_timestep=100, n_embd=32,
                                   embedding=embedding, positional_embeddings=positional)
    return TrajectoryTransformer(config, backbone).eval()


def random_window(batch: int, k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (torch.from_numpy(rng.integers(0, 256, (batch, k, 4, 84, 84), dtype=np.uint8)),
            torch.from_numpy(rng.integers(0, 4, (batch, k))), torch.from_numpy(rng.normal(size=(batch, k))).float(),
            torch.arange(k).repeat(batch, 1) + 5)


def test_backbone_with_positions_equals_hugging_face_gpt2_on_inputs_embeds():
    """LaMo calls GPT2Model(inputs_embeds=…), which adds wpe: the Atari model's backbone call is exactly that."""
    torch.manual_seed(0)
    hf = GPT2Model(gpt2_config(2, 32, 2, dropout=0.0)).eval()
    model = tiny_model()
    model.backbone = GPT2.from_hf(hf).eval()
    tokens = torch.randn(3, 12, 32)
    with torch.no_grad():
        torch.testing.assert_close(model._transformer(tokens, None), hf(inputs_embeds=tokens).last_hidden_state,
                                   rtol=0, atol=1e-5)


@pytest.mark.parametrize("embedding", ["mlp", "linear"])
def test_left_padded_window_gives_the_logits_of_the_unpadded_one(embedding):
    model, k = tiny_model(embedding=embedding), 6
    states, actions, rtg, timesteps = random_window(1, k)
    mask = torch.tensor([[False, False, True, True, True, True]])
    with torch.no_grad():
        padded = model(states, actions, rtg, timesteps, mask)[mask]
        unpadded = model(states[:, 2:], actions[:, 2:], rtg[:, 2:], timesteps[:, 2:], torch.ones(1, 4, dtype=bool))
    torch.testing.assert_close(padded, unpadded[0], rtol=0, atol=1e-5)
    assert padded.abs().max() <= 1.0  # tanh on the logits


def test_context_policy_with_cached_embeddings_equals_the_full_forward():
    model, k = tiny_model(k=4), 4
    frames, _, _, _ = random_window(2, 7, seed=1)
    targets = [90.0, 120.0]
    policy = ContextPolicy(model, 2, targets, return_scale=1.0)
    taken, rewards = [], np.array([1.0, 0.0])
    for t in range(7):
        action = policy.act(frames[:, t].numpy())
        lo = max(0, t - k + 1)
        rtg = torch.tensor(targets)[:, None] - torch.arange(lo, t + 1)[None] * torch.tensor([1.0, 0.0])[:, None]
        history = torch.tensor(np.array(taken[lo:] + [np.zeros(2, np.int64)])).T
        with torch.no_grad():
            logits = model(frames[:, lo:t + 1], history, rtg, torch.arange(lo, t + 1).repeat(2, 1),
                           torch.ones(2, t + 1 - lo, dtype=bool))[:, -1]
        np.testing.assert_array_equal(action, logits.argmax(-1).numpy())
        taken.append(action)
        policy.observe(rewards, np.zeros(2, bool))


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from trainers.sequence.language.pretrain import pretrain_tiny_gpt2

    return pretrain_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"), steps=10, n_layer=2, n_embd=32, n_head=2,
                              seq_len=64, batch=4)


def test_atari_lamo_trains_lora_and_its_own_layers_and_round_trips_through_export(tiny_lm, generated, tmp_path):
    dataset = DQNReplay("breakout", checkpoints=(10,)).load(path=generated[0])
    overrides = {"backbone": str(tiny_lm), "context_len": 4, "batch_size": 2}
    config = make_config("lamo", overrides, task=TASK)
    trained = build_algorithm("lamo", config, setup_for(dataset))
    trainable = {n for n, p in trained.model.named_parameters() if p.requires_grad}
    backbone = {n for n in trainable if n.startswith("backbone.")}
    assert backbone and all(re.fullmatch(r"backbone\.base_model\.model\.h\.\d+\.attn\.c_attn\.[qkv]\."
                                         r"lora_[AB]\.default\.weight", n) for n in backbone)  # biases frozen
    assert {n.split(".")[0] for n in trainable - backbone} == {
        "embed_state", "embed_action", "embed_return", "embed_timestep", "embed_ln", "predict_action"}
    assert trained.model.backbone.base_model.model.h[0].attn.c_attn.q.lora_A.default.weight.shape[0] == 32
    dt = build_algorithm("dt_128", make_config("dt_128", {"context_len": 4}, task=TASK), setup_for(dataset))
    assert dt.model.backbone.wpe.weight.requires_grad and dt.model.backbone.config.n_embd == 128
    rng = np.random.default_rng(0)
    for _ in range(4):  # move LoRA B away from its zero initialisation
        trained.update(to_torch(trained.sampler.sample(2, rng), "cpu"))
    trained.export(tmp_path / "model")
    rebuilt = build_algorithm("lamo", config, setup_for(dataset=None, seed=9))
    rebuilt.load_exported(tmp_path / "model")
    frames = np.random.default_rng(1).integers(0, 256, (3, 4, 84, 84), dtype=np.uint8)
    policies = [a.policy(3, [90.0, 120.0, 90.0]) for a in (trained, rebuilt)]
    for _ in range(3):
        np.testing.assert_array_equal(policies[0].act(frames), policies[1].act(frames))
        for policy in policies:
            policy.observe(np.ones(3), np.zeros(3, bool))


def test_wiki_rls_language_loss_on_atari_adds_positions_as_its_trajectory_path_does(tiny_lm, monkeypatch):
    seen = []
    original = GPT2.language_loss
    monkeypatch.setattr(GPT2, "language_loss", lambda self, tokens, positional_embeddings=False: seen.append(
        positional_embeddings) or original(self, tokens, positional_embeddings))
    overrides = {"backbone": str(tiny_lm), "context_len": 4, "batch_size": 2, "lm_corpus": "builtin",
                 "lm_seq_len": 16, "lm_sequences": 1}
    config = make_config("wiki_rl", overrides, task=TASK)
    assert config.lm_coef == 0.1 and config.positional_embeddings
    algorithm = build_algorithm("wiki_rl", config, setup_for(frames_dataset([40] * 3)))
    metrics = algorithm.update(to_torch(algorithm.sampler.sample(2, np.random.default_rng(0)), "cpu"))
    assert seen == [True] and np.isfinite(metrics["lm_loss"])


def test_the_cosine_warms_up_then_decays_to_a_tenth():
    assert cosine_multiplier(512, 1024, 10_000) == 0.5
    assert cosine_multiplier(1024, 1024, 10_000) == pytest.approx(1.0)
    assert cosine_multiplier(5512, 1024, 10_000) == pytest.approx(0.5)
    assert cosine_multiplier(10_000, 1024, 10_000) == cosine_multiplier(10 ** 9, 1024, 10_000) == 0.1


def test_atari_learning_rate_follows_the_run_not_the_data_size(tiny_lm):
    """DT's token schedule ended at 2 · |subset| · 3K tokens: at LaMo's sizes the rate sat at its 10 % floor for
    most of training (mean 0.10–0.14) and each data ratio got its own schedule. The Atari schedule is counted in
    updates over the run: the same for a 1 % and a 10 % subset, LaMo's ~500 warm-up updates, mean ≈ LaMo's."""
    config = make_config("lamo", {"backbone": str(tiny_lm), "context_len": 4, "batch_size": 2}, task=TASK)
    assert (config.lr_schedule, config.warmup_steps, config.num_steps) == ("warmup_cosine", 500, 100_000)
    small, large = (build_algorithm("lamo", config, setup_for(frames_dataset([40] * n))) for n in (2, 20))
    steps = [0, 249, 499, 500, 5_000, 50_000, 90_000, 99_999]
    rates = []
    for algorithm in (small, large):
        rates.append([])
        for step in steps:
            algorithm.step = step
            rates[-1].append(algorithm.learning_rate(tokens=step * 2 * 4))
    assert rates[0] == rates[1]
    assert rates[0][1] == pytest.approx(0.5e-3) and rates[0][3] == pytest.approx(1e-3)
    assert rates[0][-1] == pytest.approx(1e-4)  # 10 % of lr at the last update
    assert 0.45 < mean_multiplier("warmup_cosine", 500, 100_000) < 0.55


def test_atari_dt_runs_the_width_lamos_code_runs_and_dt_128_the_intended_one():
    wide, narrow = make_config("dt", task=TASK), make_config("dt_128", task=TASK)
    assert (wide.n_embd, wide.n_layer, wide.n_head, wide.activation_function) == (768, 3, 1, "gelu_new")
    assert (narrow.n_embd, narrow.activation_function) == (128, "gelu_new")
    hopper = get_task("hopper-medium")
    assert make_config("dt", task=hopper) == make_config("dt_128", task=hopper)  # DT's own 128 off Atari
    assert make_config("dt", task=hopper).n_embd == 128


def test_atari_returns_to_go_include_the_steps_own_reward():
    """DT's convention (and every evaluation's): R̂_t = Σ_{k≥t} r_k. LaMo's buffer trains on Σ_{k>t}."""
    dataset = frames_dataset([5, 7])
    batch = WindowSampler(dataset, 3, 1.0, max_timestep=100).windows(np.array([0, 4, 5, 11]))  # from these steps
    first_real = batch.mask.argmax(1)
    assert batch.returns_to_go[np.arange(4), first_real].tolist() == [5.0, 1.0, 7.0, 1.0]  # rewards are all 1


def test_bf16_autocast_keeps_nearby_atari_returns_apart():
    """Qbert's targets 13,975 / 13,950 / 13,925 all round to 13,952 in bf16: the frame model's return embedding
    must see them in fp32, as the vector model's does."""
    model, k = tiny_model(), 6
    states, actions, _, timesteps = random_window(1, k)
    returns = torch.tensor([[13_975.0], [13_950.0], [13_925.0]]).expand(3, k)
    with torch.no_grad():
        embedded = model.encode_states(states).expand(3, -1, -1)
        exact = model._tokens(embedded, actions.expand(3, -1), returns, timesteps.expand(3, -1))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model._tokens(embedded, actions.expand(3, -1), returns, timesteps.expand(3, -1))
    return_tokens = mixed[:, 0::3].float()
    assert len({tuple(t.flatten().tolist()) for t in return_tokens}) == 3
    torch.testing.assert_close(return_tokens, exact[:, 0::3], rtol=0, atol=1e-5)


# --- the registry: one name, the module the task needs ------------------------------------------------------


def test_registry_picks_the_discrete_module_by_task():
    hopper = get_task("hopper-medium")
    assert type(make_config("cql", task=TASK)).__module__ == "baselines.cql_discrete"
    assert type(make_config("cql", task=hopper)).__module__ == type(make_config("cql")).__module__ == "baselines.cql"
    assert type(make_config("bc_10", task=TASK)).__module__ == "baselines.bc_discrete"
    assert make_config("bc_10", task=TASK).top_fraction == 0.1
    assert type(make_config("lamo", task=TASK)) is type(make_config("lamo", task=hopper))  # one family, both
    assert make_config("lamo", task=TASK).lora_r == 32 and make_config("lamo", task=hopper).lora_r == 16
    assert "target_update_interval" in config_fields("cql", TASK) and "cql_n_actions" in config_fields("cql")
    assert {n for n in ALGORITHMS if supports_discrete_actions(n)} == set(ALGORITHMS) - {"iql", "td3_bc"}
    record = make_record("cql", TASK.name, 0.1, 0, {"target_update_interval": 100})
    assert record.algorithm_config().target_update_interval == 100


@pytest.mark.parametrize("name", ["iql", "td3_bc"])
def test_continuous_only_algorithms_refuse_atari_naming_task_and_space(name):
    with pytest.raises(ValueError, match=rf"{name} needs a continuous 1-D Box action space; task "
                                         rf"'breakout-medium-gen' has Discrete\(4\)"):
        build_algorithm(name, make_config(name, task=TASK), setup_for())


def test_discrete_modules_refuse_continuous_tasks():
    hopper = get_task("hopper-medium")
    config = make_config("cql", task=TASK)
    with pytest.raises(Exception, match="runs baselines.cql, but was given a baselines.cql_discrete config"):
        build_algorithm("cql", config, setup_for(task=hopper))


@pytest.mark.parametrize("name, overrides", [
    ("bc", {"batch_size": 4}),
    ("cql", {"batch_size": 4, "target_update_interval": 2}),  # target copies at updates 2 and 4
    ("dt", {"batch_size": 2, "context_len": 3, "n_embd": 32, "n_layer": 1, "n_head": 2, "dropout": 0.0}),
])
def test_discrete_algorithms_resume_exactly_from_a_checkpoint(generated, name, overrides):
    dataset = DQNReplay("breakout", checkpoints=(10,)).load(path=generated[0])
    config = make_config(name, overrides, task=TASK)
    first = build_algorithm(name, config, setup_for(dataset))
    rng = np.random.default_rng(0)
    batches = [to_torch(first.sampler.sample(config.batch_size, rng), "cpu") for _ in range(4)]
    for batch in batches[:2]:
        first.update(batch)
    resumed = build_algorithm(name, config, setup_for(dataset, seed=5))
    resumed.load_state_dict(first.state_dict())
    for batch in batches[2:]:
        assert first.update(batch) == resumed.update(batch)


# --- evaluation on the real emulator ------------------------------------------------------------------------


class PixelHashPolicy:
    """Deterministic, depends on the frames, the step, the rewards so far and the target: a batched evaluator
    that mixed up environments, steps or histories would show."""

    def __init__(self, num_envs, targets):
        self.targets = np.asarray(targets if targets is not None else [0.0] * num_envs)
        self.steps, self.collected = np.zeros(num_envs, np.int64), np.zeros(num_envs)

    def act(self, observations):
        pixels = observations.reshape(len(observations), -1).astype(np.int64).sum(1)
        return (pixels // 7 + self.steps + self.collected.astype(np.int64) + self.targets.astype(np.int64)) % 4

    def observe(self, rewards, dones):
        self.steps += 1
        self.collected += rewards


def assert_same_episodes(batched, sequential):
    for b, s in zip(batched.targets, sequential.targets, strict=True):
        np.testing.assert_array_equal(b.seeds, s.seeds)
        np.testing.assert_array_equal(b.lengths, s.lengths)
        np.testing.assert_array_equal(b.returns, s.returns)


def test_batched_equals_sequential_episode_by_episode_on_breakout():
    targets = TASK.target_returns
    batched = evaluate_batched(TASK, PixelHashPolicy, num_episodes=2, seed=7, target_returns=targets)
    sequential = evaluate_sequential(TASK, PixelHashPolicy, num_episodes=2, seed=7, target_returns=targets)
    assert_same_episodes(batched, sequential)
    lengths = np.concatenate([t.lengths for t in batched.targets])
    assert len(set(lengths.tolist())) > 1 and lengths.max() < TASK.horizon  # episodes ended at different steps


def test_batched_equals_sequential_for_an_atari_sequence_model(generated):
    dataset = DQNReplay("breakout", checkpoints=(10,)).load(path=generated[0])
    config = make_config("dt", {"n_embd": 32, "n_layer": 1, "n_head": 2, "context_len": 4}, task=TASK)
    algorithm = build_algorithm("dt", config, setup_for(dataset))
    for _ in range(3):
        algorithm.update(to_torch(algorithm.sampler.sample(4, np.random.default_rng(0)), "cpu"))
    batched = evaluate_batched(TASK, algorithm.policy, num_episodes=1, seed=11, target_returns=TASK.target_returns)
    sequential = evaluate_sequential(TASK, algorithm.policy, num_episodes=1, seed=11,
                                     target_returns=TASK.target_returns)
    assert_same_episodes(batched, sequential)


def test_random_policy_scores_near_zero_human_normalized():
    rng = np.random.default_rng(0)
    result = evaluate_batched(TASK, lambda n, t: StatelessPolicy(lambda obs: rng.integers(0, 4, len(obs))),
                              num_episodes=4, seed=0)
    assert result.targets[0].returns.mean() < 5 and abs(result.targets[0].normalized.mean()) < 20


# --- sweep files --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["sweeps/lamo_atari.yaml", "sweeps/atari_quick.yaml"])
def test_atari_sweep_files_resolve_a_config_for_every_cell(path):
    spec = yaml.safe_load((REPO / path).read_text())
    reference = yaml.safe_load((REPO / "sweeps/lamo_paper.yaml").read_text())
    assert set(spec) <= set(reference) | {"training", "ratios"}
    training = spec.get("training", {})
    for entry in spec["algorithms"]:
        entry = {"name": entry} if isinstance(entry, str) else entry
        for task_entry in spec["tasks"]:
            task = get_task(task_entry["name"])
            values = {"num_steps": entry.get("steps", training.get("steps")),
                      "eval_every": entry.get("eval_every", training.get("eval_every")),
                      "eval_episodes": training.get("eval_episodes")}
            values = {k: v for k, v in values.items() if v is not None} | entry.get("overrides", {})
            config = make_config(entry["name"], values, task)
            assert supports_discrete_actions(entry["name"]), entry["name"]
            assert type(config).__module__ in ("trainers.sequence.config", "baselines.cql_discrete",
                                               "baselines.bc_discrete")
