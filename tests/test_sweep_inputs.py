"""Bad input is refused before anything starts: `python orchestrator/sweep.py` exits 2 naming the sweep file, the
field and the file or key at fault, having written nothing (no MLflow store, no storage directory) and started
no Ray. Every dataset the grid needs is opened and checked in full, and every data-ratio subset is computed."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import psutil
import pytest

from orchestrator.preflight import validate_sweep_inputs
from orchestrator.spec import expand_trials, load_spec
from orchestrator.sweep import main
from tests.conftest import synthetic_arrays
from tests.sweep_helpers import tiny_spec, write_spec
from trainers.data.d4rl import write_d4rl_dataset


def refused(tmp_path: Path, spec: dict, capsys) -> str:
    """Run the sweep in this process; it must refuse with exit code 2 and leave nothing behind."""
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    path = write_spec(tmp_path, spec)
    assert main(["--spec", str(path)]) == 2
    err = capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= children_before  # no Ray started
    assert str(path) in err
    return err


def copy_with(source: Path, target: Path, change) -> Path:
    """A copy of a dataset file with one change made through h5py."""
    shutil.copy(source, target)
    with h5py.File(target, "a") as f:
        change(f)
    return target


def _nan_rewards(f):
    rewards = f["rewards"][()]
    rewards[[3, 40]] = np.nan
    f["rewards"][...] = rewards


def _drop(key):
    return lambda f: f.__delitem__(key)


def _wide_observations(f):
    observations = f["observations"][()]
    del f["observations"]
    f.create_dataset("observations", data=np.concatenate([observations, observations[:, :1]], axis=1))


def written(target: Path, content: bytes) -> Path:
    target.write_bytes(content)
    return target


BAD_FILES = {
    "empty file": (lambda src, dst: written(dst, b""), "an empty file; expected D4RL's hdf5 layout"),
    "truncated hdf5": (lambda src, dst: written(dst, src.read_bytes()[:3000]),
                       "not a readable HDF5 file (3,000 bytes; truncated or another format"),
    "not hdf5": (lambda src, dst: written(dst, b"observations,actions\n1,2\n"), "not a readable HDF5 file"),
    "nan rewards": (lambda src, dst: copy_with(src, dst, _nan_rewards),
                    "rewards: 2 rows contain NaN or inf (first at index 3)"),
    "no actions": (lambda src, dst: copy_with(src, dst, _drop("actions")),
                   "actions: missing (required keys: observations, actions, rewards, terminals)"),
    "wrong observation size": (lambda src, dst: copy_with(src, dst, _wide_observations),
                               "observations: expected shape (N, 12) for this task, got"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_dataset_file_is_refused_naming_the_file_and_what_was_expected(tmp_path, reacher_medium_path, capsys,
                                                                            case):
    make, message = BAD_FILES[case]
    bad = make(reacher_medium_path, tmp_path / "bad.hdf5")
    err = refused(tmp_path, tiny_spec(tmp_path, bad), capsys)
    assert "tasks[0] (reacher2d-medium)" in err and str(bad) in err and message in err, err


def test_every_problem_is_reported_together(tmp_path, reacher_medium_path, capsys):
    """A ratio that selects nothing, a missing backbone, a missing corpus and a NaN dataset, in one message."""
    nan = copy_with(reacher_medium_path, tmp_path / "nan.hdf5", _nan_rewards)
    spec = tiny_spec(tmp_path, reacher_medium_path, ratios=[0.001, 1.0])
    spec["tasks"].append({"name": "reacher2d-expert", "dataset": str(nan)})
    spec["algorithms"].append({"name": "lamo", "overrides": {"backbone": str(tmp_path / "no-model"),
                                                             "lm_corpus": str(tmp_path / "no-corpus")}})
    err = refused(tmp_path, spec, capsys)
    assert "tasks[0] (reacher2d-medium): ratio 0.001: data ratio 0.001 of reacher2d-medium selects no trajectory: " \
           "the dataset has 60 trajectories" in err
    assert "tasks[1] (reacher2d-expert)" in err and "rewards: 2 rows contain NaN" in err
    assert "algorithms[1] (lamo): backbone (pre-trained GPT-2)" in err and "no-model" in err
    assert "algorithms[1] (lamo): lm_corpus (language corpus)" in err and "no-corpus" in err


def test_a_repeated_seed_is_refused_before_anything_is_written(tmp_path, reacher_medium_path, capsys):
    err = refused(tmp_path, tiny_spec(tmp_path, reacher_medium_path, seeds=[0, 1, 0]), capsys)
    assert "seeds: seeds must be unique; repeated: 0" in err


def test_a_hyperparameter_out_of_range_is_refused_before_anything_is_written(tmp_path, reacher_medium_path, capsys):
    spec = tiny_spec(tmp_path, reacher_medium_path, algorithms=[{"name": "td3_bc", "overrides": {"tau": 2}}])
    err = refused(tmp_path, spec, capsys)
    assert "algorithms[0] (td3_bc" in err and "td3_bc: tau: Input should be less than or equal to 1, got 2" in err


def long_episode_file(path: Path) -> Path:
    """Reacher2d's horizon is 100: one 250-step 'episode' whose flags were lost, and two ordinary ones."""
    arrays = synthetic_arrays([250, 80, 90], obs_dim=12, act_dim=2)
    return write_d4rl_dataset(path, arrays)


def test_episodes_longer_than_the_horizon_are_split_and_said_or_refused(tmp_path, capsys):
    data = long_episode_file(tmp_path / "long.hdf5")
    spec = load_spec(write_spec(tmp_path, tiny_spec(tmp_path, data, seeds=[0])))
    records, notes = validate_sweep_inputs(expand_trials(spec), spec, "sweep.yaml")
    assert notes == [f"{data}: 1 episode(s) longer than the task's horizon 100 (the longest has 250 steps) were split "
                     f"every 100 steps"]
    assert records[0].dataset.episodes == 5 and records[0].dataset.notes == (notes[0].split(": ", 1)[1],)

    strict = tiny_spec(tmp_path, data, seeds=[0])
    strict["tasks"][0]["long_episodes"] = "refuse"
    err = refused(tmp_path, strict, capsys)
    assert f"{data}: 1 episode(s) longer than the task's horizon 100" in err and "set long_episodes: split" in err


def test_validation_fills_the_records_dataset_identity(tmp_path, reacher_medium_path):
    spec = load_spec(write_spec(tmp_path, tiny_spec(tmp_path, reacher_medium_path, ratios=[0.5, 1.0])))
    records, notes = validate_sweep_inputs(expand_trials(spec), spec, "sweep.yaml")
    from trainers.data.checksums import sha256_of_tree

    assert notes == [] and len(records) == 4
    assert {r.dataset.digest for r in records} == {sha256_of_tree(reacher_medium_path)[0]}
    assert {(r.ratio, r.dataset.subset_episodes) for r in records} == {(0.5, 30), (1.0, 60)}
    assert all(r.dataset.episodes == 60 and r.dataset.size_bytes > 0 for r in records)
