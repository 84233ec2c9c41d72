"""What a sweep will do, computed without starting Ray or writing anything: the trial table, the resource plan
(how many trials fit at once, what each holds) and an estimate of the compute (gradient steps, evaluation
environment steps). `python orchestrator/sweep.py --dry-run` prints it; the driver uses the same numbers to
refuse a sweep the cluster cannot run.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from orchestrator.spec import SweepSpec, expand_trials
from trainers.loop import TrialConfig
from trainers.registry import make_config, return_conditioned
from trainers.tasks import get_task


@dataclass(frozen=True)
class ResourcePlan:
    cpus_per_trial: float
    gpus_per_trial: float
    concurrent_trials: int  # how many trials run at once on the given resources
    limited_by: str  # "CPUs", "GPUs" or "max_concurrent_trials"


class InsufficientResources(RuntimeError):
    """A single trial asks for more than the cluster has: it would wait forever."""


def resource_plan(spec: SweepSpec, cluster_cpus: float, cluster_gpus: float) -> ResourcePlan:
    """Trials fit by CPUs and GPUs; the trial's driver holds no CPU (only a `trial_slot`), so the workers get
    every CPU they ask for."""
    resources = spec.resources
    cpus = resources.num_workers * resources.cpus_per_worker
    gpus = resources.num_workers * resources.gpus_per_worker
    if cpus > cluster_cpus or gpus > cluster_gpus:
        raise InsufficientResources(
            f"one trial needs {cpus:g} CPUs and {gpus:g} GPUs ({resources.num_workers} workers × "
            f"{resources.cpus_per_worker:g} CPU, {resources.gpus_per_worker:g} GPU) but the cluster has "
            f"{cluster_cpus:g} CPUs and {cluster_gpus:g} GPUs; lower spec.resources or add nodes")
    limits = {"CPUs": math.floor(cluster_cpus / cpus)}
    if gpus > 0:
        limits["GPUs"] = math.floor(cluster_gpus / gpus + 1e-9)
    if spec.concurrency.max_concurrent_trials is not None:
        limits["max_concurrent_trials"] = spec.concurrency.max_concurrent_trials
    limited_by = min(limits, key=limits.get)
    return ResourcePlan(cpus, gpus, max(1, limits[limited_by]), limited_by)


@dataclass(frozen=True)
class ComputeEstimate:
    gradient_steps: int
    evaluation_env_steps: int  # upper bound: every evaluation episode runs the task's horizon


def compute_estimate(trials: list[TrialConfig]) -> ComputeEstimate:
    gradient = evaluation = 0
    for trial in trials:
        task = get_task(trial.task)
        config = make_config(trial.algorithm, trial.hyperparameters, task)
        evaluations = math.ceil(config.num_steps / config.eval_every)
        targets = len(task.target_returns) if return_conditioned(trial.algorithm) else 1
        gradient += config.num_steps
        evaluation += evaluations * config.eval_episodes * targets * task.horizon
    return ComputeEstimate(gradient, evaluation)


def local_resources() -> tuple[float, float]:
    """CPUs and GPUs of this machine, as a local Ray would see them."""
    import torch

    return float(os.cpu_count() or 1), float(torch.cuda.device_count())


def describe(spec: SweepSpec, output_root: str, cluster_cpus: float, cluster_gpus: float,
             console: Console) -> None:
    trials = expand_trials(spec, output_root)
    plan = resource_plan(spec, cluster_cpus, cluster_gpus)  # refuse before printing anything
    table = Table("algorithm", "task", "ratios", "seeds", "trials", "steps each", title=f"sweep {spec.sweep_id}")
    cells = Counter((t.algorithm, t.task) for t in trials)
    for (algorithm, task_name), count in cells.items():
        sample = next(t for t in trials if t.algorithm == algorithm and t.task == task_name)
        steps = make_config(algorithm, sample.hyperparameters, get_task(task_name)).num_steps
        ratios = sorted({t.ratio for t in trials if t.algorithm == algorithm and t.task == task_name})
        table.add_row(algorithm, task_name, ", ".join(f"{r:g}" for r in ratios),
                      ", ".join(map(str, spec.seeds)), str(count), f"{steps:,}")
    console.print(table)
    estimate = compute_estimate(trials)
    console.print(f"{len(trials)} trials")
    console.print(f"resources: {plan.concurrent_trials} concurrent trials (limited by {plan.limited_by}) on "
                  f"{cluster_cpus:g} CPUs / {cluster_gpus:g} GPUs; each trial {spec.resources.num_workers} "
                  f"worker(s) × {spec.resources.cpus_per_worker:g} CPU, {spec.resources.gpus_per_worker:g} GPU")
    console.print(f"compute: {estimate.gradient_steps:,} gradient steps and at most "
                  f"{estimate.evaluation_env_steps:,} evaluation environment steps, in "
                  f"{math.ceil(len(trials) / plan.concurrent_trials)} waves of up to {plan.concurrent_trials} trials")
    console.print(f"tracking: {spec.tracking.uri} (experiment {spec.tracking.experiment}); storage: {spec.storage}")
