"""The sweep driver end to end: `python orchestrator/sweep.py` with its own local Ray, real Train trials on
generated reacher2d data, a real sqlite MLflow store; resume after SIGKILL; an optuna search; bad input refused
before anything is written."""

from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from orchestrator.delivery import compact_ranges
from orchestrator.phases import PREFIX, Phases, parse
from orchestrator.sweep import main
from tests.sweep_helpers import (
    LOOPBACK,
    REPO,
    SWEEP,
    listening_sockets,
    mlflow_runs,
    run_sweep,
    stop_process_tree,
    tiny_spec,
    write_spec,
)


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory) -> Path:
    from trainers.sequence.language.pretrain import pretrain_tiny_gpt2

    return pretrain_tiny_gpt2(tmp_path_factory.mktemp("lm"), steps=20, n_layer=1, n_embd=32, n_head=2, seq_len=64,
                              batch=4, progress=False)


def nothing_written(tmp_path: Path) -> bool:
    return not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()


# ------------------------------------------------------------------------------------------------ refused early

def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, reacher_medium_path, capsys):
    spec = write_spec(tmp_path, tiny_spec(tmp_path, reacher_medium_path, ratios=[0.1, 1.0]))
    assert main(["--spec", str(spec), "--dry-run", "--cpus", "8"]) == 0
    out = capsys.readouterr().out
    assert "4 trials" in out and "resources: 8 concurrent trials" in out and "compute: 800 gradient steps" in out
    assert nothing_written(tmp_path)


def test_dry_run_of_the_paper_grid_works_without_its_files(capsys):
    assert main(["--spec", str(REPO / "sweeps/lamo_paper.yaml"), "--dry-run", "--cpus", "64", "--gpus", "8"]) == 0
    out = capsys.readouterr().out
    assert "684 trials" in out and "8 concurrent trials (limited by GPUs)" in out
    assert "aggregation: protocol paper" in out



def test_dry_run_of_the_science_study_plans_its_grid_on_this_machine(capsys):
    """docs/science.md's sweep: 7 algorithms × 2 tasks × 3 ratios × 5 seeds, each cell's seeds in one trial, two
    one-CPU trials at a time on a 2-core machine — planned without its data or language model present."""
    assert main(["--spec", str(REPO / "sweeps/science_mini.yaml"), "--dry-run", "--cpus", "2"]) == 0
    out = capsys.readouterr().out
    assert "210 runs in 42 trials of up to 5 seeds" in out
    assert "each trial: 1 worker(s) × 1 CPU, 0 GPU, in place" in out and "2 concurrent trials" in out
    assert all(name in out for name in ("lamo_random_init", "lamo_no_lm", "lamo_linear_emb", "hopper-medium-gen"))
    assert "aggregation: protocol paper" in out

