"""The node dataset cache: a trial's dataset converted once per node, memory-mapped by every trial, identical to
the dataset read directly; concurrent loads convert once; damaged or stale entries are rebuilt, never read."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from trainers.data.checksums import sha256_of_tree
from trainers.data.d4rl import write_d4rl_dataset
from trainers.data.dqn_replay import REPLAY_LOGS, STORE_KEYS, store_file_name, write_npy_gz
from trainers.data.loading import conversion, forget_loaded_datasets, load_task_dataset
from trainers.data.node_cache import MANIFEST, entry_path, read_manifest
from trainers.data.samplers import TransitionSampler, WindowSampler, to_torch
from trainers.data.subsets import subsample_trajectories
from trainers.data.trajectories import DatasetError
from trainers.runtime.core import load_record_dataset
from trainers.runtime.record import make_record
from trainers.runtime.tasks import get_task

REACHER = get_task("reacher2d-medium")
BREAKOUT = get_task("breakout-medium-gen")
ARRAYS = ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh node cache per test, and no dataset kept in this process from another test."""
    monkeypatch.setenv("LAMO_DATASET_CACHE", str(tmp_path / "node-cache"))
    forget_loaded_datasets()
    yield tmp_path / "node-cache"
    forget_loaded_datasets()


@pytest.fixture
def reacher(tmp_path, reacher_medium_path) -> Path:
    """A private copy of the session's reacher2d-medium file (tests here rewrite it)."""
    copy = tmp_path / "reacher2d-medium.hdf5"
    copy.write_bytes(reacher_medium_path.read_bytes())
    return copy


@pytest.fixture
def breakout_run(tmp_path) -> Path:
    """A small DQN Replay run directory (checkpoint 10, the bucket's file names) of random frames and actions."""
    rng = np.random.default_rng(5)
    rows = 600
    terminal = np.zeros(rows, np.uint8)
    terminal[[90, 250, 251, 430]] = 1
    arrays = {"observation": rng.integers(0, 256, (rows, 84, 84), dtype=np.uint8),
              "action": rng.integers(0, 4, rows).astype(np.int32),
              "reward": rng.choice([-1.0, 0.0, 1.0], rows).astype(np.float32), "terminal": terminal}
    run = tmp_path / "Breakout" / "1"
    (run / REPLAY_LOGS).mkdir(parents=True)
    for key in STORE_KEYS:
        write_npy_gz(run / REPLAY_LOGS / store_file_name(key, 10), arrays[key])
    return run


def load(task, path, **kwargs):
    forget_loaded_datasets()  # through the node cache each time, not this process's memo
    return load_task_dataset(task, path, **kwargs)


