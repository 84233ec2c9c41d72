"""The Ray Train adapter: a trial's core on several workers, with DistributedDataParallel.

`fit_distributed` runs one Ray Train `TorchTrainer` (Train V2) whose workers each run `TrialCore` with a
`TrainCollective` (the training objective wrapped in DDP — gloo on CPU, nccl on GPU — every rank sampling its
own batches) and `TrainCheckpoints` (`ray.train.get_checkpoint` / `ray.train.report`). A restarted worker
group resumes from the run's latest checkpoint; a second fit with the same run name and storage resumes the
run. Trials with one worker do not come here: they run their core in place (orchestrator/trial.py,
trainers/runtime/train.py), without the controller actor and placement group a TorchTrainer costs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from trainers.runtime.core import (
    Collective,
    ReportHook,
    TrialCore,
    load_checkpoint,
    save_checkpoint,
)
from trainers.runtime.record import TrialRecord


class TrainCollective(Collective):
    def __init__(self):
        import ray.train

        context = ray.train.get_context()
        super().__init__(rank=context.get_world_rank(), world=context.get_world_size())

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(module, move_to_device=False)

    def gather(self, value: Any) -> list[Any]:
        import torch.distributed as dist

        gathered = [None] * self.world
        dist.all_gather_object(gathered, value)
        return gathered

    def max_difference(self, values: torch.Tensor) -> float:
        import torch.distributed as dist

        high, low = values.clone(), values.clone()
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        return float((high - low).max())


class TrainCheckpoints:
    """Every rank reports (Train V2 requires it); rank 0 attaches the checkpoint."""

    def restore(self) -> dict | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as directory:
            return load_checkpoint(Path(directory))

    def save(self, state: dict | None, metrics: dict[str, float]) -> None:
        import ray.train

        if state is None:
            ray.train.report({"step": metrics["step"]}, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as directory:
            save_checkpoint(Path(directory), state)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train entry point. loop_config = {"record": TrialRecord as dict, "run_dir": str, "report": hook}."""
    import ray.train.torch

    record = TrialRecord.from_dict(loop_config["record"])
    core = TrialCore(record, loop_config["run_dir"], ray.train.torch.get_device(), TrainCollective())
    core.run(loop_config.get("report"), TrainCheckpoints())


def fit_distributed(record: TrialRecord, run_dir: str, *, num_workers: int, storage: str, run_name: str,
                    report: ReportHook | None = None, cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0,
                    max_failures: int = 0, callbacks: list | None = None):
    """Fit one TorchTrainer for the trial and return its Result (its `error` set when the trial failed).
    `storage` is a directory or a URI (s3://, gs://, with query options kept)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    per_worker = {"CPU": cpus_per_worker} | ({"GPU": gpus_per_worker} if gpus_per_worker > 0 else {})
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"record": record.to_dict(), "run_dir": run_dir, "report": report},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=gpus_per_worker > 0,
                                     resources_per_worker=per_worker),
        run_config=RunConfig(name=run_name, storage_path=storage, failure_config=FailureConfig(max_failures),
                             callbacks=callbacks))
    return trainer.fit()
