"""Seeds trained together (trainers/runtime/stack.py) against one trial per seed, on this machine's CPU.

    python -m bench.stacked_seeds [--sizes quickstart,paper] [--ks 1,3,5] [--seconds 6] [--parts 1,2,3,4]
                                [--algorithms bc,td3_bc,iql,cql,dt,lamo]

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
3. Memory of a LaMo stack on GPT-2 small's architecture with pre-trained weights (a saved directory): a fresh
   process builds k = 1, 3, 5 seeds, with one copy of the frozen backbone shared by the seeds (as a stack does)
   and with a copy each; its resident memory after the build, over the same process before it.
4. The crossover of the fused form: k = 5 against k = 1 for bc, td3_bc and iql as their networks widen from 32 to
   512 (two layers, batch 256).

bc, td3_bc and iql update their seeds as one on this CPU (their fused forms: one batched matmul per layer for every
seed; cql's only on accelerators); dt and lamo run the loop form, each seed's update its own kernels one after
another, so a compute-bound update costs k times whatever is done and their figures can only show per-seed
overheads shared or not (the RNG swap per update is added); what the loop form saves is each trial's fixed cost
(part 1's build column, part 2).
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
                       work: Path, device: torch.device = torch.device("cpu")) -> tuple[float, float, float]:
    """(seed-updates/s over at least `seconds` and two lockstep steps, seconds to build the k-seed trial, peak GPU
    memory of the timed steps in GiB: NaN on a CPU)."""
    from trainers.runtime.record import make_record
    from trainers.runtime.stack import StackedTrialCore

    records = [make_record(algorithm, TASK, 0.5, seed, params, str(dataset)) for seed in range(k)]
    started = time.perf_counter()
    core = StackedTrialCore(records, [work / size / r.trial_id for r in records], device)
    built = time.perf_counter() - started
    core.fuse()  # as `run` does: the fused form where the algorithm has one
    for _ in range(2):
        core.train_step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    steps, started = 0, time.perf_counter()
    while steps < 2 or time.perf_counter() - started < seconds:
        core.train_step()
        steps += 1
    synchronize(device)
    rate = k * steps / (time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    core.close()
    return rate, built, peak


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(value: float) -> str:
    return f"{value:.1f}" if value >= 10 else f"{value:.3g}"


def part_one(sizes: list[str], ks: list[int], seconds: float, dataset: Path, tiny_lm: Path, work: Path,
             algorithms: list[str]) -> None:
    torch.set_num_threads(1)
    small_lm = gpt2_small(work / "gpt2-small") if "paper" in sizes else None
    print(f"1. seed-updates/s, k seeds stacked in one process (one torch thread; k = 1 is a trial alone); "
          f"build: seconds to build the k-seed trial against k one-seed builds\n"
          f"{'size':<11}{'algorithm':<9}" + "".join(f"{'k=' + str(k):>10}" for k in ks)
          + "".join(f"{'×k=' + str(k):>8}" for k in ks[1:]) + "   build (k stacked / k alone)")
    for size in sizes:
        for algorithm in algorithms:
            params = hyperparameters(size, algorithm, tiny_lm, small_lm)
            rates, builds = {}, {}
            updates_per_second(size, algorithm, 1, dataset, params, 0.0, work)  # warm-up: imports, first kernels
            for k in ks:
                rates[k], builds[k], _ = updates_per_second(size, algorithm, k, dataset, params, seconds, work)
            gains = "".join(f"{rates[k] / rates[ks[0]]:>8.2f}" for k in ks[1:])
            build = "  ".join(f"k={k}: {builds[k]:.2f}/{k * builds[1]:.2f} s" for k in ks[1:]) if 1 in builds else ""
            print(f"{size:<11}{algorithm:<9}" + "".join(f"{_rate(rates[k]):>10}" for k in ks) + gains + "   " + build,
                  flush=True)


def part_four(dataset: Path, work: Path, seconds: float) -> None:
    """Where the fused form stops paying on this CPU: k = 5 against k = 1 as the networks widen (batch 256)."""
    widths = (32, 64, 128, 256, 512)
    print(f"\n4. the crossover: seed-updates/s of k = 5 fused over k = 1, by hidden width (two layers, batch 256)\n"
          f"{'algorithm':<10}" + "".join(f"{w:>8}" for w in widths))
    for algorithm in ("bc", "td3_bc", "iql"):
        gains = []
        for width in widths:
            params = {"num_steps": 10**6, "eval_every": 10**6, "hidden_dims": [width, width]}
            updates_per_second("crossover", algorithm, 1, dataset, params, 0.0, work)  # warm-up
            alone, _, _ = updates_per_second("crossover", algorithm, 1, dataset, params, seconds, work)
            stacked, _, _ = updates_per_second("crossover", algorithm, 5, dataset, params, seconds, work)
            gains.append(stacked / alone)
        print(f"{algorithm:<10}" + "".join(f"{g:>7.2f}×" for g in gains), flush=True)


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
    done = subprocess.run([sys.executable, str(REPO / "orchestrator" / "sweep.py"), "--spec", str(path), "--no-reuse"],
                          cwd=root, capture_output=True, text=True)  # both sweeps compute the same trials
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


def memory_probe(k: int, share: bool, model: str, dataset: str) -> None:
    """In a fresh process: resident memory before and after building a k-seed LaMo stack (printed as JSON)."""
    import json

    import psutil

    from trainers.runtime.record import make_record
    from trainers.runtime.stack import StackedTrialCore

    torch.set_num_threads(1)
    params = {"num_steps": 10, "eval_every": 10, "backbone": model, "lm_corpus": "builtin"}
    records = [make_record("lamo", TASK, 0.5, seed, params, dataset) for seed in range(k)]
    StackedTrialCore(records[:1], [tempfile.mkdtemp()], torch.device("cpu")).close()  # imports, allocator warm
    before = psutil.Process().memory_info().rss
    core = StackedTrialCore(records, [tempfile.mkdtemp() for _ in records], torch.device("cpu"), share_frozen=share)
    print(json.dumps({"rss_mb": (psutil.Process().memory_info().rss - before) / 2**20,
                      "shared_mb": core.shared_bytes / 2**20}))


def part_three(dataset: Path, work: Path, ks: list[int]) -> None:
    import json

    model = work / "gpt2-small"
    if not model.exists():
        gpt2_small(model)
    print("\n3. a LaMo stack on GPT-2 small (pre-trained weights, frozen; LoRA): resident memory of the build")
    print(f"{'k':>3}{'one backbone, shared':>24}{'a backbone per seed':>22}{'freed':>10}")
    for k in ks:
        figures = {}
        for share in (True, False):
            done = subprocess.run([sys.executable, "-m", "bench.stacked_seeds", "--memory-probe", str(k),
                                   str(int(share)), str(model), str(dataset)], cwd=REPO, capture_output=True,
                                  text=True, check=True)
            figures[share] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{k:>3}{figures[True]['rss_mb']:>20.0f} MiB{figures[False]['rss_mb']:>18.0f} MiB"
              f"{figures[True]['shared_mb']:>6.0f} MiB", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="quickstart,paper")
    parser.add_argument("--ks", default="1,3,5")
    parser.add_argument("--seconds", type=float, default=6.0, help="measured time per (algorithm, size, k)")
    parser.add_argument("--parts", default="1,2,3,4", help="which parts to run")
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS), help="part 1's algorithms")
    parser.add_argument("--memory-probe", nargs=4, metavar=("K", "SHARE", "MODEL", "DATASET"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe:
        k, share, model, dataset = args.memory_probe
        memory_probe(int(k), share == "1", model, dataset)
        return 0
    parts = set(args.parts.split(","))
    dataset, tiny_lm = quickstart_inputs()
    with tempfile.TemporaryDirectory(prefix="bench-stack-") as scratch:
        work = Path(scratch)
        print(f"machine: {torch.get_num_threads()} torch threads available, {sys.platform}; torch {torch.__version__}")
        ks = [int(k) for k in args.ks.split(",")]
        if "1" in parts:
            part_one(args.sizes.split(","), ks, args.seconds, dataset, tiny_lm, work, args.algorithms.split(","))
        if "2" in parts:
            part_two(dataset, tiny_lm, work)
        if "3" in parts:
            part_three(dataset, work, ks)
        if "4" in parts:
            part_four(dataset, work, args.seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
