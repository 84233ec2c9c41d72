"""Learning curves of finished trials, beside the behaviour and random policies of their dataset.

    python -m bench.learning_curves outputs/locomotion/{bc,td3_bc,iql,cql,dt,lamo} \\
        --dataset data/hopper-medium-gen.hdf5 --out docs/locomotion.png

Reads each run directory's metrics.jsonl (written by the trial core's LocalReport) and trial_record.json, plots the
D4RL-normalized evaluation return against gradient steps (for return-conditioned models the best target return
of each evaluation, `eval/best_normalized_mean`), draws the dataset's behaviour-policy and random-policy returns
(its `behaviour_mean_return` / `random_mean_return` attributes, written by trainers.tools.make_dataset) as horizontal
lines, and prints a Markdown table: final and best evaluation, steps, and the trial's wall seconds from its
MLflow run (`cost/wall_seconds`) when `--tracking-uri` names the sweep's store.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py

from trainers.runtime.tasks import get_task


def evaluations(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [row for row in rows if "eval/best_normalized_mean" in row]


def wall_seconds(tracking_uri: str) -> dict[str, float]:
    """trial id -> cost/wall_seconds of every trial run in the store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, "tags.role = 'trial'", max_results=5000)
    return {r.data.tags["trial_id"]: r.data.metrics["cost/wall_seconds"] for r in runs
            if "cost/wall_seconds" in r.data.metrics}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--dataset", type=Path, required=True, help="the runs' dataset file (for its references)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="")
    parser.add_argument("--tracking-uri", help="the sweep's MLflow store, for each trial's wall seconds")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    record = json.loads((args.runs[0] / "trial_record.json").read_text())
    task = get_task(record["task"])
    with h5py.File(args.dataset, "r") as f:
        behaviour, random = float(f.attrs["behaviour_mean_return"]), float(f.attrs["random_mean_return"])
    figure, axes = plt.subplots(figsize=(8, 4.8))
    walls = wall_seconds(args.tracking_uri) if args.tracking_uri else {}
    print("| algorithm | final normalized | best normalized | steps | wall s |")
    print("|---|---|---|---|---|")
    for run in args.runs:
        rows = evaluations(run)
        trial = json.loads((run / "trial_record.json").read_text())
        algorithm = trial["algorithm"]
        steps = [row["step"] for row in rows]
        scores = [row["eval/best_normalized_mean"] for row in rows]
        axes.plot(steps, scores, marker="o", markersize=3, label=algorithm)
        wall = f"{walls[trial['trial_id']]:.0f}" if trial["trial_id"] in walls else ""
        print(f"| {algorithm} | {scores[-1]:.1f} | {max(scores):.1f} | {steps[-1]:,} | {wall} |")
    for value, label, style in ((behaviour, "behaviour policy (dataset)", "--"), (random, "random policy", ":")):
        axes.axhline(task.normalized_score(value), color="black", linestyle=style, linewidth=1, label=label)
    print(f"\nbehaviour policy {task.normalized_score(behaviour):.1f}, random policy {task.normalized_score(random):.1f}"
          f" (normalized; returns {behaviour:.0f} and {random:.0f})")
    axes.set_xlabel("gradient steps")
    axes.set_ylabel("D4RL-normalized return (best target)")
    axes.set_title(args.title or f"{task.name} ({task.env_id})")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=120)


if __name__ == "__main__":
    main()
