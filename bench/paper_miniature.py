"""The paper-sized sweep in miniature: sweeps/lamo_paper.yaml's grid (its 12 algorithms × every task and ratio,
reacher2d at two ratios, seeds 0-2: 720 trials) through the real driver, `python orchestrator/sweep.py`, on a
simulated multi-node cluster (`ray.cluster_utils.Cluster`: a head holding the trial slots and worker nodes that
declare GPUs they do not have), tracked in an `mlflow server` backed by PostgreSQL as docker-compose.yml runs it.
Only the training is made tiny: tiny models, a few dozen steps, one evaluation episode at two steps; the
datasets are generated in the real simulators (random behaviour, D4RL layout) where the real files are absent.

    python -m bench.paper_miniature [--out DIR] [--seeds 0,1,2] [--steps 40] [--workers 2] [--no-faults]

Phases, all in one run: a 28-trial sweep of the same kinds first (the quickstart's size: the per-trial overhead
to compare with), then the paper grid with two faults injected — a worker node removed (`cluster.remove_node`)
once a quarter of the trials are done (a fresh node joins in its place, as an autoscaler would bring one) and the
MLflow server stopped and started again on its port once half are done — then checks and the aggregator.

Measured, and printed as tables (also written to DIR/results.json):
- wall time, and where the machine's CPU went, per trial, at both sizes: the trial actors' CPU seconds against the
  driver's, Ray's services' (GCS, raylets, agents) and the tracking server's (MLflow, PostgreSQL) — every process
  the bench started, read once a second (psutil); the orchestration's cost per trial is what is not the trials'.
  (Wall time against Σ trial time says little here: the simulated nodes declare 16 CPUs on a 2-core machine, so
  trials run many at once, each slower; their CPU seconds do not depend on how many share the cores);
- the driver's peak resident memory and its CPU (the sweep process, where Tune runs; sampled once a second);
- trials per minute, overall and in the best minute;
- MLflow requests per second (the server's access log, in 10-second windows), its 5xx answers, and the trials'
  own word on writes they had to retry (the driver's `[tracking]` lines: reports held while the server was away);
- that every trial has exactly one FINISHED run and every evaluation step exactly once in it;
- the aggregator on the 720-run sweep, all three protocols, report included, timed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "orchestrator" / "sweep.py"
PAPER_SPEC = ROOT / "sweeps" / "lamo_paper.yaml"

# Episodes per generated dataset: enough that the paper's smallest ratio keeps a whole episode (0.5 % of 200;
# kitchen's 1 % of 100). Random behaviour in the task's own simulator.
EPISODES = {"hopper-medium": 200, "halfcheetah-medium": 200, "walker2d-medium": 200, "kitchen-partial": 100,
            "kitchen-complete": 100, "reacher2d-medium": 200}
SEQUENCE_MODELS = {"lamo", "lamo_no_lm", "lamo_random_init", "lamo_full_ft", "lamo_linear_emb", "wiki_rl"}


# --- inputs: data, a tiny GPT-2, the specs ------------------------------------------------------------------------

def make_datasets(data_dir: Path) -> dict[str, Path]:
    """Each task's generated file (kept between runs: generating kitchen data takes a minute)."""
    from trainers.data.d4rl import write_d4rl_dataset
    from trainers.runtime.tasks import get_task
    from trainers.tools.make_dataset import collect_episodes, make_dataset, random_behaviour

    data_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, episodes in EPISODES.items():
        path = paths[name] = data_dir / f"{name}.hdf5"
        if path.exists():
            continue
        print(f"generating {name}: {episodes} episodes", flush=True)
        if name.startswith("reacher2d"):
            make_dataset(name, path, num_episodes=episodes)
        else:
            task = get_task(name)
            write_d4rl_dataset(path, collect_episodes(task, random_behaviour(task, 0), 0, episodes),
                               {"task": name, "behaviour_policy": "uniform random actions (bench/paper_miniature.py)"},
                               task=task)
    return paths


def make_backbone(directory: Path) -> Path:
    if not (directory / "config.json").exists():
        subprocess.run([sys.executable, "-m", "trainers.sequence.language", "pretrain", "--out", str(directory),
                        "--steps", "50"], check=True, cwd=ROOT)
    return directory


def tiny_overrides(algorithm: str, backbone: Path) -> dict:
    """The algorithm made tiny; everything else as the paper spec has it."""
    common = {"eval_episodes": 1, "batch_size": 16}
    if algorithm in SEQUENCE_MODELS:
        return common | {"backbone": str(backbone), "lm_corpus": "builtin", "lm_seq_len": 64, "warmup_steps": 10}
    if algorithm == "dt":
        return common | {"n_embd": 32, "n_head": 1, "warmup_steps": 10}
    if algorithm == "cql":
        return common | {"hidden_dims": [32, 32], "cql_n_actions": 2, "bc_steps": 10}
    return common | {"hidden_dims": [32, 32]}


