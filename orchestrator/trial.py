"""One Tune trial of a sweep: the trial record's MLflow child run, and the trial core run for it.

This function is the Tune trainable. A trial with one worker runs the trial core (trainers/runtime/core.py) right here,
in the Tune trial's actor, which holds that worker's resources (CPU, a GPU or a fraction of one): no Ray Train
controller, placement group or worker actor per trial, and Tune reuses the actor for the next trial, so
imports, the dataset and CUDA stay warm. Its checkpoints are Tune's (`tune.get_checkpoint` / `tune.report`),
so a trial restarted by Tune (a retry, or a resumed sweep) continues from its latest one (the newest in its storage
when the sweep was killed before Tune recorded it). A trial with more
workers (DDP), or any trial when `resources.trainer` is `ray_train`, is driven from here — the driver holding
only a `trial_slot` — through a Ray Train TorchTrainer (trainers/runtime/distributed.py), named by the trial id under
the sweep's storage so that it resumes the same way.

What a trial holds is its own algorithm's (`SweepContext.shapes`, from the spec's `algorithm_resources`):
`trial_placement` gives Tune each trial's resources from its config, so an MLP baseline's trial can hold a quarter
of a GPU while a LaMo trial of the same sweep holds a whole one; its device, driver role and GPU-hours follow.

Either way metrics go to metrics.jsonl in the trial's directory and to MLflow off the training path
(delivery.MlflowReport), a trial whose MLflow run already FINISHED is not trained again, and a failure is
recorded on its run with the exception's own message before Tune sees it.

With `resources.seeds_per_trial` > 1 a Tune trial's config is a stack — `{"stack": [record, ...]}`, seeds of one
cell — trained in place by the stacked core (trainers/runtime/stack.py): each seed keeps its own child run (found
again, or skipped when FINISHED, exactly as a trial alone), metrics, files and failure; Tune hears the stack's
step and its seeds' mean evaluation. A seed that failed makes the Tune trial fail once the others finished (a
retry resumes only it, from its last checkpoint).
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from orchestrator.delivery import MlflowReport
from orchestrator.tracking import SweepTracker, failure_message, retrying
from trainers.runtime.core import (
    METRICS_FILE,
    LocalReport,
    TrialCore,
    load_checkpoint,
    save_checkpoint,
)
from trainers.runtime.record import TrialRecord

DRIVER_RESOURCES = {"cpu": 0, "trial_slot": 1}  # a trial that only drives a TorchTrainer


@dataclass(frozen=True)
class TrialShape:
    """What one trial of an algorithm holds (spec.SweepSpec.algorithm_resources)."""

    num_workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    in_place: bool  # one worker run in the trial's own actor (False: through Ray Train)

    @property
    def gpus(self) -> float:
        """The GPUs the trial holds in all (what its GPU-hours are charged by)."""
        return self.num_workers * self.gpus_per_worker

    def device(self) -> torch.device | None:
        """CUDA when this trial was given a GPU (share) and the node has one; None: the trial core's default."""
        return torch.device("cuda") if self.gpus_per_worker > 0 and torch.cuda.is_available() else None


@dataclass(frozen=True)
class SweepContext:
    """What every trial of one sweep shares; reaches each trial by `tune.with_parameters`."""

    tracking_uri: str
    experiment: str
    sweep_id: str
    parent_run_id: str
    outputs: str  # trials write their files to <outputs>/<trial id> before they go to MLflow
    train_storage: str  # Ray Train runs: <storage>/<sweep id>/train/<trial id>
    shapes: dict[str, TrialShape]  # algorithm -> what its trials hold
    worker_retries: int
    max_outage_s: float
    searching: bool  # Tune's searcher needs the search metric in every result

    def shape(self, record: TrialRecord) -> TrialShape:
        return self.shapes[record.algorithm]


