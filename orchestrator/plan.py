"""What a sweep will do, computed without starting Ray or writing anything: the trial table, the resource plan
(what each trial holds, how many run at once on which nodes) and an estimate of the compute (gradient steps,
evaluation environment steps). `python orchestrator/sweep.py --dry-run` prints it; the driver uses the same
numbers to refuse a sweep the cluster cannot run.

A trial with one worker trains in its Tune trial's own actor, which holds that worker's CPUs and GPU share on
one node; a trial with several workers (or `resources.trainer: ray_train`) has a driver holding only a
`trial_slot` and a Ray Train worker group whose workers may sit on different nodes.

What a trial holds is its algorithm's (orchestrator/spec.py, `SweepSpec.algorithm_resources`): the plan groups the
algorithms by trial shape (`ShapePlan`: how many of that shape fit at once, and by what); Tune runs the grid
algorithm by algorithm, so the sweep's waves are each shape's trials in waves of that shape's concurrency, and the
most trials at once (Tune's `max_concurrent_trials`, the local trial slots) is the largest shape concurrency.

The time projection (`projected_hours`) divides each trial's gradient steps by a per-step rate (`STEP_RATES`):
on a CPU, rates this project measured (README "Seeds trained together" and "Performance"); on a GPU, assumed
ones — no GPU was lent to this project — which the plan says. GPU-hours charge each trial its own GPUs.
Evaluation is not in the projection (its environment steps are counted above).

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

from orchestrator.spec import ResourcesSpec, SweepSpec
from trainers.runtime.record import TrialRecord
from trainers.runtime.registry import declaration, return_conditioned
from trainers.runtime.tasks import get_task


@dataclass(frozen=True)
class ShapePlan:
    """The trials of the algorithms sharing one trial shape, on the given nodes."""

    algorithms: tuple[str, ...]
    resources: ResourcesSpec  # the shape (spec.algorithm_resources of each of them)
    concurrent_trials: int  # how many trials of this shape run at once on the given resources
    limited_by: str  # "CPUs", "GPUs", "trial slots" or "max_concurrent_trials"

    @property
    def cpus_per_trial(self) -> float:
        return self.resources.num_workers * self.resources.cpus_per_worker

    @property
    def gpus_per_trial(self) -> float:
        return self.resources.num_workers * self.resources.gpus_per_worker

    @property
    def in_place(self) -> bool:  # one worker in the trial's own actor
        return self.resources.in_place


@dataclass(frozen=True)
class ResourcePlan:
    shapes: tuple[ShapePlan, ...]  # in the order of the spec's algorithms
    concurrent_trials: int  # the most trials at once: the largest shape's concurrency
    limited_by: str  # what limits that shape, or "autoscaling"

    def of(self, algorithm: str) -> ShapePlan:
        return next(shape for shape in self.shapes if algorithm in shape.algorithms)


class InsufficientResources(RuntimeError):
    """A single trial asks for more than the cluster (or any one of its nodes) has: it would wait forever."""


Node = dict[str, float]  # a node's resources: {"CPU": .., "GPU": .., "trial_slot": ..}


def trial_shapes(spec: SweepSpec) -> list[tuple[ResourcesSpec, tuple[str, ...]]]:
    """The spec's algorithms grouped by what one of their trials holds, in the spec's order."""
    groups: list[tuple[ResourcesSpec, list[str]]] = []
    for algorithm in spec.algorithms:
        resources = spec.algorithm_resources(algorithm.name)
        same = next((names for r, names in groups if r == resources), None)
        if same is None:
            groups.append((resources, [algorithm.name]))
        else:
            same.append(algorithm.name)
    return [(resources, tuple(names)) for resources, names in groups]


def resource_plan(spec: SweepSpec, nodes: list[Node]) -> ResourcePlan:
    """How the spec's trials fit on these nodes, shape by shape; InsufficientResources when one trial cannot fit."""
    shapes = tuple(shape_plan(spec, r, names, nodes) for r, names in trial_shapes(spec))
    widest = max(shapes, key=lambda shape: shape.concurrent_trials)
    return ResourcePlan(shapes, widest.concurrent_trials, widest.limited_by)