def paper_spec(name: str, datasets: dict[str, Path], backbone: Path, out: Path, uri: str, seeds: list[int],
               steps: int, small: bool = False) -> Path:
    """sweeps/lamo_paper.yaml with tiny training and the generated data; `small`: 28 trials of the same kinds."""
    spec = yaml.safe_load(PAPER_SPEC.read_text())
    spec["algorithms"] = [{"name": entry} if isinstance(entry, str) else entry for entry in spec["algorithms"]]
    for entry in spec["algorithms"]:
        entry["overrides"] = entry.get("overrides", {}) | tiny_overrides(entry["name"], backbone)
    for task in spec["tasks"]:
        task["dataset"] = str(datasets[task["name"]])
        if task["name"] == "reacher2d-medium":
            task["ratios"] = [0.1, 1.0]
    if small:  # the quickstart's shape: 7 algorithms × reacher2d at 2 ratios × 2 seeds
        spec["algorithms"] = [a for a in spec["algorithms"]
                              if a["name"] in ("lamo", "lamo_random_init", "dt", "bc", "td3_bc", "iql", "cql")]
        spec["tasks"] = [t for t in spec["tasks"] if t["name"] == "reacher2d-medium"]
        seeds = seeds[:2]
    spec |= {"name": name, "seeds": seeds, "training": {"steps": steps, "eval_every": steps // 2},
             "tracking": {"experiment": "lamo-paper-miniature", "uri": uri}, "storage": str(out / "ray_results")}
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# --- services: PostgreSQL, the MLflow server, the cluster ---------------------------------------------------------

class MlflowServer:
    """`mlflow server` on PostgreSQL, restartable on its port; its access logs (one per start) count requests."""

    def __init__(self, backend: str, workdir: Path, workers: int):
        self.backend, self.workdir, self.workers = backend, workdir, workers
        self.logs: list[Path] = []
        self.port = None
        self.start()

    def start(self) -> None:
        from tests.services import start_mlflow_server

        self.uri, self.process, log = start_mlflow_server(self.backend, self.workdir, port=self.port,
                                                          workers=self.workers)
        self.port = int(self.uri.rsplit(":", 1)[1])
        self.logs.append(log.rename(log.with_name(f"mlflow-{len(self.logs)}.log")))

    def stop(self) -> None:
        from tests.services import stop_process_group

        stop_process_group(self.process)

    def requests(self) -> list[str]:
        """Every access-log line so far: 'IP:port - "METHOD path HTTP/1.1" status'."""
        lines = []
        for log in self.logs:
            lines += [line for line in log.read_text(errors="replace").splitlines() if '"' in line and "HTTP/" in line]
        return lines


@dataclass
class Cluster:
    """A head with the trial slots and no CPU, and worker nodes each declaring CPUs and GPUs."""
    nodes: int
    cpus: int
    gpus: int
    slots: int

    def __enter__(self) -> Cluster:
        from ray.cluster_utils import Cluster as RayCluster

        self.ray = RayCluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "resources": {"trial_slot": self.slots}, "include_dashboard": False})
        self.workers = [self.add_worker() for _ in range(self.nodes)]
        self.ray.wait_for_nodes()
        # The head node, started in this process, took SIGTERM for itself: a stopped bench must stop its sweep and
        # servers too (the `finally` blocks), so SIGTERM and SIGINT raise KeyboardInterrupt here again.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        return self

    def add_worker(self):
        return self.ray.add_node(num_cpus=self.cpus, num_gpus=self.gpus)

    def replace_worker(self) -> None:
        """A worker node dies (its raylet and every actor on it); a fresh one joins."""
        self.ray.remove_node(self.workers.pop(0), allow_graceful=False)
        self.workers.append(self.add_worker())
        self.ray.wait_for_nodes()

    def __exit__(self, *exc) -> None:
        self.ray.shutdown()


# --- one sweep, watched -------------------------------------------------------------------------------------------

AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