def trial_resources(shape: TrialShape) -> dict[str, float]:
    """What the Tune trial itself holds: the worker's resources when it trains in place, else a trial slot."""
    if not shape.in_place:
        return dict(DRIVER_RESOURCES)
    gpus = shape.gpus_per_worker
    return {"cpu": shape.cpus_per_worker} | ({"gpu": gpus} if gpus > 0 else {})


def trial_placement(context: SweepContext, config: dict):
    """Tune's resources for the trial of this config (`tune.with_resources` calls it with each trial's config):
    its own algorithm's; a stack is one cell's, so one algorithm's."""
    from ray.tune.execution.placement_groups import resource_dict_to_pg_factory

    return resource_dict_to_pg_factory(trial_resources(context.shape(record_of(config))))


def records_of(config: dict) -> list[TrialRecord]:
    """The Tune trial's records: its stack's seeds, else its one record (the grid's, or a search sample of it)."""
    if "stack" in config:
        return [TrialRecord.from_dict(record) for record in config["stack"]]
    record = TrialRecord.from_dict(config["record"])
    return [record.with_sample(config["search"]) if config.get("search") else record]


def record_of(config: dict) -> TrialRecord:
    """The Tune trial's (first) record: what its cell, algorithm and steps are read from."""
    return records_of(config)[0]


def stack_name(records: list[TrialRecord]) -> str:
    """A trial's name: its trial id, or for several seeds its cell and seeds, e.g. "bc.hopper-medium.r0.1.s0+1+2"."""
    if len(records) == 1:
        return records[0].trial_id
    return f"{records[0].cell_id}.s{'+'.join(str(r.seed) for r in records)}"


def trial_name(trial) -> str:
    """The sweep's name for a Tune trial (its directory and its line in the progress)."""
    return stack_name(records_of(trial.config))


def stacks(records: list[TrialRecord], size: int) -> list[list[TrialRecord]]:
    """The records grouped by cell, in order, each cell's seeds cut into stacks of at most `size`."""
    cells: dict[str, list[TrialRecord]] = {}
    for record in records:
        cells.setdefault(record.cell_id, []).append(record)
    return [seeds[i:i + size] for seeds in cells.values() for i in range(0, len(seeds), size)]


class TuneCheckpoints:
    """The trial core's checkpoints as Tune's; every report also carries the tracking status for the progress."""

    def __init__(self, tracking: MlflowReport | StackTracking):
        self.tracking = tracking

    def restore(self) -> dict | None:
        from ray import tune

        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                return load_checkpoint(Path(directory))
        return newest_checkpoint_in_storage()

    def save(self, state: dict | None, metrics: dict[str, float]) -> None:
        from ray import tune

        with tempfile.TemporaryDirectory() as directory:
            save_checkpoint(Path(directory), state)
            tune.report(metrics | self.tracking.status(), checkpoint=tune.Checkpoint.from_directory(directory))


def newest_checkpoint_in_storage() -> dict | None:
    """A sweep killed between a trial's checkpoint and Tune's next snapshot of the experiment restores the trial
    without it, though it is in the trial's storage: the newest one there that loads (one cut short by the kill does
    not) is the trial's. (Tune's storage context is a developer API; ray is pinned.)"""
    from pyarrow import fs
    from ray import tune

    storage = tune.get_context().get_storage()
    found = storage.storage_filesystem.get_file_info(fs.FileSelector(storage.trial_fs_path, allow_not_found=True))
    for info in sorted((i for i in found if i.base_name.startswith("checkpoint_")), key=lambda i: i.base_name,
                       reverse=True):
        try:
            checkpoint = tune.Checkpoint(info.path, filesystem=storage.storage_filesystem)
            with checkpoint.as_directory() as directory:
                return load_checkpoint(Path(directory))
        except Exception:  # noqa: BLE001 - a partial or unreadable checkpoint: the one before it
            continue
    return None


class StackTracking:
    """The tracking status of a stack's seeds together: the longest outage, every report waiting."""

    def __init__(self, trackings: list[MlflowReport]):
        self.trackings = trackings

    def status(self) -> dict[str, float]:
        statuses = [tracking.status() for tracking in self.trackings]
        return {"tracking/pending": sum(s["tracking/pending"] for s in statuses),
                "tracking/unreachable_s": max(s["tracking/unreachable_s"] for s in statuses)}


