"""The aggregator: a sweep's MLflow runs -> one score per run under a named protocol -> the paper's tables.

    python orchestrator/aggregate.py --sweep NAME_OR_ID [--sweep ANOTHER ...] [--protocol paper|last|best] [--out DIR]

Several sweeps aggregate as one: the union of their trial runs, each computation once (the newest run of one
fingerprint: orchestrator/runs.py), the report saying which sweep each cell's runs came from; that report is
written to --out only (no single parent run owns it).

This module wires the layers and nothing else: orchestrator/tracking.py reads the sweep's runs,
orchestrator/scores.py scores them (protocols and statistics are documented there), orchestrator/report.py
writes the tables, plots and report; the files go back onto the sweep's parent run.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python orchestrator/aggregate.py`: import this checkout's modules, first
    # (not only when none is importable: an editable install of another checkout would otherwise win)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator import report, tracking
from orchestrator.runs import newest_per_computation
from orchestrator.scores import (
    PROTOCOLS,
    REFERENCE_ALGORITHM,
    Aggregate,
    AggregationError,
    DomainSummary,
    aggregate_runs,
)

__all__ = ["AggregationError", "aggregate_sweep", "main"]


def default_out_dir(sweep_id: str, protocol: str) -> Path:
    return Path("reports") / sweep_id / protocol


def aggregate_sweep(tracking_uri: str, experiment: str, sweep: str | list[str], protocol: str = "paper",
                    out_dir: str | Path | None = None, console=None, *, resamples: int = 2000,
                    reference: str = REFERENCE_ALGORITHM, log_artifacts: bool = True) -> Aggregate:
    """Score a sweep, write tables, plots and the HTML report to `out_dir` (default reports/<sweep id>/<protocol>),
    log them to the sweep's parent run under aggregate/<protocol>/ with the headline numbers as its metrics
    (orchestrator/tracking.py names them), and print the main table to `console`.

    Raises AggregationError for an unknown sweep or protocol, a sweep without finished runs, or runs that lack
    the evaluations the protocol needs."""
    from rich.console import Console

    if protocol not in PROTOCOLS:
        raise AggregationError(f"unknown protocol {protocol!r}; protocols: {', '.join(PROTOCOLS)}")
    sweeps = [sweep] if isinstance(sweep, str) else list(dict.fromkeys(sweep))
    try:
        mlflow_client, experiment_id = tracking.open_store(tracking_uri, experiment)
        parents = [tracking.find_sweep(mlflow_client, experiment_id, name) for name in sweeps]
    except tracking.StoreLookupError as error:
        raise AggregationError(str(error)) from None
    identities = [tracking.sweep_identity(parent) for parent in parents]
    runs = [run for parent in parents for run in tracking.read_trial_runs(mlflow_client, experiment_id,
                                                                          parent.info.run_id)]
    if len(parents) > 1:
        runs = newest_per_computation(runs)
    asked = max((tracking.asked_seeds(p.data.params) or 0 for p in parents), default=0) or None
    result = aggregate_runs(runs, protocol, sweep_id=" + ".join(i[0] for i in identities),
                            sweep_name=" + ".join(i[1] for i in identities),
                            parent_run_id=", ".join(p.info.run_id for p in parents), asked=asked,
                            resamples=resamples, reference=reference)
    out_name = "+".join(i[0] for i in identities)
    result.out_dir = Path(out_dir) if out_dir is not None else default_out_dir(out_name, protocol)
    result.files = report.write_outputs(result, result.out_dir)
    if log_artifacts and len(parents) == 1:
        parent = parents[0]
        result.artifact_path = tracking.log_aggregate(mlflow_client, parent.info.run_id, protocol, result.out_dir)
        tracking.log_parent_metrics(mlflow_client, parent.info.run_id, headline_metrics(protocol, result.domains))
    if console is None:  # a Ray job's log is no terminal: keep the table's rows on one line each
        console = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160)
    report.print_summary(result, console)
    return result


def headline_metrics(protocol: str, summaries: list[DomainSummary]) -> dict[str, float]:
    """Each algorithm's domain mean and IQM under the layout's names (tracking.HEADLINE_METRIC), for the parent
    run's metrics: the runs table compares algorithms at a glance. Incomplete averages are left out."""
    metrics = {}
    for s in summaries:
        if s.complete:
            for statistic, value in (("mean", s.mean), ("iqm", s.iqm)):
                metrics[tracking.HEADLINE_METRIC.format(protocol=protocol, domain=s.domain, statistic=statistic,
                                                        algorithm=s.algorithm)] = value
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python orchestrator/aggregate.py", description=__doc__.split("\n")[0])
    parser.add_argument("--sweep", required=True, action="append",
                        help="sweep id (<name>-<hash>) or name (its most recent run); repeat it to aggregate several "
                             "sweeps as one (each computation once, the newest run)")
    parser.add_argument("--protocol", choices=list(PROTOCOLS), default="paper")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default reports/<sweep id>/<protocol>)")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    parser.add_argument("--experiment", default="lamo-sweeps")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples for the intervals")
    parser.add_argument("--no-log", action="store_true",
                        help="do not log the outputs nor the headline metrics to the parent run")
    args = parser.parse_args(argv)
    try:
        aggregate_sweep(args.tracking_uri, args.experiment, args.sweep, args.protocol, args.out,
                        resamples=args.resamples, log_artifacts=not args.no_log)
    except AggregationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