def shape_plan(spec: SweepSpec, r: ResourcesSpec, algorithms: tuple[str, ...], nodes: list[Node]) -> ShapePlan:
    cpus, gpus = r.num_workers * r.cpus_per_worker, r.num_workers * r.gpus_per_worker
    shape = f"{r.num_workers} worker(s) × {r.cpus_per_worker:g} CPU, {r.gpus_per_worker:g} GPU"
    total_cpus, total_gpus = sum(n.get("CPU", 0) for n in nodes), sum(n.get("GPU", 0) for n in nodes)

    def by_cpus(node: Node) -> int:  # how many workers of this shape one node holds, by its CPUs
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
            f"one trial needs {cpus:g} CPUs and {gpus:g} GPUs ({shape}, each worker on one node; "
            f"{', '.join(algorithms)}) but the cluster has {total_cpus:g} CPUs and {total_gpus:g} GPUs in "
            f"{len(nodes)} node(s), the largest with {largest.get('CPU', 0):g} CPUs and {largest.get('GPU', 0):g} "
            f"GPUs; lower spec.resources (or the algorithm entry's resources) or add nodes")
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
    return ShapePlan(algorithms, r, max(1, limits[limited_by]), limited_by)


# --- time ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StepRate:
    steps_per_s: float  # gradient steps per second of one trial (one seed)
    measured: bool
    source: str


# One trial's gradient steps per second at the paper's sizes, by what the step computes (`rate_key`).
STEP_RATES: dict[str, dict[str, StepRate]] = {
    # Measured on the project's 2-core CPU, one torch thread (one Ray CPU), hopper-shaped data: README "Seeds
    # trained together", table 1, k = 1, paper sizes (python -m bench.stacked_seeds); LaMo: README "Performance",
    # python -m bench.sequence_step (GPT-2 small's architecture, batch 64, K 20, fp32, 2 threads).
    "cpu": {
        "bc": StepRate(480, True, "measured: bench.stacked_seeds, 1 CPU"),
        "td3_bc": StepRate(133, True, "measured: bench.stacked_seeds, 1 CPU"),
        "iql": StepRate(99.9, True, "measured: bench.stacked_seeds, 1 CPU"),
        "cql": StepRate(6.78, True, "measured: bench.stacked_seeds, 1 CPU"),
        "dt": StepRate(15.6, True, "measured: bench.stacked_seeds, 1 CPU"),
        "gpt2_lm": StepRate(1 / 25.20, True, "measured: bench.sequence_step, 2 CPUs"),
        "gpt2": StepRate(1 / 8.90, True, "measured: bench.sequence_step, 2 CPUs"),
        "gpt2_full": StepRate(1 / 25.20, False, "assumed: LoRA's λ 0.1 step"),
    },
    # Assumed: no GPU was lent to this project (bench/gpu_suite.py measures these; replace them with its numbers).
    # Orders of magnitude: a small MLP or 3-layer update is bound by kernel launches (~1-3 ms a step); GPT-2 small
    # at batch 64 × K 20 plus 2 × 1024 language tokens is a few TFLOP a step in bf16.
    "gpu": {
        "bc": StepRate(1000, False, "assumed: no GPU measured"),
        "td3_bc": StepRate(400, False, "assumed: no GPU measured"),
        "iql": StepRate(400, False, "assumed: no GPU measured"),
        "cql": StepRate(150, False, "assumed: no GPU measured"),
        "dt": StepRate(150, False, "assumed: no GPU measured"),
        "gpt2_lm": StepRate(8, False, "assumed: no GPU measured"),
        "gpt2": StepRate(20, False, "assumed: no GPU measured"),
        "gpt2_full": StepRate(6, False, "assumed: no GPU measured"),
    },
}


def rate_key(record: TrialRecord) -> str:
    """What one gradient step of the record computes, as `STEP_RATES` names it."""
    if record.algorithm in ("bc", "bc_10"):  # bc_10 trains the same network on fewer episodes
        return "bc"
    if record.algorithm in ("td3_bc", "iql", "cql"):
        return record.algorithm
    config = record.config
    if config.get("backbone") is None:
        return "dt"
    if config.get("adaptation") == "full":
        return "gpt2_full"
    return "gpt2_lm" if config.get("lm_coef", 0) > 0 else "gpt2"


# What sets a step's cost: a run that changes one of these from its preset is not at the size a rate was taken at.
SIZE_FIELDS = ("batch_size", "hidden_dims", "n_layer", "n_embd", "context_len", "cql_n_actions", "lm_sequences",
               "lm_seq_len")
GPT2_SMALL = (12, 768)  # (n_layer, n_embd) of the backbone the LaMo rates were taken on


