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
  `placement.{node_id,cuda_visible_devices,role,stack}` (where its latest attempt ran, and with which seeds when
  seeds were trained together; its cost metrics are then its share of the stack's), and its fingerprint
  (orchestrator/fingerprint.py): `fingerprint` (what it computes, code aside), `code_digest` and `code_files`
  (JSON: each source file's SHA-256, so that a stale run can name what changed);
  params = the record's fields and resolved config; its dataset as an MLflow dataset input (name, SHA-256
  digest, source file, profile with the episode counts); metrics with step = gradient step (`train/*`,
  `eval/target_<R>/*`, `eval/best_normalized_mean`, `cost/wall_seconds`, `cost/gpu_hours`); artifacts = the
  trial's files (model/ adapter and weights, trial_record.json, evaluations.json, eval_episodes.csv,
  trajectory_ids.json, metrics.jsonl, error.txt when it failed); status FINISHED, FAILED, or RUNNING while it
  trains (or when its driver was killed);
- a reused trial (orchestrator/reuse.py): a light child run under the new sweep's parent, FINISHED, with the same
  role, trial_record (the new sweep's record) and search tags, `reused_from` (the original run's id) and
  `reused_from_sweep` (its sweep id), and the original's latest evaluation metrics for the runs table; no cost
  metrics and no artifacts: the original run stays where it is, unchanged, and the aggregator reads its curves
  and cost from there (shown as reused, apart from the cost the sweep spent);
