"""Orchestration efficiency: N real trials through `python orchestrator/sweep.py` (local Ray, Tune, MLflow) — on
our path (a one-worker trial trains in its Tune trial's actor, `resources.trainer: auto`) and on the previous one
(a Ray Train TorchTrainer per trial, `resources.trainer: ray_train`) — against the same trials run by the trial
core itself, with no orchestration at all.

    python -m bench.orchestration [--trials 16] [--steps 3000] [--eval-every 1000] [--paths auto,ray_train]
                                  [--baselines serial,side-by-side] [--cold] [--alongside]
    python -m bench.orchestration --neighbour 4 --trials 3 --steps 20000 --eval-every 10000

The baseline runs `TrialCore(record, dir).run(...)` — the code every sweep trial runs — with one torch thread, as
one Ray CPU slot has, checkpointing to a directory as a trial does; twice (`--baselines` picks): one trial at a
time in this process ("serial"), and `slots` plain processes side by side taking trials from one queue, as the
sweep runs them but with no Ray, Tune or MLflow ("side-by-side"). The baselines' trials run in blocks, one
before each sweep and one after the last, and each sweep is compared with the blocks just before and after it.
Each measured sweep follows a two-trial warm-up sweep of the same path (`--cold`: none), so that every path
starts with the libraries a sweep reads (Ray, MLflow, their dependencies: about 340 MB) in memory: otherwise
the first path measured reads them from disk and the next ones do not — on this VM, whose disk gives about 35
MB/s and which pages out file pages idle for seconds, 20 s of difference. The warm-up's own start-up and end
are printed too: a cold start's figures. Trials sharing the machine's cores, caches and memory bandwidth can
run slower than one alone; the side-by-side baseline pays that too, so against it the sweep's figures are the
orchestration's own cost.
Efficiency = Σ baseline trial time / (sweep wall time × slots): 1.0 means the sweep adds nothing; per-trial
overhead = (wall × slots − Σ) / N. The sweep's fixed cost (Python and Ray start-up before the first trial,
aggregation after the last) is reported apart, split by the driver's own timing of its phases, and "steady" is
the efficiency between the first trial's start and the last trial's end, with the overhead per trial it implies:
what each further trial of a larger sweep costs beyond its own work. Comparing with a baseline measured at
another time carries the machine's drift (on a shared VM the same trial's training time moved between 53 and
108 s within one run), so the benchmark also measures the sweep's cost in ways the drift cannot reach:
- the trials' own runs (their MLflow runs' start to end: load, build, train, evaluate, checkpoint, deliver) as a
  share of wall × slots — the orchestration's time outside the trials (on the ray_train path the per-trial Train
  controller, placement group and worker start happen inside the runs, so there it says less);
- the CPU the sweep's processes used between the first trial's start and the last one's end (psutil, once a
  second): the trials' processes against the rest (driver, GCS, raylet, dashboard, monitors), which takes its
  share from the trials' cores;
- with `--alongside`, a one-slot sweep and one plain process running the trial core at Ray's worker niceness,
  training at the same time on the two halves of the machine: the same drift reaches both, so the ratio of their
  training times is what running inside a Ray actor does to the training itself. It cannot see what the running
  sweep does to every process on the machine (its threads' wake-ups slow the plain neighbour too);
- `--neighbour BLOCKS`, a measurement of its own, sees that: a plain process's training beside another plain
  process and beside a one-slot sweep, in alternating blocks.
Every phase's training time per trial (the sum of its report windows' updates over their updates/s) is printed
too: the same work in each, so differences between phases show the drift.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch
import yaml

from orchestrator.phases import PREFIX as PHASES
from orchestrator.phases import parse as parse_phases

REPO = Path(__file__).resolve().parents[1]
TASK = "reacher2d-medium"
BASELINES = ("serial", "side-by-side")
RATE = "train/steps_per_second"
TRIAL_PROCESS = {"auto": "ray::ImplicitFunc", "ray_train": "ray::RayTrainWorker"}  # process titles doing the work
WARM_UP = {"num_steps": 100, "eval_every": 100, "eval_episodes": 1}  # loads what any sweep loads, trains little
RAY_WORKER_NICENESS = 15  # Ray's default worker_niceness: its workers run at this niceness


def training_seconds(rates: list[tuple[int, float]]) -> float:
    """A trial's time in gradient updates, from its (step, train/steps_per_second) reports in step order: each
    window's updates (steps since the previous report) over its rate."""
    previous, total = 0, 0.0
    for step, rate in rates:
        total, previous = total + (step - previous) / rate, step
    return total


