"""MLflow layout of a sweep — the one module that writes it and reads it back.

Run layout:
- experiment: the spec's `tracking.experiment`, tagged `mlflow.experimentKind = custom_model_development` (the
  training kind, read by the MLflow 3 releases that pick the view from it). MLflow 3.17's web app ignores the tag
  and opens the view its sidebar switch names — the link's `workflowType`, else the browser's last choice, else
  GenAI — so the sweep prints `experiment_link(...)`, which asks for the training runs table
  (`?workflowType=machine_learning`; tests/test_mlflow_ui.py checks both in headless Chromium);
- parent run: name = sweep id, tags `role=sweep`, `sweep_id`, `sweep_name` (and `superseded=true` once a
  `--restart` replaced it: the aggregator takes the newest parent that is not superseded); params = the spec's
  grid; the spec file as an artifact; `best/<cell>` metrics and `best/<cell>/config` tags from a search;
- child run: name = trial id, tags `mlflow.parentRunId` (nesting in the UI), `role=trial`, `trial_record` (the
  trial record as JSON: the only carrier of the trial's identity, read back by the aggregator), and for
  searching and reading in the UI `sweep_id`, `trial_id`, `algorithm`, `task`, `domain`, `ratio`, `seed`,
  `trajectory_ids` (compact ranges, e.g. "0-3,7"), `dataset.notes`, `error` (the failure, when it failed),
  `placement.{node_id,cuda_visible_devices,role}` (where its latest attempt ran);
  params = the record's fields and resolved config; its dataset as an MLflow dataset input (name, SHA-256
  digest, source file, profile with the episode counts); metrics with step = gradient step (`train/*`,
  `eval/target_<R>/*`, `eval/best_normalized_mean`, `cost/wall_seconds`, `cost/gpu_hours`); artifacts = the
  trial's files (model/ adapter and weights, trial_record.json, evaluations.json, eval_episodes.csv,
  trajectory_ids.json, metrics.jsonl, error.txt when it failed); status FINISHED, FAILED, or RUNNING while it
  trains (or when its driver was killed);
- after aggregation (orchestrator/aggregate.py), on the parent run: the tables, plots and report.html as
  artifacts under `aggregate/<protocol>/`, and the headline numbers as metrics
  `headline/<protocol>/<domain>/mean/<algorithm>` (the mean over task × ratio cells, the paper's number) and
  `headline/<protocol>/<domain>/iqm/<algorithm>` (interquartile mean of the run scores), step 0, for each
  algorithm that has every cell of the domain (an average over fewer cells does not compare; the report flags
  it); e.g. `headline/paper/locomotion/mean/lamo`.

The names are the constants below, used by both halves: writing (the sweep tracker and the trials' reports)
and reading (the end of this file, which turns the runs back into the aggregator's `TrialRun`s).

Writing is off the training path: the trial's `MlflowReport` queues what the trial core reports and a thread
delivers it, retrying while the server is unreachable; the trial only stops, loudly and with its checkpoint
intact, when an outage outlasts `tracking.max_outage_s`. A resumed trial finds its run by (parent run,
trial_id) and continues it; metrics it re-reports for steps already logged before a crash are skipped, so a
run never holds two values for one step.
"""

from __future__ import annotations

import json
import os
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any

from orchestrator.scores import DomainSummary, TrialRun, run_order
from trainers.core import TRAJECTORY_IDS_FILE
from trainers.record import TrialRecord

PARENT_ROLE, TRIAL_ROLE = "sweep", "trial"
RECORD_TAG = "trial_record"
ERROR_TAG = "error"
# Where the trial ran (its latest attempt): the Ray node id, CUDA_VISIBLE_DEVICES as Ray set it, and whether the
# trial trained in that process ("in_place") or drove a Ray Train run from it ("driver").
PLACEMENT_NODE_TAG, PLACEMENT_DEVICES_TAG, PLACEMENT_ROLE_TAG = (
    "placement.node_id", "placement.cuda_visible_devices", "placement.role")
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
EXPERIMENT_LINK = "{server}/#/experiments/{experiment_id}?workflowType=machine_learning"  # the runs table

# Names of the run layout, for writing and reading alike.
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


