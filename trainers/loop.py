"""The worker loop every algorithm runs in, inside a Ray Train `TorchTrainer` (Train V2).

One trial = one (algorithm, task, data ratio, seed, hyperparameters). Each worker loads the task's dataset,
keeps the trial's trajectories, builds the algorithm from the registry, and then: update → (every
`eval_every` steps) evaluate on rank 0 → `ray.train.report` with a checkpoint. A restarted worker resumes
from `ray.train.get_checkpoint()` with its step counter, optimizer, scheduler and RNG states. With more than
one worker the algorithm's training objective is wrapped in DistributedDataParallel (gloo on CPU, nccl on
GPU) and each rank samples its own batches from a rank-specific seed.

Metrics and files leave through a `ReportHook` called on rank 0 only: the orchestrator's hook logs to MLflow,
the default one (`LocalReport`) prints and appends to metrics.jsonl. This module never imports MLflow.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from trainers.cpu_allocator import keep_freed_memory_for_reuse
from trainers.datasets import load_task_dataset, subsample_trajectories
from trainers.evaluation import BatchedEvaluator, EvaluationResult
from trainers.registry import TrainingSetup, build_algorithm, make_config
from trainers.samplers import to_torch
from trainers.tasks import get_task

CHECKPOINT_FILE = "state.pt"
TRAJECTORY_IDS_FILE = "trajectory_ids.json"  # which episodes of the source file this trial trained on


@dataclass
class TrialConfig:
    """Everything that defines one trial; JSON-serialisable, logged as the run's resolved config."""

    algorithm: str
    task: str
    ratio: float = 1.0
    seed: int = 0
    hyperparameters: dict[str, Any] = field(default_factory=dict)  # overrides of the algorithm's preset
    dataset_path: str | None = None  # None: the d4rl cache convention
    output_dir: str = "outputs"  # final artifacts go to <output_dir>/ (absolute path recommended)
    log_every: int = 100  # training metrics to the hook every N steps
    eval_seed: int = 10_000  # evaluation episodes are seeded from eval_seed + seed, the same at every evaluation


class ReportHook(Protocol):
    def __call__(self, step: int, metrics: dict[str, float], files: list[Path]) -> None: ...