class CpuLedger:
    """CPU seconds of every process this bench started (its descendants: nodes, trials, servers) and the driver, by
    kind: trial actors, the driver, Ray's services (GCS, raylets, agents, dashboard, monitors), the MLflow server,
    PostgreSQL. A process's last reading stands once it has exited."""

    def __init__(self):
        self.seen: dict[tuple[int, float], tuple[str, float]] = {}  # (pid, create time) -> (kind, CPU s)

    @staticmethod
    def kind(process: psutil.Process, driver: int) -> str:
        name, command = process.name(), " ".join(process.cmdline()[:4])
        if process.pid == driver:
            return "driver"
        # uvicorn's workers are bare `python -c "from multiprocessing.spawn import …"`: the server's by ancestry
        if any("mlflow" in " ".join(parent.cmdline()[:4]) for parent in process.parents()):
            return "mlflow"
        if name.startswith("ray::") and name not in AGENTS:
            return "trials"
        if "postgres" in name or "postgres" in command:
            return "postgres"
        if "mlflow" in command or "uvicorn" in command:
            return "mlflow"
        return "ray services" if "ray" in command or name in ("raylet", "gcs_server") else "other"

    def sample(self, driver: int) -> None:
        for process in psutil.Process().children(recursive=True):
            try:
                cpu = process.cpu_times()  # a Ray worker is renamed once started: classified at every reading
                self.seen[process.pid, process.create_time()] = (self.kind(process, driver),
                                                                 cpu.user + cpu.system)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue

    def totals(self) -> dict[str, float]:
        totals: Counter = Counter()
        for kind, seconds in self.seen.values():
            totals[kind] += seconds
        return dict(totals)


@dataclass
class Phase:
    name: str
    trials: int = 0
    wall_s: float = 0.0
    returncode: int | None = None
    driver_peak_rss_mb: float = 0.0
    driver_cpu_s: float = 0.0
    requests: int = 0
    requests_peak_per_s: float = 0.0
    server_errors: int = 0
    tracking_lines: int = 0
    trial_attempts_failed: int = 0  # Tune's lines for a trial attempt that failed (retried, up to trial_retries)
    output_lines: int = 0  # the driver's progress lines ([sweep] status, done / FAILED, [tracking])
    longest_line: int = 0
    faults: list[str] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds by kind of process (CpuLedger)


def run_phase(name: str, spec: Path, cluster: Cluster, server: MlflowServer, out: Path, trials: int,
              faults: bool) -> Phase:
    phase = Phase(name, trials)
    log = out / f"{name}.log"
    before = len(server.requests())
    env = os.environ | {"RAY_ADDRESS": cluster.ray.address, "PYTHONUNBUFFERED": "1"}
    started = time.time()
    with log.open("w") as sink:
        # --no-reuse: the 28-trial sweep's trials are the paper grid's too, and would be reused, not trained
        driver = subprocess.Popen([sys.executable, str(SWEEP), "--spec", str(spec), "--no-reuse"], cwd=out, env=env,
                                  stdout=sink, stderr=subprocess.STDOUT)
    ledger = CpuLedger()
    try:
        _watch(phase, driver, log, cluster, server, before, started, trials, faults, ledger)
    finally:
        if driver.poll() is None:  # the bench itself was stopped: the driver stops its trials and exits
            driver.send_signal(signal.SIGINT)
            try:
                driver.wait(120)
            except subprocess.TimeoutExpired:
                driver.kill()
    phase.returncode = driver.wait()
    phase.wall_s = time.time() - started
    phase.cpu_s = ledger.totals()
    lines = server.requests()[before:]
    phase.requests = len(lines)
    phase.server_errors = sum(bool(re.search(r'" 5\d\d\b', line)) for line in lines)
    text = log.read_text(errors="replace").splitlines()
    progress = [line for line in text if line.startswith(("[sweep]", "[tracking]", "done ", "FAILED "))]
    phase.output_lines, phase.longest_line = len(progress), max(map(len, progress), default=0)
    phase.tracking_lines = sum(line.startswith("[tracking]") for line in text)
    phase.trial_attempts_failed = sum(line.startswith("Trial ") and " errored after " in line for line in text)
    return phase