def assert_same_dataset(cached, direct) -> None:
    for name in ARRAYS:
        a, b = getattr(cached, name), getattr(direct, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype and a.shape == b.shape, name
            np.testing.assert_array_equal(a, b, err_msg=name)
    for name in ("starts", "lengths", "terminated", "truncated"):
        np.testing.assert_array_equal(getattr(cached.episodes, name), getattr(direct.episodes, name))
    np.testing.assert_array_equal(cached.episode_ids, direct.episode_ids)
    same = ("name", "metadata", "source", "notes", "frame_stack", "ratio_sampling")
    assert {k: getattr(cached, k) for k in same} == {k: getattr(direct, k) for k in same}


def assert_same_batches(cached, direct, context_len: int, return_scale: float) -> None:
    for dataset_pair in [(cached, direct), (subsample_trajectories(cached, 0.5, 2),
                                            subsample_trajectories(direct, 0.5, 2))]:
        windows = [WindowSampler(d, context_len, return_scale).sample(16, np.random.default_rng(1))
                   for d in dataset_pair]
        transitions = [TransitionSampler(d).sample(16, np.random.default_rng(1)) for d in dataset_pair]
        for a, b in (windows, transitions):
            for field in dataclasses.fields(a):
                np.testing.assert_array_equal(getattr(a, field.name), getattr(b, field.name), err_msg=field.name)
            to_torch(a, "cpu")  # tensors from a batch of mapped data: writable copies, no warning (pytest -W error)


def test_a_d4rl_file_through_the_cache_is_the_same_dataset_memory_mapped(reacher, cache):
    direct = load(REACHER, reacher)
    cached = load(REACHER, reacher, shared=True)
    assert_same_dataset(cached, direct)
    assert_same_batches(cached, direct, context_len=5, return_scale=REACHER.return_scale)
    assert isinstance(cached.observations, np.memmap) and not cached.observations.flags.writeable
    entry = entry_path(reacher, conversion(REACHER, "split"), cache_dir=cache)
    assert Path(cached.observations.filename) == entry / "observations.npy"
    manifest = read_manifest(entry)
    assert manifest["source_digest"] == sha256_of_tree(reacher)[0]
    assert manifest["arrays"]["observations"]["shape"] == list(direct.observations.shape)


def test_atari_frames_through_the_cache_are_the_same_and_never_copied_whole(breakout_run):
    direct = load(BREAKOUT, breakout_run)
    cached = load(BREAKOUT, breakout_run, shared=True)
    assert_same_dataset(cached, direct)
    assert_same_batches(cached, direct, context_len=6, return_scale=BREAKOUT.return_scale)
    # The samplers gather frames per batch from the mapped file; they keep no whole copy of their own.
    sampler = WindowSampler(cached, 6, 1.0)
    assert sampler._frames.frames is cached.observations and sampler._actions is cached.actions


def test_second_load_finds_the_entry_without_reading_the_source(reacher, cache, monkeypatch):
    load(REACHER, reacher, shared=True)
    entry = entry_path(reacher, conversion(REACHER, "split"), cache_dir=cache)
    built_at = read_manifest(entry)["built"]
    monkeypatch.setattr("trainers.data.loading.read_dataset", lambda *a: pytest.fail("converted again"))
    assert load(REACHER, reacher, shared=True).num_episodes > 0
    assert read_manifest(entry)["built"] == built_at


# Workers load a task's dataset as a trial does; each prints its pid, what it did and a checksum of its arrays.
_WORKER = """
import hashlib, os, sys
from pathlib import Path
from trainers.data.loading import conversion, read_dataset
from trainers.data.node_cache import shared_dataset
from trainers.runtime.tasks import get_task
task, path = get_task(sys.argv[1]), Path(sys.argv[2])
print("ready", flush=True)
result = shared_dataset(path, conversion(task, "split"), lambda: read_dataset(path, task))
digest = hashlib.sha256()
for name in ("observations", "actions", "rewards", "terminals", "timeouts"):
    digest.update(getattr(result.dataset, name).tobytes())
print(os.getpid(), "built" if result.built else "found", digest.hexdigest(), flush=True)
"""


def _waiting_on(lock: Path) -> int:
    """How many processes wait for a flock on `lock` (the kernel's own list, /proc/locks)."""
    inode = f":{lock.stat().st_ino} "
    return sum(1 for line in Path("/proc/locks").read_text().splitlines() if "->" in line and inode in line)


def test_concurrent_trials_convert_once(reacher, cache):
    import fcntl

    entry = entry_path(reacher, conversion(REACHER, "split"), cache_dir=cache)
    cache.mkdir(parents=True)
    lock = entry.with_name(entry.name + ".lock")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # Hold the build lock, as a process in the middle of building would, so both workers meet it.
    with open(lock, "a+b") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        workers = [subprocess.Popen([sys.executable, "-c", _WORKER, REACHER.name, str(reacher)], cwd=REPO, env=env,
                                    stdout=subprocess.PIPE, text=True) for _ in range(2)]
        assert [w.stdout.readline().strip() for w in workers] == ["ready", "ready"]
        deadline = time.monotonic() + 120
        while _waiting_on(lock) < 2 and time.monotonic() < deadline:  # both blocked on the lock, not yet built
            time.sleep(0.1)
        assert _waiting_on(lock) == 2 and not (entry / MANIFEST).exists()
        fcntl.flock(held, fcntl.LOCK_UN)
    outputs = [w.communicate(timeout=120)[0].split() for w in workers]
    assert all(w.returncode == 0 for w in workers)
    assert sorted(what for _, what, _ in outputs) == ["built", "found"]
    builder = next(int(pid) for pid, what, _ in outputs if what == "built")
    assert read_manifest(entry)["built"]["pid"] == builder  # the one conversion, by the worker that said so
    direct, expected = load(REACHER, reacher), hashlib.sha256()
    for name in ("observations", "actions", "rewards", "terminals", "timeouts"):
        expected.update(getattr(direct, name).tobytes())
    assert {checksum for _, _, checksum in outputs} == {expected.hexdigest()}


@pytest.mark.parametrize("damage", ["truncated array", "array not .npy", "array missing", "manifest not JSON",
                                    "manifest with a wrong shape"])
def test_a_damaged_entry_is_rebuilt_not_read(reacher, cache, damage, monkeypatch):
    from trainers.data import loading

    direct = load(REACHER, reacher)
    load(REACHER, reacher, shared=True)
    entry = entry_path(reacher, conversion(REACHER, "split"), cache_dir=cache)
    observations = entry / "observations.npy"
    if damage == "truncated array":
        observations.write_bytes(observations.read_bytes()[:-100])
    elif damage == "array not .npy":
        (entry / "rewards.npy").write_bytes(b"garbage" * (entry / "rewards.npy").stat().st_size)
    elif damage == "array missing":
        observations.unlink()
    elif damage == "manifest not JSON":
        (entry / MANIFEST).write_text('{"format": 1, "key": ')
    else:
        manifest = read_manifest(entry)
        manifest["arrays"]["observations"]["shape"][0] -= 1
        (entry / MANIFEST).write_text(json.dumps(manifest))
    (cache / f".{entry.name}.killed.tmp").mkdir()  # what a build killed mid-way leaves behind
    conversions, read = [], loading.read_dataset
    monkeypatch.setattr(loading, "read_dataset", lambda *a: conversions.append(1) or read(*a))
    rebuilt = load(REACHER, reacher, shared=True)
    assert conversions == [1]
    assert_same_dataset(rebuilt, direct)
    assert sorted(p.name for p in cache.iterdir()) == sorted([entry.name, entry.name + ".lock"])  # no leftovers


def test_a_changed_source_is_converted_again(reacher, cache):
    before = load(REACHER, reacher, shared=True)
    entry = entry_path(reacher, conversion(REACHER, "split"), cache_dir=cache)
    rng = np.random.default_rng(0)
    n = 3 * REACHER.horizon
    write_d4rl_dataset(reacher, {"observations": rng.normal(size=(n, REACHER.observation_dim)).astype(np.float32),
                                 "actions": rng.uniform(-1, 1, (n, REACHER.action_dim)).astype(np.float32),
                                 "rewards": np.ones(n, np.float32), "terminals": np.zeros(n, bool),
                                 "timeouts": np.arange(n) % REACHER.horizon == REACHER.horizon - 1})
    after = load(REACHER, reacher, shared=True)
    assert len(after) == n != len(before)
    assert_same_dataset(after, load(REACHER, reacher))
    assert read_manifest(entry)["source_digest"] == sha256_of_tree(reacher)[0]


def test_a_record_goes_through_the_cache_and_refuses_data_changed_since_validation(reacher, cache):
    record = make_record("bc", REACHER.name, dataset_path=str(reacher))
    digest = sha256_of_tree(reacher)[0]
    record = dataclasses.replace(record, dataset=dataclasses.replace(record.dataset, digest=digest))
    dataset = load_record_dataset(record, REACHER)
    assert isinstance(dataset.observations, np.memmap)
    entry = entry_path(reacher, conversion(REACHER, "split"), digest=digest, cache_dir=cache)
    assert read_manifest(entry)["source_digest"] == digest
    # The sweep validated other bytes than the file now holds: refused, and the entry is not read.
    with open(reacher, "ab") as f:
        f.write(b"\0")
    forget_loaded_datasets()
    with pytest.raises(DatasetError, match="changed after the sweep started"):
        load_record_dataset(record, REACHER)


def test_an_unwritable_cache_directory_is_named(reacher, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"  # a cache directory that cannot be created (works as root too)
    blocker.write_text("")
    monkeypatch.setenv("LAMO_DATASET_CACHE", str(blocker))
    with pytest.raises(OSError, match=f"{blocker} is not writable.*LAMO_DATASET_CACHE"):
        load(REACHER, reacher, shared=True)


def test_cache_off_reads_a_private_copy(reacher, monkeypatch, cache):
    monkeypatch.setenv("LAMO_DATASET_CACHE", "off")
    dataset = load(REACHER, reacher, shared=True)
    assert not isinstance(dataset.observations, np.memmap) and not cache.exists()


def test_default_cache_directory_is_under_the_lamo_cache(monkeypatch, tmp_path, reacher):
    from trainers.data.node_cache import default_cache_dir

    monkeypatch.delenv("LAMO_DATASET_CACHE")
    monkeypatch.setenv("LAMO_CACHE_DIR", str(tmp_path / "lamo"))
    assert default_cache_dir() == tmp_path / "lamo" / "datasets"
    monkeypatch.delenv("LAMO_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "lamo-sweeps" / "datasets"
