"""Run a sweep: `python orchestrator/sweep.py --spec FILE [--dry-run] [--restart]`.

The same command works on a laptop (Ray started here, listening on 127.0.0.1 only) and on a cluster
(RAY_ADDRESS, or under `ray job submit`). Order of work — everything that can be refused is refused before
anything is written or Ray starts:
1. load and validate the sweep file and resolve every trial into its record (orchestrator/spec.py);
   `--dry-run` prints the plan;
2. validate what the trials need (orchestrator/preflight.py): models and corpora, action spaces, every dataset
   file opened and checked in full, every data-ratio subset computed; then check the tracking store answers;
   `--dry-run` validates too (to fingerprint the trials), says what earlier sweeps finished (read-only) and stops;
3. connect to or start Ray and check one trial fits on the cluster (and on one of its nodes); meanwhile open the
   tracking store and find the trials earlier sweeps already finished (orchestrator/reuse.py: same fingerprint and
   code), which are reused instead of trained (`--no-reuse` trains everything);
4. open (or find again) the sweep's MLflow parent run;
5. show the reused trials in the parent run (a light child run each, pointing at the original), then
   run a Ray Tune `Tuner` whose trials each train one record (orchestrator/trial.py) — or restore it when the
   same sweep already ran here (its name and storage path come from the spec, so running the same command after
   a crash resumes it: finished trials are not re-run, errored and unfinished ones continue from their last
   checkpoint). `--restart` starts over, keeping what was recorded;
6. print each failed trial's own error, aggregate what finished (orchestrator/aggregate.py).

Storage layout under `spec.storage` (a directory, or a URI such as s3://bucket/ray-results):
<sweep id>/tune (Tune experiment and in-place trials' checkpoints), <sweep id>/search-<cell> (one per optuna
cell), <sweep id>/train/<trial id> (Ray Train runs of multi-worker trials), <sweep id>/trials/<trial id> (each
trial's files: metrics.jsonl, exported weights, record, evaluations — also logged to MLflow).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python orchestrator/sweep.py`: the project root, not orchestrator/, on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.phases import first_line  # noqa: E402 (read before the imports, which the first phase times)

FIRST_LINE = first_line()

# Tune warns whenever it snapshots its state more than once in 5 s, which keeping the last two checkpoints of
# short trials forces: expected here, and the snapshot is a small local write.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
if "RAY_ADDRESS" not in os.environ:  # a Ray started here listens on 127.0.0.1 only (before ray is imported)
    from orchestrator.local_ray import bind_to_loopback

    bind_to_loopback()

import argparse
import functools
import gc
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit

from rich.console import Console

from orchestrator.local_ray import start_local_ray
from orchestrator.phases import Phases
from orchestrator.plan import (
    InsufficientResources,
    ResourcePlan,
    ShapePlan,
    describe,
    local_nodes,
    local_resources,
    resource_plan,
    trial_shapes,
)
from orchestrator.preflight import SweepInputError, validate_sweep_inputs
from orchestrator.reuse import ReusePlan
from orchestrator.spec import SpecError, SweepSpec, expand_trials, load_spec
from orchestrator.tracking import (
    SweepTracker,
    TrackingError,
    absolute_uri,
    check_tracking_uri,
    experiment_link,
    failure_message,
)
from orchestrator.trial import SweepContext, TrialShape, stacks, trial_driver, trial_name, trial_placement
from trainers.runtime.record import TrialRecord


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


# ------------------------------------------------------------------------------------------------ Ray

def local_plan(spec: SweepSpec) -> ResourcePlan | None:
    """The plan for a Ray started on this machine (None when joining the cluster in RAY_ADDRESS); refuses a trial
    this machine cannot hold, before Ray starts."""
    if "RAY_ADDRESS" in os.environ:
        return None
    return resource_plan(spec, local_nodes(*local_resources()))


def connect_ray(spec: SweepSpec, plan: ResourcePlan | None, autoscaling: bool, dashboard: bool,
                console: Console) -> tuple[ResourcePlan, bool]:
    """Start Ray here with the `local_plan` `plan`, or (plan None) join the cluster in RAY_ADDRESS; returns (resource
    plan, whether Ray was started here). On a cluster a trial that cannot fit is refused before anything is
    submitted."""
    import ray

    if plan is not None:
        cpus, gpus = local_resources()
        stopped = start_local_ray(cpus, gpus, trial_slots=plan.concurrent_trials, dashboard=dashboard)
        if stopped:
            console.print(f"stopped {len(stopped)} Ray process(es) left by a killed sweep: {', '.join(stopped)}")
        console.print(f"started Ray here (127.0.0.1 only): {cpus:g} CPUs, {gpus:g} GPUs, "
                      f"{plan.concurrent_trials} trial slots")
        return plan, True
    address = os.environ["RAY_ADDRESS"]
    ray.init(address=address, configure_logging=False, log_to_driver=False)
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    if autoscaling:  # nodes come on demand: trust the spec, Tune queues what does not fit yet
        slots = int(sum(n.get("trial_slot", 0) for n in nodes)) or 1
        shapes = tuple(ShapePlan(algorithms, r, spec.concurrency.max_concurrent_trials
                                 or (slots if not r.in_place else 10_000), "autoscaling")
                       for r, algorithms in trial_shapes(spec))
        plan = ResourcePlan(shapes, max(shape.concurrent_trials for shape in shapes), "autoscaling")
    else:
        try:
            plan = resource_plan(spec, nodes)
        except InsufficientResources:
            ray.shutdown()
            raise
    totals = {key: sum(n.get(key, 0) for n in nodes) for key in ("CPU", "GPU", "trial_slot")}
    console.print(f"joined Ray at {address}: {len(nodes)} nodes, {totals['CPU']:g} CPUs, {totals['GPU']:g} GPUs, "
                  f"{totals['trial_slot']:g} trial slots")
    return plan, False


def _make_tuner(path: str, restart: bool, build, trainable, console: Console):
    """Restore the Tune experiment at `path` when it exists (resuming errored and unfinished trials), else
    build a new one."""
    from ray import tune

    if not restart and tune.Tuner.can_restore(path):
        console.print(f"resuming the sweep from {path}")
        return tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    return build(trainable)


def _run_config(spec: SweepSpec, name: str, progress):
    from ray import tune

    return tune.RunConfig(name=name, storage_path=sweep_root(spec), callbacks=[progress], verbose=0,
                          failure_config=tune.FailureConfig(max_failures=spec.concurrency.trial_retries),
                          checkpoint_config=tune.CheckpointConfig(num_to_keep=2))


def _trainable(context: SweepContext):
    """The Tune trainable: one trial record per trial in its config; the sweep's context, which every trial
    shares, by `tune.with_parameters` (in Ray's object store once, not in each trial's config and results); each
    trial's resources from its own algorithm (`trial_placement` of its config)."""
    from ray import tune

    return tune.with_resources(tune.with_parameters(trial_driver, context=context),
                               functools.partial(trial_placement, context))


