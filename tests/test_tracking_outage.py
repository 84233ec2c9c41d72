"""A tracking outage during a sweep: a real `mlflow server` on 127.0.0.1 is stopped while a trial trains and
started again on the same port and store. Training does not stall, the sweep's progress says what is going on,
and when the server is back every metric arrives, each step exactly once. A trial's own requests outside its
delivery thread (its run, its placement) are tried again while the server is away, and a run whose creation was
cut off is completed by the next attempt."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.services import start_mlflow_server, stop_process_group
from tests.sweep_helpers import SWEEP, stop_process_tree, tiny_spec, write_spec

OUTAGE_S = 12.0


def test_training_goes_on_through_a_tracking_outage_and_nothing_is_lost(tmp_path, reacher_medium_path):
    import subprocess
    import sys

    import psutil

    backend = f"sqlite:///{tmp_path}/server.db"
    uri, server, _ = start_mlflow_server(backend, tmp_path)
    port = int(uri.rsplit(":", 1)[1])
    steps = 30_000
    spec = tiny_spec(tmp_path, reacher_medium_path, seeds=[0], tracking={"uri": uri},
                     training={"steps": steps, "eval_every": 10_000, "eval_episodes": 2})
    out = tmp_path / "sweep.log"
    with out.open("w") as log:
        driver = subprocess.Popen([sys.executable, str(SWEEP), "--spec", str(write_spec(tmp_path, spec))],
                                  stdout=log, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    tree = [psutil.Process(driver.pid)]
    try:
        client = MlflowClient(uri)
        run_id = None
        while run_id is None or not client.get_metric_history(run_id, "train/steps_per_second"):  # training has started
            assert driver.poll() is None, out.read_text()[-3000:]
            experiment = client.get_experiment_by_name("lamo-sweeps")
            runs = client.search_runs([experiment.experiment_id], "tags.role = 'trial'") if experiment else []
            run_id = runs[0].info.run_id if runs else None
            time.sleep(0.5)
        stop_process_group(server)
        stopped = time.time() * 1000
        time.sleep(OUTAGE_S)
        restarted = time.time() * 1000
        _, server, _ = start_mlflow_server(backend, tmp_path, port=port)
        assert driver.wait(timeout=900) == 0, out.read_text()[-3000:]
        run = client.get_run(run_id)
        history = sorted(client.get_metric_history(run_id, "train/steps_per_second"), key=lambda m: m.step)
        artifacts = {f.path for f in client.list_artifacts(run_id)}
    finally:
        tree += [p for p in tree[0].children(recursive=True)] if tree[0].is_running() else []
        stop_process_tree(tree)
        stop_process_group(server)
    output = out.read_text()

    assert run.info.status == "FINISHED"
    assert [m.step for m in history] == list(range(100, steps + 1, 100))  # every step once, none lost
    # Metrics carry the time the trial reported them: training went on while the server was down.
    during = [m for m in history if stopped < m.timestamp < restarted]
    gaps = [(b.timestamp - a.timestamp) / 1000 for a, b in zip(history, history[1:])]
    print(f"{len(during)} reports made during the {OUTAGE_S:.0f} s outage; longest gap {max(gaps):.1f} s")
    assert len(during) >= 5 and max(gaps) < OUTAGE_S / 2, (len(during), max(gaps))
    assert "cannot reach the tracking server" in output and "reaches the tracking server again" in output
    assert "1 trials finished, 0 failed" in output
    assert {"metrics.jsonl", "trial_record.json", "eval_episodes.csv"} <= artifacts
    lines = Path(tmp_path, "ray_results").glob("tiny-*/trials/*/metrics.jsonl")
    assert sum(1 for line in next(lines).read_text().splitlines() if '"train/steps_per_second"' in line) == steps // 100


def test_a_trials_own_requests_are_tried_again_while_the_server_is_away_and_no_longer():
    from mlflow.exceptions import MlflowException, RestException

    from orchestrator.tracking import retrying

    slept, answers = [], iter([MlflowException("API request to http://127.0.0.1:1/api/2.0/mlflow/runs/create failed "
                                               "with exception ('Connection aborted.', RemoteDisconnected())"),
                               RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}), "run"])

    def call():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert retrying(call, max_outage_s=60, sleep=slept.append) == "run"
    assert slept == [1.0, 2.0]  # a dropped connection, then a 503, then the answer
    wrong = RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad key"})  # a 400: not retried
    with pytest.raises(RestException, match="bad key"):
        retrying(lambda: (_ for _ in ()).throw(wrong), max_outage_s=60, sleep=slept.append)
    assert slept == [1.0, 2.0]
    refused = MlflowException("API request to http://127.0.0.1:1/x failed with exception Connection refused")
    with pytest.raises(MlflowException, match="Connection refused"):  # the outage outlasts max_outage_s
        retrying(lambda: (_ for _ in ()).throw(refused), max_outage_s=20, sleep=slept.append)
    assert slept == [1.0, 2.0, 1.0, 2.0, 5.0, 10.0]


def test_a_trial_run_whose_creation_was_cut_off_gets_its_params_and_dataset_on_the_next_attempt(tmp_path,
                                                                                               monkeypatch):
    """The first attempt's connection drops after the run was created: the retry finds that run and completes it,
    and no second run is made."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking import SweepTracker, retrying
    from trainers.runtime.record import make_record

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SweepTracker(uri, "lamo-sweeps", "cut-0123456789")
    parent = tracker.start_sweep("cut", {"seeds": [0], "ratios": [1.0]})
    record = make_record("bc", "hopper-medium", 1.0, 0, {"num_steps": 100, "eval_every": 50}, sweep_id="cut-0123456789")
    complete = SweepTracker._log_params_and_dataset
    cut = []

    def cut_once(self, run_id, record):
        if not cut:
            cut.append(run_id)
            raise MlflowException("API request to http://127.0.0.1:1/api/2.0/mlflow/runs/log-batch failed with "
                                  "exception ('Connection aborted.', RemoteDisconnected())")
        complete(self, run_id, record)

    monkeypatch.setattr(SweepTracker, "_log_params_and_dataset", cut_once)
    run_id, finished = retrying(lambda: tracker.trial_run(parent, record), max_outage_s=30, sleep=lambda s: None)
    assert finished is None and cut == [run_id]
    runs = MlflowClient(uri).search_runs([tracker.experiment_id], "tags.role = 'trial'")
    assert [r.info.run_id for r in runs] == [run_id]
    assert runs[0].data.params["trial.algorithm"] == "bc" and runs[0].inputs.dataset_inputs
