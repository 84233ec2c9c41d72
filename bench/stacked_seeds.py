"""Seeds trained together (trainers/runtime/stack.py) against one trial per seed, on this machine's CPU.

    python -m bench.stacked_seeds [--sizes quickstart,paper] [--ks 1,3,5] [--seconds 6] [--no-sweep]

1. Seed-updates/s of k seeds stacked in one process (k = 1, 3, 5) for bc, td3_bc, iql, cql, dt and lamo, with one
   torch thread (one Ray CPU slot): the stacked core's own lockstep (`StackedTrialCore.train_step`), after two
   warm-up steps (and a warm-up build of the algorithm); k = 1 is one trial alone. Also the fixed cost of building
   a trial (dataset read, subsets, algorithms, evaluation environments) for k seeds at once against k separate
   builds. Sizes: `quickstart` (sweeps/quickstart.yaml's overrides: MLPs 128 wide, dt 64 wide, the tiny local LM
   of README command 1) and `paper` (each preset's defaults: MLPs 256 wide, batch 256; dt 128 wide, batch 64;
   LaMo on GPT-2 small's architecture, 12 × 768, random weights since none can be downloaded here, batch 64).
2. One cell's three seeds through the sweep (`python orchestrator/sweep.py`: local Ray, Tune, MLflow) at the
   quickstart's settings (800 steps, evaluations at 400 and 800 of 10 episodes), `seeds_per_trial: 3` against 3
   trials, both on one slot (max_concurrent_trials 1): the command's wall time and the trials' own span (first run
   start to last run end in MLflow).

Stacking as built is the loop form: each seed's update is its own kernels, one after another, so a compute-bound
update costs k times whatever is done and the figures of part 1 can only show per-seed overheads shared or not
(the RNG swap per update is added); what it saves is each trial's fixed cost (part 1's build column, part 2).
Needs README command 1's data (data/reacher2d-medium.hdf5) and model (models/tiny-gpt2), or makes them.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
TASK = "reacher2d-medium"
ALGORITHMS = ("bc", "td3_bc", "iql", "cql", "dt", "lamo")


def quickstart_inputs() -> tuple[Path, Path]:
    """README command 1's reacher2d data and tiny LM, made here when absent."""
    dataset, model = REPO / "data" / "reacher2d-medium.hdf5", REPO / "models" / "tiny-gpt2"
    if not dataset.exists():
        from trainers.tools.make_dataset import make_dataset

        make_dataset(TASK, out=dataset)
    if not model.exists():
        from trainers.sequence.language.pretrain import pretrain_tiny_gpt2

        pretrain_tiny_gpt2(model, steps=300, progress=False)
    return dataset, model


def gpt2_small(directory: Path) -> Path:
    from bench.gpu_suite import backbone

    return backbone(directory, quick=False)


def hyperparameters(size: str, algorithm: str, tiny_lm: Path, small_lm: Path | None) -> dict:
    quickstart = {a["name"]: a.get("overrides", {}) for a in
                  yaml.safe_load((REPO / "sweeps" / "quickstart.yaml").read_text())["algorithms"]}
    values = {"num_steps": 10**6, "eval_every": 10**6}
    if size == "quickstart":
        overrides = dict(quickstart[algorithm])
        if algorithm == "lamo":
            overrides["backbone"] = str(tiny_lm)
        return values | overrides
    if algorithm == "lamo":
        return values | {"backbone": str(small_lm), "lm_corpus": "builtin"}
    return values


def updates_per_second(size: str, algorithm: str, k: int, dataset: Path, params: dict, seconds: float,
                       work: Path) -> tuple[float, float]:
    """(seed-updates/s over at least `seconds` and two lockstep steps, seconds to build the k-seed trial)."""
    from trainers.runtime.record import make_record
    from trainers.runtime.stack import StackedTrialCore

    records = [make_record(algorithm, TASK, 0.5, seed, params, str(dataset)) for seed in range(k)]
    started = time.perf_counter()
    core = StackedTrialCore(records, [work / size / r.trial_id for r in records], torch.device("cpu"))
    built = time.perf_counter() - started
    for _ in range(2):
        core.train_step()
    steps, started = 0, time.perf_counter()
    while steps < 2 or time.perf_counter() - started < seconds:
        core.train_step()
        steps += 1
    rate = k * steps / (time.perf_counter() - started)
    core.close()
    return rate, built


