"""MLflow layout of a sweep: one parent run per sweep, one child run per trial, found again on resume.

Run layout (the aggregator reads exactly this):
- experiment: the spec's `tracking.experiment`;
- parent run: name = sweep id, tags `role=sweep`, `sweep_id`, `sweep_name` (and `superseded=true` once a
  `--restart` replaced it: the aggregator takes the newest parent that is not superseded); params = the spec's grid; the spec
  file as an artifact; `best/<cell>` metrics and `best/<cell>/config` tags from a search;
- child run: name = trial id, tags `mlflow.parentRunId` (nesting in the UI), `role=trial`, `sweep_id`,
  `trial_id`, `algorithm`, `task`, `domain`, `ratio`, `seed`, `trajectory_ids` (compact ranges, e.g. "0-3,7");
  params = the resolved trial config; metrics with step = gradient step (`train/*`, `eval/target_<R>/*`,
  `eval/best_normalized_mean`, `cost/wall_seconds`, `cost/gpu_hours`); artifacts = the trial's files
  (model/ adapter and weights, config.json, evaluations.json, eval_episodes.csv, trajectory_ids.json);
  status FINISHED, FAILED, or RUNNING while it trains (or when its driver was killed);
- after aggregation (orchestrator/aggregate.py), on the parent run: the tables, plots and report.html as
  artifacts under `aggregate/<protocol>/`, and the headline numbers as metrics
  `headline/<protocol>/<domain>/mean/<algorithm>` (the mean over task × ratio cells, the paper's number) and
  `headline/<protocol>/<domain>/iqm/<algorithm>` (interquartile mean of the run scores), step 0, for each
  algorithm that has every cell of the domain (an average over fewer cells does not compare; the report flags
  it); e.g. `headline/paper/locomotion/mean/lamo`.

The names are the constants below; the reading half (the end of this file) turns the runs back into the
aggregator's `TrialRun`s.

A resumed trial finds its run by (parent run, trial_id) and continues it; metrics it re-reports for steps
already logged before a crash are skipped, so a run never holds two values for one step.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

from trainers.loop import TRAJECTORY_IDS_FILE, TrialConfig
from trainers.tasks import get_task

PARENT_ROLE, TRIAL_ROLE = "sweep", "trial"

# Names of the run layout. The reading at the end of this file uses them; the writing below still spells them
# out (it is being rewritten on its own) and should use them too: test_reads_back_what_the_sweep_tracker_writes
# (tests/test_aggregate.py) holds the two halves together until then.
ROLE_TAG, PARENT_RUN_TAG = "role", "mlflow.parentRunId"
SWEEP_ID_TAG, SWEEP_NAME_TAG, SUPERSEDED_TAG = "sweep_id", "sweep_name", "superseded"
TRIAL_ID_TAG, ALGORITHM_TAG, TASK_TAG, DOMAIN_TAG, RATIO_TAG, SEED_TAG = (
    "trial_id", "algorithm", "task", "domain", "ratio", "seed")
SEEDS_PARAM = "seeds"  # on the parent run: the spec's seeds, e.g. "[0, 1, 2]"
CONFIG_PARAM_PREFIX, TRIAL_PARAM_PREFIX = "config.", "trial."  # child params: resolved config, trial fields
EVAL_METRIC = "eval/{label}/normalized_mean"  # the loop's name (trainers/evaluation.py); label target_<R> or policy
WALL_SECONDS_METRIC, GPU_HOURS_METRIC = "cost/wall_seconds", "cost/gpu_hours"
AGGREGATE_ARTIFACTS = "aggregate/{protocol}"  # the aggregator's files on the parent run
# The aggregator's headline numbers on the parent run; statistic is mean or iqm. Sorted, one statistic's
# algorithms stand side by side in the MLflow runs table.
HEADLINE_METRIC = "headline/{protocol}/{domain}/{statistic}/{algorithm}"


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or used; the message names the URI."""