class Reports:
    """metrics.jsonl beside the trial's files, then MLflow (queued, never blocking). In place, the trial also
    tells Tune its step and whether the tracking server answers every `PROGRESS_REPORT_S` (between its checkpoints,
    which report too), so that the sweep's progress estimates its remaining time from its own step rate and says
    when trials cannot reach the tracking server."""

    PROGRESS_REPORT_S = 10.0

    def __init__(self, run_dir: str, tracking: MlflowReport, to_tune: bool, needs_evaluation: bool,
                 status: MlflowReport | StackTracking | None = None):
        self.local, self.tracking, self.to_tune = LocalReport(run_dir, quiet=True), tracking, to_tune
        self.status = status or tracking  # what Tune hears of the tracking server (a stack's: every seed's)
        self.needs_evaluation = needs_evaluation  # a search: Tune's searcher needs an evaluation in every report
        self._last_progress_report = time.time()
        self._told_outage = False
        self._last_evaluation: dict[str, float] = {}

    def __call__(self, step: int, metrics: dict[str, float], files: list[Path]) -> None:
        self.local(step, metrics, files)
        self.tracking(step, metrics, files)
        if any(key.startswith("eval/") for key in metrics):
            self._last_evaluation = {k: v for k, v in metrics.items() if k.startswith("eval/")}
        ready = self._last_evaluation or not self.needs_evaluation
        if self.to_tune and ready and time.time() - self._last_progress_report > self.PROGRESS_REPORT_S:
            from ray import tune

            status = self.status.status()
            tune.report({"step": step} | self._last_evaluation | status)
            self._last_progress_report = time.time()
            self._told_outage |= status["tracking/unreachable_s"] > 0

    def close(self) -> None:
        """The local metrics file goes to the run too, then everything still queued is delivered (and Tune
        hears that the tracking server is reachable again, if it heard otherwise)."""
        metrics_file = self.local.run_dir / METRICS_FILE
        if metrics_file.is_file():
            self.tracking(0, {}, [metrics_file])
        self.tracking.close()
        if self.to_tune and self._told_outage:
            from ray import tune

            tune.report(self._last_evaluation | self.status.status())


def trial_driver(config: dict, context: SweepContext) -> None:
    """config = {"record": TrialRecord as dict[, "search": sampled values]}; the context by tune.with_parameters."""
    from ray import tune

    if "stack" in config:
        return _drive_stack(records_of(config), context)
    record = record_of(config)
    run_dir = str(Path(context.outputs) / record.trial_id)
    tracker = SweepTracker(context.tracking_uri, context.experiment, context.sweep_id)
    run_id, finished_metrics = retrying(functools.partial(tracker.trial_run, context.parent_run_id, record),
                                        context.max_outage_s)
    if finished_metrics is not None:  # trained and closed before the sweep was interrupted
        tune.report(finished_metrics | {"skipped": 1.0})
        return

    import ray

    shape = context.shape(record)
    node, devices = ray.get_runtime_context().get_node_id(), os.environ.get("CUDA_VISIBLE_DEVICES", "")
    retrying(lambda: tracker.record_placement(run_id, node, devices, "in_place" if shape.in_place else "driver"),
             context.max_outage_s)
    tracking = MlflowReport(tracker.uri, run_id, run_dir, context.max_outage_s)
    reports = Reports(run_dir, tracking, to_tune=shape.in_place, needs_evaluation=context.searching)
    started = time.time()
    error: BaseException | None = None
    interrupted = False
    try:
        if shape.in_place:
            TrialCore(record, run_dir, shape.device()).run(reports, TuneCheckpoints(tracking))
        else:
            _fit_distributed(record, run_dir, shape, context, reports)
    except (KeyboardInterrupt, SystemExit):  # Tune stopping the trial (Ctrl-C on the sweep): not a failure
        interrupted = True
        raise
    except BaseException as failure:
        error = failure
        raise
    finally:
        tracker.finish_trial(run_id, failed=error is not None, wall_seconds=time.time() - started, gpus=shape.gpus,
                             error=error, interrupted=interrupted)


