"""Run a sweep: `python orchestrator/sweep.py --spec FILE [--dry-run] [--restart]`.

The same command works on a laptop (Ray started here, with a `trial_slot` resource per concurrent trial) and on
a cluster (RAY_ADDRESS, or under `ray job submit`). Order of work — everything that can be refused is refused
before anything is written:
1. load and validate the spec (orchestrator/spec.py); `--dry-run` prints the plan and stops here;
2. check every dataset and pre-trained model the sweep needs exists, and that the tracking store answers;
3. connect to or start Ray and check a trial fits on the cluster;
4. open (or find again) the sweep's MLflow parent run;
5. run a Ray Tune `Tuner` whose trials each fit a Ray Train `TorchTrainer` (orchestrator/trial.py) — or restore
   it when the same sweep already ran here (its name and storage path come from the spec, so running the same
   command after a crash resumes it: finished trials are not re-run, errored and unfinished ones continue from
   their last checkpoint). `--restart` starts over, keeping what was recorded.

Storage layout under `spec.storage` (a directory, or a URI such as s3://bucket/ray-results):
<sweep id>/tune (Tune experiment), <sweep id>/search-<cell> (one per optuna cell), <sweep id>/train/<trial id>
(Ray Train runs and checkpoints), <sweep id>/trials/<trial id> (each trial's exported files, before MLflow).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python orchestrator/sweep.py`: the project root, not orchestrator/, on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import os
import tempfile
import time
from dataclasses import asdict, replace
from urllib.parse import urlsplit, urlunsplit

from rich.console import Console

from orchestrator.plan import InsufficientResources, ResourcePlan, describe, local_resources, resource_plan
from orchestrator.spec import SpecError, SweepSpec, expand_trials, load_spec
from orchestrator.tracking import SweepTracker, TrackingError, absolute_uri, check_tracking_uri
from orchestrator.trial import TRIAL_DRIVER_RESOURCES, SweepContext, trial_driver, trial_name
from trainers.datasets import DatasetError, resolve_dataset_path
from trainers.loop import TrialConfig
from trainers.registry import make_config
from trainers.tasks import get_task

PATH_HYPERPARAMETERS = ("backbone", "lm_corpus")  # resolved to absolute paths: workers run in other directories


class SweepInputError(RuntimeError):
    """Datasets or models the sweep needs are missing; the message lists every one."""


def is_uri(location: str) -> bool:
    return "://" in location


def storage_join(base: str, *parts: str) -> str:
    """base/part/...: for a URI the parts go into its path, before any query (s3://b/p?endpoint_override=...)."""
    if not is_uri(base):
        return str(Path(base).resolve().joinpath(*parts))
    url = urlsplit(base)
    return urlunsplit(url._replace(path="/".join([url.path.rstrip("/"), *parts])))


def sweep_root(spec: SweepSpec, *parts: str) -> str:
    return storage_join(spec.storage, spec.sweep_id, *parts)


def outputs_root(spec: SweepSpec) -> str:
    """Where trials write their files before logging them to MLflow: under the storage when it is a directory,
    else in the node's temporary directory."""
    if is_uri(spec.storage):
        return str(Path(tempfile.gettempdir()) / "lamo-sweeps" / spec.sweep_id / "trials")
    return sweep_root(spec, "trials")


# ------------------------------------------------------------------------------------------------ preflight

def _absolute_if_local(value):
    if isinstance(value, str) and Path(value).expanduser().exists():
        return str(Path(value).expanduser().resolve())
    return value


def prepare_trials(trials: list[TrialConfig]) -> list[TrialConfig]:
    """Check every dataset and pre-trained model exists (all problems reported together); return the trials
    with dataset and model paths made absolute."""
    from trainers.language import pretrained_gpt2_config

    problems: dict[str, str] = {}
    datasets: dict[tuple, str] = {}
    checked_models: set[str] = set()
    prepared = []
    for trial in trials:
        task = get_task(trial.task)
        key = (trial.task, trial.dataset_path)
        if key not in datasets:
            try:
                datasets[key] = str(resolve_dataset_path(task, trial.dataset_path).resolve())
            except DatasetError as error:
                problems[f"dataset {key}"] = str(error)
                datasets[key] = trial.dataset_path
        hyperparameters = {k: _absolute_if_local(v) if k in PATH_HYPERPARAMETERS else v
                           for k, v in trial.hyperparameters.items()}
        config = make_config(trial.algorithm, hyperparameters, task)
        backbone = getattr(config, "backbone", None)
        if backbone is not None and backbone not in checked_models:
            checked_models.add(backbone)
            try:
                pretrained_gpt2_config(backbone)
            except (OSError, ValueError) as error:
                problems[f"model {backbone}"] = f"{trial.algorithm}: backbone: {error}"
        corpus = getattr(config, "lm_corpus", None)
        if getattr(config, "lm_coef", 0) > 0 and corpus not in ("builtin", "wikitext-103", "wikitext-2") \
                and not Path(corpus).exists():
            problems[f"corpus {corpus}"] = f"{trial.algorithm}: lm_corpus {corpus!r} is neither 'builtin', " \
                                           f"'wikitext-103', 'wikitext-2' nor an existing file or directory"
        prepared.append(replace(trial, dataset_path=datasets[key], hyperparameters=hyperparameters))
    if problems:
        raise SweepInputError("\n".join(problems.values()))
    return prepared


# ------------------------------------------------------------------------------------------------ Ray

def connect_ray(spec: SweepSpec, autoscaling: bool, console: Console):
    """Start Ray here or join the cluster in RAY_ADDRESS; returns (resource plan, whether Ray was started here).
    A trial that cannot fit is refused before Ray starts (locally) or before anything is submitted (cluster)."""
    import ray

    address = os.environ.get("RAY_ADDRESS")
    if address is None:
        cpus, gpus = local_resources()
        plan = resource_plan(spec, cpus, gpus)
        ray.init(address="local", num_cpus=int(cpus), num_gpus=int(gpus), configure_logging=False,
                 resources={"trial_slot": plan.concurrent_trials}, log_to_driver=False)
        console.print(f"started Ray here: {cpus:g} CPUs, {gpus:g} GPUs, {plan.concurrent_trials} trial slots")
        return plan, True
    ray.init(address=address, configure_logging=False, log_to_driver=False)
    resources = ray.cluster_resources()
    slots = resources.get("trial_slot", 0)
    if slots < 1:
        ray.shutdown()
        raise InsufficientResources(
            f"the Ray cluster at {address} has no 'trial_slot' resource, which holds each trial's driver (so that "
            f"it takes no CPU from the Train workers); start its nodes with --resources='{{\"trial_slot\": 8}}' "
            f"(cluster/*.yaml and docker-compose.yml do)")
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    if autoscaling:  # nodes come on demand: trust the spec, Tune queues what does not fit yet
        limit = spec.concurrency.max_concurrent_trials or int(slots)
        plan = ResourcePlan(spec.resources.num_workers * spec.resources.cpus_per_worker,
                            spec.resources.num_workers * spec.resources.gpus_per_worker, limit, "autoscaling")
    else:
        try:
            plan = resource_plan(spec, cpus, gpus)
        except InsufficientResources:
            ray.shutdown()
            raise
        plan = replace(plan, concurrent_trials=min(plan.concurrent_trials, int(slots)))
    console.print(f"joined Ray at {address}: {cpus:g} CPUs, {gpus:g} GPUs, {slots:g} trial slots")
    return plan, False


def _make_tuner(path: str, restart: bool, build, console: Console):
    """Restore the Tune experiment at `path` when it exists (resuming errored and unfinished trials), else
    build a new one."""
    from ray import tune

    trainable = tune.with_resources(trial_driver, TRIAL_DRIVER_RESOURCES)
    if not restart and tune.Tuner.can_restore(path):
        console.print(f"resuming the sweep from {path}")
        return tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    return build(trainable)


def run_grid(spec: SweepSpec, entries: list[dict], context: SweepContext, plan, restart: bool, progress,
             console: Console):
    from ray import tune

    root = sweep_root(spec)
    progress.total = len(entries)

    def build(trainable):
        return tune.Tuner(
            trainable,
            param_space={"entry": tune.grid_search(entries), "sweep": asdict(context)},
            tune_config=tune.TuneConfig(max_concurrent_trials=plan.concurrent_trials,
                                        trial_name_creator=trial_name, trial_dirname_creator=trial_name),
            run_config=tune.RunConfig(name="tune", storage_path=root, callbacks=[progress], verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=spec.concurrency.trial_retries)))

    return [_make_tuner(sweep_root(spec, "tune"), restart, build, console).fit()]