def check_tracking_uri(uri: str) -> None:
    """Fail before any trial starts when the store behind `uri` cannot be used; writes nothing."""
    if uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///")).resolve()
        if not database.parent.is_dir():
            raise TrackingError(f"tracking URI {uri}: directory {database.parent} does not exist")
        return
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10) as response:
                if response.status == 200:
                    return
                raise TrackingError(f"tracking URI {uri}: /health answered HTTP {response.status}")
        except (urllib.error.URLError, OSError) as error:
            raise TrackingError(f"tracking URI {uri} is not reachable ({error}); start the MLflow server or fix "
                                f"spec.tracking.uri") from None
    try:
        client(uri).search_experiments(max_results=1)
    except Exception as error:  # any store-specific failure (database down, bad credentials)
        raise TrackingError(f"tracking URI {uri} is not usable: {error}") from None


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def absolute_uri(uri: str) -> str:
    """A relative sqlite path is the working directory's; Ray workers run elsewhere, so make it absolute."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    return uri


def experiment_id(mlflow_client, name: str) -> str:
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.create_experiment(name)
    except MlflowException:  # created meanwhile by another driver
        return mlflow_client.get_experiment_by_name(name).experiment_id


def find_runs(mlflow_client, experiment: str, **tags: str) -> list:
    """Active runs whose tags equal the given values, oldest first."""
    query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
    return list(mlflow_client.search_runs([experiment], filter_string=query, order_by=["attributes.start_time ASC"],
                                          max_results=1000))


def compact_ranges(ids: list[int]) -> str:
    """[0, 1, 2, 3, 7, 9, 10] -> "0-3,7,9-10"."""
    parts, ids = [], sorted(ids)
    start = previous = None
    for i in ids + [None]:
        if start is not None and (i is None or i != previous + 1):
            parts.append(str(start) if start == previous else f"{start}-{previous}")
            start = None
        if i is not None and start is None:
            start = i
        previous = i
    return ",".join(parts)


def _trajectory_tag(ids: list[int], limit: int = 8000) -> str:
    """The ids as ranges; when that is longer than MLflow's tag limit, its start and where the full list is."""
    ranges = compact_ranges(ids)
    if len(ranges) <= limit:
        return ranges
    note = f"... ({len(ids)} ids in all: see the artifact {TRAJECTORY_IDS_FILE})"
    return ranges[:limit - len(note)].rsplit(",", 1)[0] + note


def _flat_params(prefix: str, values: dict[str, Any]) -> dict[str, str]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat |= _flat_params(f"{prefix}{key}.", value)
        else:
            flat[f"{prefix}{key}"] = str(value)[:6000]
    return flat


def _log_params(mlflow_client, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(key, value) for key, value in params.items()]
    for i in range(0, len(items), 100):
        mlflow_client.log_batch(run_id, params=items[i:i + 100])