def is_server(uri: str) -> bool:
    """An MLflow tracking server (HTTP), rather than a store this process opens itself (sqlite, a directory)."""
    return uri.startswith(("http://", "https://"))


def experiment_link(tracking_uri: str, experiment_id: str) -> str:
    """Where a researcher opens the sweep in the MLflow UI: the server itself, or for a local store the address
    `mlflow ui` serves it on by default, with the command that serves it."""
    if is_server(tracking_uri):
        return EXPERIMENT_LINK.format(server=tracking_uri.rstrip("/"), experiment_id=experiment_id)
    link = EXPERIMENT_LINK.format(server="http://127.0.0.1:5000", experiment_id=experiment_id)
    return f"{link} (after `mlflow ui --backend-store-uri {tracking_uri}`)"


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or used; the message names the URI."""


def check_tracking_uri(uri: str) -> None:
    """Fail before any trial starts when the store behind `uri` cannot be used; writes nothing."""
    if uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///")).resolve()
        if not database.parent.is_dir():
            raise TrackingError(f"tracking URI {uri}: directory {database.parent} does not exist")
        return
    if is_server(uri):
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


def _superseded(run) -> bool:
    return run.data.tags.get(SUPERSEDED_TAG) == "true"


class SweepTracker:
    """The driver's view of MLflow: the sweep's parent run and its trials' child runs."""

    def __init__(self, uri: str, experiment: str, sweep_id: str):
        self.uri, self.sweep_id = absolute_uri(uri), sweep_id
        self.client = client(self.uri)
        self.experiment_id = experiment_id(self.client, experiment)

    def start_sweep(self, sweep_name: str, params: dict[str, Any], spec_file: Path | None = None) -> str:
        """The parent run of this sweep: found again on resume, created (with params and the spec) otherwise."""
        self.client.set_experiment_tag(self.experiment_id, *EXPERIMENT_KIND)
        existing = [run for run in find_runs(self.client, self.experiment_id, **{ROLE_TAG: PARENT_ROLE,
                                             SWEEP_ID_TAG: self.sweep_id}) if not _superseded(run)]
        if existing:
            run_id = existing[-1].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=self.sweep_id, tags={
            ROLE_TAG: PARENT_ROLE, SWEEP_ID_TAG: self.sweep_id, SWEEP_NAME_TAG: sweep_name})
        _log_params(self.client, run.info.run_id, _flat_params("", params))
        if spec_file is not None:
            self.client.log_artifact(run.info.run_id, str(spec_file))
        return run.info.run_id

    def supersede(self) -> int:
        """--restart: the sweep's earlier parent runs stay (nothing recorded is lost) but are marked superseded and
        KILLED, so a fresh parent run and fresh child runs are made. Returns how many were marked."""
        runs = [run for run in find_runs(self.client, self.experiment_id, **{ROLE_TAG: PARENT_ROLE,
                                                                             SWEEP_ID_TAG: self.sweep_id})
                if not _superseded(run)]
        for run in runs:
            self.client.set_tag(run.info.run_id, SUPERSEDED_TAG, "true")
            if run.info.status == "RUNNING":
                self.client.set_terminated(run.info.run_id, status="KILLED")
        return len(runs)

    def finish_sweep(self, parent_run_id: str, failed: bool, interrupted: bool = False) -> None:
        """FINISHED, FAILED (a trial failed after its retries) or KILLED (stopped before every trial ended; the
        same command resumes it and sets it RUNNING again)."""
        status = "KILLED" if interrupted else "FAILED" if failed else "FINISHED"
        self.client.set_terminated(parent_run_id, status=status)

    def trial_run(self, parent_run_id: str, record: TrialRecord) -> tuple[str, dict[str, float] | None]:
        """The trial's child run and, when that run already FINISHED, its latest metrics (nothing to train).
        An existing unfinished run is continued (resume, retry); otherwise one is created from the record."""
        existing = find_runs(self.client, self.experiment_id, **{ROLE_TAG: TRIAL_ROLE, TRIAL_ID_TAG: record.trial_id,
                                                                  PARENT_RUN_TAG: parent_run_id})
        if existing:
            run = existing[0]
            if run.info.status == "FINISHED":
                return run.info.run_id, dict(run.data.metrics)
            self.client.update_run(run.info.run_id, status="RUNNING")
            return run.info.run_id, None
        notes = "; ".join(record.dataset.notes)
        run = self.client.create_run(self.experiment_id, run_name=record.trial_id, tags={
            PARENT_RUN_TAG: parent_run_id, ROLE_TAG: TRIAL_ROLE, RECORD_TAG: record.to_json(),
            SWEEP_ID_TAG: record.sweep_id, TRIAL_ID_TAG: record.trial_id, ALGORITHM_TAG: record.algorithm,
            TASK_TAG: record.task, DOMAIN_TAG: record.domain, RATIO_TAG: f"{record.ratio:g}",
            SEED_TAG: str(record.seed), **({"dataset.notes": notes[:5000]} if notes else {})})
        fields = {k: v for k, v in record.to_dict().items() if k not in ("config", "dataset", "sampled")}
        _log_params(self.client, run.info.run_id, _flat_params(TRIAL_PARAM_PREFIX, fields)
                    | _flat_params(CONFIG_PARAM_PREFIX, record.config))
        self._log_dataset(run.info.run_id, record)
        return run.info.run_id, None

    def _log_dataset(self, run_id: str, record: TrialRecord) -> None:
        """The dataset input; trials starting together may race to create the same dataset entry (a unique key
        in the store), and the loser's retry finds it."""
        from mlflow.exceptions import MlflowException

        for attempt in range(3):
            try:
                self.client.log_inputs(run_id, datasets=[dataset_input(record)])
                return
            except MlflowException:
                if attempt == 2:
                    raise
                time.sleep(0.5 * (attempt + 1))

    def record_placement(self, run_id: str, node_id: str, cuda_visible_devices: str, role: str) -> None:
        for key, value in ((PLACEMENT_NODE_TAG, node_id), (PLACEMENT_DEVICES_TAG, cuda_visible_devices),
                           (PLACEMENT_ROLE_TAG, role)):
            self.client.set_tag(run_id, key, value)

    def finish_trial(self, run_id: str, failed: bool, wall_seconds: float, gpus: float,
                     error: BaseException | None = None, interrupted: bool = False) -> None:
        """Close the child run; cost metrics accumulate over resumed attempts; a failure is recorded with its
        own message (tag `error`) and traceback (error.txt); an interrupted trial is KILLED (resuming the sweep
        sets it RUNNING again)."""
        from mlflow.entities import Metric

        previous = self.client.get_run(run_id).data.metrics.get(WALL_SECONDS_METRIC, 0.0)
        total = previous + wall_seconds
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(WALL_SECONDS_METRIC, total, now, 0),
                                               Metric(GPU_HOURS_METRIC, total * gpus / 3600, now, 0)])
        if error is not None:
            self.client.set_tag(run_id, ERROR_TAG, failure_message(error)[:5000])
            self.client.log_text(run_id, "".join(traceback.format_exception(error)), "error.txt")
        self.client.set_terminated(run_id, status="KILLED" if interrupted else "FAILED" if failed else "FINISHED")

    def trial_statuses(self, parent_run_id: str) -> dict[str, str]:
        """trial id -> MLflow status of each trial run of the sweep (what the summary counts)."""
        query = f"tags.`{ROLE_TAG}` = '{TRIAL_ROLE}' and tags.`{PARENT_RUN_TAG}` = '{parent_run_id}'"
        runs = search_all(self.client, self.experiment_id, query)  # every page: sweeps have thousands of trials
        return {run.data.tags[TRIAL_ID_TAG]: run.info.status for run in runs}

    def record_best(self, parent_run_id: str, cell: str, metric: str, value: float, config: dict) -> None:
        """A search's best value and configuration for one cell, on the parent run."""
        from mlflow.entities import Metric, RunTag

        self.client.log_batch(parent_run_id, metrics=[Metric(f"best/{cell}", value, int(time.time() * 1000), 0)],
                              tags=[RunTag(f"best/{cell}/config", json.dumps(config, sort_keys=True)),
                                    RunTag(f"best/{cell}/metric", metric)])


