"""The trial core: one trial from its record, with no Ray and no MLflow.

    TrialCore(record, run_dir).run(report, checkpoints)

loads the task's dataset and keeps the trial's trajectories, builds the algorithm from the registry, then
updates → (every `eval_every` steps) evaluates → checkpoints, and finally exports the trial's files. It starts
from the latest checkpoint when there is one: step counter, algorithm (optimizer and scheduler included) and
every random stream, so a resumed trial ends with the weights of an uninterrupted one.

Everything outside the trial comes in through three small interfaces, which the adapters fill:
- `ReportHook(step, metrics, files)` and `close()`: where metrics and files go (rank 0 only). `LocalReport` prints and
  appends to metrics.jsonl; the sweep adds MLflow (orchestrator/tracking.py).
- `Checkpoints`: `restore()` the latest state, `save(state, metrics)` a new one. `DirectoryCheckpoints` keeps
  it in a directory (`python -m trainers.runtime.train`, tests, benchmarks); the Tune adapter (orchestrator/trial.py)
  and the Ray Train adapter (trainers/runtime/distributed.py) hand it to Ray.
- `Collective`: this process's rank among the trial's workers; the Ray Train adapter's DDP version wraps the
  training objective and gathers every rank's random states. One process by default.

Files a finished trial leaves in `run_dir`: model/ (exported weights, the LoRA adapter via peft),
trial_record.json, evaluations.json (every evaluation's step, metrics and episode seeds), eval_episodes.csv (the
final evaluation, per episode), trajectory_ids.json (which episodes of the file it trained on) and metrics.jsonl
(with LocalReport).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from trainers.data.loading import load_task_dataset
from trainers.data.samplers import to_torch
from trainers.data.subsets import subsample_trajectories
from trainers.data.trajectories import DatasetError
from trainers.runtime.algorithm import Algorithm, Distributable, TrainingSetup
from trainers.runtime.cpu_allocator import keep_freed_memory_for_reuse
from trainers.runtime.evaluation import BatchedEvaluator, EvaluationResult
from trainers.runtime.record import RECORD_FILE, TrialRecord
from trainers.runtime.registry import build_algorithm
from trainers.runtime.tasks import Task, get_task

CHECKPOINT_FILE = "state.pt"
TRAJECTORY_IDS_FILE = "trajectory_ids.json"
METRICS_FILE = "metrics.jsonl"


class ReportHook(Protocol):
    def __call__(self, step: int, metrics: dict[str, float], files: list[Path]) -> None: ...

    def close(self) -> None:
        """Called once the trial's last report is made: deliver whatever is still on its way."""


class Checkpoints(Protocol):
    def restore(self) -> dict | None:
        """The latest saved state, or None for a fresh trial."""

    def save(self, state: dict | None, metrics: dict[str, float]) -> None:
        """Persist `state` (None on ranks other than 0, which only take part) with the metrics of its step."""