class SweepTracker:
    """The driver's view of MLflow: the sweep's parent run and its trials' child runs."""

    def __init__(self, uri: str, experiment: str, sweep_id: str):
        self.uri, self.sweep_id = absolute_uri(uri), sweep_id
        self.client = client(self.uri)
        self.experiment_id = experiment_id(self.client, experiment)

    def start_sweep(self, sweep_name: str, params: dict[str, Any], spec_file: Path | None = None) -> str:
        """The parent run of this sweep: found again on resume, created (with params and the spec) otherwise."""
        existing = [run for run in find_runs(self.client, self.experiment_id, role=PARENT_ROLE,
                                             sweep_id=self.sweep_id) if run.data.tags.get("superseded") != "true"]
        if existing:
            run_id = existing[-1].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=self.sweep_id,
                                     tags={"role": PARENT_ROLE, "sweep_id": self.sweep_id, "sweep_name": sweep_name})
        _log_params(self.client, run.info.run_id, _flat_params("", params))
        if spec_file is not None:
            self.client.log_artifact(run.info.run_id, str(spec_file))
        return run.info.run_id

    def supersede(self) -> int:
        """--restart: the sweep's earlier parent runs stay (nothing recorded is lost) but are marked superseded and
        KILLED, so a fresh parent run and fresh child runs are made. Returns how many were marked."""
        runs = [run for run in find_runs(self.client, self.experiment_id, role=PARENT_ROLE, sweep_id=self.sweep_id)
                if run.data.tags.get("superseded") != "true"]
        for run in runs:
            self.client.set_tag(run.info.run_id, "superseded", "true")
            if run.info.status == "RUNNING":
                self.client.set_terminated(run.info.run_id, status="KILLED")
        return len(runs)

    def finish_sweep(self, parent_run_id: str, failed: bool) -> None:
        self.client.set_terminated(parent_run_id, status="FAILED" if failed else "FINISHED")

    def trial_run(self, parent_run_id: str, trial_id: str, trial: TrialConfig,
                  resolved_config: dict) -> tuple[str, dict[str, float] | None]:
        """The trial's child run and, when that run already FINISHED, its latest metrics (nothing to train).
        An existing unfinished run is continued (resume, retry); otherwise one is created with its params."""
        existing = find_runs(self.client, self.experiment_id, role=TRIAL_ROLE, trial_id=trial_id,
                             **{"mlflow.parentRunId": parent_run_id})
        if existing:
            run = existing[0]
            if run.info.status == "FINISHED":
                return run.info.run_id, dict(run.data.metrics)
            self.client.update_run(run.info.run_id, status="RUNNING")
            return run.info.run_id, None
        task = get_task(trial.task)
        run = self.client.create_run(self.experiment_id, run_name=trial_id, tags={
            "mlflow.parentRunId": parent_run_id, "role": TRIAL_ROLE, "sweep_id": self.sweep_id,
            "trial_id": trial_id, "algorithm": trial.algorithm, "task": trial.task, "domain": task.domain,
            "ratio": f"{trial.ratio:g}", "seed": str(trial.seed)})
        trial_fields = {k: v for k, v in asdict(trial).items() if k not in ("hyperparameters", "output_dir")}
        _log_params(self.client, run.info.run_id, _flat_params("trial.", trial_fields)
                    | _flat_params("config.", resolved_config))
        return run.info.run_id, None

    def finish_trial(self, run_id: str, failed: bool, wall_seconds: float, gpus: float) -> None:
        """Close the child run; cost metrics accumulate over resumed attempts."""
        from mlflow.entities import Metric

        previous = self.client.get_run(run_id).data.metrics.get("cost/wall_seconds", 0.0)
        total = previous + wall_seconds
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric("cost/wall_seconds", total, now, 0),
                                               Metric("cost/gpu_hours", total * gpus / 3600, now, 0)])
        self.client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")

    def record_best(self, parent_run_id: str, cell: str, metric: str, value: float, config: dict) -> None:
        """A search's best value and configuration for one cell, on the parent run."""
        from mlflow.entities import Metric, RunTag

        self.client.log_batch(parent_run_id, metrics=[Metric(f"best/{cell}", value, int(time.time() * 1000), 0)],
                              tags=[RunTag(f"best/{cell}/config", json.dumps(config, sort_keys=True)),
                                    RunTag(f"best/{cell}/metric", metric)])


class MlflowReport:
    """The loop's ReportHook inside a sweep: metrics (step = gradient step) and files to the trial's child run.

    Picklable (it travels to the rank-0 Train worker); the client is made on first use."""

    def __init__(self, uri: str, run_id: str, output_dir: str):
        self.uri, self.run_id, self.output_dir = uri, run_id, output_dir
        self._client = None
        self._logged_up_to: dict[str, int] = {}

    def __getstate__(self) -> dict:
        return {"uri": self.uri, "run_id": self.run_id, "output_dir": self.output_dir}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def _connect(self):
        if self._client is None:
            self._client = client(self.uri)
            # A resumed worker re-reports steps between its checkpoint and the crash: remember what is logged.
            for key in self._client.get_run(self.run_id).data.metrics:
                history = self._client.get_metric_history(self.run_id, key)
                self._logged_up_to[key] = max(m.step for m in history)
        return self._client

    def __call__(self, step: int, metrics: dict[str, float], files: list[Path]) -> None:
        from mlflow.entities import Metric, RunTag

        mlflow_client = self._connect()
        now = int(time.time() * 1000)
        fresh = [Metric(key, float(value), now, step) for key, value in metrics.items()
                 if step > self._logged_up_to.get(key, -1)]
        tags = []
        for path in map(Path, files):
            if path.name == TRAJECTORY_IDS_FILE:
                ids = json.loads(path.read_text())
                tags.append(RunTag("trajectory_ids", _trajectory_tag(ids)))
        if fresh or tags:
            mlflow_client.log_batch(self.run_id, metrics=fresh, tags=tags)
        for metric in fresh:
            self._logged_up_to[metric.key] = step
        root = Path(self.output_dir)
        for path in map(Path, files):
            relative = path.relative_to(root) if path.is_relative_to(root) else Path(path.name)
            folder = None if relative.parent == Path(".") else str(relative.parent)
            mlflow_client.log_artifact(self.run_id, str(path), folder)


