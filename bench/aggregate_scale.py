"""The aggregator at paper scale: a synthetic 720-run sweep behind a real `mlflow server`, aggregated under the
three protocols (paper, last, best) with the report, reading the runs run by run (the old path, kept here only
as the baseline) and in bulk (orchestrator/tracking.py's read_trial_runs).

    python -m bench.aggregate_scale [--backend-store-uri postgresql://...] [--resamples 2000] [--keep DIR]

The sweep: the 12 algorithms of sweeps/lamo_paper.yaml × its 19 task × ratio cells plus one Atari cell
(breakout-medium at 1 %, as in sweeps/lamo_atari.yaml; so every domain has a section) × 3 seeds = 720 trial runs,
6 of them FAILED; each run is evaluated at 10 steps (every 100 of 1,000), the sequence models at two target
returns. The runs are written into the backend store (sqlite in a temporary directory unless
--backend-store-uri names one) through tests/test_aggregate.py's SyntheticStore, i.e. by the sweep's own
tracker, then read through `mlflow server` on 127.0.0.1 (tests/services.py starts it, and stops it by its
process id). HTTP requests are counted in this process (every request the MLflow client's session sends).

Prints one row per protocol: seconds and requests of the whole `aggregate_sweep` (read, score, bootstrap,
tables, plots, report, logging to the parent run), old path beside new, and the same for reading alone.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from orchestrator import tracking  # noqa: E402
from orchestrator.runs import TrialRun  # noqa: E402
from orchestrator.scores import PROTOCOLS  # noqa: E402

SEQUENCE_MODELS = ("lamo", "lamo_no_lm", "lamo_random_init", "lamo_full_ft", "lamo_linear_emb", "dt", "wiki_rl")
ATARI_CELL = ("breakout-medium", 0.01)
SEEDS = (0, 1, 2)
STEPS = list(range(100, 1001, 100))


# --- the baseline: read_trial_runs as it was, a get_run per reused trial and a request per run and metric ----

def _per_run_curves(mlflow_client, run) -> dict[str, list[tuple[int, float]]]:
    curves = {}
    for key in run.data.metrics:
        label = tracking.eval_label(key)
        if label is not None:
            history = {m.step: m.value for m in mlflow_client.get_metric_history(run.info.run_id, key)}
            curves[label] = sorted(history.items())
    return curves


def per_run_read_trial_runs(mlflow_client, experiment_id: str, parent_run_id: str) -> list[TrialRun]:
    query = (f"tags.`{tracking.PARENT_RUN_TAG}` = '{parent_run_id}' and "
             f"tags.{tracking.ROLE_TAG} = '{tracking.TRIAL_ROLE}'")
    runs = []
    for run in tracking.search_all(mlflow_client, experiment_id, query):
        original_id = run.data.tags.get(tracking.REUSED_FROM_TAG)
        measured = mlflow_client.get_run(original_id) if original_id else run
        runs.append(TrialRun(run_id=run.info.run_id, record=tracking.trial_record(run), status=run.info.status,
                             curves=_per_run_curves(mlflow_client, measured),
                             wall_seconds=measured.data.metrics.get(tracking.WALL_SECONDS_METRIC, 0.0),
                             gpu_hours=measured.data.metrics.get(tracking.GPU_HOURS_METRIC, 0.0),
                             reused_from=original_id, source_sweep=run.data.tags.get(tracking.REUSED_SWEEP_TAG)
                             or run.data.tags.get(tracking.SWEEP_ID_TAG, ""),
                             fingerprint=measured.data.tags.get(tracking.FINGERPRINT_TAG, ""),
                             started=measured.info.start_time or 0))
    return runs


# --- the sweep ---------------------------------------------------------------------------------------------

def paper_grid() -> tuple[list[str], list[tuple[str, float]]]:
    spec = yaml.safe_load((REPO / "sweeps" / "lamo_paper.yaml").read_text())
    algorithms = [a if isinstance(a, str) else a["name"] for a in spec["algorithms"]]
    cells = [(t["name"], float(r)) for t in spec["tasks"] for r in t["ratios"]]
    return algorithms, cells + [ATARI_CELL]


def write_sweep(store) -> tuple[str, int]:
    """The synthetic sweep into `store`; returns (sweep id, trial runs written)."""
    from trainers.runtime.tasks import get_task

    algorithms, cells = paper_grid()
    parent = store.sweep("paper-scale", "5ca1e00000", list(SEEDS))
    rng = np.random.default_rng(0)
    written = 0
    for a, algorithm in enumerate(algorithms):
        for c, (task, ratio) in enumerate(cells):
            targets = get_task(task).target_returns[:2]
            labels = [f"target_{t:g}" for t in targets] if algorithm in SEQUENCE_MODELS else ["policy"]
            for seed in SEEDS:
                level = 30 + 4 * a + 2 * c * ratio + rng.normal(0, 3)
                curves = {label: [(s, float(level * s / 1000 - 5 * i + rng.normal(0, 2))) for s in STEPS]
                          for i, label in enumerate(labels)}
                failed = seed == 2 and (a * len(cells) + c) % 40 == 7  # a few failures, listed by the report
                store.trial(parent, algorithm, task, ratio, seed, curves, status="FAILED" if failed else "FINISHED")
                written += 1
        print(f"  wrote {algorithm}: {written} runs", flush=True)
    return parent[0], written


# --- timing ------------------------------------------------------------------------------------------------

class RequestCounter:
    """Counts the HTTP requests this process sends to `server` (every request of the MLflow client goes
    through a requests session)."""

    def __init__(self, server: str):
        import requests

        self.server, self.count = server, 0
        original = requests.Session.send

        def send(session, request, **kwargs):
            if request.url.startswith(self.server):
                self.count += 1
            return original(session, request, **kwargs)

        requests.Session.send = send


def timed(counter: RequestCounter, call) -> tuple[float, int]:
    before = counter.count
    started = time.perf_counter()
    call()
    return time.perf_counter() - started, counter.count - before


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend-store-uri", help="backend store to write the sweep to and serve "
                                                    "(default: sqlite in a temporary directory)")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (the CLI's default)")
    parser.add_argument("--keep", type=Path, help="write the store, server log and reports here and keep them")
    args = parser.parse_args(argv)

    from rich.console import Console

    from orchestrator.aggregate import aggregate_sweep
    from tests.services import start_mlflow_server, stop_process_group
    from tests.test_aggregate import EXPERIMENT, SyntheticStore

    root = args.keep or Path(tempfile.mkdtemp(prefix="aggregate-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    store = SyntheticStore(root, args.backend_store_uri)
    started = time.perf_counter()
    sweep_id, written = write_sweep(store)
    print(f"{written} trial runs written to {store.uri.split('@')[-1]} in {time.perf_counter() - started:.0f} s")

    uri, server, log = start_mlflow_server(store.uri, root)
    try:
        counter = RequestCounter(uri)
        client, experiment_id = tracking.open_store(uri, EXPERIMENT)
        parent = tracking.find_sweep(client, experiment_id, sweep_id).info.run_id
        bulk_read = tracking.read_trial_runs
        paths = {"per run": per_run_read_trial_runs, "bulk": bulk_read}
        reads = {name: read(client, experiment_id, parent) for name, read in paths.items()}  # warm both paths
        assert reads["per run"] == reads["bulk"], "the bulk reader reads other TrialRuns than the per-run one"
        aggregate_sweep(uri, EXPERIMENT, sweep_id, "last", root / "warm-up", Console(file=io.StringIO()),
                        resamples=10, log_artifacts=False)  # imports and first plots out of the figures

        rows = []
        for name, read in paths.items():
            tracking.read_trial_runs = read  # aggregate_sweep reads through the module's function
            seconds, requests = timed(counter, lambda: read(client, experiment_id, parent))
            rows.append(("read only", name, seconds, requests))
            for protocol in PROTOCOLS:
                out = root / "reports" / name.replace(" ", "-") / protocol
                seconds, requests = timed(counter, lambda: aggregate_sweep(
                    uri, EXPERIMENT, sweep_id, protocol, out, Console(file=io.StringIO(), width=200),
                    resamples=args.resamples))
                rows.append((f"aggregate {protocol}", name, seconds, requests))
        tracking.read_trial_runs = bulk_read
    finally:
        stop_process_group(server)

    print(f"\n{written} trial runs ({len(reads['bulk'])} read back), `mlflow server` on {uri} over "
          f"{store.uri.split('@')[-1].split('://')[0]}, {args.resamples} bootstrap resamples")
    print(f"| {'step':<20} | {'per run (old) s':>15} | {'requests':>8} | {'bulk (new) s':>12} | {'requests':>8} |")
    print(f"|{'-' * 22}|{'-' * 17}:|{'-' * 9}:|{'-' * 13}:|{'-' * 9}:|")
    for step in dict.fromkeys(row[0] for row in rows):
        old, new = (next(r for r in rows if r[:2] == (step, name)) for name in paths)
        print(f"| {step:<20} | {old[2]:>15.1f} | {old[3]:>8} | {new[2]:>12.1f} | {new[3]:>8} |")
    total = {name: sum(r[2] for r in rows if r[1] == name and r[0].startswith("aggregate")) for name in paths}
    print(f"| {'3 protocols':<20} | {total['per run']:>15.1f} | {'':>8} | {total['bulk']:>12.1f} | {'':>8} |")
    print(f"\nreport: {root / 'reports' / 'bulk' / 'paper' / 'report.html'}; server log {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