class LocalReport:
    """Prints metrics and appends them to <output_dir>/metrics.jsonl (runs without a sweep)."""

    def __init__(self, output_dir: str | os.PathLike, quiet: bool = False):
        self.output_dir, self.quiet = Path(output_dir), quiet

    def __call__(self, step: int, metrics: dict[str, float], files: list[Path]) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with (self.output_dir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if not self.quiet:
            shown = {k: round(v, 4) for k, v in metrics.items() if k in self.SHOWN or k.endswith("normalized_mean")}
            print(f"step {step}: {shown}" + (f" files: {[p.name for p in files]}" if files else ""), flush=True)

    SHOWN = ("train/loss", "train/lm_loss", "train/steps_per_second", "dataset/trajectories")


def _rng_states(rng: np.random.Generator) -> dict:
    """This rank's random streams: batch sampling, and torch's (dropout) on CPU and CUDA."""
    return {"sampler": rng.bit_generator.state, "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}


def _restore_rng_states(rng: np.random.Generator, states: dict, device: torch.device) -> None:
    rng.bit_generator.state = states["sampler"]
    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"], device)


def _save_checkpoint(directory: Path, state: dict) -> None:
    torch.save(state, directory / CHECKPOINT_FILE)


def _load_checkpoint(directory: Path) -> dict:
    return torch.load(directory / CHECKPOINT_FILE, weights_only=True)


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train entry point. loop_config = {"trial": TrialConfig as dict, "report": ReportHook or None}."""
    import ray.train
    import ray.train.torch

    keep_freed_memory_for_reuse()
    trial = TrialConfig(**loop_config["trial"])
    report: ReportHook = loop_config.get("report") or LocalReport(trial.output_dir)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()

    task = get_task(trial.task)
    dataset = subsample_trajectories(load_task_dataset(task, trial.dataset_path), trial.ratio, trial.seed)
    config = make_config(trial.algorithm, trial.hyperparameters, task)
    env = task.make_env()
    setup = TrainingSetup(task=task, dataset=dataset, observation_space=env.observation_space,
                          action_space=env.action_space, device=device, seed=trial.seed)
    env.close()
    algorithm = build_algorithm(trial.algorithm, config, setup)
    if world > 1:
        if not hasattr(algorithm, "distribute"):
            raise ValueError(f"{trial.algorithm} does not support more than one worker; set num_workers to 1")
        algorithm.distribute(lambda module: ray.train.torch.prepare_model(module, move_to_device=False))

    rng = np.random.default_rng([trial.seed, rank])
    torch.manual_seed(trial.seed * 7919 + rank)  # dropout and LoRA dropout differ per rank, like the batches
    step, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = _load_checkpoint(Path(directory))
        algorithm.load_state_dict(state["algorithm"])
        step, history = state["step"], state["history"]
        if len(state["rng"]) == world:
            _restore_rng_states(rng, state["rng"][rank], device)
        else:  # resumed with another number of workers: fresh streams, still determined by (seed, rank, step)
            rng = np.random.default_rng([trial.seed, rank, step])
            torch.manual_seed(trial.seed * 7919 + rank + step)

    evaluator = None
    if rank == 0:
        if checkpoint is not None:
            report(step, {"resumed_from_step": float(step)}, [])
        targets = task.target_returns if algorithm.return_conditioned else None
        evaluator = BatchedEvaluator(task, config.eval_episodes, targets)
        report(step, {"dataset/trajectories": float(dataset.num_episodes),
                      "dataset/transitions": float(len(dataset))}, [_write_trajectory_ids(trial, dataset)])

    running: dict[str, list[float]] = defaultdict(list)
    started = time.perf_counter()
    last_result: EvaluationResult | None = None
    while step < config.num_steps:
        batch = to_torch(algorithm.sampler.sample(config.batch_size, rng), device)
        for name, value in algorithm.update(batch).items():
            running[name].append(value)
        step += 1
        if rank == 0 and (step % trial.log_every == 0 or step == config.num_steps):
            steps_in_window = len(next(iter(running.values())))
            elapsed = time.perf_counter() - started
            report(step, {f"train/{k}": float(np.mean(v)) for k, v in running.items()}
                   | {"train/steps_per_second": steps_in_window / max(elapsed, 1e-9)}, [])
            running.clear()
            started = time.perf_counter()
        if step % config.eval_every == 0 or step == config.num_steps:
            metrics: dict[str, float] = {}
            if rank == 0:
                evaluation_started = time.perf_counter()
                last_result = evaluator.run(algorithm.policy, seed=trial.eval_seed + trial.seed)
                metrics = last_result.summary() | {"eval/seconds": time.perf_counter() - evaluation_started}
                history.append({"step": step, **metrics})
                report(step, metrics, [])
            _report_with_checkpoint(algorithm, rng, step, history, metrics, rank, world)
            started = time.perf_counter()

    divergence = _parameter_divergence(algorithm) if world > 1 else None
    if rank == 0:
        if last_result is None:  # resumed after the last checkpoint: the per-episode file still needs a run
            last_result = evaluator.run(algorithm.policy, seed=trial.eval_seed + trial.seed)
        files = _write_artifacts(trial, config, algorithm, last_result, history)
        report(step, {} if divergence is None else {"distributed/max_parameter_difference": divergence}, files)
        evaluator.close()


def _parameter_divergence(algorithm) -> float:
    """Largest difference of any trainable parameter between ranks: 0 when DDP kept them in lockstep."""
    import torch.distributed as dist

    flat = torch.cat([p.detach().float().reshape(-1) for p in algorithm.trainable_state().values()])
    high, low = flat.clone(), flat.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    return float((high - low).max())


def _report_with_checkpoint(algorithm, rng, step: int, history: list, metrics: dict, rank: int, world: int) -> None:
    """Every rank reports (Train V2 requires it); rank 0 attaches the checkpoint with all ranks' RNG states."""
    import ray.train
    import torch.distributed as dist

    rng_states = [_rng_states(rng)]
    if world > 1:
        rng_states = [None] * world
        dist.all_gather_object(rng_states, _rng_states(rng))
    if rank != 0:
        ray.train.report({"step": step}, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as directory:
        _save_checkpoint(Path(directory), {"algorithm": algorithm.state_dict(), "rng": rng_states,
                                           "step": step, "history": history})
        ray.train.report({"step": step, **metrics}, checkpoint=ray.train.Checkpoint.from_directory(directory))


def _write_trajectory_ids(trial: TrialConfig, dataset) -> Path:
    path = Path(trial.output_dir) / TRAJECTORY_IDS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([int(i) for i in dataset.episode_ids]))
    return path


def _write_artifacts(trial: TrialConfig, config, algorithm, result: EvaluationResult, history: list) -> list[Path]:
    """The files a finished trial leaves: exported weights (LoRA adapter via peft), resolved config,
    per-episode returns of the final evaluation and the evaluation history."""
    out = Path(trial.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = algorithm.export(out / "model")
    resolved = {"trial": asdict(trial), "algorithm_config": asdict(config)}
    (out / "config.json").write_text(json.dumps(resolved, indent=2, default=str))
    (out / "evaluations.json").write_text(json.dumps(history, indent=2))
    return files + [out / "config.json", out / "evaluations.json", result.write_csv(out / "eval_episodes.csv")]


def load_policy(output_dir: str | os.PathLike, device: str = "cpu") -> tuple[Callable, Any]:
    """Rebuild a finished trial's policy from its files: returns (make_policy(num_envs, targets), task)."""
    out = Path(output_dir)
    resolved = json.loads((out / "config.json").read_text())
    trial = TrialConfig(**resolved["trial"])
    task = get_task(trial.task)
    config = make_config(trial.algorithm, resolved["algorithm_config"])
    env = task.make_env()
    setup = TrainingSetup(task=task, dataset=None, observation_space=env.observation_space,
                          action_space=env.action_space, device=torch.device(device), seed=trial.seed)
    env.close()
    algorithm = build_algorithm(trial.algorithm, config, setup)
    algorithm.load_exported(out / "model")
    return algorithm.policy, task
