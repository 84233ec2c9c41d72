"""Running `python orchestrator/sweep.py` as users do (a subprocess with its own local Ray) and reading the sweep's
MLflow store back; every process a sweep leaves behind is stopped by its process id."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
SWEEP = REPO / "orchestrator" / "sweep.py"


def write_spec(directory: Path, spec: dict, name: str = "sweep.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def tiny_spec(tmp_path: Path, dataset: Path, **fields) -> dict:
    """A sweep of two quick bc trials on generated reacher2d data, storing everything under tmp_path."""
    return {"name": "tiny", "algorithms": [{"name": "bc", "overrides": {"hidden_dims": [32, 32]}}],
            "tasks": [{"name": "reacher2d-medium", "dataset": str(dataset)}], "ratios": [1.0], "seeds": [0, 1],
            "training": {"steps": 200, "eval_every": 100, "eval_episodes": 4},
            "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"}, "storage": str(tmp_path / "ray_results")} | fields


def stop_process_tree(processes: list[psutil.Process]) -> None:
    """SIGKILL what is still alive of the given processes (Ray's agents outlive a killed driver)."""
    for process in processes:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=10)


LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def listening_sockets(processes: list[psutil.Process]) -> dict[tuple[str, int], int]:
    """(address, port) -> process id of every listening socket the given processes hold now."""
    pids = {p.pid for p in processes}
    return {(c.laddr.ip, c.laddr.port): c.pid for c in psutil.net_connections("inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids}


def run_sweep(spec_path: Path, *args: str, timeout: float = 600, cwd: Path | None = None,
              env: dict | None = None) -> subprocess.CompletedProcess:
    """The sweep command, run in `cwd` (default: the spec's directory, so that what a sweep writes relative to its
    working directory — reports/, an MLflow store's ./mlruns — stays in the test's directory, not the checkout)."""
    process = subprocess.Popen([sys.executable, str(SWEEP), "--spec", str(spec_path), *args],
                               cwd=cwd or spec_path.parent,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, **(env or {})})
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        driver = psutil.Process(process.pid)
        stop_process_tree([driver, *driver.children(recursive=True)])
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, output, "")


def mlflow_runs(uri: str, experiment: str = "lamo-sweeps") -> tuple[list, list]:
    """(parent runs, child runs) of the experiment, all statuses."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], max_results=1000) if found else []
    return ([r for r in runs if r.data.tags.get("role") == "sweep"],
            [r for r in runs if r.data.tags.get("role") == "trial"])


def kill_once_checkpointed(spec_path: Path, checkpoints: str, cwd: Path, timeout: float = 300) -> list[psutil.Process]:
    """Start the sweep, SIGKILL its driver once a file matching the glob `checkpoints` exists (a trial checkpointed),
    as a lost head node would; returns the process tree, for `stop_process_tree` after the rerun."""
    driver = subprocess.Popen([sys.executable, str(SWEEP), "--spec", str(spec_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, cwd=cwd)
    tree = [psutil.Process(driver.pid)]
    try:
        deadline = time.time() + timeout
        while not glob.glob(checkpoints) and time.time() < deadline:
            tree += [p for p in tree[0].children(recursive=True) if p not in tree]
            time.sleep(0.5)
        assert glob.glob(checkpoints), f"no trial checkpointed ({checkpoints})"
        tree += [p for p in tree[0].children(recursive=True) if p not in tree]
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        psutil.wait_procs(tree, timeout=20)
    except BaseException:
        stop_process_tree(tree)
        raise
    return tree