def test_dry_run_of_a_cluster_sized_sweep_on_a_laptop_plans_it_and_names_the_flags(capsys):
    """This machine has no GPU: the plan is still printed for what the sweep names, with the way to a cluster."""
    assert main(["--spec", str(REPO / "sweeps/lamo_paper.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "684 trials" in out and "each trial: 1 worker(s) × 4 CPU, 1 GPU, in place" in out
    assert "cannot run one trial" in out and "--cpus N --gpus M" in out and "ray job submit" in out


def test_missing_dataset_and_model_are_all_named_before_anything_starts(tmp_path, capsys):
    spec = tiny_spec(tmp_path, tmp_path / "nowhere.hdf5")
    spec["algorithms"].append({"name": "lamo", "overrides": {"backbone": str(tmp_path / "no-such-model")}})
    assert main(["--spec", str(write_spec(tmp_path, spec))]) == 2
    err = capsys.readouterr().err
    assert "nowhere.hdf5" in err and "python -m trainers.tools.make_dataset --task reacher2d-medium" in err
    assert "no-such-model" in err and "does not exist" in err
    assert nothing_written(tmp_path)


def test_unreachable_tracking_server_is_named_at_start(tmp_path, reacher_medium_path, capsys):
    uri = "http://127.0.0.1:9"  # the discard port: nothing listens there
    spec = write_spec(tmp_path, tiny_spec(tmp_path, reacher_medium_path, tracking={"uri": uri}))
    assert main(["--spec", str(spec)]) == 2
    assert f"tracking URI {uri} is not reachable" in capsys.readouterr().err
    assert nothing_written(tmp_path)


def test_a_trial_larger_than_the_machine_is_refused_before_ray_starts(tmp_path, reacher_medium_path, capsys):
    spec = write_spec(tmp_path, tiny_spec(tmp_path, reacher_medium_path, resources={"num_workers": 4096}))
    assert main(["--spec", str(spec)]) == 2
    assert "one trial needs 4096 CPUs" in capsys.readouterr().err
    assert nothing_written(tmp_path)


def test_the_embedded_ray_starts_no_idle_task_workers():
    """A sweep runs only actors, which Ray starts processes of their own for: the task workers Ray would start
    for a first driver (one per CPU) would only take CPU at start and memory and wake-ups while trials train."""
    script = ("import time, psutil; from orchestrator.local_ray import start_local_ray; start_local_ray(2, 0, 2); "
              "time.sleep(3); print(sorted(p.name() for p in psutil.Process().children(recursive=True)))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=SWEEP.parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    processes = done.stdout.strip().splitlines()[-1]
    assert "raylet" in processes and "ray::IDLE" not in processes, processes


# ------------------------------------------------------------------------------------------------ real sweeps

def test_sweep_runs_trials_as_nested_mlflow_runs_with_their_artifacts(tmp_path, reacher_medium_path, tiny_gpt2):
    spec = tiny_spec(tmp_path, reacher_medium_path, seeds=[0], ratios=[0.5])
    spec["algorithms"].append({"name": "lamo", "overrides": {
        "backbone": str(tiny_gpt2), "lm_corpus": "builtin", "lm_seq_len": 64, "lm_sequences": 2}})
    result = run_sweep(write_spec(tmp_path, spec))
    assert result.returncode == 0, result.stdout[-3000:]
    assert "2 trials finished, 0 failed" in result.stdout

    uri = spec["tracking"]["uri"]
    (parent,), children = mlflow_runs(uri)
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep_name"] == "tiny"
    assert sorted(c.data.tags["trial_id"] for c in children) == ["bc.reacher2d-medium.r0.5.s0",
                                                                 "lamo.reacher2d-medium.r0.5.s0"]
    client = MlflowClient(uri)
    for child in children:
        tags = child.data.tags
        assert child.info.status == "FINISHED"
        assert tags["mlflow.parentRunId"] == parent.info.run_id and tags["sweep_id"] == parent.data.tags["sweep_id"]
        assert (tags["task"], tags["ratio"], tags["seed"], tags["domain"]) == ("reacher2d-medium", "0.5", "0",
                                                                               "reacher2d")
        assert child.data.params["config.num_steps"] == "200"
        label = "policy" if tags["algorithm"] == "bc" else "target_40"
        history = client.get_metric_history(child.info.run_id, f"eval/{label}/normalized_mean")
        assert sorted(m.step for m in history) == [100, 200]
        directory = Path(client.download_artifacts(child.info.run_id, "", str(tmp_path / tags["trial_id"])))
        ids = json.loads((directory / "trajectory_ids.json").read_text())
        assert len(ids) == child.data.metrics["dataset/trajectories"] and tags["trajectory_ids"] == compact_ranges(ids)
        record = json.loads((directory / "trial_record.json").read_text())
        assert record == json.loads(tags["trial_record"])  # the record travelled unchanged
        assert (record["algorithm"], record["trial_id"], record["config"]["num_steps"]) == (
            tags["algorithm"], tags["trial_id"], 200)
        inputs = client.get_run(child.info.run_id).inputs.dataset_inputs
        assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("reacher2d-medium",
                                                                         record["dataset"]["digest"][:36])]
        assert record["dataset"]["subset_episodes"] == len(ids) and (directory / "metrics.jsonl").is_file()
        assert (directory / "eval_episodes.csv").read_text().count("\n") == 1 + 4 * (1 if label == "policy" else 2)
        assert child.data.metrics["cost/wall_seconds"] > 0
    lamo = next(c for c in children if c.data.tags["algorithm"] == "lamo")
    adapter = Path(client.download_artifacts(lamo.info.run_id, "model/adapter", str(tmp_path / "adapter")))
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()

    # The driver's last line times its phases: the store opened while Ray started, the trials ran inside the parent
    # run, the aggregation overlapped Ray's shutdown.
    phases = parse(next(line for line in result.stdout.splitlines() if line.startswith(PREFIX)))
    assert set(phases) == {"python", "spec", "inputs", "reuse", "store", "ray", "tune-import", "parent-run",
                           "trials", "ray-shutdown", "aggregation"}
    assert phases["python"][0] == 0 and phases["inputs"][1] <= phases["ray"][0] <= phases["ray"][1] <= \
        phases["tune-import"][0]
    assert phases["store"][1] <= phases["reuse"][0] <= phases["reuse"][1] <= phases["parent-run"][0]  # beside Ray
    assert phases["store"][0] < phases["ray"][1] and phases["ray"][0] < phases["store"][1]
    assert max(phases["ray"][1], phases["store"][1]) <= phases["parent-run"][0] <= phases["parent-run"][1] <= \
        phases["trials"][0]  # printed to 0.1 s: equal when the parent run opens within it
    assert phases["trials"][1] <= min(phases["ray-shutdown"][0], phases["aggregation"][0])


def test_phases_are_recorded_from_any_thread_even_when_they_fail():
    phases = Phases()
    with pytest.raises(ValueError), phases.phase("refused"):
        raise ValueError("bad input")
    with phases.phase("search"):
        time.sleep(0.05)
    with phases.phase("search"):  # a second Tuner (search cell) under the same name
        time.sleep(0.05)
    spans = parse(phases.line())
    assert list(spans) == ["refused", "search"]
    assert spans["search"][1] - spans["search"][0] >= 0.1 - 0.01  # first start to last end


def test_phases_count_from_the_interpreter_even_when_a_shell_ran_other_commands_first():
    """`a && b && python orchestrator/sweep.py`: bash execs the chain's last command, so the process started with
    the shell; the line then counts from the script's first line and says how long the commands before it took."""
    script = ("import os; from orchestrator.sweep import FIRST_LINE; from orchestrator.phases import Phases; "
              "print(os.getpid()); print(Phases(FIRST_LINE).line())")
    busy = "import time; [0 for _ in iter(lambda: time.process_time() < 3, False)]"  # 3 s of CPU
    chain = f"echo $$ && {sys.executable} -c '{busy}' && {sys.executable} -c '{script}'"
    shell, python, line = subprocess.run(["bash", "-c", chain], capture_output=True, text=True, check=True,
                                         timeout=120, cwd=SWEEP.parents[1]).stdout.splitlines()[-3:]
    assert shell == python  # the shell exec'd the interpreter: the process's start is the shell's
    before = float(line.removeprefix("phases (s from the script's first line; the process ran other commands "
                                     "for ").split(" s before it): ")[0])
    assert before >= 3 and parse(line)["python"] == (0.0, parse(line)["python"][1])
    assert parse(line)["python"][1] < before  # the 3 s of the command before are not Python's
    alone = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120,
                           cwd=SWEEP.parents[1]).stdout.splitlines()[-1]
    assert alone.startswith("phases (s from the command): python 0.0–")


def test_sweep_killed_with_sigkill_resumes_without_rerunning_or_duplicating(tmp_path, reacher_medium_path):
    """A short trial finishes, a long one has checkpoints, the driver is SIGKILLed: no Ray process outlives it
    and the next run (Ray's agents, which can hang on their way out, are stopped by it, by process id), and the
    same command again completes the sweep: the finished trial is not trained again, the long one
    continues from its checkpoint. While it trains, the driver and every Ray process it started listen on the
    loopback interface only."""
    spec = tiny_spec(tmp_path, reacher_medium_path, seeds=[0], algorithms=[
        {"name": "bc", "overrides": {"hidden_dims": [32, 32]}, "steps": 100, "eval_every": 100},
        {"name": "td3_bc", "overrides": {"hidden_dims": [32, 32]}, "steps": 3000, "eval_every": 500}])
    path, uri = write_spec(tmp_path, spec), spec["tracking"]["uri"]
    driver = subprocess.Popen([sys.executable, str(SWEEP), "--spec", str(path)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    tree = [psutil.Process(driver.pid)]
    try:
        for line in driver.stdout:
            if line.startswith("done bc."):
                break
        deadline = time.time() + 300
        checkpoints = str(tmp_path / "ray_results" / "tiny-*" / "tune" / "td3_bc.*" / "checkpoint_*")
        listening: dict[tuple[str, int], int] = {}
        while not glob.glob(checkpoints) and time.time() < deadline:
            tree += [p for p in tree[0].children(recursive=True) if p not in tree]
            listening |= listening_sockets(tree)
            time.sleep(0.5)
        assert glob.glob(checkpoints), "the long trial never checkpointed"
        tree += [p for p in tree[0].children(recursive=True) if p not in tree]
        listening |= listening_sockets(tree)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        _, alive = psutil.wait_procs(tree, timeout=20)  # GCS, raylet and workers share their driver's fate
        # Ray's agents may hang on their way out; the next run stops them (and nothing else survives).
        assert {p.name() for p in alive if p.is_running()} <= {"ray::DashboardAgent", "ray::RuntimeEnvAgent"}
    except BaseException:
        stop_process_tree(tree)
        raise

    assert listening, "no listening socket seen"
    print(f"{len(listening)} listening sockets, addresses {sorted({ip for ip, _ in listening})}")  # pytest -s
    assert not {address for address in listening if address[0] not in LOOPBACK}, listening
    _, before = mlflow_runs(uri)
    finished = {c.data.tags["trial_id"]: c.data.metrics["cost/wall_seconds"] for c in before
                if c.info.status == "FINISHED"}
    assert list(finished) == ["bc.reacher2d-medium.r1.s0"]

    leftovers = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    result = run_sweep(path, cwd=tmp_path)
    survivors = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    stop_process_tree(tree)
    assert not survivors, [f"{p.name()} ({p.pid})" for p in survivors]  # no Ray process outlives the next run
    assert result.returncode == 0, result.stdout[-3000:]
    assert "resuming the sweep" in result.stdout
    assert all(f"({p.pid})" in result.stdout for p in leftovers), (leftovers, result.stdout[:3000])
    parents, children = mlflow_runs(uri)
    assert len(parents) == 1 and len(children) == 2  # no duplicate runs
    by_id = {c.data.tags["trial_id"]: c for c in children}
    bc, td3 = by_id["bc.reacher2d-medium.r1.s0"], by_id["td3_bc.reacher2d-medium.r1.s0"]
    assert bc.data.metrics["cost/wall_seconds"] == finished[bc.data.tags["trial_id"]]  # not trained again
    assert td3.info.status == "FINISHED" and td3.data.metrics["resumed_from_step"] >= 500
    steps = [m.step for m in MlflowClient(uri).get_metric_history(td3.info.run_id, "eval/policy/normalized_mean")]
    assert steps == sorted(set(steps)) and steps[-1] == 3000  # every evaluation once, none lost


def test_an_interrupted_sweep_says_so_and_exits_130(tmp_path, reacher_medium_path):
    """Ctrl-C (SIGINT) in the middle of a trial: the summary counts it as unfinished, not finished, says how to
    resume, the parent run is KILLED, and the exit status is 130; the same command then finishes it."""
    spec = tiny_spec(tmp_path, reacher_medium_path, seeds=[0], algorithms=[
        {"name": "td3_bc", "overrides": {"hidden_dims": [32, 32]}, "steps": 1500, "eval_every": 500}])
    path, uri = write_spec(tmp_path, spec), spec["tracking"]["uri"]
    driver = subprocess.Popen([sys.executable, str(SWEEP), "--spec", str(path)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    try:
        checkpoints = str(tmp_path / "ray_results" / "tiny-*" / "tune" / "td3_bc.*" / "checkpoint_*")
        deadline = time.time() + 300
        while not glob.glob(checkpoints) and time.time() < deadline:
            time.sleep(0.5)
        assert glob.glob(checkpoints), "the trial never checkpointed"
        driver.send_signal(signal.SIGINT)
        output, _ = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            stop_process_tree([psutil.Process(driver.pid), *psutil.Process(driver.pid).children(recursive=True)])
    assert driver.returncode == 130, output[-3000:]
    assert "0 trials finished, 0 failed, 1 unfinished" in output and "run the same command to resume" in output
    (parent,), _ = mlflow_runs(uri)
    assert parent.info.status == "KILLED"
    result = run_sweep(path, cwd=tmp_path)
    assert result.returncode == 0 and "1 trials finished, 0 failed" in result.stdout, result.stdout[-3000:]
    (parent,), (trial,) = mlflow_runs(uri)
    assert parent.info.status == trial.info.status == "FINISHED" and trial.data.metrics["resumed_from_step"] >= 500


def test_optuna_search_in_one_cell_records_the_best_on_the_parent(tmp_path, reacher_medium_path):
    spec = tiny_spec(tmp_path, reacher_medium_path, seeds=[0], search={
        "kind": "optuna", "space": {"lr": {"loguniform": [1e-4, 1e-2]}}, "samples": 3})
    result = run_sweep(write_spec(tmp_path, spec))
    assert result.returncode == 0, result.stdout[-3000:]
    (parent,), children = mlflow_runs(spec["tracking"]["uri"])
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    learning_rates = {float(c.data.params["config.lr"]) for c in children}
    assert len(learning_rates) == 3 and all(1e-4 <= lr <= 1e-2 for lr in learning_rates)
    finals = {float(c.data.params["config.lr"]): c.data.metrics["eval/best_normalized_mean"] for c in children}
    cell = "bc.reacher2d-medium.r1"
    best_lr = json.loads(parent.data.tags[f"best/{cell}/config"])["lr"]
    assert parent.data.metrics[f"best/{cell}"] == max(finals.values()) == finals[best_lr]


def test_ray_job_submit_to_a_head_started_with_ray_start(tmp_path, reacher_medium_path, local_ray):
    """The same command as a Ray job on a `ray start --head` cluster on 127.0.0.1, stopped by process id — while
    another local Ray (the session's) runs, as in the full suite."""
    import socket

    ports = []
    for _ in range(6):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    # Every port explicit: the session's own local Ray (the local_ray fixture) already holds Ray's default agent
    # ports, and a head whose dashboard agent cannot bind answers "No available agent to submit job".
    gcs_port, dashboard_port, agent_port, agent_grpc_port, metrics_port, runtime_env_port = ports
    temp_dir = Path(f"/tmp/ray-sweep-test-{os.getpid()}")  # short: Ray's socket paths must fit 107 bytes
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}  # Ray's token authentication
    bin_dir = Path(sys.executable).parent
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"  # the job's `python` is this environment's
    start = subprocess.run([str(bin_dir / "ray"), "start", "--head", f"--port={gcs_port}",
                            "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
                            f"--dashboard-port={dashboard_port}", f"--dashboard-agent-listen-port={agent_port}",
                            f"--dashboard-agent-grpc-port={agent_grpc_port}", f"--metrics-export-port={metrics_port}",
                            f"--runtime-env-agent-port={runtime_env_port}", "--num-cpus=2", "--resources",
                            '{"trial_slot": 2}', f"--temp-dir={temp_dir}", "--disable-usage-stats"],
                           capture_output=True, text=True, env=env, timeout=120)

    def cluster_processes() -> list[psutil.Process]:
        """The head's processes (named by the temp dir) and their children (agents rename themselves)."""
        roots = [p for p in psutil.process_iter(["cmdline"]) if str(temp_dir) in " ".join(p.info["cmdline"] or [])]
        return roots + [child for root in roots for child in root.children(recursive=True)]

    started = cluster_processes()
    try:
        assert start.returncode == 0, start.stderr[-2000:]
        spec = tiny_spec(tmp_path, reacher_medium_path, seeds=[0])
        submit = [str(bin_dir / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dashboard_port}",
                  "--working-dir", ".", "--", "python", "orchestrator/sweep.py", "--spec",
                  str(write_spec(tmp_path, spec))]
        deadline = time.time() + 60  # the head's job agent registers some seconds after `ray start` returns
        while True:
            job = subprocess.run(submit, capture_output=True, text=True, env=env, timeout=600, cwd=SWEEP.parents[1])
            if "No available agent to submit job" not in job.stdout + job.stderr or time.time() > deadline:
                break
            time.sleep(3)
        assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]
        assert "joined Ray at" in job.stdout and "1 trials finished, 0 failed" in job.stdout
        (parent,), (child,) = mlflow_runs(spec["tracking"]["uri"])
        assert child.info.status == "FINISHED" and child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    finally:
        started += cluster_processes()
        stop_process_tree(list({p.pid: p for p in started}.values()))
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_restart_starts_over_and_keeps_what_was_recorded(tmp_path, reacher_medium_path):
    spec = tiny_spec(tmp_path, reacher_medium_path, seeds=[0], training={"steps": 100, "eval_every": 100,
                                                                         "eval_episodes": 2})
    path, uri = write_spec(tmp_path, spec), spec["tracking"]["uri"]
    assert run_sweep(path).returncode == 0
    assert len(mlflow_runs(uri)[1]) == 1

    restarted = run_sweep(path, "--restart")
    assert restarted.returncode == 0, restarted.stdout[-3000:]
    parents, children = mlflow_runs(uri)
    old = [p for p in parents if p.data.tags.get("superseded") == "true"]
    new = [p for p in parents if p.data.tags.get("superseded") != "true"]
    assert len(old) == 1 and len(new) == 1 and len(children) == 2  # the first attempt's run is still there
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {old[0].info.run_id, new[0].info.run_id}
    assert len(glob.glob(str(tmp_path / "ray_results" / "tiny-*.superseded-*" / "tune"))) == 1


def test_a_failing_trial_explains_itself_in_the_progress_the_summary_and_its_run(tmp_path, reacher_medium_path):
    """A trial that fails anyway (its loss diverges: nothing a validation pass can see) is reported with its own
    exception's message, not Ray's actor header, and its MLflow run records it; the others finish."""
    spec = tiny_spec(tmp_path, reacher_medium_path, seeds=[0], concurrency={"trial_retries": 0}, algorithms=[
        {"name": "bc", "overrides": {"hidden_dims": [32, 32]}},
        {"name": "td3_bc", "overrides": {"hidden_dims": [32, 32], "actor_lr": 1e12, "critic_lr": 1e12}}])
    result = run_sweep(write_spec(tmp_path, spec))
    assert result.returncode == 1, result.stdout[-3000:]
    message = "NonFiniteLossError: non-finite loss at step 2: critic_loss=inf"
    assert f"FAILED td3_bc.reacher2d-medium.r1.s0: {message}" in result.stdout  # the progress line
    assert f"  failed td3_bc.reacher2d-medium.r1.s0: {message}" in result.stdout  # the final summary
    assert "1 trials finished, 1 failed" in result.stdout
    _, children = mlflow_runs(spec["tracking"]["uri"])
    failed = next(c for c in children if c.data.tags["algorithm"] == "td3_bc")
    assert failed.info.status == "FAILED" and failed.data.tags["error"].startswith(message)
    client = MlflowClient(spec["tracking"]["uri"])
    trace = Path(client.download_artifacts(failed.info.run_id, "error.txt", str(tmp_path))).read_text()
    assert "Traceback" in trace and "check_finite" in trace