def unrated(record: TrialRecord) -> str | None:
    """Why no rate applies to the record (data or sizes other than those measured), else None."""
    task = get_task(record.task)
    if task.discrete_actions:
        return "frame observations (the rates are vector observations')"
    from trainers.runtime.registry import make_config

    preset = make_config(record.algorithm, {}, task)
    differ = [f for f in SIZE_FIELDS if f in record.config
              and _plain(record.config[f]) != _plain(getattr(preset, f))]
    backbone = record.config.get("backbone")
    if backbone is not None and backbone != getattr(preset, "backbone", None):
        from trainers.sequence.language.hub import pretrained_gpt2_config

        try:
            found = pretrained_gpt2_config(backbone)
        except Exception:  # noqa: BLE001 - a backbone not here: its size is unknown
            found = {}
        if (found.get("n_layer"), found.get("n_embd")) != GPT2_SMALL:
            differ.append("backbone")
    return f"{', '.join(differ)} other than the preset's" if differ else None


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def step_rate(record: TrialRecord, gpus: float) -> StepRate:
    return STEP_RATES["gpu" if gpus > 0 else "cpu"][rate_key(record)]


def projected_hours(record: TrialRecord, gpus: float) -> float:
    """One run's training hours at its step rate (a fractional GPU assumed to keep the rate: such trials are
    bound by their CPU thread's launches, not the GPU)."""
    return record.num_steps / step_rate(record, gpus).steps_per_s / 3600


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


def waves(plan: ResourcePlan, trials: list[list[TrialRecord]]) -> int:
    """How many waves the trials run in: each shape's trials in waves of its own concurrency (Tune runs the grid
    algorithm by algorithm, so shapes seldom share the cluster for long)."""
    per_algorithm = Counter(trial[0].algorithm for trial in trials)
    return sum(math.ceil(sum(per_algorithm[a] for a in shape.algorithms) / shape.concurrent_trials)
               for shape in plan.shapes)


