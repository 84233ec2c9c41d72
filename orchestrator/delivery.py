"""The trial's side of tracking: what the trial core reports reaches the trial's MLflow run off the training path.

`MlflowReport` is the trial core's ReportHook inside a sweep (orchestrator/trial.py): a background thread
delivers queued metrics and files in batches, retries while the tracking server is unreachable, and fails the
trial loudly only when an outage outlasts `tracking.max_outage_s`. Which run and which names it writes are the
run layout's (orchestrator/tracking.py).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from pathlib import Path

from orchestrator.tracking import TRAJECTORY_IDS_TAG, TrackingError, client
from trainers.runtime.core import TRAJECTORY_IDS_FILE


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
            tags += [RunTag(TRAJECTORY_IDS_TAG, _trajectory_tag(json.loads(path.read_text())))
                     for path in files if path.name == TRAJECTORY_IDS_FILE]
        if fresh or tags:
            mlflow_client.log_batch(self.run_id, metrics=fresh, tags=tags)
        self._logged_up_to = logged
        for path in (path for _, _, files, _ in batch for path in files):
            relative = path.relative_to(self.run_dir) if path.is_relative_to(self.run_dir) else Path(path.name)
            folder = None if relative.parent == Path(".") else str(relative.parent)
            mlflow_client.log_artifact(self.run_id, str(path), folder)