class LocalReport:
    """Appends every report to <run_dir>/metrics.jsonl and, unless quiet, prints the main numbers."""

    SHOWN = ("train/loss", "train/lm_loss", "train/steps_per_second", "dataset/trajectories")

    def __init__(self, run_dir: str | os.PathLike, quiet: bool = False):
        self.run_dir, self.quiet = Path(run_dir), quiet

    def __call__(self, step: int, metrics: dict[str, float], files: list[Path]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with (self.run_dir / METRICS_FILE).open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if not self.quiet:
            shown = {k: round(v, 4) for k, v in metrics.items() if k in self.SHOWN or k.endswith("normalized_mean")}
            print(f"step {step}: {shown}" + (f" files: {[p.name for p in files]}" if files else ""), flush=True)

    def close(self) -> None:
        pass


class DirectoryCheckpoints:
    """The latest state as <directory>/state.pt, replaced atomically (a crash mid-write keeps the previous one)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def restore(self) -> dict | None:
        path = self.directory / CHECKPOINT_FILE
        return load_checkpoint(self.directory) if path.is_file() else None

    def save(self, state: dict | None, metrics: dict[str, float]) -> None:
        if state is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.directory) as scratch:
            save_checkpoint(Path(scratch), state)
            os.replace(Path(scratch) / CHECKPOINT_FILE, self.directory / CHECKPOINT_FILE)


def save_checkpoint(directory: Path, state: dict) -> None:
    torch.save(state, directory / CHECKPOINT_FILE)


def load_checkpoint(directory: Path) -> dict:
    return torch.load(directory / CHECKPOINT_FILE, weights_only=True)  # tensors and plain values only


@dataclass
class Collective:
    """This process's place among a trial's workers. One worker: nothing to wrap or gather."""

    rank: int = 0
    world: int = 1

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        return module

    def gather(self, value: Any) -> list[Any]:
        return [value]

    def max_difference(self, values: torch.Tensor) -> float:
        """Largest difference of the flat tensor's entries between ranks."""
        return 0.0


@dataclass
class TrialResult:
    step: int
    # One entry per evaluation: "step", its metrics, and "seeds", the seed each episode's environment was reset with
    history: list[dict[str, Any]] = field(default_factory=list)
    final: EvaluationResult | None = None
    files: list[Path] = field(default_factory=list)


def _rng_states(rng: np.random.Generator) -> dict:
    """This rank's random streams: batch sampling, and torch's (dropout) on CPU and CUDA."""
    return {"sampler": rng.bit_generator.state, "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}


def _restore_rng_states(rng: np.random.Generator, states: dict, device: torch.device) -> None:
    rng.bit_generator.state = states["sampler"]
    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"], device)


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def build_for_record(record: TrialRecord, task: Task, device: torch.device, dataset=None) -> Algorithm:
    """The record's algorithm (trained from `dataset`, or rebuilt for exported files when None)."""
    setup = TrainingSetup(task=task, dataset=dataset, observation_space=task.observation_space,
                          action_space=task.action_space, device=device, seed=record.seed)
    return build_algorithm(record.algorithm, record.algorithm_config(task), setup)


def load_record_dataset(record: TrialRecord, task: Task):
    """The record's whole dataset file; refuses a file that changed since the record was made. Read through this
    node's dataset cache (trainers/data/node_cache.py): converted once per node, memory-mapped by every trial on it,
    and checked against the record's digest when the sweep's validation pass set one."""
    identity = record.dataset
    dataset = load_task_dataset(task, identity.source, shared=True, digest=identity.digest)
    if identity.episodes and identity.episodes != dataset.num_episodes:
        raise DatasetError(f"{identity.source}: has {dataset.num_episodes} episodes, but the sweep validated "
                           f"{identity.episodes} (digest {identity.digest[:12]}): the file changed after the sweep "
                           f"started; run the sweep with --restart or restore the file")
    return dataset


def load_trial_dataset(record: TrialRecord, task: Task):
    """The record's subset of its dataset file (seeded by the record's ratio and seed)."""
    return subsample_trajectories(load_record_dataset(record, task), record.ratio, record.seed)


def report_resumption(report: ReportHook, step: int, history: list[dict[str, Any]]) -> None:
    """A resumed trial says from which step, then reports its checkpoint's evaluations again: the process that made
    the checkpoint may have died before its reports were delivered (the tracking hook skips the steps it already
    logged)."""
    report(step, {"resumed_from_step": float(step)}, [])
    for evaluation in history:
        report(evaluation["step"], {k: v for k, v in evaluation.items() if k not in ("step", "seeds")}, [])


def dataset_report(dataset) -> dict[str, float]:
    """What a trial reports of its data before its first update."""
    return {"dataset/trajectories": float(dataset.num_episodes), "dataset/transitions": float(len(dataset))}


def write_json(run_dir: Path, name: str, value: Any) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / name
    path.write_text(json.dumps(value, indent=2))
    return path


def write_trial_files(algorithm: Algorithm, record: TrialRecord, run_dir: Path, result: TrialResult) -> list[Path]:
    """A finished trial's files: exported weights (LoRA adapter via peft), the record, the evaluation history and
    the final evaluation per episode."""
    files = algorithm.export(run_dir / "model")
    files.append(write_json(run_dir, RECORD_FILE, record.to_dict()))
    files.append(write_json(run_dir, "evaluations.json", result.history))
    files.append(result.final.write_csv(run_dir / "eval_episodes.csv"))
    return files


class TrialCore:
    """One trial: built from its record on construction (data, algorithm, evaluation environments), trained by
    `run`."""

    def __init__(self, record: TrialRecord, run_dir: str | os.PathLike, device: torch.device | None = None,
                 collective: Collective | None = None):
        keep_freed_memory_for_reuse()
        self.record, self.run_dir = record, Path(run_dir)
        self.collective = collective or Collective()
        self.device = device or default_device()
        self.task = get_task(record.task)
        self.dataset = load_trial_dataset(record, self.task)
        self.algorithm = build_for_record(record, self.task, self.device, self.dataset)
        self.config = record.algorithm_config(self.task)
        if self.collective.world > 1:
            if not isinstance(self.algorithm, Distributable):
                raise ValueError(f"{record.algorithm} does not support more than one worker; set num_workers to 1")
            self.algorithm.distribute(self.collective.wrap)
        self.evaluator = None
        if self.collective.rank == 0:
            targets = self.task.target_returns if self.algorithm.return_conditioned else None
            self.evaluator = BatchedEvaluator(self.task, self.config.eval_episodes, targets)

    def evaluate(self, step: int) -> EvaluationResult:
        """Every evaluation of a trial starts from its own initial states, the same ones after a resume."""
        return self.evaluator.run(self.algorithm.policy, seed=(self.record.eval_seed, self.record.seed, step))

    def run(self, report: ReportHook | None, checkpoints: Checkpoints) -> TrialResult:
        record, config, algorithm, rank = self.record, self.config, self.algorithm, self.collective.rank
        report = report if rank == 0 else None
        rng = np.random.default_rng([record.seed, rank])
        torch.manual_seed(record.seed * 7919 + rank)  # dropout and LoRA dropout differ per rank, like the batches
        result = TrialResult(step=0)
        state = checkpoints.restore()
        if state is not None:
            algorithm.load_state_dict(state["algorithm"])
            result.step, result.history = state["step"], state["history"]
            if len(state["rng"]) == self.collective.world:
                _restore_rng_states(rng, state["rng"][rank], self.device)
            else:  # resumed with another number of workers: fresh streams, still set by (seed, rank, step)
                rng = np.random.default_rng([record.seed, rank, result.step])
                torch.manual_seed(record.seed * 7919 + rank + result.step)
        if report is not None:
            if state is not None:
                report_resumption(report, result.step, result.history)
            report(result.step, dataset_report(self.dataset),
                   [write_json(self.run_dir, TRAJECTORY_IDS_FILE, [int(i) for i in self.dataset.episode_ids])])

        running: dict[str, list[float]] = defaultdict(list)
        started = time.perf_counter()
        while result.step < config.num_steps:
            batch = to_torch(algorithm.sampler.sample(config.batch_size, rng), self.device)
            for name, value in algorithm.update(batch).items():
                running[name].append(value)
            result.step += 1
            step = result.step
            if report is not None and (step % record.log_every == 0 or step == config.num_steps):
                elapsed = time.perf_counter() - started
                report(step, {f"train/{k}": float(np.mean(v)) for k, v in running.items()}
                       | {"train/steps_per_second": len(next(iter(running.values()))) / max(elapsed, 1e-9)}, [])
                running.clear()
                started = time.perf_counter()
            if step % config.eval_every == 0 or step == config.num_steps:
                metrics: dict[str, float] = {}
                if rank == 0:
                    evaluation_started = time.perf_counter()
                    result.final = self.evaluate(step)
                    metrics = result.final.summary() | {"eval/seconds": time.perf_counter() - evaluation_started}
                    result.history.append({"step": step, **metrics, "seeds": result.final.seeds})
                    report(step, metrics, [])
                self._checkpoint(checkpoints, rng, result, metrics)
                started = time.perf_counter()

        divergence = None
        if self.collective.world > 1:
            flat = torch.cat([p.detach().float().reshape(-1) for p in algorithm.trainable_state().values()])
            divergence = self.collective.max_difference(flat)
        if rank == 0:
            if result.final is None:  # resumed after the last checkpoint: the per-episode file still needs a run
                result.final = self.evaluate(result.step)
            result.files = write_trial_files(self.algorithm, self.record, self.run_dir, result)
            report(result.step, {} if divergence is None else {"distributed/max_parameter_difference": divergence},
                   result.files)
            report.close()
        self.close()
        return result

    def close(self) -> None:
        if self.evaluator is not None:
            self.evaluator.close()
            self.evaluator = None

    def _checkpoint(self, checkpoints: Checkpoints, rng: np.random.Generator, result: TrialResult,
                    metrics: dict[str, float]) -> None:
        """Every rank takes part (Ray Train requires it); rank 0's state holds every rank's random streams."""
        rng_states = self.collective.gather(_rng_states(rng))
        state = None
        if self.collective.rank == 0:
            state = {"algorithm": self.algorithm.state_dict(), "rng": rng_states, "step": result.step,
                     "history": result.history}
        checkpoints.save(state, {"step": result.step, **metrics})


def run_local(record: TrialRecord, run_dir: str | os.PathLike, report: ReportHook | None = None,
              device: torch.device | None = None) -> TrialResult:
    """One trial in this process, checkpointed in <run_dir>/checkpoint (run again, it resumes from there)."""
    core = TrialCore(record, run_dir, device)
    return core.run(report if report is not None else LocalReport(run_dir),
                    DirectoryCheckpoints(Path(run_dir) / "checkpoint"))


def load_policy(run_dir: str | os.PathLike, device: str = "cpu") -> tuple[Callable, Task]:
    """Rebuild a finished trial's policy from its files: returns (make_policy(num_envs, targets), task)."""
    directory = Path(run_dir)
    record = TrialRecord.from_json((directory / RECORD_FILE).read_text())
    task = get_task(record.task)
    algorithm = build_for_record(record, task, torch.device(device))
    algorithm.load_exported(directory / "model")
    return algorithm.policy, task
