"""Incremental sweeps: a trial's fingerprint (what it computes, the code it runs), and a grown or repeated grid that
trains only what no earlier sweep finished — real sweeps (their own local Ray), a real sqlite MLflow store."""

from __future__ import annotations

import dataclasses
import glob
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from orchestrator import tracking
from orchestrator.aggregate import aggregate_sweep
from orchestrator.fingerprint import ROOT, code_files, fingerprint, trial_code
from orchestrator.report import cost_table
from orchestrator.reuse import describe, find_reusable, plan_reuse
from orchestrator.scores import aggregate_runs
from tests.sweep_helpers import (
    kill_once_checkpointed,
    mlflow_runs,
    run_sweep,
    stop_process_tree,
    tiny_spec,
    write_spec,
)
from trainers.runtime.record import make_record

TASK = "reacher2d-medium"


def validated(record, digest="ab" * 32):
    """A record as the sweep's validation pass leaves it (the dataset digest and counts set)."""
    return dataclasses.replace(record, dataset=dataclasses.replace(record.dataset, digest=digest, episodes=60,
                                                                   transitions=6000, subset_episodes=60))


# --- the fingerprint ------------------------------------------------------------------------------------------


def test_the_code_of_a_trial_is_its_algorithms_import_closure_and_the_trial_cores():
    bc = code_files(("baselines.bc", "trainers.runtime.core"))
    assert {"baselines/bc.py", "baselines/common.py", "baselines/__init__.py", "trainers/runtime/core.py",
            "trainers/runtime/evaluation.py", "trainers/data/samplers.py", "trainers/runtime/registry.py"} <= set(bc)
    # The registry is counted, not followed: the other algorithms and the orchestrator are not bc's code.
    assert not [path for path in bc if path.startswith(("baselines/iql", "baselines/cql", "trainers/sequence/",
                                                          "orchestrator/"))]
    lamo = trial_code(make_record("lamo", TASK))
    assert {"trainers/sequence/algorithm.py", "trainers/sequence/gpt2.py", "trainers/sequence/schedule.py"} <= set(lamo)
    assert "baselines/bc.py" not in lamo


def test_the_fingerprint_is_what_the_trial_computes_and_nothing_else(tmp_path):
    base = validated(make_record("bc", TASK, 0.1, 0, {"num_steps": 200, "eval_every": 100}))
    same = fingerprint(base)
    for elsewhere in (dataclasses.replace(base, sweep_id="another-sweep", log_every=7),
                      dataclasses.replace(base, dataset=dataclasses.replace(base.dataset, source="/elsewhere/x.hdf5"))):
        assert fingerprint(elsewhere) == same  # names, locations, reporting cadence
    different = [validated(make_record("bc", TASK, 0.1, 1, {"num_steps": 200, "eval_every": 100})),
                 validated(make_record("bc", TASK, 0.1, 0, {"num_steps": 300, "eval_every": 100})),
                 validated(make_record("bc", TASK, 0.1, 0, {"num_steps": 200, "eval_every": 50})),
                 validated(make_record("bc", TASK, 0.5, 0, {"num_steps": 200, "eval_every": 100})),
                 validated(base, digest="cd" * 32), dataclasses.replace(base, eval_seed=3)]
    assert len({fingerprint(r).inputs for r in different} | {same.inputs}) == len(different) + 1
    # A local model enters by its files, not its path: two copies are one input, an edited one is another.
    first, second = tmp_path / "a" / "tiny", tmp_path / "b" / "tiny"
    for directory in (first, second):
        directory.mkdir(parents=True)
        (directory / "config.json").write_text('{"n_embd": 32}')
        (directory / "model.safetensors").write_bytes(b"weights")
    lamo = [validated(make_record("lamo", TASK, overrides={"backbone": str(d), "lm_coef": 0.0}))
            for d in (first, second)]
    assert lamo[0].config["backbone"] != lamo[1].config["backbone"]
    assert fingerprint(lamo[0]) == fingerprint(lamo[1])
    (tmp_path / "edited").mkdir()
    shutil.copytree(first, tmp_path / "edited" / "tiny")
    (tmp_path / "edited" / "tiny" / "model.safetensors").write_bytes(b"other weights")
    edited = validated(make_record("lamo", TASK, overrides={"backbone": str(tmp_path / "edited" / "tiny"),
                                                            "lm_coef": 0.0}))
    assert fingerprint(edited).inputs != fingerprint(lamo[0]).inputs