def run_search(spec: SweepSpec, entries: list[dict], context: SweepContext, plan, restart: bool, progress,
               tracker: SweepTracker, console: Console):
    """Optuna inside each algorithm × task × ratio cell (first seed): Ray's OptunaSearch refuses grid axes, so
    each cell is its own Tuner; the best value and configuration are recorded on the parent run."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    root, search = sweep_root(spec), spec.search
    grids = []
    for entry in entries:
        if entry["trial"]["seed"] != spec.seeds[0]:
            continue
        cell = entry["trial_id"].rsplit(".s", 1)[0]

        def build(trainable, entry=entry, cell=cell):
            searcher = ConcurrencyLimiter(OptunaSearch(metric=search.metric, mode=search.mode, seed=0),
                                          max_concurrent=plan.concurrent_trials)
            return tune.Tuner(
                trainable,
                param_space={"entry": entry, "sweep": asdict(context), "search": search.tune_space()},
                tune_config=tune.TuneConfig(search_alg=searcher, num_samples=search.samples, metric=search.metric,
                                            mode=search.mode, trial_name_creator=trial_name,
                                            trial_dirname_creator=trial_name),
                run_config=tune.RunConfig(name=f"search-{cell}", storage_path=root, callbacks=[progress], verbose=0,
                                          failure_config=tune.FailureConfig(spec.concurrency.trial_retries)))

        console.print(f"search in cell {cell}: {search.samples} samples of {', '.join(search.space)}")
        progress.total = search.samples
        grid = _make_tuner(sweep_root(spec, f"search-{cell}"), restart, build, console).fit()
        best = grid.get_best_result(metric=search.metric, mode=search.mode, filter_nan_and_inf=True)
        if best.metrics and search.metric in best.metrics:
            tracker.record_best(context.parent_run_id, cell, search.metric, best.metrics[search.metric],
                                best.config["search"])
            console.print(f"best in {cell}: {search.metric} = {best.metrics[search.metric]:.2f} with "
                          f"{best.config['search']}")
        grids.append(grid)
    return grids


# ------------------------------------------------------------------------------------------------ the sweep

def _supersede_storage(spec: SweepSpec, console: Console) -> None:
    root = Path(sweep_root(spec))
    if root.exists():
        kept = root.with_name(f"{root.name}.superseded-{time.strftime('%Y%m%d-%H%M%S')}")
        root.rename(kept)
        console.print(f"--restart: previous results kept in {kept}")


def report_results(uri: str, spec: SweepSpec, console: Console) -> None:
    """The aggregated table (paper protocol) in the terminal; tables, plots and the HTML report in
    reports/<sweep id>/paper and on the parent run. A sweep whose runs cannot be aggregated still succeeded."""
    from orchestrator.aggregate import AggregationError, aggregate_sweep

    try:
        aggregate_sweep(uri, spec.tracking.experiment, spec.sweep_id, "paper", console=console)
    except AggregationError as error:
        console.print(f"aggregation skipped: {error}")


def run_sweep(spec: SweepSpec, spec_file: Path, restart: bool = False, autoscaling: bool = False,
              console: Console | None = None) -> int:
    import ray

    from orchestrator.progress import SweepProgress

    console = console or Console(highlight=False, soft_wrap=True)
    if restart and is_uri(spec.storage):
        raise SweepInputError(f"--restart with storage {spec.storage}: remove {sweep_root(spec)} yourself (earlier "
                              f"results are only moved aside on a local directory), then run without --restart")
    trials = prepare_trials(expand_trials(spec, outputs_root(spec)))
    uri = absolute_uri(spec.tracking.uri)
    check_tracking_uri(uri)
    plan, started_here = connect_ray(spec, autoscaling, console)
    failed = True
    try:
        tracker = SweepTracker(uri, spec.tracking.experiment, spec.sweep_id)
        if restart:
            _supersede_storage(spec, console)
            console.print(f"--restart: {tracker.supersede()} earlier parent run(s) marked superseded")
        parent = tracker.start_sweep(spec.name, spec.model_dump(mode="json", exclude={"tracking"}), spec_file)
        context = SweepContext(uri, spec.tracking.experiment, spec.sweep_id, parent, sweep_root(spec, "train"),
                               spec.resources.num_workers, spec.resources.cpus_per_worker,
                               spec.resources.gpus_per_worker, spec.concurrency.worker_retries)
        entries = [{"trial_id": Path(t.output_dir).name, "trial": asdict(t)} for t in trials]
        console.print(f"sweep {spec.sweep_id}: {len(trials)} trials, up to {plan.concurrent_trials} at once; "
                      f"MLflow {uri} (experiment {spec.tracking.experiment}, parent run {parent})")
        progress = SweepProgress(spec.search.metric, spec.search.mode, plan.concurrent_trials, console=console)
        if spec.search.kind == "optuna":
            grids = run_search(spec, entries, context, plan, restart, progress, tracker, console)
        else:
            grids = run_grid(spec, entries, context, plan, restart, progress, console)
        errors = [error for grid in grids for error in grid.errors]
        finished = sum(len(grid) for grid in grids) - len(errors)
        console.print(f"sweep {spec.sweep_id}: {finished} trials finished, {len(errors)} failed")
        for error in errors:
            console.print(f"  failed: {str(error).splitlines()[0][:300]}")
        failed = bool(errors)
        tracker.finish_sweep(parent, failed=failed)
        if finished:
            report_results(uri, spec, console)
    finally:
        if started_here:
            ray.shutdown()
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", required=True, help="sweep file (YAML), e.g. sweeps/quickstart.yaml")
    parser.add_argument("--dry-run", action="store_true", help="print the trial table, resource plan and compute "
                                                               "estimate; start nothing, write nothing")
    parser.add_argument("--restart", action="store_true", help="start the sweep over instead of resuming it "
                                                               "(earlier results and runs are kept, marked superseded)")
    parser.add_argument("--autoscaling", action="store_true", help="the cluster adds nodes on demand: do not refuse "
                                                                   "a trial the cluster cannot hold yet")
    parser.add_argument("--cpus", type=float, help="--dry-run: plan for this many CPUs (default: this machine's)")
    parser.add_argument("--gpus", type=float, help="--dry-run: plan for this many GPUs (default: this machine's)")
    args = parser.parse_args(argv)
    # Logs (`ray job logs`, CI) are not terminals: give tables room instead of rich's 80 columns.
    console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
    try:
        spec = load_spec(args.spec)
        if args.dry_run:
            cpus, gpus = local_resources()
            describe(spec, outputs_root(spec), args.cpus or cpus, gpus if args.gpus is None else args.gpus, console)
            return 0
        return run_sweep(spec, Path(args.spec), restart=args.restart, autoscaling=args.autoscaling, console=console)
    except (SpecError, SweepInputError, TrackingError, InsufficientResources) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