def _fit_distributed(record: TrialRecord, run_dir: str, shape: TrialShape, context: SweepContext,
                     reports: Any) -> None:
    from ray.tune.integration.ray_train import TuneReportCallback

    from trainers.runtime.distributed import fit_distributed

    result = fit_distributed(record, run_dir, num_workers=shape.num_workers, storage=context.train_storage,
                             run_name=record.trial_id, report=reports, cpus_per_worker=shape.cpus_per_worker,
                             gpus_per_worker=shape.gpus_per_worker, max_failures=context.worker_retries,
                             callbacks=[TuneReportCallback()])
    if result.error:
        raise result.error


class StackFailed(RuntimeError):
    """Some seeds of a stack failed (each recorded on its own run); the others finished."""


def _drive_stack(records: list[TrialRecord], context: SweepContext) -> None:
    """A stack's seeds: each one's child run found again or made (FINISHED ones skipped), the unfinished ones trained
    together, each run closed with its own outcome and its share of the stack's time."""
    import ray
    from ray import tune

    from trainers.runtime.stack import StackedTrialCore, mean_evaluation

    tracker = SweepTracker(context.tracking_uri, context.experiment, context.sweep_id)
    runs, finished = {}, {}
    for record in records:
        run_id, finished_metrics = retrying(functools.partial(tracker.trial_run, context.parent_run_id, record),
                                            context.max_outage_s)
        if finished_metrics is None:
            runs[record.trial_id] = run_id
        else:
            finished[record.trial_id] = finished_metrics
    if not runs:  # trained and closed before the sweep was interrupted
        tune.report(mean_evaluation(list(finished.values())) | {"skipped": 1.0})
        return
    todo = [record for record in records if record.trial_id in runs]
    shape = context.shape(todo[0])  # one cell: one algorithm
    name, node = stack_name(todo), ray.get_runtime_context().get_node_id()
    devices = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    for record in todo:
        retrying(functools.partial(tracker.record_placement, runs[record.trial_id], node, devices, "stacked",
                                   stack=name), context.max_outage_s)
    run_dirs = [str(Path(context.outputs) / record.trial_id) for record in todo]
    trackings = [MlflowReport(tracker.uri, runs[r.trial_id], d, context.max_outage_s) for r, d in zip(todo, run_dirs)]
    together = StackTracking(trackings)
    reports = [Reports(d, tracking, to_tune=i == 0, needs_evaluation=False, status=together)
               for i, (d, tracking) in enumerate(zip(run_dirs, trackings))]
    started = time.time()
    outcomes, error, interrupted = None, None, False
    try:
        outcomes = StackedTrialCore(todo, run_dirs, shape.device()).run(reports, TuneCheckpoints(together))
    except (KeyboardInterrupt, SystemExit):
        interrupted = True
        raise
    except BaseException as failure:
        error = failure
        raise
    finally:
        share = (time.time() - started) / len(todo)  # the seeds' time together, each charged its share
        errors = {o.record.trial_id: o.error for o in outcomes} if outcomes else {}
        for record in todo:
            failure = errors.get(record.trial_id, error)
            tracker.finish_trial(runs[record.trial_id], failed=failure is not None, wall_seconds=share,
                                 gpus=shape.gpus, error=failure, interrupted=interrupted)
    failed = [o for o in outcomes if o.error is not None]
    if failed:
        ended = [o.result.history[-1] for o in outcomes if o.error is None and o.result.history]
        tune.report(mean_evaluation(ended) | {"stack/seeds_failed": float(len(failed)),
                                               "stack/seeds_finished": float(len(records) - len(failed))})
        raise StackFailed("; ".join(f"{o.record.trial_id}: {failure_message(o.error)}" for o in failed))