def trial_runs(tracking_uri: str) -> tuple:
    """(client, the trials' MLflow runs) of a sweep's store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    return client, client.search_runs([client.get_experiment_by_name("lamo-sweeps").experiment_id],
                                      "tags.role = 'trial'")


def run_training_seconds(client, run) -> float:
    """A trial run's time in gradient updates, from the rates it logged."""
    return training_seconds(sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, RATE)))


def trial_seconds(dataset: Path, seed: int, hyperparameters: dict, work: Path) -> tuple[float, float]:
    """One trial's own work through the trial core, with one torch thread: load and subsample the data, build,
    update, evaluate, checkpoint, export. Returns its wall time and its training time."""
    from trainers.runtime.core import (
        METRICS_FILE,
        DirectoryCheckpoints,
        LocalReport,
        TrialCore,
    )
    from trainers.runtime.cpu_allocator import keep_freed_memory_for_reuse
    from trainers.runtime.record import make_record

    keep_freed_memory_for_reuse()  # as a trial does
    torch.set_num_threads(1)  # one Ray CPU slot
    started = time.perf_counter()
    record = make_record("bc", TASK, 1.0, seed, hyperparameters, str(dataset))
    run_dir = work / record.trial_id
    TrialCore(record, run_dir).run(LocalReport(run_dir, quiet=True), DirectoryCheckpoints(run_dir / "checkpoint"))
    wall = time.perf_counter() - started
    reports = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    return wall, training_seconds([(r["step"], r[RATE]) for r in reports if RATE in r])


def baseline_seconds(dataset: Path, seeds: list[int], hyperparameters: dict, work: Path,
                     processes: int = 1) -> list[tuple[float, float]]:
    """Every trial's wall and training time: back to back in this process, or in `processes` plain processes
    side by side."""
    if processes == 1:
        return [trial_seconds(dataset, seed, hyperparameters, work) for seed in seeds]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        return pool.starmap(trial_seconds, [(dataset, seed, hyperparameters, work) for seed in seeds], chunksize=1)


def sweep_spec(root: Path, trainer: str, dataset: Path, seeds: list[int], hyperparameters: dict,
               max_concurrent: int | None = None) -> dict:
    return {"name": f"bench-{trainer.replace('_', '-')}", "algorithms": [{"name": "bc", "overrides": hyperparameters}],
            "tasks": [{"name": TASK, "dataset": str(dataset)}], "ratios": [1.0], "seeds": seeds,
            "resources": {"trainer": trainer}, "concurrency": {"max_concurrent_trials": max_concurrent},
            "tracking": {"uri": f"sqlite:///{root}/mlflow.db"}, "storage": str(root / "ray_results")}


def cpu_samples(sweep: subprocess.Popen) -> tuple[list[tuple[float, dict[int, tuple[str, float]]]],
                                                  list[tuple[float, float, float, int]]]:
    """Once a second until the sweep exits: every process of its tree (the driver, Ray's GCS, raylet, dashboard
    and monitors, the trial actors) with its title and its CPU seconds so far; and the machine's counters: the
    cores' seconds waiting on the disk (iowait) and taken by the VM's host (steal), and the bytes read from disk."""
    tree, samples, machine = psutil.Process(sweep.pid), [], []
    while sweep.poll() is None:
        now, seen = time.time(), {}
        for process in [tree, *tree.children(recursive=True)]:
            try:
                with process.oneshot():
                    seen[process.pid] = (" ".join(process.cmdline()), sum(process.cpu_times()[:2]))
            except psutil.Error:  # ended between listing and reading
                pass
        samples.append((now, seen))
        cpu, disk = psutil.cpu_times(), psutil.disk_io_counters()
        machine.append((now, cpu.iowait, cpu.steal, disk.read_bytes if disk else 0))
        time.sleep(1.0)
    return samples, machine


