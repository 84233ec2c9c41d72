"""The production tracking path, for real: a PostgreSQL server behind `mlflow server` on 127.0.0.1 (artifacts
proxied through the server), one real trial logging to it over HTTP, and everything read back through the
server. Also MLflow's basic-auth app with the project's settings (cluster/mlflow-basic-auth.ini).

The servers are tests/services.py's (PostgreSQL is Debian's package; when it is missing the tests skip and say so).

`mlflow_postgres_server` (session scope) yields the tracking URI for other tests that need a real server.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from orchestrator.tracking import SweepTracker, TrackingError, check_tracking_uri
from tests.services import (
    ServiceUnavailable,
    free_port,
    running_postgres,
    start_mlflow_server,
    stop_process_group,
)

ROOT = Path(__file__).resolve().parents[1]
SERVER_START_TIMEOUT = 180  # first start migrates an empty PostgreSQL schema
MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # 0.4 GB instead of 1.2 GB per server


# --- servers (tests/services.py) ---------------------------------------------------------------------------

@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL cluster on 127.0.0.1 (TCP only, password auth), removed afterwards."""
    try:
        with running_postgres() as server:
            yield server
    except ServiceUnavailable as reason:
        pytest.skip(str(reason))


@pytest.fixture(scope="session")
def mlflow_postgres_server(postgres_server, tmp_path_factory):
    """The tracking URI of an `mlflow server` whose backend store is PostgreSQL and which proxies artifacts."""
    backend = postgres_server.create_database("mlflow")
    uri, process, _ = start_mlflow_server(backend, tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield uri
    finally:
        stop_process_group(process)


# --- tests ------------------------------------------------------------------------------------------------

def test_check_tracking_uri_accepts_the_server(mlflow_postgres_server):
    check_tracking_uri(mlflow_postgres_server)


def test_mlflow_client_telemetry_is_off_where_the_orchestrator_runs():
    """Its config thread, unable to reach its endpoint, edits os.environ while requests read it: a trial's request
    failed that way at 720 trials (orchestrator/__init__.py). A user who sets the variable keeps their choice."""
    probe = ("import orchestrator.tracking, mlflow, os; from mlflow.telemetry.client import get_telemetry_client; "
             "print(os.environ['MLFLOW_DISABLE_TELEMETRY'], get_telemetry_client() is None)")

    def run(**variables) -> list[str]:
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_DISABLE_TELEMETRY"} | variables
        result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
        return result.stdout.split()

    assert run() == ["true", "True"]  # off, and no telemetry client
    assert run(MLFLOW_DISABLE_TELEMETRY="false")[0] == "false"


def test_check_tracking_uri_names_a_closed_port():
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(TrackingError, match=re.escape(uri)):
        check_tracking_uri(uri)


def http_status(url: str, host: str | None = None, auth: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    if auth:
        import base64

        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_server_refuses_a_host_header_outside_allowed_hosts(mlflow_postgres_server):
    """--allowed-hosts (as in docker-compose.yml): a DNS-rebinding request with a foreign Host gets 403."""
    url = f"{mlflow_postgres_server}/api/2.0/mlflow/experiments/search?max_results=1"
    assert http_status(url) == 200
    assert http_status(url, host="attacker.example:80") == 403
    assert http_status(f"{mlflow_postgres_server}/health", host="attacker.example:80") == 200  # probes still work


def test_sweep_logs_through_the_postgres_backed_server(mlflow_postgres_server, postgres_server, reacher_medium_path,
                                                       tmp_path):
    """`python orchestrator/sweep.py` with tracking.uri = the server: a real one-trial sweep over HTTP."""
    import mlflow.artifacts
    from mlflow.tracking import MlflowClient

    from tests.sweep_helpers import run_sweep, tiny_spec, write_spec

    uri = mlflow_postgres_server
    spec = tiny_spec(tmp_path, reacher_medium_path, ratios=[0.5], seeds=[0],
                     tracking={"uri": uri, "experiment": "it-test"})
    result = run_sweep(write_spec(tmp_path, spec))
    assert result.returncode == 0, result.stdout[-3000:]

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("it-test").experiment_id
    (parent_run,) = client.search_runs([experiment], "tags.role = 'sweep'")
    (run,) = client.search_runs([experiment], "tags.role = 'trial'")
    parent, run_id = parent_run.info.run_id, run.info.run_id
    assert run.info.status == "FINISHED" and parent_run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags["trial_id"] == "bc.reacher2d-medium.r0.5.s0"
    assert run.data.params["trial.algorithm"] == "bc"
    history = client.get_metric_history(run_id, "eval/policy/normalized_mean")
    assert sorted(m.step for m in history) == [100, 200]
    assert "cost/wall_seconds" in run.data.metrics
    assert run.data.tags.get("trajectory_ids"), "the trial's trajectory ids are tagged"

    # Artifacts went through the server's proxy (mlflow-artifacts:), not to a path on this machine.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
    listed = {artifact.path: artifact for artifact in client.list_artifacts(run_id)}
    assert {"trial_record.json", "metrics.jsonl", "eval_episodes.csv", "trajectory_ids.json", "model"} <= set(listed), sorted(listed)
    assert listed["model"].is_dir and client.list_artifacts(run_id, "model"), "model/ holds the exported weights"
    downloaded = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="trial_record.json", tracking_uri=uri,
                                                     dst_path=str(tmp_path / "download"))
    assert json.loads(Path(downloaded).read_text())["dataset"]["source"] == str(reacher_medium_path)

    # The runs are rows in PostgreSQL: the server's backend store really is the database.
    connection = postgres_server.connect("mlflow")
    with connection.cursor() as cursor:
        cursor.execute("SELECT run_uuid, status FROM runs WHERE run_uuid IN (%s, %s)", (run_id, parent))
        assert dict(cursor.fetchall()) == {run_id: "FINISHED", parent: "FINISHED"}
    connection.close()


def test_basic_auth_app_with_the_projects_settings(tmp_path, monkeypatch):
    """The compose stack's MLFLOW_AUTH=basic-auth: the shipped ini, the admin password from the environment,
    clients logging in with MLFLOW_TRACKING_USERNAME/PASSWORD."""
    pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs the `mlflow[auth]` extra (Flask-WTF)")
    settings = configparser.ConfigParser()
    settings.read(ROOT / "cluster/mlflow-basic-auth.ini")
    assert "admin_password" not in settings["mlflow"], "the admin password must come from the environment"
    assert settings["mlflow"]["database_uri"].startswith("sqlite:////var/lib/mlflow-auth/"), "kept in a volume"
    settings["mlflow"]["database_uri"] = f"sqlite:///{tmp_path / 'basic_auth.db'}"  # this machine's stand-in
    ini = tmp_path / "basic_auth.ini"
    with ini.open("w") as f:
        settings.write(f)
    password = secrets.token_urlsafe(12)
    uri, process, _ = start_mlflow_server(
        f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path, ["--app-name", "basic-auth"],
        env={"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_PASSWORD": password,
             "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)})
    try:
        search = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
        assert http_status(search) == 401, "no credentials, no access"
        assert http_status(search, auth=("admin", "wrong-password")) == 401
        assert http_status(search, auth=("admin", password)) == 200
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        check_tracking_uri(uri)  # /health stays open for probes
        tracker = SweepTracker(uri, "auth-test", "auth-0123456789")
        parent = tracker.start_sweep("auth", {})
        assert tracker.client.get_run(parent).data.tags["role"] == "sweep"
    finally:
        stop_process_group(process)
