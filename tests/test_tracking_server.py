"""The production tracking path, for real: a PostgreSQL server behind `mlflow server` on 127.0.0.1 (artifacts
proxied through the server), one real trial logging to it over HTTP, and everything read back through the
server. Also MLflow's basic-auth app with the project's settings (cluster/mlflow-basic-auth.ini).

PostgreSQL is Debian's package (`apt-get install -y postgresql`); when its binaries are missing the tests skip
and say so. As root (CI), the database server runs as the `postgres` system user, because initdb refuses root.
Every server is started here and stopped by its process id.

`mlflow_postgres_server` (session scope) yields the tracking URI for other tests that need a real server.
"""

from __future__ import annotations

import configparser
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.tracking import SweepTracker, TrackingError, check_tracking_uri

ROOT = Path(__file__).resolve().parents[1]
SERVER_START_TIMEOUT = 180  # first start migrates an empty PostgreSQL schema
MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # 0.4 GB instead of 1.2 GB per server


# --- process helpers --------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def wait_until(ready, process: subprocess.Popen, log: Path, what: str, timeout: float = SERVER_START_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} while starting:\n{log_tail(log)}")
        if ready():
            return
        time.sleep(0.5)
    raise RuntimeError(f"{what} not ready after {timeout:.0f} s:\n{log_tail(log)}")


def stop_process_group(process: subprocess.Popen, timeout: float = 30) -> None:
    """Stop a server started with start_new_session=True: its group id is its process id (it also reaches the
    workers a server forks, e.g. uvicorn's)."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout)
    except ProcessLookupError:
        pass


def health_ok(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


# --- PostgreSQL -------------------------------------------------------------------------------------------

def postgres_bin_dir() -> Path | None:
    """Debian keeps the server binaries out of PATH, in /usr/lib/postgresql/<major>/bin."""
    override = os.environ.get("PG_BIN")
    candidates = [Path(override)] if override else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name)
                         if p.parent.name.isdigit() else 0, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "postgres").is_file():
            return directory
    return None


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str

    def uri(self, database: str) -> str:
        # The driver is explicit: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, not psycopg2.
        return f"postgresql+psycopg2://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    def connect(self, database: str = "postgres"):
        import psycopg2

        return psycopg2.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                                dbname=database, connect_timeout=5)

    def create_database(self, name: str) -> str:
        connection = self.connect()
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        connection.close()
        return self.uri(name)


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL cluster on 127.0.0.1 (TCP only, password auth), removed afterwards."""
    pytest.importorskip("psycopg2", reason="psycopg2 is needed for postgresql:// URIs: pip install psycopg2-binary")
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found: install Debian's `postgresql` package "
                    "(apt-get install -y postgresql) or set PG_BIN")
    as_root = os.geteuid() == 0
    if as_root:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root needs the `postgres` system user (created by Debian's postgresql package)")
        run_as = ["runuser", "-u", "postgres", "--"]
    else:
        owner, run_as = pwd.getpwuid(os.geteuid()), []

    workdir = Path(tempfile.mkdtemp(prefix="lamo-postgres-"))  # /tmp: reachable by the postgres user
    data, password_file, log = workdir / "data", workdir / "password", workdir / "postgres.log"
    user, password = "lamo", secrets.token_urlsafe(16)
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    for path in (workdir, password_file):
        os.chown(path, owner.pw_uid, owner.pw_gid)
    process = None
    try:
        subprocess.run([*run_as, str(bin_dir / "initdb"), "-D", str(data), "-U", user, "-E", "UTF8",
                        "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", f"--pwfile={password_file}",
                        "--no-sync", "--no-instructions"], check=True, capture_output=True, text=True)
        port = free_port()
        with log.open("w") as log_file:
            process = subprocess.Popen(
                [*run_as, str(bin_dir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
                 "-c", "unix_socket_directories=", "-c", "fsync=off", "-c", "full_page_writes=off"],
                stdout=log_file, stderr=subprocess.STDOUT)
        server = PostgresServer("127.0.0.1", port, user, password)

        def accepts_connections() -> bool:
            import psycopg2

            try:
                server.connect().close()
                return True
            except psycopg2.OperationalError:  # still starting
                return False

        wait_until(accepts_connections, process, log, "PostgreSQL", timeout=60)
        yield server
    finally:
        if process is not None:
            _stop_postgres(data, process)
        shutil.rmtree(workdir, ignore_errors=True)


def _stop_postgres(data: Path, process: subprocess.Popen) -> None:
    """Fast shutdown (SIGINT) of the postmaster by the pid it wrote; `runuser` in between then exits too."""
    pid_file = data / "postmaster.pid"
    if pid_file.exists():
        postmaster = int(pid_file.read_text().splitlines()[0])
        try:
            os.kill(postmaster, signal.SIGINT)
        except ProcessLookupError:
            pass
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


# --- MLflow server ----------------------------------------------------------------------------------------

def start_mlflow_server(backend_uri: str, workdir: Path, extra_args: list[str] = (), env: dict | None = None,
                        ready_check=health_ok, port: int | None = None) -> tuple[str, subprocess.Popen, Path]:
    """`mlflow server` on 127.0.0.1 (a free port unless given), artifacts proxied by the server to a directory
    (like s3:// in compose)."""
    port = port or free_port()
    uri = f"http://127.0.0.1:{port}"
    log = workdir / f"mlflow-{port}.log"
    (workdir / "artifacts").mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
               "--artifacts-destination", (workdir / "artifacts").as_uri(), "--serve-artifacts",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--allowed-hosts", f"127.0.0.1:{port},localhost:{port}", *extra_args]
    with log.open("w") as log_file:
        process = subprocess.Popen(command, cwd=workdir, stdout=log_file, stderr=subprocess.STDOUT,
                                   env=os.environ | MLFLOW_SERVER_ENV | (env or {}), start_new_session=True)
    try:
        wait_until(lambda: ready_check(uri), process, log, f"mlflow server ({backend_uri.split('@')[-1]})")
    except BaseException:
        stop_process_group(process)
        raise
    return uri, process, log


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