def describe_stacking(spec: SweepSpec, records: list[TrialRecord], plan: ResourcePlan | None,
                      console: Console) -> None:
    """Trials and waves with the spec's stacks against one trial per seed, and each algorithm's memory per trial."""
    k = spec.stack_size
    trials = len(stacks_of(records, k))
    waves_ = (f"; {waves(plan, stacks_of(records, k))} waves against {waves(plan, [[r] for r in records])}"
              if plan else "")
    fused = sorted({r.algorithm for r in records if declaration(r.algorithm).fused_seeds is not None})
    console.print(f"seeds per trial: {k} — {trials} trials train the {len(records)} runs (one trial per seed: "
                  f"{len(records)}){waves_}; {', '.join(fused) or 'no algorithm here'} update a stack's seeds as one "
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


def describe_resources(plan: ResourcePlan, trials: list[list[TrialRecord]], where: str, console: Console) -> None:
    if len(plan.shapes) == 1:
        console.print(f"resources: {plan.concurrent_trials} concurrent trials (limited by {plan.limited_by}) on "
                      f"{where}; {waves(plan, trials)} waves of up to {plan.concurrent_trials}")
        return
    per_algorithm = Counter(trial[0].algorithm for trial in trials)
    for shape in plan.shapes:
        count = sum(per_algorithm[a] for a in shape.algorithms)
        console.print(f"resources, {', '.join(shape.algorithms)}: {shape.concurrent_trials} concurrent trials "
                      f"(limited by {shape.limited_by}); {count} trials in "
                      f"{math.ceil(count / shape.concurrent_trials)} waves of up to {shape.concurrent_trials}")
    console.print(f"resources: {waves(plan, trials)} waves in all on {where}, up to {plan.concurrent_trials} trials "
                  f"at once (Tune runs the grid algorithm by algorithm, each algorithm's trials in waves of its own)")


def describe_time(spec: SweepSpec, records: list[TrialRecord], plan: ResourcePlan | None, console: Console) -> None:
    """Training time projected from per-step rates: per algorithm, the rate (measured or assumed), hours per run,
    GPU-hours (each trial's own GPUs); and the sweep's wall time, each shape's run-hours over its concurrency."""
    table = Table("algorithm", "device", "steps/s", "rate", "hours per run", "runs", "GPU-hours",
                  title="time projected from per-step rates at the presets' sizes (training only; evaluation not "
                        "included)")
    hours = {"all": 0.0, "assumed": 0.0, "gpu": 0.0, "gpu assumed": 0.0}
    run_hours: Counter[str] = Counter()
    not_projected = Counter()
    for algorithm in dict.fromkeys(r.algorithm for r in records):
        everyone = [r for r in records if r.algorithm == algorithm]
        reasons = {id(r): unrated(r) for r in everyone}
        mine = [r for r in everyone if reasons[id(r)] is None]
        resources = spec.algorithm_resources(algorithm)
        gpus = resources.num_workers * resources.gpus_per_worker
        if not mine:
            why = next(reason for reason in reasons.values() if reason)
            table.add_row(algorithm, f"{gpus:g} GPU" if gpus else "CPU", "?", f"none: {why}", "?",
                          str(len(everyone)), "?")
            not_projected[algorithm] = len(everyone)
            continue
        not_projected[algorithm] = len(everyone) - len(mine)
        rates = {rate_key(r): step_rate(r, gpus) for r in mine}
        each = [projected_hours(r, gpus) for r in mine]
        assumed = sum(h for r, h in zip(mine, each) if not step_rate(r, gpus).measured)
        run_hours[algorithm] = sum(each)
        hours = {"all": hours["all"] + sum(each), "assumed": hours["assumed"] + assumed,
                 "gpu": hours["gpu"] + gpus * sum(each), "gpu assumed": hours["gpu assumed"] + gpus * assumed}
        shown = ", ".join(f"{rate.steps_per_s:,.0f}" if rate.steps_per_s >= 100 else f"{rate.steps_per_s:.3g}"
                          for rate in rates.values())
        kinds = ", ".join(dict.fromkeys(rate.source for rate in rates.values()))
        per_run = ", ".join(f"{h:.3g}" for h in sorted({round(h, 6) for h in each}))
        table.add_row(algorithm, f"{gpus:g} GPU" if gpus else "CPU", shown, kinds, per_run, str(len(mine)),
                      f"{gpus * sum(each):,.1f}")
    console.print(table)
    if not hours["all"]:
        console.print("projected: nothing (no run at the sizes and data the rates were taken at)")
        return
    if hours["gpu"]:
        line = (f"projected: {hours['gpu']:,.0f} GPU-hours of training ({hours['gpu assumed'] / hours['gpu']:.0%} "
                f"of them at assumed rates)")
    else:
        line = (f"projected: {hours['all']:,.1f} trial-hours of training on CPUs "
                f"({hours['assumed'] / hours['all']:.0%} of them at assumed rates)")
    if plan is not None:
        wall = sum(sum(run_hours[a] for a in shape.algorithms) / shape.concurrent_trials for shape in plan.shapes)
        stacked = "; stacked seeds counted one after another" if spec.stack_size > 1 else ""
        line += f", about {wall:,.1f} h of wall time (each shape's run-hours over its concurrent trials{stacked})"
    if sum(not_projected.values()):
        line += f"; {sum(not_projected.values())} runs not projected (no rate for their sizes or data)"
    console.print(line)


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
    trials = stacks_of(records, k)
    console.print(f"{len(records)} trials" if k == 1 else
                  f"{len(records)} runs in {len(trials)} trials of up to {k} seeds")
    shapes = trial_shapes(spec)
    for r, algorithms in shapes:
        how = "in place (one worker in the Tune trial's actor)" if r.in_place else \
            f"through Ray Train ({r.num_workers} DDP worker(s); the trial's driver holds a trial_slot)"
        which = f" — {', '.join(algorithms)}" if len(shapes) > 1 else ""
        console.print(f"each trial: {r.num_workers} worker(s) × {r.cpus_per_worker:g} CPU, {r.gpus_per_worker:g} GPU, "
                      f"{how}{which}")
    if len(shapes) > 1:
        console.print("  (an algorithm's resources, field by field: its entry's, else on a GPU sweep at most its "
                      "registered share of a GPU worker (trainers/runtime/registry.py), else the sweep-wide ones)")
    estimate = compute_estimate(records)
    console.print(f"compute: {estimate.gradient_steps:,} gradient steps and at most "
                  f"{estimate.evaluation_env_steps:,} evaluation environment steps")
    where = "the cluster you named" if for_cluster else "this machine"
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
        describe_resources(plan, trials, f"{where}: {cpus:g} CPUs / {gpus:g} GPUs", console)
    describe_time(spec, records, plan, console)
    if k > 1:
        describe_stacking(spec, records, plan, console)
    console.print(f"tracking: {spec.tracking.uri} (experiment {spec.tracking.experiment}); storage: {spec.storage}")
    console.print("aggregation: protocol paper (LaMo: per target return, the mean of the evaluations after 80 % of "
                  "training; the best target per cell), also available: last, best")
