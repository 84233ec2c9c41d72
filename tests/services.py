"""Real servers for tests and benchmarks, on 127.0.0.1, each started here and stopped by its process id: a
throwaway PostgreSQL cluster (`running_postgres`) and `mlflow server` in front of a backend store
(`start_mlflow_server`, artifacts proxied by the server to a directory, as s3:// is in docker-compose.yml).

PostgreSQL is Debian's package (`apt-get install -y postgresql`); where its binaries or the `postgres` system user
(needed as root: initdb refuses root) are missing, `running_postgres` raises `ServiceUnavailable` saying which, so a
test can skip and a benchmark can stop with that reason.
"""

from __future__ import annotations

import contextlib
import os
import pwd
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SERVER_START_TIMEOUT = 180  # first start migrates an empty PostgreSQL schema
MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # 0.4 GB instead of 1.2 GB per server


class ServiceUnavailable(RuntimeError):
    """What a server needs is not on this machine (the message says what and how to get it)."""


# --- processes --------------------------------------------------------------------------------------

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



@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (TCP only, password auth), removed afterwards."""
    try:
        import psycopg2
    except ImportError:
        raise ServiceUnavailable("psycopg2 is needed for postgresql:// URIs: pip install psycopg2-binary") from None
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise ServiceUnavailable("PostgreSQL server binaries not found: install Debian's `postgresql` package "
                                 "(apt-get install -y postgresql) or set PG_BIN")
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise ServiceUnavailable("running as root needs the `postgres` system user (created by Debian's "
                                     "postgresql package)") from None
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
                 "-c", "unix_socket_directories=", "-c", "fsync=off", "-c", "full_page_writes=off",
                 "-c", "max_connections=200"],  # a paper-sized sweep's server workers and trials (bench/)
                stdout=log_file, stderr=subprocess.STDOUT)
        server = PostgresServer("127.0.0.1", port, user, password)

        def accepts_connections() -> bool:
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
                        ready_check=health_ok, port: int | None = None, workers: int = 1
                        ) -> tuple[str, subprocess.Popen, Path]:
    """`mlflow server` on 127.0.0.1 (a free port unless given), artifacts proxied by the server to a directory
    (like s3:// in compose)."""
    port = port or free_port()
    uri = f"http://127.0.0.1:{port}"
    log = workdir / f"mlflow-{port}.log"
    (workdir / "artifacts").mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
               "--artifacts-destination", (workdir / "artifacts").as_uri(), "--serve-artifacts",
               "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
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