- after aggregation (orchestrator/aggregate.py), on the parent run: the tables, plots and report.html as
  artifacts under `aggregate/<protocol>/`, and the headline numbers as metrics
  `headline/<protocol>/<domain>/mean/<algorithm>` (the mean over task × ratio cells, the paper's number) and
  `headline/<protocol>/<domain>/iqm/<algorithm>` (interquartile mean of the run scores), step 0, for each
  algorithm that has every cell of the domain (an average over fewer cells does not compare; the report flags
  it); e.g. `headline/paper/locomotion/mean/lamo`.

The names are the constants below, used by both halves: writing (the sweep tracker here, the trials' reports
in orchestrator/delivery.py, the aggregator's headline numbers) and reading (the end of this file, which gives
each child run back as a `TrialRun` holding the record it was made from: orchestrator/runs.py).

A trial's metrics and files leave the training path (orchestrator/delivery.py): a thread delivers them,
retrying while the server is unreachable. A resumed trial finds its run by (parent run, trial_id) and continues
it; metrics it re-reports for steps already logged before a crash are skipped, so a run never holds two values
for one step.
"""

from __future__ import annotations

import json
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from orchestrator.fingerprint import digest_of, trial_code
from orchestrator.runs import TrialRun
from trainers.runtime.record import TrialRecord

PARENT_ROLE, TRIAL_ROLE = "sweep", "trial"
RECORD_TAG = "trial_record"
ERROR_TAG = "error"
# Where the trial ran (its latest attempt): the Ray node id, CUDA_VISIBLE_DEVICES as Ray set it, whether the
# trial trained in that process ("in_place"), with other seeds of its cell ("stacked", the stack's name in
# placement.stack) or drove a Ray Train run from it ("driver").
PLACEMENT_NODE_TAG, PLACEMENT_DEVICES_TAG, PLACEMENT_ROLE_TAG, PLACEMENT_STACK_TAG = (
    "placement.node_id", "placement.cuda_visible_devices", "placement.role", "placement.stack")
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
EXPERIMENT_LINK = "{server}/#/experiments/{experiment_id}?workflowType=machine_learning"  # the runs table

# Names of the run layout, for writing and reading alike.
ROLE_TAG, PARENT_RUN_TAG = "role", "mlflow.parentRunId"
SWEEP_ID_TAG, SWEEP_NAME_TAG, SUPERSEDED_TAG = "sweep_id", "sweep_name", "superseded"
TRIAL_ID_TAG, ALGORITHM_TAG, TASK_TAG, DOMAIN_TAG, RATIO_TAG, SEED_TAG = (
    "trial_id", "algorithm", "task", "domain", "ratio", "seed")
TRAJECTORY_IDS_TAG = "trajectory_ids"  # on a child run: the episode ids it trained on, as compact ranges
FINGERPRINT_TAG, CODE_TAG, CODE_FILES_TAG = "fingerprint", "code_digest", "code_files"
REUSED_FROM_TAG, REUSED_SWEEP_TAG = "reused_from", "reused_from_sweep"  # on a reused trial's light run
SEEDS_PARAM = "seeds"  # on the parent run: the spec's seeds, e.g. "[0, 1, 2]"
CONFIG_PARAM_PREFIX, TRIAL_PARAM_PREFIX = "config.", "trial."  # child params: resolved config, trial fields
# The evaluation loop's name (trainers/runtime/evaluation.py); label target_<R> or policy.
EVAL_METRIC = "eval/{label}/normalized_mean"
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


RETRY_DELAYS_S = (1.0, 2.0, 5.0, 10.0)  # then every 10 s


def unreachable(error: BaseException) -> bool:
    """Whether `error` says the server could not be reached or failed (worth trying again), not that the request
    was wrong: MLflow's transport failure (rest_utils.http_request's "API request to … failed": a refused, reset or
    dropped connection, a timeout) or a 5xx answer."""
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(error, RestException):
        return error.get_http_status_code() >= 500
    if isinstance(error, MlflowException):
        return error.message.startswith("API request to")
    return isinstance(error, OSError)


def retrying(call, max_outage_s: float, sleep=time.sleep):
    """`call()`, tried again after 1, 2, 5, 10, 10, … s while the server cannot be reached, for up to
    `max_outage_s` (then its last error). For a trial's own requests outside its delivery thread (its run at the
    start, its placement): with MLflow's retries off in trial processes (orchestrator/delivery.py), one connection
    the server dropped failed a whole trial attempt (seen at 720 trials: a keep-alive connection closed under a
    create_run). `call` must be safe to repeat."""
    started, waited, attempt = time.monotonic(), 0.0, 0
    while True:
        try:
            return call()
        except Exception as error:
            delay = RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)]
            if not unreachable(error) or max(time.monotonic() - started, waited) + delay > max_outage_s:
                raise
            sleep(delay)
            waited, attempt = waited + delay, attempt + 1


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
            self._complete_setup(run, record)
            self.client.update_run(run.info.run_id, status="RUNNING")
            return run.info.run_id, None
        notes = "; ".join(record.dataset.notes)
        files = trial_code(record)  # the code this process runs: what its result was computed by
        fingerprint = {FINGERPRINT_TAG: record.fingerprint, CODE_TAG: digest_of(files),
                       CODE_FILES_TAG: json.dumps(files)} if record.fingerprint else {}
        run = self.client.create_run(self.experiment_id, run_name=record.trial_id, tags={
            **_trial_tags(parent_run_id, record), **({"dataset.notes": notes[:5000]} if notes else {}),
            **fingerprint})
        self._log_params_and_dataset(run.info.run_id, record)
        return run.info.run_id, None

    def _log_params_and_dataset(self, run_id: str, record: TrialRecord) -> None:
        fields = {k: v for k, v in record.to_dict().items() if k not in ("config", "dataset", "sampled")}
        _log_params(self.client, run_id, _flat_params(TRIAL_PARAM_PREFIX, fields)
                    | _flat_params(CONFIG_PARAM_PREFIX, record.config))
        self._log_dataset(run_id, record)

    def _complete_setup(self, run, record: TrialRecord) -> None:
        """An attempt cut off while creating its run (a dropped connection, a killed process) may have left it
        without params or dataset input: log them (the same values again are accepted)."""
        if not run.data.params or not run.inputs.dataset_inputs:
            self._log_params_and_dataset(run.info.run_id, record)

    def reuse_trial(self, parent_run_id: str, record: TrialRecord, original) -> str:
        """The light child run that stands for `record` in this sweep, pointing at the FINISHED run `original` of an
        earlier sweep (module doc). The caller makes it once: a resumed sweep skips the trials `trial_statuses`
        already lists."""
        from mlflow.entities import Metric

        run = self.client.create_run(self.experiment_id, run_name=record.trial_id, tags={
            **_trial_tags(parent_run_id, record), REUSED_FROM_TAG: original.info.run_id,
            REUSED_SWEEP_TAG: original.data.tags.get(SWEEP_ID_TAG, "")})
        shown = [Metric(m.key, m.value, m.timestamp, m.step) for m in latest_metrics(original)
                 if m.key.startswith("eval/")]
        for i in range(0, len(shown), 1000):
            self.client.log_batch(run.info.run_id, metrics=shown[i:i + 1000])
        self.client.set_terminated(run.info.run_id, status="FINISHED")
        return run.info.run_id

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

    def record_placement(self, run_id: str, node_id: str, cuda_visible_devices: str, role: str,
                         stack: str = "") -> None:
        from mlflow.entities import RunTag

        tags = {PLACEMENT_NODE_TAG: node_id, PLACEMENT_DEVICES_TAG: cuda_visible_devices, PLACEMENT_ROLE_TAG: role}
        self.client.log_batch(run_id, tags=[RunTag(key, value) for key, value in
                                            (tags | ({PLACEMENT_STACK_TAG: stack} if stack else {})).items()])

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


def _trial_tags(parent_run_id: str, record: TrialRecord) -> dict[str, str]:
    return {PARENT_RUN_TAG: parent_run_id, ROLE_TAG: TRIAL_ROLE, RECORD_TAG: record.to_json(),
            SWEEP_ID_TAG: record.sweep_id, TRIAL_ID_TAG: record.trial_id, ALGORITHM_TAG: record.algorithm,
            TASK_TAG: record.task, DOMAIN_TAG: record.domain, RATIO_TAG: f"{record.ratio:g}",
            SEED_TAG: str(record.seed)}


def latest_metrics(run) -> list:
    """The run's latest value of each metric with its step (what a search returns carries them)."""
    return list(getattr(run.data, "_metric_objs", []))


