"""Orchestration efficiency: N real trials through `python orchestrator/sweep.py` (local Ray, Tune, MLflow) — on
our path (a one-worker trial trains in its Tune trial's actor, `resources.trainer: auto`) and on the previous one
(a Ray Train TorchTrainer per trial, `resources.trainer: ray_train`) — against the same trials run back to back
in this process by the trial core itself, with no orchestration at all.

    python -m bench.orchestration [--trials 16] [--steps 3000] [--eval-every 1000] [--paths auto,ray_train]

The baseline runs `TrialCore(record, dir).run(...)` — the code every sweep trial runs — with one torch thread, as
one Ray CPU slot has, checkpointing to a directory as a trial does. Efficiency = Σ baseline trial time /
(sweep wall time × slots): 1.0 means the sweep adds nothing; per-trial overhead = (wall × slots − Σ) / N. The
sweep's fixed cost (Python and Ray start-up before the first trial, aggregation after the last) is reported
apart, and "steady" is the efficiency between the first trial's start and the last trial's end, with the
overhead per trial it implies: what each further trial of a larger sweep costs beyond its own work.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
TASK = "reacher2d-medium"


def baseline_seconds(dataset: Path, seeds: list[int], hyperparameters: dict, work: Path) -> list[float]:
    """Each trial's own work through the trial core: load and subsample the data, build, update, evaluate,
    checkpoint, export."""
    from trainers.core import DirectoryCheckpoints, LocalReport, TrialCore
    from trainers.record import make_record

    times = []
    for seed in seeds:
        started = time.perf_counter()
        record = make_record("bc", TASK, 1.0, seed, hyperparameters, str(dataset))
        run_dir = work / "baseline" / record.trial_id
        TrialCore(record, run_dir).run(LocalReport(run_dir, quiet=True), DirectoryCheckpoints(run_dir / "checkpoint"))
        times.append(time.perf_counter() - started)
    return times


def run_sweep(work: Path, trainer: str, dataset: Path, seeds: list[int], hyperparameters: dict) -> dict:
    """Wall time of the sweep command, and from its MLflow runs when the first trial started and the last ended."""
    from mlflow.tracking import MlflowClient

    root = work / trainer
    root.mkdir()
    spec = {"name": f"bench-{trainer.replace('_', '-')}", "algorithms": [{"name": "bc", "overrides": hyperparameters}],
            "tasks": [{"name": TASK, "dataset": str(dataset)}], "ratios": [1.0], "seeds": seeds,
            "resources": {"trainer": trainer}, "tracking": {"uri": f"sqlite:///{root}/mlflow.db"},
            "storage": str(root / "ray_results")}
    (root / "sweep.yaml").write_text(yaml.safe_dump(spec))
    started = time.time()
    sweep = subprocess.run([sys.executable, str(REPO / "orchestrator" / "sweep.py"), "--spec", str(root / "sweep.yaml")],
                           capture_output=True, text=True, cwd=root)
    ended = time.time()
    if sweep.returncode != 0:
        raise RuntimeError(f"the {trainer} sweep failed:\n{sweep.stdout[-3000:]}\n{sweep.stderr[-3000:]}")
    slots = int(next(line for line in sweep.stdout.splitlines() if "trial slots" in line)
                .split("trial slots")[0].split(",")[-1])
    client = MlflowClient(spec["tracking"]["uri"])
    runs = client.search_runs([client.get_experiment_by_name("lamo-sweeps").experiment_id], "tags.role = 'trial'")
    first_start = min(r.info.start_time for r in runs) / 1000
    last_end = max(r.info.end_time for r in runs) / 1000
    return {"wall": ended - started, "slots": slots, "startup": first_start - started, "finish": ended - last_end,
            "steady": last_end - first_start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3000, help="gradient steps per trial")
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--paths", default="auto,ray_train", help="resources.trainer values to measure")
    parser.add_argument("--dataset", help="reacher2d-medium hdf5 (default: generate 200 episodes)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-orchestration-"))
    dataset = Path(args.dataset) if args.dataset else work / "reacher2d-medium.hdf5"
    if not dataset.exists():
        from trainers.make_dataset import make_dataset

        make_dataset(TASK, out=dataset, seed=0, num_episodes=200)
    hyperparameters = {"num_steps": args.steps, "eval_every": args.eval_every, "eval_episodes": args.eval_episodes}
    seeds = list(range(args.trials))

    from trainers.cpu_allocator import keep_freed_memory_for_reuse

    keep_freed_memory_for_reuse()  # as a trial does
    torch.set_num_threads(1)  # one Ray CPU slot
    total = sum(baseline_seconds(dataset, seeds, hyperparameters, work))
    sweeps = {trainer: run_sweep(work, trainer, dataset, seeds, hyperparameters) for trainer in args.paths.split(",")}

    print(f"{args.trials} bc trials on {TASK}, {args.steps} steps, evaluation every {args.eval_every} "
          f"({args.eval_episodes} episodes); work in {work}")
    print(f"{'':<48}{'wall s':>8}{'slots':>7}{'per trial s':>13}{'overhead s':>12}{'efficiency':>12}"
          f"{'start s':>9}{'end s':>7}{'steady':>8}{'steady overhead s':>19}")
    print(f"{'trial core, back to back (1 thread)':<48}{total:>8.1f}{1:>7}{total / args.trials:>13.2f}")
    names = {"auto": "sweep, one-worker trials in place (ours)", "ray_train": "sweep, a TorchTrainer per trial (before)"}
    for trainer, m in sweeps.items():
        wall, slots = m["wall"], m["slots"]
        print(f"{names.get(trainer, trainer):<48}{wall:>8.1f}{slots:>7}{wall * slots / args.trials:>13.2f}"
              f"{(wall * slots - total) / args.trials:>12.2f}{total / (wall * slots):>12.2f}{m['startup']:>9.1f}"
              f"{m['finish']:>7.1f}{total / (m['steady'] * slots):>8.2f}"
              f"{(m['steady'] * slots - total) / args.trials:>19.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