# ============================================================================================================
# Reading a sweep back: the aggregator's side of the layout above.
#
# Kept apart from the writing half (which changes on its own) and in small functions, one per part of the
# layout, so that where a trial's identity comes from (today its tags) can change in one place.
# ============================================================================================================

from orchestrator.scores import DomainSummary, TrialRun, run_order  # noqa: E402  (this section's own import)


class StoreLookupError(LookupError):
    """The tracking store, experiment or sweep asked for is not there; the message lists what is."""


def open_store(tracking_uri: str, experiment: str):
    """(client, experiment id) of an existing store and experiment; creates nothing."""
    if tracking_uri.startswith("sqlite:///"):
        database = Path(tracking_uri.removeprefix("sqlite:///"))
        if not database.is_file():  # MLflow would silently create an empty store
            raise StoreLookupError(f"no tracking store at {tracking_uri} ({database} does not exist)")
    mlflow_client = client(absolute_uri(tracking_uri))
    found = mlflow_client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in mlflow_client.search_experiments())
        raise StoreLookupError(f"no experiment {experiment!r} in {tracking_uri}; experiments found: "
                               f"{', '.join(names) or 'none'}")
    return mlflow_client, found.experiment_id


def search_all(mlflow_client, experiment_id: str, query: str, order_by: list[str] | None = None) -> list:
    """Every run matching `query`, page after page."""
    runs, token = [], None
    while True:
        page = mlflow_client.search_runs([experiment_id], filter_string=query, order_by=order_by,
                                         max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _superseded(run) -> bool:
    return run.data.tags.get(SUPERSEDED_TAG) == "true"


def find_sweep(mlflow_client, experiment_id: str, sweep: str):
    """The sweep's parent run: `sweep` is a sweep id, a sweep name (its most recent sweep), or a parent run id.

    A `--restart` marks the earlier parent runs superseded; the newest one that is not is the sweep."""
    parents = search_all(mlflow_client, experiment_id, f"tags.{ROLE_TAG} = '{PARENT_ROLE}'",
                         ["attributes.start_time DESC"])
    current = [p for p in parents if not _superseded(p)]
    for by in (SWEEP_ID_TAG, SWEEP_NAME_TAG):
        matches = [p for p in current if p.data.tags.get(by) == sweep] or [p for p in parents
                                                                           if p.data.tags.get(by) == sweep]
        if matches:
            return matches[0]
    by_run_id = [p for p in parents if p.info.run_id == sweep]  # reaches a superseded parent on purpose
    if by_run_id:
        return by_run_id[0]
    known = [f"{p.data.tags.get(SWEEP_NAME_TAG, '?')} ({p.data.tags.get(SWEEP_ID_TAG, '?')}, {p.info.status}"
             f"{', superseded' if _superseded(p) else ''})" for p in parents]
    more = f" and {len(known) - 30} older" if len(known) > 30 else ""
    raise StoreLookupError(f"unknown sweep {sweep!r}; sweeps found in this tracking store, newest first: "
                           + (", ".join(known[:30]) + more if known else "none"))


def sweep_identity(parent) -> tuple[str, str]:
    """(sweep id, sweep name) of a parent run."""
    sweep_id = parent.data.tags[SWEEP_ID_TAG]
    return sweep_id, parent.data.tags.get(SWEEP_NAME_TAG, sweep_id)


def asked_seeds(parent_params: dict[str, str]) -> int | None:
    """How many seeds the spec asked for (the parent run's `seeds` param, e.g. "[0, 1, 2]")."""
    import ast

    try:
        seeds = ast.literal_eval(parent_params[SEEDS_PARAM])
        return len(seeds) if isinstance(seeds, (list, tuple)) else None
    except (KeyError, ValueError, SyntaxError):
        return None


def _trial_identity(run) -> dict[str, Any]:
    """Which trial a child run is: from its tags (the domain from the task registry when the tag is missing)."""
    from trainers.tasks import TASKS

    tags = run.data.tags
    task = tags.get(TASK_TAG, "?")
    return {"trial_id": tags.get(TRIAL_ID_TAG, run.info.run_name), "algorithm": tags.get(ALGORITHM_TAG, "?"),
            "task": task, "domain": tags.get(DOMAIN_TAG) or (TASKS[task].domain if task in TASKS else "other"),
            "ratio": float(tags.get(RATIO_TAG, "nan")), "seed": int(tags.get(SEED_TAG, -1))}


def _resolved_config(params: dict[str, str]) -> dict[str, str]:
    """The trial's resolved config as logged: `config.<name>` params, by name."""
    return {key.removeprefix(CONFIG_PARAM_PREFIX): value for key, value in params.items()
            if key.startswith(CONFIG_PARAM_PREFIX)}


def _evaluation_curves(mlflow_client, run) -> dict[str, list[tuple[int, float]]]:
    """Per eval label, the (step, normalized mean) history, by step (one value per step: the latest logged)."""
    prefix, suffix = EVAL_METRIC.split("{label}")
    curves = {}
    for key in run.data.metrics:
        label = key.removeprefix(prefix).removesuffix(suffix)
        if key.startswith(prefix) and key.endswith(suffix) and label and "/" not in label:
            history = {m.step: m.value for m in mlflow_client.get_metric_history(run.info.run_id, key)}
            curves[label] = sorted(history.items())
    return curves


def read_trial_runs(mlflow_client, experiment_id: str, parent_run_id: str) -> list[TrialRun]:
    """Every trial run under the sweep's parent run, with its evaluation histories and cost, in grid order.
    (By parent, not by sweep id: after a restart the superseded parent's runs share the sweep id.)"""
    query = f"tags.`{PARENT_RUN_TAG}` = '{parent_run_id}' and tags.{ROLE_TAG} = '{TRIAL_ROLE}'"
    runs = []
    for run in search_all(mlflow_client, experiment_id, query):
        config, metrics = _resolved_config(run.data.params), run.data.metrics
        num_steps = config.get("num_steps")
        runs.append(TrialRun(
            run_id=run.info.run_id, status=run.info.status, **_trial_identity(run),
            num_steps=int(float(num_steps)) if num_steps else None, curves=_evaluation_curves(mlflow_client, run),
            wall_seconds=metrics.get(WALL_SECONDS_METRIC, 0.0), gpu_hours=metrics.get(GPU_HOURS_METRIC, 0.0),
            config=config))
    return sorted(runs, key=run_order)


def log_aggregate(mlflow_client, parent_run_id: str, protocol: str, out_dir: Path) -> str:
    """The aggregator's files onto the parent run; returns where they are there."""
    artifact_path = AGGREGATE_ARTIFACTS.format(protocol=protocol)
    mlflow_client.log_artifacts(parent_run_id, str(out_dir), artifact_path)
    return artifact_path


def headline_metrics(protocol: str, summaries: list[DomainSummary]) -> dict[str, float]:
    """Each algorithm's domain mean and IQM under their layout names; incomplete averages left out."""
    metrics = {}
    for s in summaries:
        if s.complete:
            for statistic, value in (("mean", s.mean), ("iqm", s.iqm)):
                metrics[HEADLINE_METRIC.format(protocol=protocol, domain=s.domain, statistic=statistic,
                                               algorithm=s.algorithm)] = value
    return metrics


def log_headline(mlflow_client, parent_run_id: str, protocol: str, summaries: list[DomainSummary]) -> dict[str, float]:
    """The headline numbers onto the parent run, so the runs table compares algorithms at a glance."""
    from mlflow.entities import Metric

    metrics = headline_metrics(protocol, summaries)
    now = int(time.time() * 1000)
    items = [Metric(key, float(value), now, 0) for key, value in metrics.items()]
    for i in range(0, len(items), 1000):  # MLflow's log_batch takes at most 1000 metrics
        mlflow_client.log_batch(parent_run_id, metrics=items[i:i + 1000])
    return metrics