def trial_shapes_of(spec: SweepSpec) -> dict[str, TrialShape]:
    """Algorithm -> what its trials hold (spec.algorithm_resources)."""
    shapes = {}
    for algorithm in spec.algorithms:
        r = spec.algorithm_resources(algorithm.name)
        shapes[algorithm.name] = TrialShape(r.num_workers, r.cpus_per_worker, r.gpus_per_worker, r.in_place)
    return shapes


def tune_experiment(spec: SweepSpec) -> str:
    """The Tune experiment's name: one per stack size, so that a sweep rerun with another seeds_per_trial starts a
    new experiment of the new shape (the seeds finished under the old one are found FINISHED and skipped)."""
    return "tune" if spec.stack_size == 1 else f"tune-{spec.stack_size}-seeds"


def grid_space(spec: SweepSpec, records: list[TrialRecord]) -> tuple[dict, list[list[TrialRecord]]]:
    """The Tuner's param space — a trial per record, or with seeds_per_trial > 1 a trial per stack of one cell's
    seeds — and each trial's records."""
    from ray import tune

    if spec.stack_size == 1:
        return {"record": tune.grid_search([r.to_dict() for r in records])}, [[r] for r in records]
    groups = stacks(records, spec.stack_size)
    return {"stack": tune.grid_search([[r.to_dict() for r in stack] for stack in groups])}, groups