def machine_between(machine: list[tuple[float, float, float, int]], start: float, end: float) -> str:
    """What the machine's counters say of the window: why a phase took longer than it does on a quiet machine
    (reading its libraries back from disk, or cores taken by the host)."""
    window = [sample for sample in machine if start <= sample[0] <= end]
    if len(window) < 2:
        return "machine counters: no two samples in the window"
    (_, iowait0, steal0, read0), (_, iowait1, steal1, read1) = window[0], window[-1]
    return (f"{(read1 - read0) / 2**20:.0f} MB read from disk, cores waiting on it {iowait1 - iowait0:.1f} s, "
            f"taken by the host {steal1 - steal0:.1f} s")


def cpu_shares(samples: list[tuple[float, dict[int, tuple[str, float]]]], trial_title: str, start: float,
               end: float) -> tuple[float, float]:
    """Shares of the machine's cores that the trial processes and the rest of the sweep used between start and
    end (a process started within the window counts from zero, one that ended counts to its last sample). A
    process is a trial's if it carried the trial title in any sample (its title can change on its way out)."""
    window = [sample for sample in samples if start <= sample[0] <= end]
    if len(window) < 2:
        return math.nan, math.nan
    first, latest, trial_processes = window[0][1], {}, set()
    for _, seen in window:
        latest.update(seen)
        trial_processes |= {pid for pid, (title, _) in seen.items() if title.startswith(trial_title)}
    used = {True: 0.0, False: 0.0}
    for pid, (title, cpu) in latest.items():
        used[pid in trial_processes] += cpu - first.get(pid, (title, 0.0))[1]
    cores = (window[-1][0] - window[0][0]) * psutil.cpu_count()
    return used[True] / cores, used[False] / cores


def run_sweep(root: Path, trainer: str, dataset: Path, seeds: list[int], hyperparameters: dict,
              max_concurrent: int | None = None) -> dict:
    """Wall time of the sweep command; from its MLflow runs when the first trial started and the last ended and
    each trial's training time; and the CPU its processes used in between."""
    root.mkdir()
    spec = sweep_spec(root, trainer, dataset, seeds, hyperparameters, max_concurrent)
    (root / "sweep.yaml").write_text(yaml.safe_dump(spec))
    started = time.time()
    command = [sys.executable, str(REPO / "orchestrator" / "sweep.py"), "--spec", str(root / "sweep.yaml")]
    with (root / "sweep.out").open("w") as out:
        sweep = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=root)
        samples, machine = cpu_samples(sweep)
    ended = time.time()
    output = (root / "sweep.out").read_text()
    if sweep.returncode != 0:
        raise RuntimeError(f"the {trainer} sweep failed (its output: {root / 'sweep.out'}):\n{output[-3000:]}")
    slots = int(next(line for line in output.splitlines() if "trial slots" in line)
                .split("trial slots")[0].split(",")[-1])
    client, runs = trial_runs(spec["tracking"]["uri"])
    first_start = min(r.info.start_time for r in runs) / 1000
    last_end = max(r.info.end_time for r in runs) / 1000
    in_trials = sum(r.info.end_time - r.info.start_time for r in runs) / 1000
    training = [run_training_seconds(client, r) for r in runs]
    phases = parse_phases(next(line for line in output.splitlines() if line.startswith(PHASES)))
    return {"wall": ended - started, "slots": slots, "startup": first_start - started, "finish": ended - last_end,
            "steady": last_end - first_start, "in_trials": in_trials, "training": training,
            "first_start": first_start, "last_end": last_end, "phases": phases,
            "machine": (machine_between(machine, started, first_start), machine_between(machine, last_end, ended)),
            "cpu": cpu_shares(samples, TRIAL_PROCESS[trainer], first_start, last_end)}