def part_one(sizes: list[str], ks: list[int], seconds: float, dataset: Path, tiny_lm: Path, work: Path) -> None:
    torch.set_num_threads(1)
    small_lm = gpt2_small(work / "gpt2-small") if "paper" in sizes else None
    print(f"1. seed-updates/s, k seeds stacked in one process (one torch thread; k = 1 is a trial alone); "
          f"build: seconds to build the k-seed trial against k one-seed builds\n"
          f"{'size':<11}{'algorithm':<9}" + "".join(f"{'k=' + str(k):>10}" for k in ks)
          + "".join(f"{'×k=' + str(k):>8}" for k in ks[1:]) + "   build (k stacked / k alone)")
    for size in sizes:
        for algorithm in ALGORITHMS:
            params = hyperparameters(size, algorithm, tiny_lm, small_lm)
            rates, builds = {}, {}
            updates_per_second(size, algorithm, 1, dataset, params, 0.0, work)  # warm-up: imports, first kernels
            for k in ks:
                rates[k], builds[k] = updates_per_second(size, algorithm, k, dataset, params, seconds, work)
            gains = "".join(f"{rates[k] / rates[ks[0]]:>8.2f}" for k in ks[1:])
            build = "  ".join(f"k={k}: {builds[k]:.2f}/{k * builds[1]:.2f} s" for k in ks[1:]) if 1 in builds else ""
            print(f"{size:<11}{algorithm:<9}" + "".join(f"{rates[k]:>10.1f}" for k in ks) + gains + "   " + build,
                  flush=True)


def sweep_seconds(root: Path, algorithm: str, overrides: dict, dataset: Path, stack: int) -> tuple[float, float]:
    """(command wall seconds, the trials' span in MLflow) of one cell's three seeds through the sweep."""
    from mlflow.tracking import MlflowClient

    spec = {"name": f"bench-stack-{algorithm.replace('_', '-')}-{stack}",
            "algorithms": [{"name": algorithm, "overrides": overrides}],
            "tasks": [{"name": TASK, "dataset": str(dataset)}], "ratios": [0.1], "seeds": [0, 1, 2],
            "training": {"steps": 800, "eval_every": 400, "eval_episodes": 10},
            "resources": {"num_workers": 1, "cpus_per_worker": 1, "seeds_per_trial": stack},
            "concurrency": {"max_concurrent_trials": 1},
            "tracking": {"uri": f"sqlite:///{root}/mlflow.db"}, "storage": str(root / "ray_results")}
    path = root / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(REPO / "orchestrator" / "sweep.py"), "--spec", str(path)], cwd=root,
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0 or not re.search(r"3 trials finished, 0 failed", done.stdout):
        raise RuntimeError(f"sweep {spec['name']} failed:\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    experiment = client.get_experiment_by_name("lamo-sweeps").experiment_id
    runs = client.search_runs([experiment], f"tags.role = 'trial' and tags.sweep_id LIKE '{spec['name']}-%'")
    span = (max(r.info.end_time for r in runs) - min(r.info.start_time for r in runs)) / 1000
    return wall, span


def part_two(dataset: Path, tiny_lm: Path, work: Path) -> None:
    quickstart = {a["name"]: a.get("overrides", {}) for a in
                  yaml.safe_load((REPO / "sweeps" / "quickstart.yaml").read_text())["algorithms"]}
    print("\n2. one cell's 3 seeds through the sweep, one slot (quickstart settings, ratio 0.1): "
          "seeds_per_trial 3 against 3 trials")
    print(f"{'algorithm':<10}{'3 trials: wall':>16}{'trials':>9}{'stacked: wall':>16}{'trials':>9}{'gain':>7}")
    for algorithm in ("bc", "iql", "dt", "lamo"):
        overrides = dict(quickstart[algorithm]) | ({"backbone": str(tiny_lm)} if algorithm == "lamo" else {})
        alone = sweep_seconds(work, algorithm, overrides, dataset, 1)
        stacked = sweep_seconds(work, algorithm, overrides, dataset, 3)
        print(f"{algorithm:<10}{alone[0]:>14.1f} s{alone[1]:>7.1f} s{stacked[0]:>14.1f} s{stacked[1]:>7.1f} s"
              f"{alone[1] / stacked[1]:>6.2f}×", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="quickstart,paper")
    parser.add_argument("--ks", default="1,3,5")
    parser.add_argument("--seconds", type=float, default=6.0, help="measured time per (algorithm, size, k)")
    parser.add_argument("--no-sweep", action="store_true", help="skip part 2 (the sweeps)")
    args = parser.parse_args(argv)
    dataset, tiny_lm = quickstart_inputs()
    with tempfile.TemporaryDirectory(prefix="bench-stack-") as scratch:
        work = Path(scratch)
        print(f"machine: {torch.get_num_threads()} torch threads available, {sys.platform}; torch {torch.__version__}")
        part_one(args.sizes.split(","), [int(k) for k in args.ks.split(",")], args.seconds, dataset, tiny_lm, work)
        if not args.no_sweep:
            part_two(dataset, tiny_lm, work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