def run_grid(spec: SweepSpec, records: list[TrialRecord], context: SweepContext, plan: ResourcePlan,
             restart: bool, progress, console: Console):
    from ray import tune

    space, trials = grid_space(spec, records)
    progress.expect(trials)
    trainable = _trainable(context)
    experiment = tune_experiment(spec)

    def build(trainable):
        return tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(max_concurrent_trials=plan.concurrent_trials, reuse_actors=True,
                                        trial_name_creator=trial_name, trial_dirname_creator=trial_name),
            run_config=_run_config(spec, experiment, progress))

    return [_make_tuner(sweep_root(spec, experiment), restart, build, trainable, console).fit()]


def run_search(spec: SweepSpec, records: list[TrialRecord], context: SweepContext, plan: ResourcePlan,
               restart: bool, progress, tracker: SweepTracker, console: Console):
    """Optuna inside each algorithm × task × ratio cell (first seed): Ray's OptunaSearch refuses grid axes, so
    each cell is its own Tuner; the best value and configuration are recorded on the parent run."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    search = spec.search
    trainable = _trainable(context)
    grids = []
    for record in records:
        if record.seed != spec.seeds[0]:
            continue
        cell = record.cell_id

        def build(trainable, record=record, cell=cell):
            searcher = ConcurrencyLimiter(OptunaSearch(metric=search.metric, mode=search.mode, seed=0),
                                          max_concurrent=plan.concurrent_trials)
            return tune.Tuner(
                trainable,
                param_space={"record": record.to_dict(), "search": search.tune_space()},
                tune_config=tune.TuneConfig(search_alg=searcher, num_samples=search.samples, metric=search.metric,
                                            mode=search.mode, reuse_actors=True, trial_name_creator=trial_name,
                                            trial_dirname_creator=trial_name),
                run_config=_run_config(spec, f"search-{cell}", progress))

        console.print(f"search in cell {cell}: {search.samples} samples of {', '.join(search.space)}")
        progress.expect([[record]] * search.samples)
        grid = _make_tuner(sweep_root(spec, f"search-{cell}"), restart, build, trainable, console).fit()
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


INTERRUPTED_EXIT = 130  # as a shell reports a command stopped by Ctrl-C


def failed_trials(grids) -> list[tuple[str, str]]:
    """(trial name, the error's own message) for every Tune trial that failed after its retries (a stack's message
    names each of its failed seeds)."""
    from orchestrator.trial import records_of, stack_name

    failed = []
    for grid in grids:
        for result in grid:
            if result.error is not None:
                name = stack_name(records_of(result.config)) if result.config else "?"
                failed.append((name, failure_message(result.error)))
    return failed


def run_trials(spec: SweepSpec, reuse: ReusePlan, spec_file: Path, tracker: SweepTracker,
               plan: ResourcePlan, restart: bool, console: Console, phases: Phases) -> tuple[int, bool, int]:
    """Open (or find again) the parent run, show the reused trials in it, run the others through Tune, close the
    parent run; returns (trials finished, whether any failed, trials unfinished)."""
    from orchestrator.progress import SweepProgress, failure_groups

    if restart:
        _supersede_storage(spec, console)
        console.print(f"--restart: {tracker.supersede()} earlier parent run(s) marked superseded")
    with phases.phase("parent-run"):
        parent = tracker.start_sweep(spec.name, spec.model_dump(mode="json", exclude={"tracking"}), spec_file)
        shown = tracker.trial_statuses(parent) if reuse.reused else {}  # a resumed sweep made them already
        for record, original in reuse.reused:
            if record.trial_id not in shown:
                tracker.reuse_trial(parent, record, original)
    records = reuse.to_train
    context = SweepContext(tracker.uri, spec.tracking.experiment, spec.sweep_id, parent, outputs_root(spec),
                           sweep_root(spec, "train"), trial_shapes_of(spec), spec.concurrency.worker_retries,
                           spec.tracking.max_outage_s, searching=spec.search.kind == "optuna")
    reused = f" ({len(reuse.reused)} more reused)" if reuse.reused else ""
    console.print(f"sweep {spec.sweep_id}: {len(records)} trials to train{reused}, up to {plan.concurrent_trials} at "
                  f"once; MLflow {tracker.uri} (experiment {spec.tracking.experiment}, parent run {parent})")
    console.print(f"runs table: {experiment_link(tracker.uri, tracker.experiment_id)}")
    progress = SweepProgress(spec.search.metric, spec.search.mode, plan.concurrent_trials, console=console,
                             reused=len(reuse.reused))
    with phases.phase("trials"):
        if not records:
            grids = []
        elif spec.search.kind == "optuna":
            grids = run_search(spec, records, context, plan, restart, progress, tracker, console)
        else:
            grids = run_grid(spec, records, context, plan, restart, progress, console)
    failures = failed_trials(grids)
    # Counted from the trials' runs: Tune calls a trial it stopped on Ctrl-C terminated too.
    statuses = list(tracker.trial_statuses(parent).values())
    finished = statuses.count("FINISHED")
    failed = max(statuses.count("FAILED"), len(failures))  # runs (a stack's seeds each), or trials that made none
    expected = spec.search.samples * len(grids) if spec.search.kind == "optuna" else reuse.total
    unfinished = max(0, expected - finished - failed)
    console.print(f"sweep {spec.sweep_id}: {finished} trials finished"
                  + (f" ({len(reuse.reused)} of them reused from earlier sweeps)" if reuse.reused else "")
                  + f", {failed} failed" + (f", {unfinished} unfinished" if unfinished else ""))
    for line in failure_groups(failures):
        console.print(f"  failed {line}")
    if unfinished:  # stopped (Ctrl-C, SIGTERM) before every trial ended: checkpoints and runs are kept
        console.print(f"interrupted: {unfinished} trial(s) did not finish; run the same command to resume them "
                      f"from their checkpoints")
    tracker.finish_sweep(parent, failed=bool(failures), interrupted=bool(unfinished))
    return finished, bool(failures), unfinished


def fingerprinted(records: list[TrialRecord]) -> tuple[list[TrialRecord], dict]:
    """The validated records with their fingerprints set, and trial id -> Fingerprint."""
    import dataclasses

    from orchestrator.fingerprint import fingerprint

    prints = {record.trial_id: fingerprint(record) for record in records}
    return [dataclasses.replace(r, fingerprint=prints[r.trial_id].inputs) for r in records], prints


def reuse_plan(spec: SweepSpec, records: list[TrialRecord], uri: str, use_earlier: bool) -> ReusePlan:
    """What earlier sweeps already finished (orchestrator/reuse.py), or nothing with `use_earlier` False."""
    from orchestrator.reuse import find_reusable

    records, prints = fingerprinted(records)
    if not use_earlier:
        return ReusePlan(to_train=records)
    return find_reusable(uri, spec.tracking.experiment, records, prints, spec.sweep_id)


def run_sweep(spec: SweepSpec, records: list[TrialRecord], spec_file: Path, restart: bool = False,
              autoscaling: bool = False, dashboard: bool = False, console: Console | None = None,
              phases: Phases | None = None, reuse: bool = True) -> int:
    """Run the sweep; `phases` (from the command's start) times its parts, printed as one line at the end."""
    import ray

    console = console or Console(highlight=False, soft_wrap=True)
    phases = phases or Phases()
    if restart and is_uri(spec.storage):
        raise SweepInputError(f"--restart with storage {spec.storage}: remove {sweep_root(spec)} yourself (earlier "
                              f"results are only moved aside on a local directory), then run without --restart")
    with phases.phase("inputs"):
        records, notes = validate_sweep_inputs(records, spec, spec_file)
    for note in notes:
        console.print(f"note: {note}")
    uri = absolute_uri(spec.tracking.uri)
    check_tracking_uri(uri)
    plan = local_plan(spec)
    aggregation = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sweep-background") as background:
        # Two waits of about 2 s each overlap with work in this thread: on this machine, whose plan has accepted the
        # sweep, the tracking store opens (MLflow's import; the store's tables, created on first use) and the trials
        # earlier sweeps finished are looked up while Ray starts — on a cluster only once joined and its plan
        # accepted, so that nothing is written for a refused sweep; and the results are aggregated while Ray shuts
        # down. A failed look-up stops the sweep before any trial starts.
        def open_store() -> tuple[SweepTracker, ReusePlan]:
            with phases.phase("store"):
                tracker = SweepTracker(uri, spec.tracking.experiment, spec.sweep_id)
            with phases.phase("reuse"):
                return tracker, reuse_plan(spec, records, uri, use_earlier=reuse and spec.search.kind != "optuna")

        def aggregate() -> None:
            with phases.phase("aggregation"):
                report_results(uri, spec, console)

        opening = background.submit(open_store) if plan else None
        with phases.phase("ray"):
            plan, started_here = connect_ray(spec, plan, autoscaling, dashboard, console)
        with phases.phase("tune-import"):  # ray.tune (about 1 s) while the store may still be opening
            import orchestrator.progress  # noqa: F401
        try:
            tracker, reused = opening.result() if opening else open_store()
            if reused.reused or reused.stale or reused.incomplete:
                from orchestrator.reuse import describe as describe_reuse

                for line in describe_reuse(reused):
                    console.print(line)
            finished, failed, unfinished = run_trials(spec, reused, spec_file, tracker, plan, restart, console,
                                                      phases)
            if finished:
                aggregation = background.submit(aggregate)
        finally:
            if started_here:
                with phases.phase("ray-shutdown"):
                    ray.shutdown()
        if aggregation is not None:
            aggregation.result()
    console.print(phases.line())
    return INTERRUPTED_EXIT if unfinished else 1 if failed else 0


def describe_reuse_dry(spec: SweepSpec, records: list[TrialRecord], spec_file: Path, use_earlier: bool,
                       console: Console) -> None:
    """The dry run's reuse account: which trials earlier sweeps finished (read-only; the datasets are read to
    fingerprint the trials). Inputs that do not validate yet are said, not raised: the plan above still stands."""
    from orchestrator.reuse import describe as describe_reuse

    if spec.search.kind == "optuna":
        console.print("reuse: a search samples new configurations; every trial trains")
        return
    try:
        records, _ = validate_sweep_inputs(records, spec, spec_file)
        plan = reuse_plan(spec, records, absolute_uri(spec.tracking.uri), use_earlier)
    except SweepInputError as error:
        console.print(f"reuse: the trials cannot be fingerprinted until their inputs validate "
                      f"({str(error).splitlines()[0]})")
        return
    for line in describe_reuse(plan):
        console.print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", required=True, help="sweep file (YAML), e.g. sweeps/quickstart.yaml")
    parser.add_argument("--dry-run", action="store_true", help="print the trial table, resource plan and compute "
                                                               "estimate; start nothing, write nothing")
    parser.add_argument("--restart", action="store_true", help="start the sweep over instead of resuming it "
                                                               "(earlier results and runs are kept, marked superseded)")
    parser.add_argument("--no-reuse", action="store_true", help="train every trial, even those an earlier sweep "
                                                                "already finished with the same fingerprint and code")
    parser.add_argument("--autoscaling", action="store_true", help="the cluster adds nodes on demand: do not refuse "
                                                                   "a trial the cluster cannot hold yet")
    parser.add_argument("--dashboard", action="store_true", help="also start Ray's dashboard (on 127.0.0.1:8265) "
                                                                 "when Ray is started here")
    parser.add_argument("--cpus", type=float, help="--dry-run: plan for a cluster with this many CPUs in all")
    parser.add_argument("--gpus", type=float, help="--dry-run: plan for a cluster with this many GPUs in all")
    args = parser.parse_args(argv)
    # Logs (`ray job logs`, CI) are not terminals: give tables room instead of rich's 80 columns.
    console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
    phases = Phases(FIRST_LINE)
    try:
        with phases.phase("spec"):
            spec = load_spec(args.spec)
            records = expand_trials(spec)
        if args.dry_run:
            cpus, gpus = local_resources()
            for_cluster = args.cpus is not None or args.gpus is not None
            describe(spec, records, console, args.cpus or cpus, gpus if args.gpus is None else args.gpus,
                     for_cluster)
            describe_reuse_dry(spec, records, Path(args.spec), not args.no_reuse, console)
            return 0
        return run_sweep(spec, records, Path(args.spec), restart=args.restart, autoscaling=args.autoscaling,
                         dashboard=args.dashboard, console=console, phases=phases, reuse=not args.no_reuse)
    except (SpecError, SweepInputError, TrackingError, InsufficientResources) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    code = main()
    # The process ends here: Python's last garbage collection would walk every object torch, Ray and MLflow
    # made (about 2 s on 2 cores) only to free memory the OS takes back anyway. Frozen objects are skipped;
    # exit handlers and stream flushing still run.
    gc.freeze()
    raise SystemExit(code)