def start_and_end(m: dict) -> str:
    """The sweep's start-up and end split by the driver's own phases (seconds from the command's start): the
    driver until Tune starts (Python and imports, input checks, Ray and the store, the parent run), Tune until the
    first trial's run opens (its actor started, imports); the last trial's end until Tune returns, Ray's shutdown
    and the aggregation (side by side), the process's exit."""
    phases, wall = m["phases"], m["wall"]
    tune_start, tune_end = phases["trials"]
    last_end = wall - m["finish"]

    def took(name: str) -> float:
        start, end = phases.get(name, (0.0, 0.0))
        return end - start

    closing = max(phases["ray-shutdown"][1], phases.get("aggregation", (0, 0))[1])
    exiting = max(0.0, wall - closing)  # phases count from the process's start, a few ms after this clock's
    return (f"start-up {m['startup']:.1f} s = driver {tune_start:.1f} (python {phases['python'][1]:.1f}, inputs "
            f"{took('inputs'):.1f}, ray {took('ray'):.1f} beside the store {took('store'):.1f}) + Tune to the first "
            f"trial's run {m['startup'] - tune_start:.1f}; end {m['finish']:.1f} s = Tune's end "
            f"{tune_end - last_end:.1f} + Ray's shutdown {took('ray-shutdown'):.1f} and the aggregation "
            f"{took('aggregation'):.1f} side by side, {closing - tune_end:.1f} + exit {exiting:.1f}\n"
            f"  during the start-up: {m['machine'][0]}; during the end: {m['machine'][1]}")


def as_ray_worker() -> None:
    """This process at Ray's worker niceness (absolute: a pool's process may run several trials)."""
    os.setpriority(os.PRIO_PROCESS, 0, RAY_WORKER_NICENESS)


def plain_trials_until(stop: Path, dataset: Path, hyperparameters: dict, work: Path, results) -> None:
    """Trial after trial through the trial core, at Ray's worker niceness, until `stop` exists: each trial's start
    and end time and its training time onto `results`."""
    as_ray_worker()
    seed = 10_000
    while not stop.exists():
        started = time.time()
        _, training = trial_seconds(dataset, seed, hyperparameters, work)
        results.put((started, time.time(), training))
        seed += 1


def alongside(work: Path, dataset: Path, seeds: list[int], hyperparameters: dict) -> tuple[list[float], list[float]]:
    """A one-slot sweep and one plain process running the trial core, training at the same time on the two
    halves of the machine, so that its drift reaches both alike: the training times of the sweep's trials and of
    the plain trials that ran between the sweep's first trial start and its last trial end."""
    context = multiprocessing.get_context("spawn")
    stop, results = work / "alongside.stop", context.Queue()
    plain = context.Process(target=plain_trials_until, args=(stop, dataset, hyperparameters, work / "plain", results))
    plain.start()
    try:
        sweep = run_sweep(work / "alongside", "auto", dataset, seeds, hyperparameters, max_concurrent=1)
    finally:
        stop.touch()
        plain.join()
    plain_trials = [results.get() for _ in range(results.qsize())]
    return sweep["training"], [training for started, ended, training in plain_trials
                               if sweep["first_start"] <= started and ended <= sweep["last_end"]]


def plain_training_seconds(dataset: Path, seed: int, hyperparameters: dict, work: Path) -> float:
    as_ray_worker()
    return trial_seconds(dataset, seed, hyperparameters, work)[1]


def neighbour(work: Path, dataset: Path, blocks: int, per_block: int,
              hyperparameters: dict) -> tuple[list[float], list[float]]:
    """What a running sweep costs the other processes on the machine: blocks in turn of (A) two plain processes
    running the trial core side by side and (B) a one-slot sweep beside one plain process, all at Ray's worker
    niceness. Returns the plain processes' training times in the A blocks and in the B blocks."""
    beside_plain, beside_sweep = [], []
    for block in range(blocks):
        seeds, where = list(range(100 * block, 100 * block + per_block)), work / f"block-{block}"
        where.mkdir()
        if block % 2 == 0:
            with multiprocessing.get_context("spawn").Pool(2) as pool:
                beside_plain += pool.starmap(plain_training_seconds, [(dataset, seed, hyperparameters, where)
                                                                     for seed in seeds + [s + 50 for s in seeds]])
        else:
            beside_sweep += alongside(where, dataset, seeds, hyperparameters)[1]
    return beside_plain, beside_sweep