def finished_fingerprinted_runs(mlflow_client, experiment_id: str) -> list:
    """Every FINISHED trial run of the experiment that carries a fingerprint (a reuse candidate), newest first."""
    query = f"tags.`{ROLE_TAG}` = '{TRIAL_ROLE}' and attributes.status = 'FINISHED'"
    runs = search_all(mlflow_client, experiment_id, query, ["attributes.end_time DESC"])
    return [run for run in runs if run.data.tags.get(FINGERPRINT_TAG)]


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


def search_all(mlflow_client, experiment_id: str, query: str, order_by: list[str] | None = None,
               view=None) -> list:
    """Every run matching `query` (active runs, unless `view` is another mlflow.entities.ViewType), page after
    page."""
    from mlflow.entities import ViewType

    runs, token = [], None
    while True:
        page = mlflow_client.search_runs([experiment_id], filter_string=query,
                                         run_view_type=view or ViewType.ACTIVE_ONLY, order_by=order_by,
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


def eval_label(key: str) -> str | None:
    """The eval label of an EVAL_METRIC key ("eval/target_40/normalized_mean" -> "target_40"); None for others."""
    prefix, suffix = EVAL_METRIC.split("{label}")
    label = key.removeprefix(prefix).removesuffix(suffix)
    return label if key.startswith(prefix) and key.endswith(suffix) and label and "/" not in label else None


# Reading in bulk: a paper-sized sweep has ~700 trial runs with a few eval metrics each, and one request per run
# and metric is thousands of requests to a tracking server. MLflow's get-history-bulk endpoint (its web app's
# charts use it) answers one metric key for up to BULK_RUNS runs, in full, but with at most BULK_VALUES values:
# an answer that size may have been cut short, so its runs are asked again in halves.
HISTORY_BULK_ENDPOINT = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
BULK_RUNS, BULK_VALUES = 100, 25_000
PER_RUN_THREADS = 8  # for a store without a bulk read: its requests overlap


def _one_by_one(mlflow_client, run_ids: list[str], key: str) -> list[tuple[str, int, float]]:
    """(run id, step, value) of each run's history of `key`, a request per run, several at a time."""
    from concurrent.futures import ThreadPoolExecutor

    def history(run_id: str) -> list[tuple[str, int, float]]:
        return [(run_id, m.step, m.value) for m in mlflow_client.get_metric_history(run_id, key)]

    with ThreadPoolExecutor(min(PER_RUN_THREADS, len(run_ids))) as pool:
        return [value for values in pool.map(history, run_ids) for value in values]


def _bulk_reader(mlflow_client):
    """How the store behind the client reads one key's histories of many runs at once: (run ids, key) ->
    [(run id, step, value)] in each run's logging order, or None where it cannot (then it is read run by run).
    A server is asked through its bulk endpoint; a database store (sqlite:, postgresql:) opened in this process
    is asked directly (its own bulk query, the one that endpoint runs)."""
    from mlflow.store.tracking.rest_store import RestStore

    store = getattr(getattr(mlflow_client, "_tracking_client", None), "store", None)
    if isinstance(store, RestStore):
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        def from_server(run_ids: list[str], key: str):
            response = http_request(store.get_host_creds(), HISTORY_BULK_ENDPOINT, "GET",
                                    params={"run_id": run_ids, "metric_key": key, "max_results": BULK_VALUES})
            if response.status_code == 404:  # a server or proxy without the web app's routes
                return None
            verify_rest_response(response, HISTORY_BULK_ENDPOINT)
            return [(m["run_id"], int(m["step"]), float(m["value"])) for m in response.json().get("metrics", [])]
        return from_server
    if hasattr(store, "get_metric_history_bulk"):
        return lambda run_ids, key: [(m.run_id, m.step, m.value) for m in store.get_metric_history_bulk(
            run_ids=run_ids, metric_key=key, max_results=BULK_VALUES)]
    return lambda run_ids, key: None


def metric_histories(mlflow_client, keys_of: dict[str, list[str]]) -> dict[tuple[str, str], dict[int, float]]:
    """(run id, key) -> {step: value} for each run's keys in `keys_of` (run id -> metric keys): one value per step,
    the latest logged (as the runs' own histories read). Per key, BULK_RUNS runs a request."""
    runs_of: dict[str, list[str]] = {}
    for run_id, keys in keys_of.items():
        for key in keys:
            runs_of.setdefault(key, []).append(run_id)
    bulk = _bulk_reader(mlflow_client)

    def read(run_ids: list[str], key: str) -> list[tuple[str, int, float]]:
        values = bulk(run_ids, key)
        if values is None:
            return _one_by_one(mlflow_client, run_ids, key)
        if len(values) < BULK_VALUES:
            return values
        if len(run_ids) == 1:  # one run holds more than an answer carries: its own history is paged
            return _one_by_one(mlflow_client, run_ids, key)
        half = len(run_ids) // 2
        return read(run_ids[:half], key) + read(run_ids[half:], key)

    histories: dict[tuple[str, str], dict[int, float]] = {(r, k): {} for r, keys in keys_of.items() for k in keys}
    for key, run_ids in runs_of.items():
        for i in range(0, len(run_ids), BULK_RUNS):
            for run_id, step, value in read(run_ids[i:i + BULK_RUNS], key):
                histories[run_id, key][step] = value  # in logging order: the latest value of a step stays
    return histories


def runs_by_id(mlflow_client, experiment_id: str, run_ids) -> dict:
    """The runs with these ids (a reused trial's original), BULK_RUNS a search; one outside the experiment by
    its own request."""
    from mlflow.entities import ViewType

    wanted = sorted(set(run_ids))
    found = {}
    for i in range(0, len(wanted), BULK_RUNS):
        listed = ", ".join(f"'{run_id}'" for run_id in wanted[i:i + BULK_RUNS])
        for run in search_all(mlflow_client, experiment_id, f"attributes.run_id IN ({listed})",
                              view=ViewType.ALL):  # like get_run, a deleted original too
            found[run.info.run_id] = run
    return found | {run_id: mlflow_client.get_run(run_id) for run_id in wanted if run_id not in found}


def read_trial_runs(mlflow_client, experiment_id: str, parent_run_id: str) -> list[TrialRun]:
    """Every trial run under the sweep's parent run: its record, status, evaluation histories and cost — for a
    reused trial, the original run's curves and cost, marked reused. (By parent, not by sweep id: after a restart
    the superseded parent's runs share the sweep id.) In bulk: the runs in pages of a search, the reused ones'
    originals BULK_RUNS a search, the histories one metric key of BULK_RUNS runs a request."""
    query = f"tags.`{PARENT_RUN_TAG}` = '{parent_run_id}' and tags.{ROLE_TAG} = '{TRIAL_ROLE}'"
    trials = search_all(mlflow_client, experiment_id, query)
    records = [trial_record(run) for run in trials]  # a run the sweep did not write fails before any reading
    originals = runs_by_id(mlflow_client, experiment_id,
                           [run.data.tags[REUSED_FROM_TAG] for run in trials if run.data.tags.get(REUSED_FROM_TAG)])
    measured = [originals[run.data.tags[REUSED_FROM_TAG]] if run.data.tags.get(REUSED_FROM_TAG) else run
                for run in trials]
    labels = {run.info.run_id: {key: eval_label(key) for key in run.data.metrics if eval_label(key) is not None}
              for run in measured}
    histories = metric_histories(mlflow_client, {run_id: list(keys) for run_id, keys in labels.items()})
    runs = []
    for run, record, source in zip(trials, records, measured):
        curves = {label: sorted(histories[source.info.run_id, key].items())
                  for key, label in labels[source.info.run_id].items()}
        runs.append(TrialRun(run_id=run.info.run_id, record=record, status=run.info.status, curves=curves,
                             wall_seconds=source.data.metrics.get(WALL_SECONDS_METRIC, 0.0),
                             gpu_hours=source.data.metrics.get(GPU_HOURS_METRIC, 0.0),
                             reused_from=run.data.tags.get(REUSED_FROM_TAG), source_sweep=run.data.tags.get(
                                 REUSED_SWEEP_TAG) or run.data.tags.get(SWEEP_ID_TAG, ""),
                             fingerprint=source.data.tags.get(FINGERPRINT_TAG, ""),
                             started=source.info.start_time or 0))
    return runs


def log_aggregate(mlflow_client, parent_run_id: str, protocol: str, out_dir: Path) -> str:
    """The aggregator's files onto the parent run; returns where they are there."""
    artifact_path = AGGREGATE_ARTIFACTS.format(protocol=protocol)
    mlflow_client.log_artifacts(parent_run_id, str(out_dir), artifact_path)
    return artifact_path


def log_parent_metrics(mlflow_client, parent_run_id: str, metrics: dict[str, float]) -> None:
    """Metrics onto the parent run at step 0 (the aggregator's headline numbers, named by HEADLINE_METRIC)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(key, float(value), now, 0) for key, value in metrics.items()]
    for i in range(0, len(items), 1000):  # MLflow's log_batch takes at most 1000 metrics
        mlflow_client.log_batch(parent_run_id, metrics=items[i:i + 1000])
