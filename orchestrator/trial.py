"""One Tune trial of a sweep: find or open the trial's MLflow child run, then fit one Ray Train TorchTrainer.

This function is the Tune trainable (Train V2 pattern: `ray.tune.*` here, `ray.train.*` in the workers). It is
scheduled with no CPU (only a `trial_slot`), so every CPU stays with the Train workers. Its Train run is named
by the trial id under the sweep's storage, so a trial restarted by Tune (retry, or a resumed sweep) continues
from the run's latest checkpoint; a trial whose MLflow run already finished is not trained again.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from orchestrator.tracking import MlflowReport, SweepTracker
from trainers.loop import TrialConfig
from trainers.registry import make_config
from trainers.tasks import get_task

TRIAL_DRIVER_RESOURCES = {"cpu": 0, "trial_slot": 1}


@dataclass(frozen=True)
class SweepContext:
    """What every trial of one sweep shares; travels in the Tune param space (plain JSON)."""

    tracking_uri: str
    experiment: str
    sweep_id: str
    parent_run_id: str
    train_storage: str  # Ray Train runs: <storage>/<sweep id>/train/<trial id>
    num_workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    worker_retries: int


def searched_trial(base: dict, sampled: dict[str, Any]) -> tuple[str, dict]:
    """A search sample's trial: the cell's trial with the sampled hyperparameters, named by their hash."""
    digest = hashlib.sha256(json.dumps(sampled, sort_keys=True, default=str).encode()).hexdigest()[:8]
    trial = dict(base["trial"], hyperparameters=base["trial"]["hyperparameters"] | sampled)
    trial_id = f"{base['trial_id']}.h{digest}"
    trial["output_dir"] = f"{trial['output_dir']}.h{digest}"
    return trial_id, trial


def resolve_entry(config: dict) -> tuple[str, dict]:
    """(trial id, TrialConfig fields) of a Tune trial's config: the grid entry, or a search sample of it."""
    if config.get("search"):
        return searched_trial(config["entry"], config["search"])
    return config["entry"]["trial_id"], config["entry"]["trial"]


def trial_name(trial) -> str:
    """The sweep's name for a Tune trial (its directory and its line in the progress)."""
    return resolve_entry(trial.config)[0]


def trial_driver(config: dict) -> None:
    """config = {"entry": {"trial_id", "trial"}, "sweep": SweepContext as dict[, "search": sampled values]}."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from trainers.train import run_trial

    context = SweepContext(**config["sweep"])
    trial_id, fields = resolve_entry(config)
    trial = TrialConfig(**fields)
    tracker = SweepTracker(context.tracking_uri, context.experiment, context.sweep_id)
    resolved = asdict(make_config(trial.algorithm, trial.hyperparameters, get_task(trial.task)))
    run_id, finished_metrics = tracker.trial_run(context.parent_run_id, trial_id, trial, resolved)
    if finished_metrics is not None:  # trained and closed before the sweep was interrupted
        tune.report(finished_metrics | {"skipped": 1.0})
        return

    started = time.time()
    failed = True
    try:
        result = run_trial(trial, context.num_workers, storage_path=context.train_storage,
                           max_failures=context.worker_retries, report=MlflowReport(tracker.uri, run_id,
                                                                                     trial.output_dir),
                           cpus_per_worker=context.cpus_per_worker, gpus_per_worker=context.gpus_per_worker,
                           run_name=trial_id, callbacks=[TuneReportCallback()])
        if result.error:
            raise result.error
        failed = False
    finally:
        gpus = context.num_workers * context.gpus_per_worker
        tracker.finish_trial(run_id, failed=failed, wall_seconds=time.time() - started, gpus=gpus)
