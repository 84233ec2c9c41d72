"""What a sweep will do, computed without starting Ray or writing anything: the trial table, the resource plan
(what each trial holds, how many run at once on which nodes) and an estimate of the compute (gradient steps,
evaluation environment steps). `python orchestrator/sweep.py --dry-run` prints it; the driver uses the same
numbers to refuse a sweep the cluster cannot run.

A trial with one worker trains in its Tune trial's own actor, which holds that worker's CPUs and GPU share on
one node; a trial with several workers (or `resources.trainer: ray_train`) has a driver holding only a
`trial_slot` and a Ray Train worker group whose workers may sit on different nodes.

With `resources.seeds_per_trial` > 1 a trial trains a stack of one cell's seeds (trainers/runtime/stack.py): the plan
counts trials as stacks (fewer, longer trials; the same runs) and estimates each trial's memory — the dataset file
read once per trial, each seed's subset and model state — against the same seeds as trials alone.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from orchestrator.spec import SweepSpec
from trainers.runtime.record import TrialRecord
from trainers.runtime.registry import declaration, return_conditioned
from trainers.runtime.tasks import get_task


@dataclass(frozen=True)
class ResourcePlan:
    cpus_per_trial: float
    gpus_per_trial: float
    concurrent_trials: int  # how many trials run at once on the given resources
    limited_by: str  # "CPUs", "GPUs", "trial slots" or "max_concurrent_trials"
    in_place: bool  # one worker in the trial's own actor


class InsufficientResources(RuntimeError):
    """A single trial asks for more than the cluster (or any one of its nodes) has: it would wait forever."""


Node = dict[str, float]  # a node's resources: {"CPU": .., "GPU": .., "trial_slot": ..}


def resource_plan(spec: SweepSpec, nodes: list[Node]) -> ResourcePlan:
    """How the spec's trials fit on these nodes; InsufficientResources when one trial cannot fit at all."""
    r = spec.resources
    cpus, gpus = r.num_workers * r.cpus_per_worker, r.num_workers * r.gpus_per_worker
    shape = (f"{r.num_workers} worker(s) × {r.cpus_per_worker:g} CPU, {r.gpus_per_worker:g} GPU")
    total_cpus, total_gpus = sum(n.get("CPU", 0) for n in nodes), sum(n.get("GPU", 0) for n in nodes)

    def by_cpus(node: Node) -> int:  # how many workers of the spec's shape one node holds, by its CPUs
        return math.floor(node.get("CPU", 0) / r.cpus_per_worker + 1e-9)

    def by_gpus(node: Node) -> int:
        return math.floor(node.get("GPU", 0) / r.gpus_per_worker + 1e-9) if r.gpus_per_worker > 0 else 10**9

    def fits(node: Node) -> int:
        return min(by_cpus(node), by_gpus(node))

    workers = sum(fits(node) for node in nodes)
    if cpus > total_cpus or gpus > total_gpus or workers < r.num_workers or \
            (r.in_place and not any(fits(node) for node in nodes)):
        largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)))
        raise InsufficientResources(
            f"one trial needs {cpus:g} CPUs and {gpus:g} GPUs ({shape}, each worker on one node) but the cluster has "
            f"{total_cpus:g} CPUs and {total_gpus:g} GPUs in {len(nodes)} node(s), the largest with "
            f"{largest.get('CPU', 0):g} CPUs and {largest.get('GPU', 0):g} GPUs; lower spec.resources or add nodes")
    binding = "GPUs" if sum(map(by_gpus, nodes)) < sum(map(by_cpus, nodes)) else "CPUs"
    limits = {binding: workers // r.num_workers}
    if not r.in_place:
        slots = sum(n.get("trial_slot", 0) for n in nodes)
        limits["trial slots"] = int(slots)
        if slots < 1:
            raise InsufficientResources(
                "trials with several workers (or resources.trainer: ray_train) need a node with a 'trial_slot' "
                "resource for their driver; start a node with --resources='{\"trial_slot\": 8}' "
                "(cluster/*.yaml and docker-compose.yml do)")
    if spec.concurrency.max_concurrent_trials is not None:
        limits["max_concurrent_trials"] = spec.concurrency.max_concurrent_trials
    limited_by = min(limits, key=limits.get)
    return ResourcePlan(cpus, gpus, max(1, limits[limited_by]), limited_by, r.in_place)


@dataclass(frozen=True)
class ComputeEstimate:
    gradient_steps: int
    evaluation_env_steps: int  # upper bound: every evaluation episode runs the task's horizon


def compute_estimate(records: list[TrialRecord]) -> ComputeEstimate:
    gradient = evaluation = 0
    for record in records:
        task = get_task(record.task)
        config = record.config
        evaluations = math.ceil(config["num_steps"] / config["eval_every"])
        targets = len(task.target_returns) if return_conditioned(record.algorithm) else 1
        gradient += config["num_steps"]
        evaluation += evaluations * config["eval_episodes"] * targets * task.horizon
    return ComputeEstimate(gradient, evaluation)


@dataclass(frozen=True)
class SeedState:
    """One seed's model state: parameters trained (fp32 weight, gradient and Adam's two moments: 16 bytes each)
    and frozen ones (a frozen backbone, target networks: 4 bytes each), of which `shared` are held once by seeds
    trained together (a pre-trained backbone's frozen weights: trainers/runtime/stack.py)."""

    trainable: int
    frozen: int
    shared: int = 0

    @property
    def bytes(self) -> int:
        """What each seed holds of its own."""
        return 16 * self.trainable + 4 * (self.frozen - self.shared)

    def stack_bytes(self, seeds: int) -> int:
        return 4 * self.shared + seeds * self.bytes


def seed_state(record: TrialRecord) -> SeedState | str:
    """The record's model state, counted on a CPU build of its algorithm without data; the reason, when it cannot
    be built here (a backbone neither local nor in the hub's cache)."""
    import torch
    from torch import nn

    from trainers.runtime.algorithm import TrainingSetup
    from trainers.runtime.registry import build_algorithm

    task = get_task(record.task)
    setup = TrainingSetup(task=task, dataset=None, observation_space=task.observation_space,
                          action_space=task.action_space, device=torch.device("cpu"), seed=record.seed)
    try:
        algorithm = build_algorithm(record.algorithm, record.algorithm_config(task), setup)
    except Exception as error:  # noqa: BLE001 - an estimate that cannot be made must not stop the dry run
        return f"{type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"
    parameters = {id(p): p for module in vars(algorithm).values() if isinstance(module, nn.Module)
                  for p in module.parameters()}.values()
    shared = getattr(algorithm, "shared_parameters", dict)()
    return SeedState(sum(p.numel() for p in parameters if p.requires_grad),
                     sum(p.numel() for p in parameters if not p.requires_grad),
                     sum(p.numel() for p in shared.values()))


def trial_memory(record: TrialRecord, seeds: int, state: SeedState) -> int | None:
    """Bytes one trial of `seeds` seeds of the record's cell holds: its dataset file once (read whole, then each seed's
    subset kept) and the seeds' model state; None when the dataset file is not here."""
    source = Path(record.dataset.source)
    if not source.exists():
        return None
    files = [source] if source.is_file() else [f for f in source.rglob("*") if f.is_file()]
    size = sum(f.stat().st_size for f in files)  # on disk: compressed files (Atari's) take more in memory
    return size + seeds * int(size * record.ratio) + state.stack_bytes(seeds)


def describe_stacking(spec: SweepSpec, records: list[TrialRecord], slots: int | None, console: Console) -> None:
    """Trials and waves with the spec's stacks against one trial per seed, and each algorithm's memory per trial."""
    k = spec.stack_size
    trials = len(stacks_of(records, k))
    waves = f"; {math.ceil(trials / slots)} waves against {math.ceil(len(records) / slots)}" if slots else ""
    fused = sorted({r.algorithm for r in records if declaration(r.algorithm).fused_seeds is not None})
    console.print(f"seeds per trial: {k} — {trials} trials train the {len(records)} runs (one trial per seed: "
                  f"{len(records)}){waves}; {', '.join(fused) or 'no algorithm here'} update a stack's seeds as one "
                  f"(batched kernels; cql on accelerators only), the others one after another, so their trials take "
                  f"up to {k}× as long: for them stacking saves each trial's fixed cost (process, data, environments, "
                  f"evaluation loops), not compute")
    table = Table("algorithm", "trainable", "frozen (shared)", "state per seed", f"largest trial, {k} seed(s)",
                  f"the same as {k} trial(s)", title="memory (dataset file once per trial, each seed's subset and "
                                                       "model state — weights, gradients, Adam moments; not "
                                                       "activations —, shared frozen weights once)")
    unknown: dict[str, list[str]] = {}  # why not, -> the algorithms
    for algorithm in dict.fromkeys(r.algorithm for r in records):
        mine = [r for r in records if r.algorithm == algorithm]
        state = seed_state(mine[0])
        if isinstance(state, str):
            unknown.setdefault(state, []).append(algorithm)
            table.add_row(algorithm, "?", "?", "? (below)", "", "")
            continue
        largest = max(mine, key=lambda r: (trial_memory(r, k, state) or 0))
        stacked, alone = trial_memory(largest, k, state), trial_memory(largest, 1, state)
        frozen = f"{state.frozen:,}" + (f" ({state.shared:,})" if state.shared else "")
        table.add_row(algorithm, f"{state.trainable:,}", frozen, _size(state.bytes),
                      _size(stacked) if stacked is not None else f"dataset + {_size(state.stack_bytes(k))}",
                      _size(k * alone) if alone is not None else f"{k} × (dataset + {_size(state.stack_bytes(1))})")
    console.print(table)
    for reason, algorithms in unknown.items():
        console.print(f"memory not estimated for {', '.join(algorithms)}: {reason.split(';')[0]}")


def stacks_of(records: list[TrialRecord], size: int) -> list[list[TrialRecord]]:
    from orchestrator.trial import stacks

    return stacks(records, size)


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def local_resources() -> tuple[float, float]:
    """CPUs and GPUs of this machine, as a local Ray would see them."""
    import torch

    return float(os.cpu_count() or 1), float(torch.cuda.device_count())


def local_nodes(cpus: float, gpus: float, slots: int | None = None) -> list[Node]:
    return [{"CPU": cpus, "GPU": gpus, "trial_slot": float(slots if slots is not None else max(1, cpus))}]


def describe(spec: SweepSpec, records: list[TrialRecord], console: Console, cpus: float, gpus: float,
             for_cluster: bool) -> None:
    """The dry run: trial table, compute estimate and resource plan. On this machine (`for_cluster` False) a
    sweep too large for it is still described — for the resources it names — with the flags that plan it for a
    cluster."""
    table = Table("algorithm", "task", "ratios", "seeds", "trials", "steps each", "eval episodes",
                  title=f"sweep {spec.sweep_id}")
    cells = Counter((r.algorithm, r.task) for r in records)
    for (algorithm, task_name), count in cells.items():
        mine = [r for r in records if (r.algorithm, r.task) == (algorithm, task_name)]
        ratios = sorted({r.ratio for r in mine})
        table.add_row(algorithm, task_name, ", ".join(f"{r:g}" for r in ratios), ", ".join(map(str, spec.seeds)),
                      str(count), f"{mine[0].num_steps:,}", str(mine[0].config["eval_episodes"]))
    console.print(table)
    k = spec.stack_size
    console.print(f"{len(records)} trials" if k == 1 else
                  f"{len(records)} runs in {len(stacks_of(records, k))} trials of up to {k} seeds")
    r = spec.resources
    how = "in place (one worker in the Tune trial's actor)" if r.in_place else \
        f"through Ray Train ({r.num_workers} DDP worker(s); the trial's driver holds a trial_slot)"
    console.print(f"each trial: {r.num_workers} worker(s) × {r.cpus_per_worker:g} CPU, {r.gpus_per_worker:g} GPU, "
                  f"{how}")
    estimate = compute_estimate(records)
    console.print(f"compute: {estimate.gradient_steps:,} gradient steps and at most "
                  f"{estimate.evaluation_env_steps:,} evaluation environment steps")
    where = "the cluster you named" if for_cluster else "this machine"
    trials = len(stacks_of(records, k))
    plan = None
    try:
        plan = resource_plan(spec, local_nodes(cpus, gpus))
    except InsufficientResources as error:
        if for_cluster:
            raise
        console.print(f"this machine ({cpus:g} CPUs, {gpus:g} GPUs) cannot run one trial: {error}")
        console.print("plan it for a cluster with --cpus N --gpus M (the cluster's totals), and run it there: "
                      "ray job submit --address http://HEAD:8265 --working-dir . -- python orchestrator/sweep.py "
                      "--spec <this file> (see cluster/*.yaml)")
    else:
        console.print(f"resources: {plan.concurrent_trials} concurrent trials (limited by {plan.limited_by}) on "
                      f"{where}: {cpus:g} CPUs / {gpus:g} GPUs; "
                      f"{math.ceil(trials / plan.concurrent_trials)} waves of up to {plan.concurrent_trials}")
    if k > 1:
        describe_stacking(spec, records, plan.concurrent_trials if plan else None, console)
    console.print(f"tracking: {spec.tracking.uri} (experiment {spec.tracking.experiment}); storage: {spec.storage}")
    console.print("aggregation: protocol paper (LaMo: per target return, the mean of the evaluations after 80 % of "
                  "training; the best target per cell), also available: last, best")