def fake_run(run_id, sweep, inputs, code, end, eval_step=200, files=None):
    metric = SimpleNamespace(key="eval/policy/normalized_mean", value=1.0, step=eval_step, timestamp=end)
    tags = {"fingerprint": inputs, "code_digest": code, "code_files": json.dumps(files or {}), "sweep_id": sweep}
    return SimpleNamespace(info=SimpleNamespace(run_id=run_id, end_time=end, start_time=end - 1),
                           data=SimpleNamespace(tags=tags, _metric_objs=[metric]))


def test_the_newest_of_equal_runs_is_reused_and_unusable_ones_are_said():
    records = [validated(make_record("bc", TASK, 1.0, seed, {"num_steps": 200, "eval_every": 100}))
               for seed in (0, 1, 2)]
    prints = {r.trial_id: fingerprint(r) for r in records}
    s0, s1, s2 = (prints[r.trial_id] for r in records)
    candidates = [fake_run("newer", "restarted", s0.inputs, s0.code, 2000),  # newest first, as the store gives
                  fake_run("older", "restarted", s0.inputs, s0.code, 1000),
                  fake_run("short", "cut", s1.inputs, s1.code, 1500, eval_step=100),
                  fake_run("mine", "this-sweep", s2.inputs, s2.code, 1500)]
    plan = plan_reuse(records, prints, candidates, sweep_id="this-sweep")
    assert [(r.trial_id, run.info.run_id) for r, run in plan.reused] == [(records[0].trial_id, "newer")]
    assert [r.seed for r in plan.to_train] == [1, 2]  # its own sweep's runs are Tune's to resume, not reuse
    text = "\n".join(describe(plan))
    assert text.startswith("3 trials: 1 finished in earlier sweeps (reused), 1 finished in this sweep already "
                           "(resuming skips them), 1 to train")
    assert "bc.reacher2d-medium.r1: s0 reused from restarted" in text
    assert "using the newest, newer of restarted" in text and "older of restarted" in text
    assert "s1 not reused: run short of cut finished, but its last evaluation of eval/policy/normalized_mean is " \
           "before its last step 200; retrained" in text