def _watch(phase: Phase, driver: subprocess.Popen, log: Path, cluster: Cluster, server: MlflowServer, before: int,
           started: float, trials: int, faults: bool, ledger: CpuLedger) -> None:
    """Once a second until the driver exits: its memory and CPU, the server's requests, the faults when due."""
    process = psutil.Process(driver.pid)
    windows: list[int] = []  # requests per 10 s
    killed = restarted = False
    last_count, last_window = before, time.time()
    while driver.poll() is None:
        time.sleep(1.0)
        try:
            phase.driver_peak_rss_mb = max(phase.driver_peak_rss_mb, process.memory_info().rss / 2**20)
            cpu = process.cpu_times()
            phase.driver_cpu_s = cpu.user + cpu.system
        except psutil.NoSuchProcess:
            break
        ledger.sample(driver.pid)
        if time.time() - last_window >= 10:
            count = len(server.requests())
            windows.append(count - last_count)
            last_count, last_window = count, time.time()
        if faults:
            done = finished_count(log)
            if not killed and done >= trials // 4:
                killed = True
                phase.faults.append(f"{time.time() - started:.0f} s, {done} done: a worker node removed, a fresh "
                                    f"one added")
                cluster.replace_worker()
            if killed and not restarted and done >= trials // 2:
                restarted = True
                server.stop()
                time.sleep(10)
                server.start()
                phase.faults.append(f"{time.time() - started:.0f} s, {done} done: MLflow server stopped for 10 s "
                                    f"and started again")
    phase.requests_peak_per_s = max(windows, default=0) / 10


def finished_count(log: Path) -> int:
    """Runs done so far, from the driver's latest '[sweep] N/M done' or per-trial line."""
    try:
        with log.open("rb") as f:
            f.seek(max(0, f.seek(0, 2) - 20_000))
            tail = f.read().decode(errors="replace")
    except OSError:
        return 0
    counts = re.findall(r"\b(\d+)/\d+ done", tail)
    return int(counts[-1]) if counts else 0


# --- checks and figures from the tracking server -------------------------------------------------------------------

def trial_runs(uri: str, experiment: str, sweep_name: str):
    from orchestrator import tracking

    client, experiment_id = tracking.open_store(uri, experiment)
    parent = tracking.find_sweep(client, experiment_id, sweep_name)
    query = f"tags.`{tracking.PARENT_RUN_TAG}` = '{parent.info.run_id}' and tags.{tracking.ROLE_TAG} = " \
            f"'{tracking.TRIAL_ROLE}'"
    return client, list(tracking.search_all(client, experiment_id, query))