def seed_blocks(seeds: list[int], blocks: int) -> list[list[int]]:
    """`seeds` cut into `blocks` consecutive blocks of (nearly) equal size."""
    return [seeds[len(seeds) * i // blocks: len(seeds) * (i + 1) // blocks] for i in range(blocks)]


def spread(seconds: list[float]) -> str:
    trials = f"{len(seconds)} trial{'s' * (len(seconds) > 1)}"
    return f"median {statistics.median(seconds):.1f} s ({min(seconds):.1f}–{max(seconds):.1f}; {trials})"


def report_neighbour(work: Path, dataset: Path, blocks: int, per_block: int, hyperparameters: dict) -> int:
    beside_plain, beside_sweep = neighbour(work, dataset, blocks, per_block, hyperparameters)
    print(f"{blocks} blocks of {per_block} bc trials on {TASK}, {hyperparameters['num_steps']} steps; work in {work}\n"
          f"a plain process running the trial core (at Ray's worker niceness), its training time per trial:\n"
          f"  beside another plain process: {spread(beside_plain)}\n  beside a one-slot sweep: "
          f"{spread(beside_sweep) if beside_sweep else 'no trial ran wholly within the sweep (use longer trials)'}")
    if beside_sweep:
        print(f"  beside the sweep / beside a plain process: "
              f"{statistics.mean(beside_sweep) / statistics.mean(beside_plain):.3f} (means)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3000, help="gradient steps per trial")
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--paths", default="auto,ray_train", help="resources.trainer values to measure")
    parser.add_argument("--dataset", help="reacher2d-medium hdf5 (default: generate 200 episodes)")
    parser.add_argument("--baselines", default="serial,side-by-side",
                        help="which baselines to run: serial (one trial at a time), side-by-side (slots at once)")
    parser.add_argument("--cold", action="store_true",
                        help="no warm-up sweep before each measured one: the first path measured then starts with its "
                             "libraries on disk, the next ones with them in memory")
    parser.add_argument("--alongside", action="store_true",
                        help="also run a one-slot sweep beside a plain trial-core process and compare their training")
    parser.add_argument("--neighbour", type=int, metavar="BLOCKS", default=0,
                        help="instead: BLOCKS alternating blocks of --trials trials, a plain trial-core process beside "
                             "another, then beside a one-slot sweep; compare its training in the two")
    args = parser.parse_args(argv)
    if args.neighbour and args.neighbour < 2:
        parser.error(f"--neighbour {args.neighbour}: expected 2 or more blocks (beside a plain process, beside a "
                     "sweep, in turn)")
    chosen = args.baselines.split(",")
    if unknown := set(chosen) - set(BASELINES):
        parser.error(f"--baselines: unknown {', '.join(sorted(unknown))}; expected serial and/or side-by-side")
    if args.trials < len(args.paths.split(",")) + 1 and not args.neighbour:
        parser.error(f"--trials {args.trials}: expected at least {len(args.paths.split(',')) + 1} (a block of baseline "
                     "trials before each sweep and after the last)")
    if unknown := set(args.paths.split(",")) - set(TRIAL_PROCESS):
        parser.error(f"--paths: unknown {', '.join(sorted(unknown))}; expected {' and/or '.join(TRIAL_PROCESS)} "
                     "(resources.trainer values)")

    work = Path(tempfile.mkdtemp(prefix="bench-orchestration-"))
    dataset = Path(args.dataset) if args.dataset else work / "reacher2d-medium.hdf5"
    if not dataset.exists():
        from trainers.tools.make_dataset import make_dataset

        make_dataset(TASK, out=dataset, seed=0, num_episodes=200)
    hyperparameters = {"num_steps": args.steps, "eval_every": args.eval_every, "eval_episodes": args.eval_episodes}
    seeds = list(range(args.trials))
    if args.neighbour:
        return report_neighbour(work, dataset, args.neighbour, args.trials, hyperparameters)

    # The machine's speed drifts by several per cent over minutes (a shared VM): the baselines' trials run in
    # blocks, one before each sweep and one after the last, and each sweep is measured against the two blocks
    # around it (each block's baselines in mirrored order), so that a drift through the sweep cancels out.
    from orchestrator.plan import local_nodes, local_resources, resource_plan
    from orchestrator.spec import SweepSpec

    slots = resource_plan(SweepSpec.model_validate(sweep_spec(work / "auto", "auto", dataset, seeds, hyperparameters)),
                          local_nodes(*local_resources())).concurrent_trials
    paths = args.paths.split(",")
    processes = {"serial": 1, "side-by-side": slots}
    blocks, sweeps, warm_ups = [], {}, {}
    for index, block_seeds in enumerate(seed_blocks(seeds, len(paths) + 1)):
        order = chosen if index % 2 == 0 else list(reversed(chosen))
        blocks.append({name: baseline_seconds(dataset, block_seeds, hyperparameters, work / f"baseline-{name}",
                                              processes[name]) for name in order})
        if index < len(paths):
            path = paths[index]
            if not args.cold:
                warm_ups[path] = run_sweep(work / f"{path}-warm-up", path, dataset, seeds[:2], WARM_UP)
            sweeps[path] = run_sweep(work / path, path, dataset, seeds, hyperparameters)

    def per_trial(name: str, trainer: str) -> float:
        """The baseline's mean wall time per trial in the blocks just before and after the sweep."""
        index = paths.index(trainer)
        walls = [wall for block in blocks[index:index + 2] for wall, _ in block[name]]
        return sum(walls) / len(walls)

    print(f"{args.trials} bc trials on {TASK}, {args.steps} steps, evaluation every {args.eval_every} "
          f"({args.eval_episodes} episodes); work in {work}")
    names = {"auto": "sweep, one-worker trials in place (ours)",
             "ray_train": "sweep, a TorchTrainer per trial (before)"}
    labels = {"serial": "one at a time", "side-by-side": f"{slots} side by side"}
    for name in chosen:
        print(f"\nagainst the trial core, {labels[name]}, no orchestration (its trials in the blocks just before and "
              f"after each sweep)")
        print(f"{'':<48}{'baseline s':>11}{'wall s':>8}{'slots':>7}{'per trial s':>13}{'overhead s':>12}"
              f"{'efficiency':>12}{'start s':>9}{'end s':>7}{'steady':>8}{'steady overhead s':>19}")
        for trainer, m in sweeps.items():
            wall, n, base = m["wall"], m["slots"], per_trial(name, trainer)
            total = base * args.trials
            print(f"{names.get(trainer, trainer):<48}{base:>11.2f}{wall:>8.1f}{n:>7}{wall * n / args.trials:>13.2f}"
                  f"{(wall * n - total) / args.trials:>12.2f}{total / (wall * n):>12.2f}{m['startup']:>9.1f}"
                  f"{m['finish']:>7.1f}{total / (m['steady'] * n):>8.2f}"
                  f"{(m['steady'] * n - total) / args.trials:>19.2f}")
    print()
    for trainer, m in sweeps.items():
        filled, steady = m["in_trials"] / (m["wall"] * m["slots"]), m["in_trials"] / (m["steady"] * m["slots"])
        print(f"{names.get(trainer, trainer)}: the trials' own runs fill {filled:.3f} of wall × slots, {steady:.3f} "
              f"between the first trial's start and the last one's end; in between, the trials' processes used "
              f"{m['cpu'][0]:.3f} of the machine's cores, the rest of the sweep (driver, Ray) {m['cpu'][1]:.3f}\n"
              f"  {start_and_end(m)}")
        if trainer in warm_ups:
            print(f"  its warm-up sweep (2 trials of {WARM_UP['num_steps']} steps) before it: "
                  f"{start_and_end(warm_ups[trainer])}")
    print("\ntraining time per trial (the same updates in every phase, so the machine's drift shows here), in order:")
    for index, block in enumerate(blocks):
        for name in block:
            print(f"  {labels[name]}, block {index + 1}: {spread([t for _, t in block[name]])}")
        if index < len(paths):
            print(f"  {names.get(paths[index], paths[index])}: {spread(sweeps[paths[index]]['training'])}")
    if args.alongside:
        in_sweep, plain = alongside(work, dataset, seeds, hyperparameters)
        if not plain:
            print("\n--alongside: no plain trial ran wholly between the sweep's first trial start and its last trial "
                  "end; nothing to compare (use more or longer trials)")
            return 0
        print("\na one-slot sweep and a plain process running the trial core (at Ray's worker niceness), training at "
              f"the same time:\n  in the sweep: {spread(in_sweep)}\n  plain: {spread(plain)}\n  sweep / plain: "
              f"{statistics.mean(in_sweep) / statistics.mean(plain):.3f} (means), "
              f"{statistics.median(in_sweep) / statistics.median(plain):.3f} (medians)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