def test_an_unreadable_store_stops_the_sweep_before_training(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracking.SweepTracker(uri, "lamo-sweeps", "x")  # the store and experiment exist
    record = validated(make_record("bc", TASK))

    def down(*args):
        raise ConnectionError("connection refused")

    monkeypatch.setattr("orchestrator.reuse.finished_fingerprinted_runs", down)
    with pytest.raises(tracking.TrackingError, match=r"looking up finished trials to reuse in sqlite:///.*failed "
                                                     r"\(connection refused\); nothing was trained"):
        find_reusable(uri, "lamo-sweeps", [record], {record.trial_id: fingerprint(record)}, "x")


# --- grown sweeps, end to end ---------------------------------------------------------------------------------


def trained_in(tmp_path: Path, sweep_id: str) -> set[str]:
    """The trials whose actors started training in this sweep (each writes its files under trials/<id>)."""
    return {Path(p).name for p in glob.glob(str(tmp_path / "ray_results" / sweep_id / "trials" / "*"))}


def sweep_id_in(output: str) -> str:
    return next(line.split()[1].rstrip(":") for line in output.splitlines() if line.startswith("sweep ") and
                "trials" in line)


def test_a_grown_grid_trains_only_its_new_trials(tmp_path, reacher_medium_path):
    bc = {"name": "bc", "overrides": {"hidden_dims": [32, 32]}, "steps": 100, "eval_every": 50}
    td3 = {"name": "td3_bc", "overrides": {"hidden_dims": [32, 32]}, "steps": 100, "eval_every": 50}
    first = tiny_spec(tmp_path, reacher_medium_path, algorithms=[bc], seeds=[0])
    grown = first | {"algorithms": [bc, td3], "seeds": [0, 1]}
    uri = first["tracking"]["uri"]
    a = run_sweep(write_spec(tmp_path, first, "a.yaml"), cwd=tmp_path)
    assert a.returncode == 0, a.stdout[-3000:]
    a_id = sweep_id_in(a.stdout)
    (original,) = mlflow_runs(uri)[1]

    dry = run_sweep(write_spec(tmp_path, grown, "b.yaml"), "--dry-run", cwd=tmp_path)
    assert "4 trials: 1 finished in earlier sweeps (reused), 3 to train" in dry.stdout, dry.stdout[-2000:]
    assert f"bc.reacher2d-medium.r1: s0 reused from {a_id}" in dry.stdout
    assert "4 trials: 0 finished in earlier sweeps (reused), 4 to train" in run_sweep(
        tmp_path / "b.yaml", "--dry-run", "--no-reuse", cwd=tmp_path).stdout

    b = run_sweep(tmp_path / "b.yaml", cwd=tmp_path)
    assert b.returncode == 0, b.stdout[-3000:]
    b_id = sweep_id_in(b.stdout)
    assert "4 trials finished (1 of them reused from earlier sweeps), 0 failed" in b.stdout
    assert trained_in(tmp_path, b_id) == {"bc.reacher2d-medium.r1.s1", "td3_bc.reacher2d-medium.r1.s0",
                                          "td3_bc.reacher2d-medium.r1.s1"}  # the reused trial never started
    client = MlflowClient(uri)
    parents, children = mlflow_runs(uri)
    b_parent = next(p for p in parents if p.data.tags["sweep_id"] == b_id)
    light = [c for c in children if c.data.tags.get("mlflow.parentRunId") == b_parent.info.run_id
             and "reused_from" in c.data.tags]
    assert [(c.data.tags["trial_id"], c.data.tags["reused_from"], c.data.tags["reused_from_sweep"]) for c in light] \
        == [("bc.reacher2d-medium.r1.s0", original.info.run_id, a_id)]
    after = client.get_run(original.info.run_id)  # the original stays where it is, unchanged
    assert (after.data.tags, after.data.metrics, after.info.end_time, after.data.tags["mlflow.parentRunId"]) == (
        original.data.tags, original.data.metrics, original.info.end_time, original.data.tags["mlflow.parentRunId"])

    # Scored as if this sweep had trained it: the same aggregate as over the original runs themselves.
    grown_result = aggregate_sweep(uri, "lamo-sweeps", b_id, out_dir=tmp_path / "report-b", log_artifacts=False)
    experiment = client.get_experiment_by_name("lamo-sweeps").experiment_id
    originals = [r for parent in parents for r in tracking.read_trial_runs(client, experiment, parent.info.run_id)
                 if not r.reused_from]
    direct = aggregate_runs(originals, "paper", sweep_id=b_id, sweep_name="grow", parent_run_id="-", resamples=2000)
    assert [(c.algorithm, c.ratio, list(c.scores), c.label) for c in grown_result.cells] == \
        [(c.algorithm, c.ratio, list(c.scores), c.label) for c in direct.cells]
    cost = {row[0]: row for row in cost_table(grown_result).rows}
    assert cost["bc"][1] == "1" and cost["bc"][4] == "1" and cost["td3_bc"][4] == "0"  # reused cost apart
    table = (tmp_path / "report-b" / "tables.md").read_text()
    assert f"| bc | reacher2d-medium | 100% | {a_id} (1), {b_id} (1) |" in table

    # Several sweeps as one: each computation once, the cells saying where their runs came from.
    both = aggregate_sweep(uri, "lamo-sweeps", [a_id, b_id], out_dir=tmp_path / "report-ab", log_artifacts=False)
    assert len(both.runs) == 4 and sorted(r.source_sweep for r in both.runs) == sorted([a_id, b_id, b_id, b_id])

    # One line of one baseline's source changed: its trials are stale (the file named) and retrained; the other
    # algorithm's trials are still reused.
    code = tmp_path / "code"
    for package in ("trainers", "baselines"):
        shutil.copytree(ROOT / package, code / package, ignore=shutil.ignore_patterns("__pycache__"))
    source = code / "baselines" / "bc.py"
    source.write_text(source.read_text().replace('"""', '"""A changed line.\n', 1))
    records = [dataclasses.replace(r.record, sweep_id="grow-again")
               for r in tracking.read_trial_runs(client, experiment, b_parent.info.run_id)]
    plan = find_reusable(uri, "lamo-sweeps", records, {r.trial_id: fingerprint(r, code) for r in records},
                         "grow-again")
    assert sorted(r.trial_id for r, _ in plan.reused) == ["td3_bc.reacher2d-medium.r1.s0",
                                                          "td3_bc.reacher2d-medium.r1.s1"]
    assert {r.trial_id for r in plan.to_train} == set(plan.stale) == {"bc.reacher2d-medium.r1.s0",
                                                                      "bc.reacher2d-medium.r1.s1"}
    assert all(files == ["baselines/bc.py"] for _, files in plan.stale.values())
    assert "s0 stale: run" in "\n".join(describe(plan)) and "(baselines/bc.py changed); retrained" in "\n".join(
        describe(plan))

    # The artifact store gone: the reused run still scores (its metrics live in the tracking store).
    shutil.rmtree(tmp_path / "mlruns", ignore_errors=True)
    again = aggregate_sweep(uri, "lamo-sweeps", b_id, out_dir=tmp_path / "report-b2", log_artifacts=False)
    assert [list(c.scores) for c in again.cells] == [list(c.scores) for c in grown_result.cells]


def test_a_grown_sweep_killed_mid_way_trains_nothing_twice(tmp_path, reacher_medium_path):
    bc = {"name": "bc", "overrides": {"hidden_dims": [32, 32]}, "steps": 100, "eval_every": 50}
    long = {"name": "td3_bc", "overrides": {"hidden_dims": [32, 32]}, "steps": 3000, "eval_every": 500}
    first = tiny_spec(tmp_path, reacher_medium_path, algorithms=[bc], seeds=[0, 1])
    assert run_sweep(write_spec(tmp_path, first, "a.yaml"), cwd=tmp_path).returncode == 0
    grown = write_spec(tmp_path, first | {"algorithms": [bc, long], "seeds": [0, 1]}, "c.yaml")
    uri = first["tracking"]["uri"]
    checkpoints = str(tmp_path / "ray_results" / "tiny-*" / "tune" / "td3_bc.*" / "checkpoint_*")
    tree = kill_once_checkpointed(grown, checkpoints, tmp_path)
    result = run_sweep(grown, cwd=tmp_path)
    stop_process_tree(tree)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "4 trials: 2 finished in earlier sweeps (reused), 2 to train" in result.stdout
    parents, children = mlflow_runs(uri)
    c_parent = next(p for p in parents if p.data.tags["sweep_id"] == sweep_id_in(result.stdout))
    mine = [c for c in children if c.data.tags["mlflow.parentRunId"] == c_parent.info.run_id]
    assert sorted(c.data.tags["trial_id"] for c in mine) == sorted(
        f"{a}.reacher2d-medium.r1.s{s}" for a in ("bc", "td3_bc") for s in (0, 1))  # each trial once
    assert sum("reused_from" in c.data.tags for c in mine) == 2
    assert all(c.info.status == "FINISHED" for c in mine)
    assert len([c for c in children if c.data.tags["trial_id"].startswith("bc.")]) == 4  # 2 trained, 2 light
    resumed = [c for c in mine if c.data.tags["trial_id"].startswith("td3_bc.")]
    assert any(c.data.metrics.get("resumed_from_step", 0) >= 500 for c in resumed)