def check_runs(uri: str, experiment: str, sweep_name: str, trials: int, steps: int) -> dict:
    """Exactly one FINISHED run per trial, and in each the evaluation steps exactly once: the raw history of
    `eval/best_normalized_mean`, run by run (tracking.metric_histories keeps one value per step, so it could not
    show a step logged twice)."""
    client, runs = trial_runs(uri, experiment, sweep_name)
    per_trial = Counter(run.data.tags["trial_id"] for run in runs)
    statuses = Counter(run.info.status for run in runs)
    expected = sorted({steps // 2, steps})
    bad_steps = []
    for run in runs:
        history = sorted(m.step for m in client.get_metric_history(run.info.run_id, "eval/best_normalized_mean"))
        if history != expected:
            bad_steps.append((run.data.tags["trial_id"], history))
    ends = sorted(run.info.end_time / 1000 for run in runs if run.info.end_time)
    return {"runs": len(runs), "trials": len(per_trial), "expected": trials,
            "trials_with_several_runs": sum(n > 1 for n in per_trial.values()), "statuses": dict(statuses),
            "resumed_from_a_checkpoint": sum("resumed_from_step" in run.data.metrics for run in runs),
            "runs_with_wrong_eval_steps": len(bad_steps), "examples": bad_steps[:5],
            "best_minute_trials": max((sum(1 for e in ends if t <= e < t + 60) for t in ends), default=0)}


def time_aggregation(uri: str, experiment: str, sweep_name: str, out: Path) -> dict[str, float]:
    from rich.console import Console

    from orchestrator.aggregate import aggregate_sweep

    seconds = {}
    for protocol in ("paper", "last", "best"):
        started = time.perf_counter()
        aggregate_sweep(uri, experiment, sweep_name, protocol, out / "reports" / protocol,
                        console=Console(file=open(os.devnull, "w")))
        seconds[protocol] = time.perf_counter() - started
    return seconds


# --- the run ---------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.paper_miniature", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results/paper-miniature"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=20, help="gradient steps per trial (evaluated at half and end)")
    parser.add_argument("--workers", type=int, default=2, help="simulated worker nodes")
    parser.add_argument("--gpus-per-node", type=int, default=2, help="GPUs each worker node declares")
    parser.add_argument("--cpus-per-node", type=int, default=8, help="CPUs each worker node declares")
    parser.add_argument("--slots", type=int, default=8, help="trial slots on the head (trials at once at most)")
    parser.add_argument("--server-workers", type=int, default=2, help="MLflow server workers")
    parser.add_argument("--no-faults", action="store_true")
    parser.add_argument("--phases", default="small,paper", help="which sweeps to run: small (28 trials), paper")
    args = parser.parse_args(argv)
    from orchestrator.local_ray import bind_to_loopback
    from tests.services import running_postgres

    bind_to_loopback()  # before Ray is imported: every simulated node, and the driver joining them, on 127.0.0.1

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    # The simulated nodes share this machine's disk, so one node cache; the trial actors inherit it from the nodes.
    os.environ["LAMO_DATASET_CACHE"] = str(out / "dataset-cache")
    # One torch thread per trial whatever CPUs its node declares (Ray would set a trial's threads to its CPUs):
    # the simulated nodes' declared CPUs are not this machine's two cores.
    os.environ["OMP_NUM_THREADS"] = "1"
    seeds = [int(s) for s in args.seeds.split(",")]
    datasets = make_datasets(out / "data")
    backbone = make_backbone(out / "tiny-gpt2")
    results: dict = {"arguments": {k: str(v) for k, v in vars(args).items()}}
    with running_postgres() as postgres:
        server = MlflowServer(postgres.create_database("mlflow"), out / "mlflow", args.server_workers)
        try:
            with Cluster(args.workers, args.cpus_per_node, args.gpus_per_node, args.slots) as cluster:
                phases = [(name, paper_spec(name, datasets, backbone, out, server.uri, seeds, args.steps,
                                            small=name == "small"), name == "paper" and not args.no_faults)
                          for name in args.phases.split(",")]
                for name, spec, faults in phases:
                    trials = sweep_size(spec)
                    print(f"== {name}: {trials} trials", flush=True)
                    phase = run_phase(name, spec, cluster, server, out, trials, faults)
                    checks = check_runs(server.uri, "lamo-paper-miniature", name, trials, args.steps)
                    results[name] = asdict(phase) | {"checks": checks}
                    print(json.dumps(results[name], indent=1), flush=True)
            results["aggregation_s"] = time_aggregation(server.uri, "lamo-paper-miniature", phases[-1][0], out)
        finally:
            server.stop()
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print_tables(results)
    return 0


def sweep_size(spec: Path) -> int:
    spec_dict = yaml.safe_load(spec.read_text())
    cells = sum(len(task.get("ratios", [1.0])) for task in spec_dict["tasks"])
    return len(spec_dict["algorithms"]) * cells * len(spec_dict["seeds"])


def print_tables(results: dict) -> None:
    cores = psutil.cpu_count()
    print(f"\n| sweep | trials | wall s | trials / min (overall, best minute) | CPU s per trial: trials / driver / Ray "
          f"services / MLflow + PostgreSQL | trials' share of {cores} cores × wall | driver peak RSS MB | driver CPU % "
          f"of one core | MLflow req/s (mean, peak 10 s) | 5xx |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in ("small", "paper"):
        if name not in results:
            continue
        r, c = results[name], results[name]["checks"]
        n, cpu = max(1, c["trials"]), Counter(r["cpu_s"])
        print(f"| {name} | {c['trials']} | {r['wall_s']:.0f} | {60 * c['trials'] / r['wall_s']:.1f}, "
              f"{c['best_minute_trials']} | {cpu['trials'] / n:.2f} / {cpu['driver'] / n:.2f} / "
              f"{(cpu['ray services'] + cpu['other']) / n:.2f} / {(cpu['mlflow'] + cpu['postgres']) / n:.2f} | "
              f"{cpu['trials'] / (cores * r['wall_s']):.2f} | {r['driver_peak_rss_mb']:.0f} | "
              f"{100 * r['driver_cpu_s'] / r['wall_s']:.0f} % | {r['requests'] / r['wall_s']:.1f}, "
              f"{r['requests_peak_per_s']:.1f} | {r['server_errors']} |")
    for name in ("small", "paper"):
        if name in results:
            c = results[name]["checks"]
            print(f"{name}: {c['runs']} runs for {c['trials']}/{c['expected']} trials, statuses {c['statuses']}, "
                  f"{c['trials_with_several_runs']} trials with several runs, {c['runs_with_wrong_eval_steps']} runs "
                  f"whose evaluation steps are not each once, {results[name]['trial_attempts_failed']} failed trial "
                  f"attempts (retried), {c['resumed_from_a_checkpoint']} runs resumed from a checkpoint; "
                  f"driver output {results[name]['output_lines']} lines, "
                  f"longest {results[name]['longest_line']} characters, {results[name]['tracking_lines']} "
                  f"[tracking] lines; faults: {results[name]['faults'] or 'none'}")
    if "aggregation_s" in results:
        print("aggregation of the paper sweep, report included: " +
              ", ".join(f"{p} {s:.1f} s" for p, s in results["aggregation_s"].items()))


if __name__ == "__main__":
    sys.exit(main())