def dataset_input(record: TrialRecord):
    """The trial's data as an MLflow dataset input: the runs table's Dataset column shows name and digest."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    identity = record.dataset
    profile = {"episodes": identity.episodes, "transitions": identity.transitions,
               "subset_trajectories": identity.subset_episodes, "ratio": record.ratio}
    dataset = Dataset(name=identity.name, digest=identity.digest[:36] or "unvalidated", source_type="local",
                      source=json.dumps({"uri": identity.source}), profile=json.dumps(profile))
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])


def failure_message(error: BaseException) -> str:
    """The exception's own message, below Ray's wrappers (a Ray task error's header names only the actor)."""
    while True:
        cause = getattr(error, "cause", None)  # ray.exceptions.RayTaskError keeps the original as `cause`
        if isinstance(cause, BaseException) and cause is not error:
            error = cause
            continue
        return f"{type(error).__name__}: {error}".strip().removesuffix(":")


class MlflowReport:
    """The trial core's ReportHook inside a sweep: metrics (step = gradient step) and files go to the trial's
    child run from a background thread, so a slow or unreachable tracking server never stalls training. The
    thread sends what has queued since its last delivery as one batch, at most once per `DELIVERY_INTERVAL_S`
    (a trial reporting every 100 steps makes one request a second instead of several; a tracking server shared
    by hundreds of trials, or a sqlite file committing each request, feels the difference).

    While the server is unreachable the reports wait in memory (they are also in the trial's metrics.jsonl) and
    are retried; `status()` says how long and how many. An outage longer than `max_outage_s` makes the next
    report raise TrackingError: the trial fails loudly with its checkpoint intact and resumes when run again.
    `close()` waits for everything to be delivered."""

    RETRY_DELAYS_S = (1.0, 2.0, 5.0, 10.0)  # then every 10 s
    DELIVERY_INTERVAL_S = 1.0
    MAX_METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch request

    def __init__(self, uri: str, run_id: str, run_dir: str, max_outage_s: float = 900.0):
        self.uri, self.run_id, self.run_dir, self.max_outage_s = uri, run_id, Path(run_dir), max_outage_s
        # Fail each HTTP call fast and retry here instead: MLflow's own retries (7, with back-off) would hide an
        # outage for minutes and say nothing.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        self._pending: deque[tuple[int, dict[str, float], list[Path], int]] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()  # close() asked: deliver without waiting out the interval
        self._thread: threading.Thread | None = None
        self._failing_since: float | None = None
        self._last_error: str = ""
        self._logged_up_to: dict[str, int] | None = None
        self._client = None

    def __getstate__(self) -> dict:  # travels to a Ray Train worker as its settings; the thread starts there
        return {"uri": self.uri, "run_id": self.run_id, "run_dir": str(self.run_dir),
                "max_outage_s": self.max_outage_s}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def __call__(self, step: int, metrics: dict[str, float], files: list[Path]) -> None:
        self._raise_if_outage_too_long()
        with self._lock:  # stamped now: the run's timestamps say when the trial reported, not when it arrived
            self._pending.append((step, dict(metrics), list(map(Path, files)), int(time.time() * 1000)))
        if self._thread is None:
            self._thread = threading.Thread(target=self._deliver_forever, name="mlflow-report", daemon=True)
            self._thread.start()
        self._wake.set()

    def status(self) -> dict[str, float]:
        """`tracking/pending` reports waiting, `tracking/unreachable_s` seconds since delivery started failing."""
        failing = time.time() - self._failing_since if self._failing_since is not None else 0.0
        return {"tracking/pending": float(len(self._pending)), "tracking/unreachable_s": failing}

    def close(self) -> None:
        """Return once every report is delivered; raise TrackingError when the outage outlasts the limit."""
        self._closing.set()
        while self._pending:
            self._raise_if_outage_too_long()
            time.sleep(0.02)

    def _raise_if_outage_too_long(self) -> None:
        if self._failing_since is not None and time.time() - self._failing_since > self.max_outage_s:
            raise TrackingError(
                f"tracking URI {self.uri} unreachable for {time.time() - self._failing_since:.0f} s (limit "
                f"tracking.max_outage_s = {self.max_outage_s:g} s), {len(self._pending)} reports waiting; last error: "
                f"{self._last_error}. The trial stops with its checkpoint intact; run the sweep again once the "
                f"server is back")

    def _deliver_forever(self) -> None:
        attempt = 0
        while True:
            self._wake.wait()
            with self._lock:
                if not self._pending:
                    self._wake.clear()
                    continue
                batch = self._next_batch()
            try:
                self._deliver(batch)
            except Exception as error:  # any transport or server failure: keep the reports, retry later
                if self._failing_since is None:
                    self._failing_since = time.time()
                self._last_error = f"{type(error).__name__}: {str(error)[:300]}"
                time.sleep(self.RETRY_DELAYS_S[min(attempt, len(self.RETRY_DELAYS_S) - 1)])
                attempt += 1
                continue
            with self._lock:
                for _ in batch:
                    self._pending.popleft()
            self._failing_since, attempt = None, 0
            self._closing.wait(self.DELIVERY_INTERVAL_S)  # let the next reports gather, unless closing

    def _next_batch(self) -> list[tuple[int, dict[str, float], list[Path], int]]:
        """The oldest pending reports that fit in one request (always at least one)."""
        batch, metrics = [], 0
        for item in self._pending:
            metrics += len(item[1])
            if batch and metrics > self.MAX_METRICS_PER_BATCH:
                break
            batch.append(item)
        return batch

    def _connect(self):
        if self._client is None:
            self._client = client(self.uri)
        if self._logged_up_to is None:
            # A resumed trial re-reports steps between its checkpoint and the crash: remember what is logged.
            logged = {}
            for key in self._client.get_run(self.run_id).data.metrics:
                logged[key] = max(m.step for m in self._client.get_metric_history(self.run_id, key))
            self._logged_up_to = logged
        return self._client

    def _deliver(self, batch: list[tuple[int, dict[str, float], list[Path], int]]) -> None:
        """One log_batch for the reports' metrics (a step already logged for a key is skipped: a resumed trial
        repeats the steps after its checkpoint) and the trajectory-id tag, then their files as artifacts."""
        from mlflow.entities import Metric, RunTag

        mlflow_client = self._connect()
        fresh, tags, logged = [], [], dict(self._logged_up_to)
        for step, metrics, files, reported_ms in batch:
            for key, value in metrics.items():
                if step > logged.get(key, -1):
                    fresh.append(Metric(key, float(value), reported_ms, step))
                    logged[key] = step
            tags += [RunTag("trajectory_ids", _trajectory_tag(json.loads(path.read_text())))
                     for path in files if path.name == TRAJECTORY_IDS_FILE]
        if fresh or tags:
            mlflow_client.log_batch(self.run_id, metrics=fresh, tags=tags)
        self._logged_up_to = logged
        for path in (path for _, _, files, _ in batch for path in files):
            relative = path.relative_to(self.run_dir) if path.is_relative_to(self.run_dir) else Path(path.name)
            folder = None if relative.parent == Path(".") else str(relative.parent)
            mlflow_client.log_artifact(self.run_id, str(path), folder)


# ============================================================================================================
# Reading a sweep back: the aggregator's side of the layout above. A trial's identity comes from its record.
# ============================================================================================================


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


def trial_record(run) -> TrialRecord:
    """The record a child run was made from (its `trial_record` tag): the trial's identity and resolved config,
    as the sweep resolved them."""
    if RECORD_TAG not in run.data.tags:
        raise StoreLookupError(f"run {run.info.run_id} ({run.info.run_name}) has no {RECORD_TAG} tag: it was not "
                               f"written by this version of the sweep")
    return TrialRecord.from_json(run.data.tags[RECORD_TAG])


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
        record, metrics = trial_record(run), run.data.metrics
        runs.append(TrialRun(
            run_id=run.info.run_id, status=run.info.status, trial_id=record.trial_id, algorithm=record.algorithm,
            task=record.task, domain=record.domain, ratio=record.ratio, seed=record.seed,
            num_steps=record.num_steps, curves=_evaluation_curves(mlflow_client, run),
            wall_seconds=metrics.get(WALL_SECONDS_METRIC, 0.0), gpu_hours=metrics.get(GPU_HOURS_METRIC, 0.0),
            config={name: str(value) for name, value in record.config.items()}))
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
